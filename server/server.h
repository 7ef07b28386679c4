/*
 * The coordinator's shared context and the interfaces between its modules.
 *
 * One fl_srv exists per process. Modules (folders as in docs/HACKING.md): config.c (flags,
 * environment), slog.c (structured log lines), store/ (store_pg.c connection pool,
 * migrations.c schema), http/ (http.c MHD plumbing and routing, metrics.c Prometheus), auth/
 * (device signatures, nonces, admin bearer tokens), device/ (device endpoints, uploads), admin/
 * (JSON admin endpoints), rounds/ (plan.c training plans, aggregate.c streaming accumulator and
 * group commit, rounds.c assignment and deadlines, close.c closing, optimizer.c server
 * optimizers), registry/ (models.c model cache and version storage, rollouts.c).
 */
#ifndef FL__SERVER_H
#define FL__SERVER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "crypto.h"
#include "fl/alloc.h"
#include "fl/err.h"
#include "model.h"

/* ----- configuration (config.c) ------------------------------------------------------------ */

typedef struct fl_config {
  const char *database_url;     /* libpq conninfo or URI; "" = libpq's PG* environment */
  const char *listen_host;      /* numeric IPv4 address */
  uint16_t port;
  const char *tls_cert;         /* PEM paths; both or neither */
  const char *tls_key;
  const char *signing_key;      /* PKCS#8 PEM; created (0600) when missing */
  const char *replica_id;       /* name of this process in partial aggregates and logs */
  const char *admin_token;      /* bootstrap admin token (FL_ADMIN_TOKEN) */
  const char *admin_token_file; /* or read from this file (FL_ADMIN_TOKEN_FILE) */
  size_t max_body;              /* bytes of one request body */
  unsigned max_connections;
  unsigned conn_timeout_s;
  unsigned db_pool_size;
  int64_t ts_window_ms;         /* accepted |now - request timestamp| */
  unsigned commit_interval_ms;  /* group commit: wait this long to gather a batch */
  unsigned tick_ms;             /* round deadline / close check period */
  int64_t checkin_interval_ms;  /* pace steering base for devices that are not selected */
  uint64_t max_samples;         /* upper bound of an update's sample_count */
  int log_level;                /* fl_log_level */
} fl_config;

/* Parses argv and the environment into *cfg. Returns 0 to run, 1 when --help/--version was
 * printed, -1 on a usage error (message printed to stderr). Strings point into argv/environ. */
int fl__config_parse(fl_config *cfg, int argc, char **argv);

/* ----- structured logs (slog.c) ------------------------------------------------------------ */

/* One line per event on stderr: ts=<RFC 3339 ms> level=<l> event=<name> key=value ...
 * Callers pass key=value pairs in fmt; values with spaces are quoted by the caller. */
void fl__slog_init(int level, const char *replica_id);
void fl__slog(fl_log_level level, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* ----- metrics (metrics.c) ----------------------------------------------------------------- */

typedef struct fl_metrics fl_metrics;
int fl__metrics_new(fl_metrics **out);
void fl__metrics_free(fl_metrics *m);
void fl__metrics_update_accepted(fl_metrics *m, uint64_t bytes);
void fl__metrics_update_refused(fl_metrics *m, const char *reason);
void fl__metrics_round(fl_metrics *m, bool closed); /* closed or abandoned */
void fl__metrics_request(fl_metrics *m, const char *route, int status, double seconds);
void fl__metrics_commit(fl_metrics *m, size_t batch, double seconds);
/* Prometheus text exposition; *out is malloc'ed. */
int fl__metrics_render(fl_metrics *m, char **out, size_t *len);

/* ----- the process --------------------------------------------------------------------------- */

typedef struct fl_pool fl_pool;
typedef struct fl_agg fl_agg;
typedef struct fl_rounds fl_rounds;
typedef struct fl_models fl_models;
typedef struct fl_http fl_http;

typedef struct fl_srv {
  fl_config cfg;
  fl_pool *pool;
  fl_key *key;                      /* the coordinator's signing key */
  uint8_t pub[FL_PUBKEY_LEN];
  fl_metrics *metrics;
  fl_models *models;
  fl_agg *agg;
  fl_rounds *rounds;
  fl_http *http;
  atomic_bool ready;                /* /readyz: database reachable and threads running */
} fl_srv;

/* Milliseconds since the Unix epoch, wall clock. */
int64_t fl__now_ms(void);
/* Monotonic seconds, for durations. */
double fl__mono_s(void);

#endif
