/*
 * Configuration from flags and the environment. A flag wins over its environment variable,
 * which wins over the default. Every option is listed in usage() so that --help is the
 * reference; docs/API.md repeats the table.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fl/version.h"
#include "server.h"

enum {
  OPT_DB = 1000, OPT_LISTEN, OPT_TLS_CERT, OPT_TLS_KEY, OPT_SIGNING_KEY, OPT_REPLICA,
  OPT_MAX_BODY, OPT_MAX_CONN, OPT_TIMEOUT, OPT_POOL, OPT_TS_WINDOW, OPT_COMMIT, OPT_TICK,
  OPT_CHECKIN, OPT_MAX_SAMPLES, OPT_LOG_LEVEL, OPT_HELP, OPT_VERSION
};

/* One table drives getopt, the environment and --help, so that they cannot drift apart. */
typedef struct opt_def {
  const char *name;
  int id;
  const char *env;
  const char *arg;
  const char *help;
} opt_def;

static const opt_def OPTS[] = {
    {"database-url", OPT_DB, "FL_DATABASE_URL", "URL",
     "PostgreSQL conninfo or URI (default: libpq's PG* variables)"},
    {"listen", OPT_LISTEN, "FL_LISTEN", "HOST:PORT", "listen address (default 127.0.0.1:8080)"},
    {"tls-cert", OPT_TLS_CERT, "FL_TLS_CERT", "FILE", "PEM certificate chain; enables HTTPS"},
    {"tls-key", OPT_TLS_KEY, "FL_TLS_KEY", "FILE", "PEM private key for --tls-cert"},
    {"signing-key", OPT_SIGNING_KEY, "FL_SIGNING_KEY", "FILE",
     "Ed25519 PKCS#8 PEM key that signs model versions; created 0600 when missing "
     "(default fl-coordinator-key.pem)"},
    {"replica-id", OPT_REPLICA, "FL_REPLICA_ID", "NAME",
     "name of this replica in logs and partial aggregates (default host:port)"},
    {"max-body", OPT_MAX_BODY, "FL_MAX_BODY", "BYTES", "largest request body (default 64 MiB)"},
    {"max-connections", OPT_MAX_CONN, "FL_MAX_CONNECTIONS", "N",
     "concurrent connections, one thread each (default 256)"},
    {"timeout", OPT_TIMEOUT, "FL_TIMEOUT", "SECONDS", "idle connection timeout (default 30)"},
    {"db-pool", OPT_POOL, "FL_DB_POOL", "N", "PostgreSQL connections (default 8)"},
    {"timestamp-window", OPT_TS_WINDOW, "FL_TIMESTAMP_WINDOW_MS", "MS",
     "accepted clock difference of signed requests (default 300000)"},
    {"commit-interval", OPT_COMMIT, "FL_COMMIT_INTERVAL_MS", "MS",
     "group commit gathering time (default 2)"},
    {"tick", OPT_TICK, "FL_TICK_MS", "MS", "round close / deadline check period (default 200)"},
    {"checkin-interval", OPT_CHECKIN, "FL_CHECKIN_INTERVAL_MS", "MS",
     "base retry window for devices that are not selected (default 10000)"},
    {"max-samples", OPT_MAX_SAMPLES, "FL_MAX_SAMPLES", "N",
     "largest sample_count of one update (default 1000000)"},
    {"log-level", OPT_LOG_LEVEL, "FL_LOG_LEVEL", "LEVEL", "error, warn, info or debug (default info)"},
    {"help", OPT_HELP, NULL, NULL, "print this help"},
    {"version", OPT_VERSION, NULL, NULL, "print the version"},
};
#define N_OPTS (sizeof OPTS / sizeof OPTS[0])

static void usage(FILE *f) {
  fprintf(f, "usage: fl-coordinator [options]\n\n"
             "fleetlearn coordinator: device API (protobuf) and admin API (JSON) over HTTP.\n"
             "Bootstrap admin token: FL_ADMIN_TOKEN or the file named by FL_ADMIN_TOKEN_FILE;\n"
             "when neither is set and no admin token exists, one is generated and printed once.\n\n");
  for (size_t i = 0; i < N_OPTS; i++) {
    char left[64];
    snprintf(left, sizeof left, "--%s%s%s", OPTS[i].name, OPTS[i].arg ? "=" : "",
             OPTS[i].arg ? OPTS[i].arg : "");
    fprintf(f, "  %-30s %s", left, OPTS[i].help);
    if (OPTS[i].env)
      fprintf(f, " [env %s]", OPTS[i].env);
    fputc('\n', f);
  }
}

static int parse_u64(const char *s, uint64_t lo, uint64_t hi, uint64_t *out) {
  char *end;
  errno = 0;
  if (s == NULL || *s == '\0' || *s == '-')
    return -1;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno != 0 || *end != '\0' || v < lo || v > hi)
    return -1;
  *out = v;
  return 0;
}

static int parse_listen(fl_config *cfg, const char *s) {
  static char host[64];
  const char *colon = strrchr(s, ':');
  uint64_t port;
  if (colon == NULL || (size_t)(colon - s) >= sizeof host || parse_u64(colon + 1, 0, 65535, &port))
    return -1;
  memcpy(host, s, (size_t)(colon - s));
  host[colon - s] = '\0';
  cfg->listen_host = host[0] ? host : "0.0.0.0";
  cfg->port = (uint16_t)port;
  return 0;
}

static int parse_level(const char *s, int *out) {
  static const char *names[] = {"error", "warn", "info", "debug"};
  for (int i = 0; i < 4; i++)
    if (strcmp(s, names[i]) == 0) {
      *out = i;
      return 0;
    }
  return -1;
}

/* Applies one option value; returns -1 when it does not parse. */
static int apply(fl_config *cfg, int id, const char *v) {
  uint64_t n;
  switch (id) {
  case OPT_DB: cfg->database_url = v; return 0;
  case OPT_LISTEN: return parse_listen(cfg, v);
  case OPT_TLS_CERT: cfg->tls_cert = v; return 0;
  case OPT_TLS_KEY: cfg->tls_key = v; return 0;
  case OPT_SIGNING_KEY: cfg->signing_key = v; return 0;
  case OPT_REPLICA: cfg->replica_id = v; return 0;
  case OPT_LOG_LEVEL: return parse_level(v, &cfg->log_level);
  default: break;
  }
  if (parse_u64(v, 0, INT64_MAX, &n))
    return -1;
  switch (id) {
  case OPT_MAX_BODY: cfg->max_body = n; return n >= 1024 ? 0 : -1;
  case OPT_MAX_CONN: cfg->max_connections = (unsigned)n; return n >= 1 && n <= 65536 ? 0 : -1;
  case OPT_TIMEOUT: cfg->conn_timeout_s = (unsigned)n; return n <= 3600 ? 0 : -1;
  case OPT_POOL: cfg->db_pool_size = (unsigned)n; return n >= 2 && n <= 256 ? 0 : -1;
  case OPT_TS_WINDOW: cfg->ts_window_ms = (int64_t)n; return n >= 1000 ? 0 : -1;
  case OPT_COMMIT: cfg->commit_interval_ms = (unsigned)n; return n <= 1000 ? 0 : -1;
  case OPT_TICK: cfg->tick_ms = (unsigned)n; return n >= 10 && n <= 60000 ? 0 : -1;
  case OPT_CHECKIN: cfg->checkin_interval_ms = (int64_t)n; return n >= 100 ? 0 : -1;
  case OPT_MAX_SAMPLES: cfg->max_samples = n; return n >= 1 ? 0 : -1;
  default: return -1;
  }
}

static void set_defaults(fl_config *cfg) {
  memset(cfg, 0, sizeof *cfg);
  cfg->database_url = "";
  cfg->listen_host = "127.0.0.1";
  cfg->port = 8080;
  cfg->signing_key = "fl-coordinator-key.pem";
  cfg->max_body = 64u << 20;
  cfg->max_connections = 256;
  cfg->conn_timeout_s = 30;
  cfg->db_pool_size = 8;
  cfg->ts_window_ms = 300000;
  cfg->commit_interval_ms = 2;
  cfg->tick_ms = 200;
  cfg->checkin_interval_ms = 10000;
  cfg->max_samples = 1000000;
  cfg->log_level = FL_LOG_INFO;
}

int fl__config_parse(fl_config *cfg, int argc, char **argv) {
  struct option lopts[N_OPTS + 1];
  set_defaults(cfg);
  for (size_t i = 0; i < N_OPTS; i++) {
    lopts[i] = (struct option){OPTS[i].name, OPTS[i].arg ? required_argument : no_argument, NULL,
                               OPTS[i].id};
    const char *e = OPTS[i].env ? getenv(OPTS[i].env) : NULL;
    if (e != NULL && *e != '\0' && apply(cfg, OPTS[i].id, e)) {
      fprintf(stderr, "fl-coordinator: bad value in %s\n", OPTS[i].env);
      return -1;
    }
  }
  memset(&lopts[N_OPTS], 0, sizeof lopts[N_OPTS]);
  cfg->admin_token = getenv("FL_ADMIN_TOKEN");
  cfg->admin_token_file = getenv("FL_ADMIN_TOKEN_FILE");
  optind = 1;
  for (;;) {
    int c = getopt_long(argc, argv, "", lopts, NULL);
    if (c == -1)
      break;
    if (c == OPT_HELP) {
      usage(stdout);
      return 1;
    }
    if (c == OPT_VERSION) {
      printf("fl-coordinator " FL_VERSION_STRING "\n");
      return 1;
    }
    if (c == '?' || apply(cfg, c, optarg)) {
      if (c != '?')
        fprintf(stderr, "fl-coordinator: bad value in %s\n", argv[optind - 1]);
      usage(stderr);
      return -1;
    }
  }
  if (optind != argc || (cfg->tls_cert == NULL) != (cfg->tls_key == NULL)) {
    fprintf(stderr, "fl-coordinator: unexpected argument or --tls-cert without --tls-key\n");
    return -1;
  }
  if (cfg->replica_id == NULL) {
    static char rid[128];
    snprintf(rid, sizeof rid, "%s:%u", cfg->listen_host, (unsigned)cfg->port);
    cfg->replica_id = rid;
  }
  return 0;
}

int64_t fl__now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

double fl__mono_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}
