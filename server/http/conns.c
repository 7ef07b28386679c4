/*
 * Header and body deadlines of connections; see conns.h for the phases and the reaper.
 *
 * The phase fields are atomics written by the connection's event-loop thread without a lock
 * (a body piece costs two relaxed stores, not a lock shared by every connection); the table
 * lock guards only the list, taken at accept and close and by the reaper's scan. A reaper
 * that reads a phase change half done sees the newer start time with the older phase at worst,
 * which only makes it more lenient for one pass.
 */
#include "http/conns.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>

enum { PH_HEADER, PH_BODY, PH_BUSY };

#define REAP_PERIOD_MS 250

struct fl_conn {
  int fd;
  atomic_int phase;
  atomic_llong since_ms; /* when the phase began (monotonic) */
  atomic_ullong body;    /* bytes of the body so far */
  atomic_uint epoch;     /* bumped at every phase change */
  /* The reaper's window over a body phase (the reaper's alone). */
  unsigned r_epoch;
  int64_t r_win_ms;
  uint64_t r_win_body;
  bool shut; /* shut down by the reaper: MHD closes it next */
  fl_conn *prev, *next;
};

struct fl_conns {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  fl_conn *head;
  uint64_t open;
  bool stop;
  pthread_t thread;
  int64_t header_ms, body_ms;
  uint64_t min_rate;
  uint64_t closed_header, closed_body; /* the reaper's */
  fl_metrics *metrics;
};

static int64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void set_phase(fl_conn *c, int phase) {
  atomic_store_explicit(&c->since_ms, mono_ms(), memory_order_relaxed);
  atomic_store_explicit(&c->body, 0, memory_order_relaxed);
  atomic_fetch_add_explicit(&c->epoch, 1, memory_order_relaxed);
  atomic_store_explicit(&c->phase, phase, memory_order_release);
}

void fl__conns_notify(void *cls, struct MHD_Connection *mc, void **socket_context,
                      enum MHD_ConnectionNotificationCode code) {
  fl_conns *t = cls;
  fl_conn *c = *socket_context;
  if (code == MHD_CONNECTION_NOTIFY_STARTED) {
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(mc, MHD_CONNECTION_INFO_CONNECTION_FD);
    c = ci != NULL ? calloc(1, sizeof *c) : NULL;
    *socket_context = c;
    if (c == NULL)
      return; /* untracked: only MHD's idle timeout applies to it */
    c->fd = ci->connect_fd;
    set_phase(c, PH_HEADER);
    pthread_mutex_lock(&t->mu);
    c->next = t->head;
    if (t->head != NULL)
      t->head->prev = c;
    t->head = c;
    t->open++;
    pthread_mutex_unlock(&t->mu);
    return;
  }
  if (c == NULL)
    return;
  pthread_mutex_lock(&t->mu);
  if (c->prev != NULL)
    c->prev->next = c->next;
  else
    t->head = c->next;
  if (c->next != NULL)
    c->next->prev = c->prev;
  t->open--;
  pthread_mutex_unlock(&t->mu);
  free(c);
  *socket_context = NULL;
}

fl_conn *fl__conn_of(struct MHD_Connection *mc) {
  const union MHD_ConnectionInfo *ci =
      MHD_get_connection_info(mc, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
  return ci != NULL ? ci->socket_context : NULL;
}

void fl__conn_header_done(fl_conn *c, bool body_follows) {
  if (c != NULL)
    set_phase(c, body_follows ? PH_BODY : PH_BUSY);
}

void fl__conn_body(fl_conn *c, size_t n) {
  if (c != NULL)
    atomic_fetch_add_explicit(&c->body, n, memory_order_relaxed);
}

void fl__conn_busy(fl_conn *c) {
  if (c != NULL && atomic_load_explicit(&c->phase, memory_order_relaxed) != PH_BUSY)
    set_phase(c, PH_BUSY);
}

void fl__conn_idle(fl_conn *c) {
  if (c != NULL)
    set_phase(c, PH_HEADER);
}

/* Whether c is past a deadline at `now`; 1 header, 2 body, 0 neither. Updates the body
 * window. */
static int past_deadline(fl_conns *t, fl_conn *c, int64_t now) {
  int phase = atomic_load_explicit(&c->phase, memory_order_acquire);
  int64_t since = atomic_load_explicit(&c->since_ms, memory_order_relaxed);
  if (phase == PH_HEADER)
    return now - since >= t->header_ms ? 1 : 0;
  if (phase != PH_BODY || t->min_rate == 0)
    return 0;
  unsigned epoch = atomic_load_explicit(&c->epoch, memory_order_relaxed);
  uint64_t body = atomic_load_explicit(&c->body, memory_order_relaxed);
  if (c->r_epoch != epoch) {
    c->r_epoch = epoch;
    c->r_win_ms = since;
    c->r_win_body = 0;
  }
  if (now - c->r_win_ms < t->body_ms)
    return 0;
  /* A window is over: it must have brought min_rate bytes per second of it. */
  if (body - c->r_win_body < t->min_rate * (uint64_t)(now - c->r_win_ms) / 1000)
    return 2;
  c->r_win_ms = now;
  c->r_win_body = body;
  return 0;
}

static void *reaper(void *arg) {
  fl_conns *t = arg;
  pthread_mutex_lock(&t->mu);
  while (!t->stop) {
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_nsec += REAP_PERIOD_MS * 1000000L;
    if (dl.tv_nsec >= 1000000000L) {
      dl.tv_sec++;
      dl.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(&t->cv, &t->mu, &dl);
    if (t->stop)
      break;
    int64_t now = mono_ms();
    unsigned n_header = 0, n_body = 0;
    for (fl_conn *c = t->head; c != NULL; c = c->next) {
      if (c->shut)
        continue;
      int why = past_deadline(t, c, now);
      if (why == 0)
        continue;
      /* Both directions: the peer's next bytes and MHD's next read see the end at once. */
      shutdown(c->fd, SHUT_RDWR);
      c->shut = true;
      n_header += why == 1;
      n_body += why == 2;
    }
    uint64_t open = t->open;
    pthread_mutex_unlock(&t->mu);
    t->closed_header += n_header;
    t->closed_body += n_body;
    fl__metrics_connections(t->metrics, open, t->closed_header, t->closed_body);
    /* One line per pass, not per connection: under a slowloris flood the log stays readable. */
    if (n_header || n_body)
      fl__slog(FL_LOG_INFO, "connections_closed", "header_deadline=%u body_rate=%u", n_header,
               n_body);
    pthread_mutex_lock(&t->mu);
  }
  pthread_mutex_unlock(&t->mu);
  return NULL;
}

int fl__conns_new(fl_conns **out, const fl_config *cfg, fl_metrics *m) {
  fl_conns *t = calloc(1, sizeof *t);
  if (t == NULL)
    return FL_E_NOMEM;
  pthread_mutex_init(&t->mu, NULL);
  pthread_cond_init(&t->cv, NULL);
  t->header_ms = (int64_t)cfg->header_timeout_s * 1000;
  t->body_ms = (int64_t)cfg->body_timeout_s * 1000;
  t->min_rate = cfg->min_body_rate;
  t->metrics = m;
  if (pthread_create(&t->thread, NULL, reaper, t) != 0) {
    pthread_cond_destroy(&t->cv);
    pthread_mutex_destroy(&t->mu);
    free(t);
    return FL_E_NOMEM;
  }
  *out = t;
  return FL_OK;
}

void fl__conns_free(fl_conns *t) {
  if (t == NULL)
    return;
  pthread_mutex_lock(&t->mu);
  t->stop = true;
  pthread_cond_signal(&t->cv);
  pthread_mutex_unlock(&t->mu);
  pthread_join(t->thread, NULL);
  pthread_cond_destroy(&t->cv);
  pthread_mutex_destroy(&t->mu);
  free(t);
}
