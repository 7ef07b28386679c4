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
#include <sys/socket.h>

#include "crypto.h"
#include "fl/alloc.h"
#include "fl/err.h"
#include "model.h"

/* ----- configuration (config.c) ------------------------------------------------------------ */

typedef struct fl_config {
  const char *database_url; /* libpq conninfo or URI; "" = libpq's PG* environment */
  const char *listen_host;  /* host name, IPv4 or IPv6 address (without brackets) */
  uint16_t port;
  struct sockaddr_storage listen_addr; /* listen_host resolved by fl__config_check */
  socklen_t listen_addr_len;
  const char *tls_cert; /* PEM paths; both or neither */
  const char *tls_key;
  const char *signing_key;      /* PKCS#8 PEM; created (0600) when missing */
  const char *replica_id;       /* name of this process in partial aggregates and logs */
  const char *admin_token;      /* bootstrap admin token (FL_ADMIN_TOKEN) */
  const char *admin_token_file; /* or read from this file (FL_ADMIN_TOKEN_FILE) */
  /* The bootstrap token that applies (fl__config_check: FL_ADMIN_TOKEN, else the file's first
   * line, checked by fl__token_strength); NULL when none is configured. */
  const char *bootstrap_token;
  const char *admin_token_out; /* a generated bootstrap token goes here (0600) */
  const char *ui_dir;          /* the dashboard's files; NULL: beside the executable (ui.c) */
  size_t max_body;             /* bytes of one request body */
  unsigned max_connections;
  unsigned max_conns_per_ip; /* 0: no per-address limit */
  unsigned http_threads;     /* event-loop threads; 0: CPUs, 4 <= n <= pool - 4 */
  unsigned conn_timeout_s;   /* idle: no byte in either direction (MHD's own timeout) */
  unsigned header_timeout_s; /* the whole request header, however slowly it trickles */
  unsigned body_timeout_s;   /* window over which a body must average min_body_rate */
  uint64_t min_body_rate;    /* bytes per second; 0: no body rate check */
  unsigned db_pool_size;
  int64_t ts_window_ms;        /* accepted |now - request timestamp| */
  unsigned commit_interval_ms; /* group commit: wait this long to gather a batch */
  bool commit_auto;            /* no --commit-interval: uploads' batches sized by their rate */
  unsigned tick_ms;            /* round deadline / close check period */
  int64_t checkin_interval_ms; /* pace steering base for devices that are not selected */
  uint64_t max_samples;        /* upper bound of an update's sample_count */
  int log_level;               /* fl_log_level */
  bool log_json;               /* --log-format=json: one JSON object per line (slog.c) */
  bool reuse_port;             /* SO_REUSEPORT on the listening socket (opt-in) */
  int64_t nonce_margin_ms;     /* nonces are kept 2 x ts_window_ms + this */
  struct {                     /* --metrics-listen: /metrics, /healthz, /readyz only */
    bool on;
    const char *host;
    uint16_t port;
    struct sockaddr_storage addr;
    socklen_t addr_len;
  } metrics;
} fl_config;

/* Bounds of a bootstrap admin token supplied by the operator (docs/API.md section 3). */
#define FL_TOKEN_MIN_LEN 32
#define FL_TOKEN_MAX_LEN 512
/* 0 when tok is acceptable as a bootstrap admin token: 32..512 printable ASCII characters
 * without spaces, at least 8 distinct ones and about 80 bits by their frequencies. Else -1
 * with why the token is refused in why (never the token itself). */
int fl__token_strength(const char *tok, char *why, size_t n);

/* Parses argv and the environment into *cfg. Returns 0 to run, 1 when --help/--version was
 * printed, -1 on a usage error (message printed to stderr). Strings point into argv/environ. */
int fl__config_parse(fl_config *cfg, int argc, char **argv);
/* Checks what start-up would otherwise find only after connecting to the database: the listen
 * address resolves (its first address is kept in cfg->listen_addr) and can be bound, the TLS
 * certificate and key are readable PEM and belong together, the signing key is readable (or
 * can be created) and the admin token file is readable. Returns 0, or -1 with a message that
 * names the option and the file or value in why. */
int fl__config_check(fl_config *cfg, char *why, size_t n);
/* "host:port", "[v6]:port" of the listen address, for logs; static storage. */
const char *fl__config_listen_text(const fl_config *cfg);
/* The same for --metrics-listen ("" when it is not set). */
const char *fl__config_metrics_text(const fl_config *cfg);

/* ----- structured logs (slog.c) ------------------------------------------------------------ */

/* One line per event on stderr: ts=<RFC 3339 ms> level=<l> event=<name> key=value ...
 * Callers pass key=value pairs in fmt; a value that is not a number or a fixed word goes
 * through fl__slog_str: "error=%s", fl__slog_str(PQerrorMessage(c)). Control characters that
 * reach fl__slog unescaped become spaces, so that an event stays one line. */
/* json: each line becomes {"ts":..,"level":..,"replica":..,"event":..,"key":"value",...}, the
 * same pairs with every value a JSON string (for log shippers that parse JSON, not logfmt). */
void fl__slog_init(int level, const char *replica_id, bool json);
void fl__slog(fl_log_level level, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Longest value fl__slog_str returns (bytes, without the terminator); longer ones are cut and
 * end in "...". */
#define FL_SLOG_VALUE_MAX 1000
/* s as a logfmt value: as it is when it has no space, quote, '=', backslash or control
 * character, else in double quotes with \" \\ \n \r \t and \u00XX escapes. Trailing
 * newlines are dropped (libpq's messages end in one); NULL is "". The result is thread-local
 * storage valid until the same thread's fourth next call: up to four values per line.
 * fl__slog_strn reads at most n bytes of s. */
const char *fl__slog_str(const char *s);
const char *fl__slog_strn(const char *s, size_t n);

/* ----- metrics (metrics.c) ----------------------------------------------------------------- */

typedef struct fl_metrics fl_metrics;
int fl__metrics_new(fl_metrics **out);
void fl__metrics_free(fl_metrics *m);
void fl__metrics_update_accepted(fl_metrics *m, uint64_t bytes);
void fl__metrics_update_refused(fl_metrics *m, const char *reason);
void fl__metrics_round(fl_metrics *m, bool closed); /* closed or abandoned */
void fl__metrics_request(fl_metrics *m, const char *route, int status, double seconds);
void fl__metrics_commit(fl_metrics *m, size_t batch, double seconds);
/* Connections open now, and closed at their header deadline / for a slow body since the start
 * (http/conns.c sets them four times a second). */
void fl__metrics_connections(fl_metrics *m, uint64_t open, uint64_t closed_header,
                             uint64_t closed_body);
struct fl_srv;
/* The counters and the gauges of a scrape: fl_build_info, process_*, and the fleet's devices
 * and open rounds from the database (metrics.c), as Prometheus text; *out is malloc'ed. */
int fl__metrics_render_all(struct fl_srv *s, char **out, size_t *len);

/* ----- the process --------------------------------------------------------------------------- */

typedef struct fl_pool fl_pool;
typedef struct fl_agg fl_agg;
typedef struct fl_rounds fl_rounds;
typedef struct fl_models fl_models;
typedef struct fl_http fl_http;
typedef struct fl_nonces fl_nonces;
typedef struct fl_round_cache fl_round_cache;
typedef struct fl_keys fl_keys;

typedef struct fl_srv {
  fl_config cfg;
  fl_pool *pool;
  fl_key *key; /* the coordinator's signing key */
  uint8_t pub[FL_PUBKEY_LEN];
  fl_metrics *metrics;
  fl_models *models;
  fl_agg *agg;
  fl_rounds *rounds;
  fl_http *http;
  fl_nonces *nonces;           /* uploads' nonces in flight (auth/nonce.h) */
  fl_round_cache *round_cache; /* what never changes about a round (rounds/round_cache.h) */
  fl_keys *keys;               /* device public keys by id (auth/keys.h) */
  atomic_bool ready;           /* /readyz: database reachable and threads running */
  /* Monotonic ms of the last body bytes of POST /v1/updates this process received: a secure-
   * aggregation masked phase does not end as quiet while masked inputs are still streaming in
   * (secagg/phases.c); 0 none yet. */
  _Atomic int64_t upload_rx_ms;
} fl_srv;

/* Milliseconds since the Unix epoch, wall clock. */
int64_t fl__now_ms(void);
/* Monotonic seconds, for durations. */
double fl__mono_s(void);

#endif
