/*
 * Prometheus metrics. Counters live behind one mutex: every update is a few additions, far
 * cheaper than the request it describes. Label values are static strings (route names and
 * refusal reasons from the code), so the label sets are small and bounded.
 *
 * A scrape also reports gauges read when it happens (fl__metrics_render_all): the build,
 * the process (the process_* names every Prometheus client library exports, from /proc), and
 * the fleet from PostgreSQL (devices by state, open rounds and their progress), which every
 * replica reports alike: aggregate them with max(), not sum().
 */
#include <dirent.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "drift/drift.h"
#include "fl/version.h"
#include "server.h"
#include "store/store_pg.h"

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

/* Updates per group commit batch: powers of two up to the largest batches seen in benches. */
#define N_SIZE_BUCKETS 11
static const double SIZE_BUCKETS[N_SIZE_BUCKETS] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024};

typedef struct size_histo {
  uint64_t counts[N_SIZE_BUCKETS + 1];
  double sum;
  uint64_t n;
} size_histo;

struct fl_metrics {
  pthread_mutex_t mu;
  uint64_t rounds_closed, rounds_abandoned, accepted, bytes, batches, batch_updates;
  uint64_t conns_open, conns_closed_header, conns_closed_body;
  histo commit;
  size_histo batch_size;
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
  size_t i = 0;
  while (i < N_SIZE_BUCKETS && (double)batch > SIZE_BUCKETS[i])
    i++;
  m->batch_size.counts[i]++;
  m->batch_size.sum += (double)batch;
  m->batch_size.n++;
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
    fprintf(f, "%s_sum{%s} %.9g\n%s_count{%s} %" PRIu64 "\n", name, labels, h->sum, name, labels,
            h->n);
  else
    fprintf(f, "%s_sum %.9g\n%s_count %" PRIu64 "\n", name, h->sum, name, h->n);
}

static void put_counter(FILE *f, const char *name, const char *help, uint64_t v) {
  fprintf(f, "# HELP %s %s\n# TYPE %s counter\n%s %" PRIu64 "\n", name, help, name, name, v);
}

static void put_routes(FILE *f, const fl_metrics *m) {
  char labels[96];
  fprintf(f,
          "# HELP fl_http_requests_total HTTP requests by route and status class.\n"
          "# TYPE fl_http_requests_total counter\n");
  for (size_t i = 0; i < m->n_routes; i++)
    for (int c = 1; c <= 5; c++)
      if (m->routes[i].by_class[c])
        fprintf(f, "fl_http_requests_total{route=\"%s\",code=\"%dxx\"} %" PRIu64 "\n",
                m->routes[i].name, c, m->routes[i].by_class[c]);
  fprintf(f,
          "# HELP fl_http_request_duration_seconds Request latency by route.\n"
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

static void put_counters(FILE *f, fl_metrics *m) {
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
  put_counter(f, "fl_commit_updates_total", "Updates written by group commits.", m->batch_updates);
  fprintf(f,
          "# HELP fl_commit_duration_seconds Group commit transaction time.\n"
          "# TYPE fl_commit_duration_seconds histogram\n");
  put_histo(f, "fl_commit_duration_seconds", "", &m->commit);
  fprintf(f,
          "# HELP fl_commit_batch_size Updates per group commit transaction.\n"
          "# TYPE fl_commit_batch_size histogram\n");
  uint64_t cum = 0;
  for (size_t i = 0; i <= N_SIZE_BUCKETS; i++) {
    cum += m->batch_size.counts[i];
    if (i < N_SIZE_BUCKETS)
      fprintf(f, "fl_commit_batch_size_bucket{le=\"%g\"} %" PRIu64 "\n", SIZE_BUCKETS[i], cum);
    else
      fprintf(f, "fl_commit_batch_size_bucket{le=\"+Inf\"} %" PRIu64 "\n", cum);
  }
  fprintf(f, "fl_commit_batch_size_sum %.9g\nfl_commit_batch_size_count %" PRIu64 "\n",
          m->batch_size.sum, m->batch_size.n);
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
}

static void put_gauge(FILE *f, const char *name, const char *help, double v) {
  fprintf(f, "# HELP %s %s\n# TYPE %s gauge\n%s %.15g\n", name, help, name, name, v);
}

/* The process_* metrics of the Prometheus client libraries, from /proc/self (Linux). A value
 * that cannot be read is left out rather than reported as 0. */
static void put_process(FILE *f) {
  long tick = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
  FILE *st = fopen("/proc/self/stat", "r");
  char line[1024];
  unsigned long long ut = 0, stt = 0, start = 0, vsize = 0, rss = 0, btime = 0;
  bool have_stat = false;
  if (st != NULL && fgets(line, sizeof line, st) != NULL) {
    /* Fields after the command name, which is in parentheses and may hold spaces. */
    const char *p = strrchr(line, ')');
    have_stat = p != NULL && sscanf(p + 2,
                                    "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %*d %*d"
                                    " %*d %*d %*d %*d %llu %llu %llu",
                                    &ut, &stt, &start, &vsize, &rss) == 5;
  }
  if (st != NULL)
    fclose(st);
  FILE *ps = fopen("/proc/stat", "r");
  while (ps != NULL && fgets(line, sizeof line, ps) != NULL)
    if (sscanf(line, "btime %llu", &btime) == 1)
      break;
  if (ps != NULL)
    fclose(ps);
  if (have_stat && tick > 0) {
    fprintf(f,
            "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n"
            "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total %.15g\n",
            (double)(ut + stt) / (double)tick);
    put_gauge(f, "process_virtual_memory_bytes", "Virtual memory size in bytes.", (double)vsize);
    put_gauge(f, "process_resident_memory_bytes", "Resident memory size in bytes.",
              (double)rss * (double)page);
    if (btime > 0)
      put_gauge(f, "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                (double)btime + (double)start / (double)tick);
  }
  DIR *d = opendir("/proc/self/fd");
  if (d != NULL) {
    long n = 0;
    for (struct dirent *e = readdir(d); e != NULL; e = readdir(d))
      n += e->d_name[0] != '.';
    closedir(d);
    put_gauge(f, "process_open_fds", "Number of open file descriptors.", (double)(n - 1));
  }
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
    put_gauge(f, "process_max_fds", "Maximum number of open file descriptors.",
              (double)rl.rlim_cur);
}

/* The fleet as PostgreSQL has it: devices by state and each open round's progress. A scrape
 * waits at most 500 ms for a connection: when the pool is busy (or the database down) the
 * gauges are left out and fl_fleet_gauges_up says 0, rather than making the scrape hang. */
static void put_fleet(FILE *f, fl_srv *s) {
  PGconn *c = s->pool ? fl__pool_get_timed(s->pool, 500) : NULL;
  PGresult *dev =
      c ? fl__pg_exec(c,
                      "SELECT st, count(d.device_id) FROM unnest(ARRAY['active', 'revoked']) st"
                      " LEFT JOIN devices d ON d.state = st GROUP BY st ORDER BY st",
                      NULL, false, NULL)
        : NULL;
  PGresult *rnd = dev ? fl__pg_exec(c,
                                    "SELECT round_id, model_id, accepted, target, assigned,"
                                    " extract(epoch FROM deadline_at) FROM rounds"
                                    " WHERE state = 'open' ORDER BY round_id",
                                    NULL, false, NULL)
                      : NULL;
  put_gauge(f, "fl_fleet_gauges_up",
            "1 when this scrape read the fleet gauges from PostgreSQL, 0 when it could not.",
            rnd != NULL);
  if (rnd != NULL) {
    fprintf(f, "# HELP fl_devices Enrolled devices by state.\n# TYPE fl_devices gauge\n");
    for (int i = 0; i < PQntuples(dev); i++)
      fprintf(f, "fl_devices{state=\"%s\"} %s\n", PQgetvalue(dev, i, 0), PQgetvalue(dev, i, 1));
    put_gauge(f, "fl_rounds_open", "Open training rounds.", PQntuples(rnd));
    static const char *const names[][2] = {
        {"fl_round_accepted", "Accepted updates of an open round."},
        {"fl_round_target", "Updates that close an open round (participants)."},
        {"fl_round_assigned", "Devices assigned to an open round."},
        {"fl_round_deadline_timestamp_seconds", "Deadline of an open round, Unix seconds."}};
    for (int k = 0; k < 4; k++) {
      fprintf(f, "# HELP %s %s\n# TYPE %s gauge\n", names[k][0], names[k][1], names[k][0]);
      for (int i = 0; i < PQntuples(rnd); i++)
        fprintf(f, "%s{model_id=\"%s\",round_id=\"%s\"} %s\n", names[k][0], PQgetvalue(rnd, i, 1),
                PQgetvalue(rnd, i, 0), PQgetvalue(rnd, i, 2 + k));
    }
  }
  if (rnd != NULL)
    fl__drift_put_metrics(f, c);
  PQclear(rnd);
  PQclear(dev);
  if (c != NULL)
    fl__pool_put(s->pool, c);
}

/* The database pool of this replica: what alerts on a starved pool (requests waiting for a
 * connection, deadlines given up) and a pool sized too small for --http-threads look at. */
static void put_pool(FILE *f, fl_pool *pool) {
  if (pool == NULL)
    return;
  fl_pool_stats st;
  fl__pool_stats(pool, &st);
  fprintf(f,
          "# HELP fl_db_pool_connections PostgreSQL connections of this replica's pool.\n"
          "# TYPE fl_db_pool_connections gauge\n"
          "fl_db_pool_connections{state=\"in_use\"} %u\n"
          "fl_db_pool_connections{state=\"idle\"} %u\n"
          "# HELP fl_db_pool_size Size of the pool (--db-pool).\n"
          "# TYPE fl_db_pool_size gauge\nfl_db_pool_size %u\n",
          st.in_use, st.size - st.in_use, st.size);
  put_counter(f, "fl_db_pool_waits_total", "Requests for a connection that found none free.",
              st.waits);
  put_counter(f, "fl_db_pool_timeouts_total",
              "Requests for a connection that gave up at their deadline.", st.timeouts);
  fprintf(f,
          "# HELP fl_db_pool_wait_seconds_total Time spent waiting for a free connection.\n"
          "# TYPE fl_db_pool_wait_seconds_total counter\nfl_db_pool_wait_seconds_total %.6f\n",
          st.wait_s);
}

static int render(fl_srv *s, fl_metrics *m, char **out, size_t *len) {
  char *buf = NULL;
  size_t n = 0;
  FILE *f = open_memstream(&buf, &n);
  if (f == NULL)
    return FL_E_NOMEM;
  put_counters(f, m);
  if (s != NULL) {
    fprintf(f,
            "# HELP fl_build_info The coordinator's version (always 1).\n"
            "# TYPE fl_build_info gauge\nfl_build_info{version=\"%s\"} 1\n",
            FL_VERSION_STRING);
    put_process(f);
    put_pool(f, s->pool); /* before put_fleet takes a connection of its own */
    put_fleet(f, s);
  }
  if (fclose(f) != 0) {
    free(buf);
    return FL_E_NOMEM;
  }
  *out = buf;
  *len = n;
  return FL_OK;
}

int fl__metrics_render_all(fl_srv *s, char **out, size_t *len) {
  return render(s, s->metrics, out, len);
}
