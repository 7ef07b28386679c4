/*
 * Connection pool. Connections are opened on first use and reset when libpq reports them
 * broken or the server has ended them while they were idle, so the coordinator rides out a
 * database restart: requests during the outage get "unavailable" and the next ones reconnect.
 */
#include "store/store_pg.h"

#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <libpq-events.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mem.h"
#include "server.h"

struct fl_pool {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  char *conninfo;
  unsigned size, nfree;
  PGconn **free_list; /* entries may be NULL: not opened yet */
  /* For /metrics (fl__pool_stats): takes that found no free connection, the time they waited,
   * and those that gave up at their deadline. */
  uint64_t waits, timeouts;
  double wait_s;
};

/* The statements prepared on one connection (fl__pg_exec_prep), attached to it with libpq's
 * event procedures: libpq tells us when a reset has dropped them with the session. */
#define PREP_MAX 32

typedef struct conn_data {
  unsigned n;
  const char *names[PREP_MAX];
} conn_data;

static int conn_event(PGEventId id, void *info, void *pass) {
  (void)pass;
  if (id == PGEVT_REGISTER) {
    PGEventRegister *e = info;
    conn_data *d = calloc(1, sizeof *d);
    return d != NULL && PQsetInstanceData(e->conn, conn_event, d) ? 1 : 0;
  }
  if (id == PGEVT_CONNRESET) {
    conn_data *d = PQinstanceData(((PGEventConnReset *)info)->conn, conn_event);
    if (d != NULL)
      d->n = 0;
  } else if (id == PGEVT_CONNDESTROY) {
    free(PQinstanceData(((PGEventConnDestroy *)info)->conn, conn_event));
  }
  return 1;
}

/* libpq prints notices (e.g. "relation already exists, skipping") to stderr by default. */
static void quiet_notice(void *arg, const char *msg) {
  (void)arg;
  (void)msg;
}

static PGconn *open_conn(const char *conninfo) {
  PGconn *c = PQconnectdb(conninfo);
  if (c == NULL)
    return NULL;
  if (PQstatus(c) != CONNECTION_OK) {
    fl__slog(FL_LOG_WARN, "db_connect_failed", "error=%s", fl__slog_str(PQerrorMessage(c)));
    PQfinish(c);
    return NULL;
  }
  PQsetNoticeProcessor(c, quiet_notice, NULL);
  /* Without it fl__pg_exec_prep only loses its speed (it falls back to PQexecParams). */
  PQregisterEventProc(c, conn_event, "fl-prepared", NULL);
  return c;
}

int fl__pool_new(fl_pool **out, const char *conninfo, unsigned size) {
  fl_pool *p = fl__calloc(NULL, 1, sizeof *p);
  if (p == NULL)
    return FL_E_NOMEM;
  p->conninfo = fl__strdup(NULL, conninfo);
  p->free_list = fl__calloc(NULL, size, sizeof *p->free_list);
  if (p->conninfo == NULL || p->free_list == NULL)
    goto fail_free;
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->cv, NULL);
  p->size = p->nfree = size;
  p->free_list[0] = open_conn(conninfo);
  if (p->free_list[0] == NULL) {
    fl__pool_free(p);
    return FL_E_DB;
  }
  *out = p;
  return FL_OK;
fail_free:
  fl__free(NULL, p->free_list);
  fl__free(NULL, p->conninfo);
  fl__free(NULL, p);
  return FL_E_NOMEM;
}

void fl__pool_free(fl_pool *p) {
  if (p == NULL)
    return;
  for (unsigned i = 0; i < p->nfree; i++)
    if (p->free_list[i] != NULL)
      PQfinish(p->free_list[i]);
  pthread_mutex_destroy(&p->mu);
  pthread_cond_destroy(&p->cv);
  fl__free(NULL, p->free_list);
  fl__free(NULL, p->conninfo);
  fl__free(NULL, p);
}

/* A free slot within the deadline (NULL deadline: no limit). 0 taken, -1 timed out. */
static int take(fl_pool *p, const struct timespec *deadline, PGconn **out) {
  int rc = 0;
  struct timespec t0 = {0}, t1;
  pthread_mutex_lock(&p->mu);
  if (p->nfree == 0) {
    p->waits++;
    clock_gettime(CLOCK_MONOTONIC, &t0);
  }
  while (p->nfree == 0 && rc == 0) {
    if (deadline == NULL)
      pthread_cond_wait(&p->cv, &p->mu);
    else if (pthread_cond_timedwait(&p->cv, &p->mu, deadline) == ETIMEDOUT && p->nfree == 0)
      rc = -1;
  }
  if (t0.tv_sec != 0 || t0.tv_nsec != 0) {
    clock_gettime(CLOCK_MONOTONIC, &t1);
    p->wait_s += (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
  }
  if (rc == 0)
    *out = p->free_list[--p->nfree];
  else
    p->timeouts++;
  pthread_mutex_unlock(&p->mu);
  return rc;
}

/* Whether the server has ended an idle connection. libpq learns that a session is gone only
 * when it next reads from it, so a connection that sat in the pool through a restart of
 * PostgreSQL (or pg_terminate_backend, idle_session_timeout) still says CONNECTION_OK and the
 * request it is handed fails with 503. An idle session is sent nothing unasked (the pool uses
 * no LISTEN, and every statement is read to its end): input waiting on the socket is the
 * server's goodbye, an ErrorResponse and the close. One poll without waiting per take. */
static bool ended_by_server(PGconn *c) {
  struct pollfd pfd = {.fd = PQsocket(c), .events = POLLIN};
  return pfd.fd < 0 || poll(&pfd, 1, 0) != 0;
}

/* A taken slot made usable: reset when broken or ended by the server, opened when empty;
 * handed back on failure. */
static PGconn *ready(fl_pool *p, PGconn *c) {
  if (c != NULL && (PQstatus(c) != CONNECTION_OK || ended_by_server(c))) {
    PQreset(c);
    if (PQstatus(c) == CONNECTION_OK)
      fl__slog(FL_LOG_INFO, "db_reconnected", NULL);
  }
  if (c == NULL)
    c = open_conn(p->conninfo);
  if (c != NULL && PQstatus(c) == CONNECTION_OK)
    return c;
  /* Hand the slot back (as a broken or empty connection) so the pool keeps its size. */
  fl__pool_put(p, c);
  return NULL;
}

PGconn *fl__pool_get(fl_pool *p) {
  PGconn *c = NULL;
  take(p, NULL, &c);
  return ready(p, c);
}

PGconn *fl__pool_get_timed(fl_pool *p, unsigned wait_ms) {
  struct timespec dl;
  PGconn *c = NULL;
  clock_gettime(CLOCK_REALTIME, &dl);
  dl.tv_sec += wait_ms / 1000;
  dl.tv_nsec += (long)(wait_ms % 1000) * 1000000L;
  if (dl.tv_nsec >= 1000000000L) {
    dl.tv_sec++;
    dl.tv_nsec -= 1000000000L;
  }
  return take(p, &dl, &c) ? NULL : ready(p, c);
}

void fl__pool_stats(fl_pool *p, fl_pool_stats *out) {
  pthread_mutex_lock(&p->mu);
  *out = (fl_pool_stats){.size = p->size,
                         .in_use = p->size - p->nfree,
                         .waits = p->waits,
                         .timeouts = p->timeouts,
                         .wait_s = p->wait_s};
  pthread_mutex_unlock(&p->mu);
}

void fl__pool_put(fl_pool *p, PGconn *c) {
  if (c != NULL && PQstatus(c) == CONNECTION_OK && PQtransactionStatus(c) != PQTRANS_IDLE)
    fl__pg_cmd(c, "ROLLBACK");
  pthread_mutex_lock(&p->mu);
  p->free_list[p->nfree++] = c;
  pthread_cond_signal(&p->cv);
  pthread_mutex_unlock(&p->mu);
}

void fl__pgp_init(fl_pgp *p) {
  memset(p, 0, sizeof *p);
}

static void push(fl_pgp *p, const char *v, int len, int fmt) {
  if (p->n >= FL_PG_MAXP)
    abort(); /* a programming error: the statement tables are fixed */
  p->v[p->n] = v;
  p->len[p->n] = len;
  p->fmt[p->n] = fmt;
  p->n++;
}

void fl__pgp_u64(fl_pgp *p, uint64_t v) {
  snprintf(p->buf[p->n], sizeof p->buf[0], "%" PRIu64, v);
  push(p, p->buf[p->n], 0, 0);
}

void fl__pgp_i64(fl_pgp *p, int64_t v) {
  snprintf(p->buf[p->n], sizeof p->buf[0], "%" PRId64, v);
  push(p, p->buf[p->n], 0, 0);
}

void fl__pgp_f64(fl_pgp *p, double v) {
  snprintf(p->buf[p->n], sizeof p->buf[0], "%.17g", v);
  push(p, p->buf[p->n], 0, 0);
}

void fl__pgp_text(fl_pgp *p, const char *s) {
  push(p, s, 0, 0);
}

void fl__pgp_bin(fl_pgp *p, const void *data, size_t len) {
  push(p, data ? data : "", (int)len, 1);
}

/* One execution: prepared under `name` (prepared first if this session has not yet), or
 * PQexecParams when name is NULL or the connection carries no record of its statements. */
static PGresult *exec_once(PGconn *c, const char *name, const char *sql, const fl_pgp *p,
                           bool binary) {
  conn_data *d = name != NULL ? PQinstanceData(c, conn_event) : NULL;
  bool have = false;
  for (unsigned i = 0; d != NULL && i < d->n && !have; i++)
    have = strcmp(d->names[i], name) == 0;
  if (d == NULL || (!have && d->n == PREP_MAX))
    return PQexecParams(c, sql, p->n, NULL, p->v, p->len, p->fmt, binary ? 1 : 0);
  if (!have) {
    PGresult *r = PQprepare(c, name, sql, p->n, NULL);
    if (PQresultStatus(r) != PGRES_COMMAND_OK)
      return r; /* the failure is reported like an execution's */
    PQclear(r);
    d->names[d->n++] = name;
  }
  return PQexecPrepared(c, name, p->n, p->v, p->len, p->fmt, binary ? 1 : 0);
}

static PGresult *exec_checked(PGconn *c, const char *name, const char *sql, const fl_pgp *p,
                              bool binary, char sqlstate[6]) {
  static const fl_pgp none;
  if (p == NULL)
    p = &none;
  if (sqlstate)
    sqlstate[0] = '\0';
  bool idle = PQtransactionStatus(c) == PQTRANS_IDLE;
  PGresult *r = exec_once(c, name, sql, p, binary);
  ExecStatusType st = PQresultStatus(r);
  if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK)
    return r;
  if (idle && PQstatus(c) == CONNECTION_BAD) {
    /* The server went away between statements (a restart, a terminated backend). Outside a
     * transaction nothing of ours was lost with it: reconnect and run the statement once more,
     * so callers see a database restart only as latency. */
    PQclear(r);
    PQreset(c);
    fl__slog(FL_LOG_INFO, "db_reconnected", "ok=%s", PQstatus(c) == CONNECTION_OK ? "yes" : "no");
    r = exec_once(c, name, sql, p, binary);
    st = PQresultStatus(r);
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK)
      return r;
  }
  const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
  if (sqlstate && state)
    snprintf(sqlstate, 6, "%s", state);
  /* Unique violations are expected outcomes for some statements; callers log them. */
  if (state == NULL || strcmp(state, "23505") != 0) {
    const char *msg = r ? PQresultErrorMessage(r) : PQerrorMessage(c);
    fl__slog(FL_LOG_WARN, "db_error", "sqlstate=%s error=%s sql=%s", state ? state : "-",
             fl__slog_str(msg), fl__slog_strn(sql, 60));
  }
  PQclear(r);
  return NULL;
}

PGresult *fl__pg_exec(PGconn *c, const char *sql, const fl_pgp *p, bool binary, char sqlstate[6]) {
  return exec_checked(c, NULL, sql, p, binary, sqlstate);
}

PGresult *fl__pg_exec_prep(PGconn *c, const char *name, const char *sql, const fl_pgp *p,
                           bool binary, char sqlstate[6]) {
  return exec_checked(c, name, sql, p, binary, sqlstate);
}

int fl__pg_cmd(PGconn *c, const char *sql) {
  PGresult *r = fl__pg_exec(c, sql, NULL, false, NULL);
  if (r == NULL)
    return -1;
  PQclear(r);
  return 0;
}

uint64_t fl__pg_u64(const PGresult *r, int row, int col) {
  return PQgetisnull(r, row, col) ? 0 : strtoull(PQgetvalue(r, row, col), NULL, 10);
}

int64_t fl__pg_i64(const PGresult *r, int row, int col) {
  return PQgetisnull(r, row, col) ? 0 : strtoll(PQgetvalue(r, row, col), NULL, 10);
}

double fl__pg_f64(const PGresult *r, int row, int col) {
  return PQgetisnull(r, row, col) ? 0.0 : strtod(PQgetvalue(r, row, col), NULL);
}

int64_t fl__pg_bin_i64(const PGresult *r, int row, int col) {
  uint64_t v;
  if (PQgetisnull(r, row, col) || PQgetlength(r, row, col) != 8)
    return 0;
  memcpy(&v, PQgetvalue(r, row, col), 8);
  return (int64_t)be64toh(v);
}

int32_t fl__pg_bin_i32(const PGresult *r, int row, int col) {
  uint32_t v;
  if (PQgetisnull(r, row, col) || PQgetlength(r, row, col) != 4)
    return 0;
  memcpy(&v, PQgetvalue(r, row, col), 4);
  return (int32_t)be32toh(v);
}

double fl__pg_bin_f64(const PGresult *r, int row, int col) {
  uint64_t v;
  double d;
  if (PQgetisnull(r, row, col) || PQgetlength(r, row, col) != 8)
    return 0.0;
  memcpy(&v, PQgetvalue(r, row, col), 8);
  v = be64toh(v);
  memcpy(&d, &v, 8);
  return d;
}
