/*
 * Prometheus metrics. Counters live behind one mutex: every update is a few additions, far
 * cheaper than the request it describes. Label values are static strings (route names and
 * refusal reasons from the code), so the label sets are small and bounded.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server.h"

#define N_BUCKETS 12
static const double BUCKETS[N_BUCKETS] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                           0.1,   0.25,   0.5,   1,    2.5,   10};
#define MAX_LABELS 48

typedef struct histo {
  uint64_t counts[N_BUCKETS + 1]; /* last: +Inf */
  double sum;
  uint64_t n;
} histo;

typedef struct route_stat {
  const char *name;
  uint64_t by_class[6]; /* 1xx..5xx by first digit */
  histo latency;
} route_stat;

typedef struct reason_stat {
  const char *reason;
  uint64_t n;
} reason_stat;

struct fl_metrics {
  pthread_mutex_t mu;
  uint64_t rounds_closed, rounds_abandoned, accepted, bytes, batches, batch_updates;
  uint64_t conns_open, conns_closed_header, conns_closed_body;
  histo commit;
  route_stat routes[MAX_LABELS];
  reason_stat reasons[MAX_LABELS];
  size_t n_routes, n_reasons;
};

int fl__metrics_new(fl_metrics **out) {
  fl_metrics *m = calloc(1, sizeof *m);
  if (m == NULL)
    return FL_E_NOMEM;
  pthread_mutex_init(&m->mu, NULL);
  *out = m;
  return FL_OK;
}

void fl__metrics_free(fl_metrics *m) {
  if (m == NULL)
    return;
  pthread_mutex_destroy(&m->mu);
  free(m);
}

static void observe(histo *h, double v) {
  size_t i = 0;
  while (i < N_BUCKETS && v > BUCKETS[i])
    i++;
  h->counts[i]++;
  h->sum += v;
  h->n++;
}

void fl__metrics_update_accepted(fl_metrics *m, uint64_t bytes) {
  pthread_mutex_lock(&m->mu);
  m->accepted++;
  m->bytes += bytes;
  pthread_mutex_unlock(&m->mu);
}

void fl__metrics_update_refused(fl_metrics *m, const char *reason) {
  pthread_mutex_lock(&m->mu);
  size_t i = 0;
  while (i < m->n_reasons && strcmp(m->reasons[i].reason, reason) != 0)
    i++;
  if (i == m->n_reasons && i < MAX_LABELS)
    m->reasons[m->n_reasons++].reason = reason;
  if (i < MAX_LABELS)
    m->reasons[i].n++;
  pthread_mutex_unlock(&m->mu);
}

void fl__metrics_round(fl_metrics *m, bool closed) {
  pthread_mutex_lock(&m->mu);
  if (closed)
    m->rounds_closed++;
  else
    m->rounds_abandoned++;
  pthread_mutex_unlock(&m->mu);
}

void fl__metrics_request(fl_metrics *m, const char *route, int status, double seconds) {
  pthread_mutex_lock(&m->mu);
  size_t i = 0;
  while (i < m->n_routes && strcmp(m->routes[i].name, route) != 0)
    i++;
  if (i == m->n_routes && i < MAX_LABELS)
    m->routes[m->n_routes++].name = route;
  if (i < MAX_LABELS) {
    int cls = status / 100;
    m->routes[i].by_class[cls >= 1 && cls <= 5 ? cls : 0]++;
    observe(&m->routes[i].latency, seconds);
  }
  pthread_mutex_unlock(&m->mu);
}

void fl__metrics_commit(fl_metrics *m, size_t batch, double seconds) {
  pthread_mutex_lock(&m->mu);
  m->batches++;
  m->batch_updates += batch;
  observe(&m->commit, seconds);
  pthread_mutex_unlock(&m->mu);
}

static void put_histo(FILE *f, const char *name, const char *labels, const histo *h) {
  uint64_t cum = 0;
  const char *sep = labels[0] ? "," : "";
  for (size_t i = 0; i <= N_BUCKETS; i++) {
    char le[16];
    cum += h->counts[i];
    if (i < N_BUCKETS)
      snprintf(le, sizeof le, "%g", BUCKETS[i]);
    else
      snprintf(le, sizeof le, "+Inf");
    fprintf(f, "%s_bucket{%s%sle=\"%s\"} %" PRIu64 "\n", name, labels, sep, le, cum);
  }
  if (labels[0])
    fprintf(f, "%s_sum{%s} %.9g\n%s_count{%s} %" PRIu64 "\n", name, labels, h->sum, name,
            labels, h->n);
  else
    fprintf(f, "%s_sum %.9g\n%s_count %" PRIu64 "\n", name, h->sum, name, h->n);
}

static void put_counter(FILE *f, const char *name, const char *help, uint64_t v) {
  fprintf(f, "# HELP %s %s\n# TYPE %s counter\n%s %" PRIu64 "\n", name, help, name, name, v);
}

static void put_routes(FILE *f, const fl_metrics *m) {
  char labels[96];
  fprintf(f, "# HELP fl_http_requests_total HTTP requests by route and status class.\n"
             "# TYPE fl_http_requests_total counter\n");
  for (size_t i = 0; i < m->n_routes; i++)
    for (int c = 1; c <= 5; c++)
      if (m->routes[i].by_class[c])
        fprintf(f, "fl_http_requests_total{route=\"%s\",code=\"%dxx\"} %" PRIu64 "\n",
                m->routes[i].name, c, m->routes[i].by_class[c]);
  fprintf(f, "# HELP fl_http_request_duration_seconds Request latency by route.\n"
             "# TYPE fl_http_request_duration_seconds histogram\n");
  for (size_t i = 0; i < m->n_routes; i++) {
    snprintf(labels, sizeof labels, "route=\"%s\"", m->routes[i].name);
    put_histo(f, "fl_http_request_duration_seconds", labels, &m->routes[i].latency);
  }
}

void fl__metrics_connections(fl_metrics *m, uint64_t open, uint64_t closed_header,
                             uint64_t closed_body) {
  pthread_mutex_lock(&m->mu);
  m->conns_open = open;
  m->conns_closed_header = closed_header;
  m->conns_closed_body = closed_body;
  pthread_mutex_unlock(&m->mu);
}

int fl__metrics_render(fl_metrics *m, char **out, size_t *len) {
  char *buf = NULL;
  size_t n = 0;
  FILE *f = open_memstream(&buf, &n);
  if (f == NULL)
    return FL_E_NOMEM;
  pthread_mutex_lock(&m->mu);
  put_counter(f, "fl_rounds_closed_total", "Rounds closed with a new version.", m->rounds_closed);
  put_counter(f, "fl_rounds_abandoned_total", "Rounds abandoned at the deadline.",
              m->rounds_abandoned);
  put_counter(f, "fl_updates_accepted_total", "Updates acknowledged (durable).", m->accepted);
  put_counter(f, "fl_update_bytes_total", "Bytes of acknowledged update requests.", m->bytes);
  /* Counted by the upload handler only: other device endpoints, and uploads refused before
   * it runs (a body over --max-body), are in fl_http_requests_total. */
  fprintf(f,
          "# HELP fl_updates_refused_total Update uploads (POST /v1/updates) answered with "
          "an error, by the fl.v1.Error reason.\n"
          "# TYPE fl_updates_refused_total counter\n");
  for (size_t i = 0; i < m->n_reasons; i++)
    fprintf(f, "fl_updates_refused_total{reason=\"%s\"} %" PRIu64 "\n", m->reasons[i].reason,
            m->reasons[i].n);
  put_counter(f, "fl_commit_batches_total", "Group commit transactions.", m->batches);
  put_counter(f, "fl_commit_updates_total", "Updates written by group commits.",
              m->batch_updates);
  fprintf(f, "# HELP fl_commit_duration_seconds Group commit transaction time.\n"
             "# TYPE fl_commit_duration_seconds histogram\n");
  put_histo(f, "fl_commit_duration_seconds", "", &m->commit);
  put_routes(f, m);
  fprintf(f,
          "# HELP fl_http_connections Connections open (device, admin and metrics listeners).\n"
          "# TYPE fl_http_connections gauge\nfl_http_connections %" PRIu64
          "\n"
          "# HELP fl_http_connections_closed_total Connections closed past a deadline: a header "
          "that took longer than --header-timeout, a body slower than --min-body-rate.\n"
          "# TYPE fl_http_connections_closed_total counter\n"
          "fl_http_connections_closed_total{reason=\"header_deadline\"} %" PRIu64
          "\n"
          "fl_http_connections_closed_total{reason=\"body_rate\"} %" PRIu64 "\n",
          m->conns_open, m->conns_closed_header, m->conns_closed_body);
  pthread_mutex_unlock(&m->mu);
  if (fclose(f) != 0) {
    free(buf);
    return FL_E_NOMEM;
  }
  *out = buf;
  *len = n;
  return FL_OK;
}
