/*
 * Configuration from flags and the environment. A flag wins over its environment variable,
 * which wins over the default. Every option is listed in usage() so that --help is the
 * reference; docs/API.md repeats the table.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fl/version.h"
#include "server.h"

enum {
  OPT_DB = 1000,
  OPT_LISTEN,
  OPT_TLS_CERT,
  OPT_TLS_KEY,
  OPT_SIGNING_KEY,
  OPT_REPLICA,
  OPT_MAX_BODY,
  OPT_MAX_CONN,
  OPT_TIMEOUT,
  OPT_POOL,
  OPT_TS_WINDOW,
  OPT_COMMIT,
  OPT_TICK,
  OPT_CHECKIN,
  OPT_MAX_SAMPLES,
  OPT_LOG_LEVEL,
  OPT_LOG_FORMAT,
  OPT_REUSE_PORT,
  OPT_METRICS_LISTEN,
  OPT_NONCE_MARGIN,
  OPT_TOKEN_OUT,
  OPT_UI_DIR,
  OPT_HTTP_THREADS,
  OPT_HEADER_TIMEOUT,
  OPT_BODY_TIMEOUT,
  OPT_MIN_BODY_RATE,
  OPT_PER_IP,
  OPT_HELP,
  OPT_VERSION
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
    {"listen", OPT_LISTEN, "FL_LISTEN", "HOST:PORT",
     "listen address: a host name or IPv4 address, [IPv6] in brackets, or :PORT for every IPv4 "
     "address (default 127.0.0.1:8080)"},
    {"tls-cert", OPT_TLS_CERT, "FL_TLS_CERT", "FILE", "PEM certificate chain; enables HTTPS"},
    {"tls-key", OPT_TLS_KEY, "FL_TLS_KEY", "FILE", "PEM private key for --tls-cert"},
    {"signing-key", OPT_SIGNING_KEY, "FL_SIGNING_KEY", "FILE",
     "Ed25519 PKCS#8 PEM key that signs model versions; created 0600 when missing "
     "(default fl-coordinator-key.pem)"},
    {"replica-id", OPT_REPLICA, "FL_REPLICA_ID", "NAME",
     "name of this replica in logs and partial aggregates (default host:port)"},
    {"max-body", OPT_MAX_BODY, "FL_MAX_BODY", "BYTES", "largest request body (default 64 MiB)"},
    {"max-connections", OPT_MAX_CONN, "FL_MAX_CONNECTIONS", "N",
     "concurrent connections; an idle one costs memory, not a thread (default 4096)"},
    {"max-connections-per-ip", OPT_PER_IP, "FL_MAX_CONNECTIONS_PER_IP", "N",
     "concurrent connections from one client address; more are closed at accept (default 0: "
     "no limit: behind a load balancer every connection comes from its address)"},
    {"http-threads", OPT_HTTP_THREADS, "FL_HTTP_THREADS", "N",
     "HTTP event-loop threads (epoll), each serving many connections (default 0: the number "
     "of CPUs, at least 4, at most --db-pool - 4)"},
    {"timeout", OPT_TIMEOUT, "FL_TIMEOUT", "SECONDS", "idle connection timeout (default 30)"},
    {"header-timeout", OPT_HEADER_TIMEOUT, "FL_HEADER_TIMEOUT", "SECONDS",
     "the whole request header must arrive within this time of the connection's accept or of "
     "its previous response, however steadily its bytes trickle (default 30)"},
    {"body-timeout", OPT_BODY_TIMEOUT, "FL_BODY_TIMEOUT", "SECONDS",
     "a request body must bring --min-body-rate bytes per second in each window of this length "
     "(default 30)"},
    {"min-body-rate", OPT_MIN_BODY_RATE, "FL_MIN_BODY_RATE", "BYTES",
     "slowest accepted body, bytes per second averaged over --body-timeout (default 256; 0: "
     "only the idle timeout applies)"},
    {"db-pool", OPT_POOL, "FL_DB_POOL", "N", "PostgreSQL connections (default 8)"},
    {"timestamp-window", OPT_TS_WINDOW, "FL_TIMESTAMP_WINDOW_MS", "MS",
     "accepted clock difference of signed requests (default 300000)"},
    {"commit-interval", OPT_COMMIT, "FL_COMMIT_INTERVAL_MS", "MS",
     "group commit gathering time, or auto (default: sized by the upload rate, at most 1000)"},
    {"tick", OPT_TICK, "FL_TICK_MS", "MS", "round close / deadline check period (default 200)"},
    {"checkin-interval", OPT_CHECKIN, "FL_CHECKIN_INTERVAL_MS", "MS",
     "base retry window for devices that are not selected (default 10000)"},
    {"max-samples", OPT_MAX_SAMPLES, "FL_MAX_SAMPLES", "N",
     "largest sample_count of one update (default 1000000)"},
    {"log-level", OPT_LOG_LEVEL, "FL_LOG_LEVEL", "LEVEL",
     "error, warn, info or debug (default info)"},
    {"log-format", OPT_LOG_FORMAT, "FL_LOG_FORMAT", "logfmt|json",
     "logfmt (default): key=value lines; json: one JSON object per line, the same keys, every "
     "value a string"},
    {"reuse-port", OPT_REUSE_PORT, "FL_REUSE_PORT", "0|1",
     "1: bind with SO_REUSEPORT, so that several processes share the port (the kernel splits "
     "connections between them); default 0: a port in use is a start-up error"},
    {"metrics-listen", OPT_METRICS_LISTEN, "FL_METRICS_LISTEN", "HOST:PORT",
     "serve /metrics, /healthz and /readyz (plain HTTP) on this address too; /metrics then "
     "leaves the main port (default: everything on --listen)"},
    {"nonce-skew-margin", OPT_NONCE_MARGIN, "FL_NONCE_SKEW_MARGIN_MS", "MS",
     "nonces are kept 2 x --timestamp-window plus this margin: at least the largest clock "
     "difference between replicas and the database (default 300000)"},
    {"admin-token-out", OPT_TOKEN_OUT, "FL_ADMIN_TOKEN_OUT", "FILE",
     "where a generated bootstrap admin token is written (0600; default admin-token beside "
     "--signing-key)"},
    {"ui-dir", OPT_UI_DIR, "FL_UI_DIR", "DIR",
     "the operator dashboard's files, served at /ui/ (default share/fleetlearn/ui beside the "
     "executable's bin/: the install prefix's)"},
    {"help", OPT_HELP, NULL, NULL, "print this help"},
    {"version", OPT_VERSION, NULL, NULL, "print the version"},
};
#define N_OPTS (sizeof OPTS / sizeof OPTS[0])

static void usage(FILE *f) {
  fprintf(f,
          "usage: fl-coordinator [options]\n\n"
          "fleetlearn coordinator: device API (protobuf) and admin API (JSON) over HTTP.\n"
          "Bootstrap admin token: FL_ADMIN_TOKEN or the first line of the file named by\n"
          "FL_ADMIN_TOKEN_FILE (at least 32 characters; a named file that cannot be read is\n"
          "a start-up error). When neither is set and the database has no admin token, one\n"
          "is generated and written to --admin-token-out (never to the log).\n\n");
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

/* HOST:PORT, [IPV6]:PORT or :PORT (every IPv4 address). HOST is a name or a numeric address;
 * an IPv6 address needs its brackets, else its last group would read as the port. */
static int parse_hostport(const char *s, char host[256], const char **host_out,
                          uint16_t *port_out) {
  const char *h = s, *colon;
  size_t n;
  uint64_t port;
  if (s[0] == '[') {
    const char *close = strchr(s, ']');
    if (close == NULL || close[1] != ':' || close == s + 1)
      return -1;
    h = s + 1;
    n = (size_t)(close - h);
    colon = close + 1;
  } else {
    colon = strrchr(s, ':');
    if (colon == NULL)
      return -1;
    n = (size_t)(colon - s);
    if (memchr(s, ':', n) != NULL)
      return -1; /* an IPv6 address without brackets */
  }
  if (n >= 256 || parse_u64(colon + 1, 0, 65535, &port))
    return -1;
  memcpy(host, h, n);
  host[n] = '\0';
  *host_out = host[0] ? host : "0.0.0.0";
  *port_out = (uint16_t)port;
  return 0;
}

static int parse_listen(fl_config *cfg, const char *s) {
  static char host[256];
  return parse_hostport(s, host, &cfg->listen_host, &cfg->port);
}

static int parse_metrics_listen(fl_config *cfg, const char *s) {
  static char host[256];
  cfg->metrics.on = parse_hostport(s, host, &cfg->metrics.host, &cfg->metrics.port) == 0;
  return cfg->metrics.on ? 0 : -1;
}

static const char *hostport_text(char text[300], const char *host, uint16_t port) {
  bool v6 = strchr(host, ':') != NULL;
  snprintf(text, 300, "%s%s%s:%u", v6 ? "[" : "", host, v6 ? "]" : "", (unsigned)port);
  return text;
}

const char *fl__config_listen_text(const fl_config *cfg) {
  static char text[300];
  return hostport_text(text, cfg->listen_host, cfg->port);
}

const char *fl__config_metrics_text(const fl_config *cfg) {
  static char text[300];
  return cfg->metrics.on ? hostport_text(text, cfg->metrics.host, cfg->metrics.port) : "";
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
    case OPT_DB:
      cfg->database_url = v;
      return 0;
    case OPT_LISTEN:
      return parse_listen(cfg, v);
    case OPT_TLS_CERT:
      cfg->tls_cert = v;
      return 0;
    case OPT_TLS_KEY:
      cfg->tls_key = v;
      return 0;
    case OPT_SIGNING_KEY:
      cfg->signing_key = v;
      return 0;
    case OPT_REPLICA:
      cfg->replica_id = v;
      return 0;
    case OPT_LOG_LEVEL:
      return parse_level(v, &cfg->log_level);
    case OPT_LOG_FORMAT:
      cfg->log_json = strcmp(v, "json") == 0;
      return cfg->log_json || strcmp(v, "logfmt") == 0 ? 0 : -1;
    case OPT_METRICS_LISTEN:
      return parse_metrics_listen(cfg, v);
    case OPT_TOKEN_OUT:
      cfg->admin_token_out = v;
      return 0;
    case OPT_UI_DIR:
      cfg->ui_dir = v;
      return v[0] != '\0' ? 0 : -1;
    case OPT_COMMIT:
      cfg->commit_auto = strcmp(v, "auto") == 0;
      if (cfg->commit_auto)
        return 0;
      break;
    default:
      break;
  }
  if (parse_u64(v, 0, INT64_MAX, &n))
    return -1;
  switch (id) {
    case OPT_MAX_BODY:
      cfg->max_body = n;
      return n >= 1024 ? 0 : -1;
    case OPT_MAX_CONN:
      cfg->max_connections = (unsigned)n;
      return n >= 1 && n <= 65536 ? 0 : -1;
    case OPT_TIMEOUT:
      cfg->conn_timeout_s = (unsigned)n;
      return n <= 3600 ? 0 : -1;
    case OPT_POOL:
      cfg->db_pool_size = (unsigned)n;
      return n >= 2 && n <= 256 ? 0 : -1;
    case OPT_TS_WINDOW:
      cfg->ts_window_ms = (int64_t)n;
      return n >= 1000 ? 0 : -1;
    case OPT_COMMIT:
      cfg->commit_auto = false;
      cfg->commit_interval_ms = (unsigned)n;
      return n <= 1000 ? 0 : -1;
    case OPT_TICK:
      cfg->tick_ms = (unsigned)n;
      return n >= 10 && n <= 60000 ? 0 : -1;
    case OPT_CHECKIN:
      cfg->checkin_interval_ms = (int64_t)n;
      return n >= 100 ? 0 : -1;
    case OPT_MAX_SAMPLES:
      cfg->max_samples = n;
      return n >= 1 ? 0 : -1;
    case OPT_REUSE_PORT:
      cfg->reuse_port = n == 1;
      return n <= 1 ? 0 : -1;
    case OPT_NONCE_MARGIN:
      cfg->nonce_margin_ms = (int64_t)n;
      return n <= 86400000 ? 0 : -1;
    case OPT_HTTP_THREADS:
      cfg->http_threads = (unsigned)n;
      return n <= 256 ? 0 : -1;
    case OPT_HEADER_TIMEOUT:
      cfg->header_timeout_s = (unsigned)n;
      return n >= 1 && n <= 3600 ? 0 : -1;
    case OPT_BODY_TIMEOUT:
      cfg->body_timeout_s = (unsigned)n;
      return n >= 1 && n <= 3600 ? 0 : -1;
    case OPT_MIN_BODY_RATE:
      cfg->min_body_rate = n;
      return n <= (1u << 30) ? 0 : -1;
    case OPT_PER_IP:
      cfg->max_conns_per_ip = (unsigned)n;
      return n <= 65536 ? 0 : -1;
    default:
      return -1;
  }
}

static const opt_def *find_opt(int id) {
  for (size_t i = 0; i < N_OPTS; i++)
    if (OPTS[i].id == id)
      return &OPTS[i];
  return NULL;
}

static void set_defaults(fl_config *cfg) {
  memset(cfg, 0, sizeof *cfg);
  cfg->database_url = "";
  cfg->listen_host = "127.0.0.1";
  cfg->port = 8080;
  cfg->signing_key = "fl-coordinator-key.pem";
  cfg->max_body = 64u << 20;
  cfg->max_connections = 4096;
  cfg->conn_timeout_s = 30;
  cfg->header_timeout_s = 30;
  cfg->body_timeout_s = 30;
  cfg->min_body_rate = 256;
  cfg->db_pool_size = 8;
  cfg->ts_window_ms = 300000;
  cfg->commit_interval_ms = 2;
  cfg->commit_auto = true;
  cfg->tick_ms = 200;
  cfg->checkin_interval_ms = 10000;
  cfg->max_samples = 1000000;
  cfg->nonce_margin_ms = 300000;
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
      fprintf(stderr, "fl-coordinator: %s=%s: bad value '%s' (%s)\n", OPTS[i].env, OPTS[i].arg, e,
              OPTS[i].help);
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
      const opt_def *d = c == '?' ? NULL : find_opt(c);
      if (d == NULL) {
        usage(stderr);
        return -1;
      }
      fprintf(stderr, "fl-coordinator: --%s=%s: bad value '%s' (%s)\n", d->name, d->arg, optarg,
              d->help);
      return -1;
    }
  }
  if (optind != argc) {
    fprintf(stderr, "fl-coordinator: unexpected argument '%s'\n", argv[optind]);
    return -1;
  }
  if ((cfg->tls_cert == NULL) != (cfg->tls_key == NULL)) {
    fprintf(stderr, "fl-coordinator: %s needs %s as well\n",
            cfg->tls_cert ? "--tls-cert" : "--tls-key", cfg->tls_cert ? "--tls-key" : "--tls-cert");
    return -1;
  }
  if (cfg->replica_id == NULL) {
    static char rid[128];
    snprintf(rid, sizeof rid, "%s", fl__config_listen_text(cfg));
    cfg->replica_id = rid;
  }
  return 0;
}

/* ----- checks before the database ------------------------------------------------------- */

/* Resolves the listen address and binds it once (with the options MHD's listening socket
 * gets), so that a name that does not resolve, an address this machine does not have or a
 * port in use is reported now rather than after a minute of waiting for the database. */
typedef struct listen_spec {
  const char *opt, *host, *text;
  uint16_t port;
  bool reuse_port;
  struct sockaddr_storage *addr;
  socklen_t *addr_len;
} listen_spec;

static int check_listen(const listen_spec *l, char *why, size_t n) {
  struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
  struct addrinfo *res = NULL;
  char port[8];
  const int one = 1;
  snprintf(port, sizeof port, "%u", (unsigned)l->port);
  int rc = getaddrinfo(l->host, port, &hints, &res);
  if (rc != 0 || res == NULL || res->ai_addrlen > sizeof *l->addr) {
    snprintf(why, n, "%s %s: host %s: %s", l->opt, l->text, l->host,
             rc ? gai_strerror(rc) : "no usable address");
    if (res != NULL)
      freeaddrinfo(res);
    return -1;
  }
  memcpy(l->addr, res->ai_addr, res->ai_addrlen);
  *l->addr_len = res->ai_addrlen;
  freeaddrinfo(res);
  int fam = l->addr->ss_family;
  int fd = socket(fam, SOCK_STREAM | SOCK_CLOEXEC, 0);
  rc = fd < 0 ? -1 : 0;
  if (rc == 0) {
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (l->reuse_port)
      setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    if (fam == AF_INET6)
      setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    rc = bind(fd, (struct sockaddr *)l->addr, *l->addr_len);
  }
  if (rc != 0)
    snprintf(why, n, "%s %s: cannot bind: %s", l->opt, l->text, strerror(errno));
  if (fd >= 0)
    close(fd);
  return rc ? -1 : 0;
}

static int check_listeners(fl_config *cfg, char *why, size_t n) {
  listen_spec main_l = {"--listen",      cfg->listen_host,  fl__config_listen_text(cfg), cfg->port,
                        cfg->reuse_port, &cfg->listen_addr, &cfg->listen_addr_len};
  if (check_listen(&main_l, why, n))
    return -1;
  if (!cfg->metrics.on)
    return 0;
  listen_spec m = {"--metrics-listen",
                   cfg->metrics.host,
                   fl__config_metrics_text(cfg),
                   cfg->metrics.port,
                   false,
                   &cfg->metrics.addr,
                   &cfg->metrics.addr_len};
  /* Both sockets are bound at once only by MHD; the same address twice is a typo. */
  if (cfg->metrics.port == cfg->port && strcmp(cfg->metrics.host, cfg->listen_host) == 0) {
    snprintf(why, n, "--metrics-listen %s: the same address as --listen", m.text);
    return -1;
  }
  return check_listen(&m, why, n);
}

/* path must be a readable regular file (root reads anything, but not a directory). */
static int check_readable(const char *opt, const char *path, char *why, size_t n) {
  struct stat st;
  FILE *f = NULL;
  if (stat(path, &st) != 0 || (!S_ISREG(st.st_mode) && (errno = EISDIR)) ||
      (f = fopen(path, "r")) == NULL) {
    snprintf(why, n, "%s %s: %s", opt, path, strerror(errno));
    return -1;
  }
  fclose(f);
  return 0;
}

/* A private key file's owner and mode, by PostgreSQL's rule for ssl_key_file: owned by our
 * user, no access for group or others (0600 or less); owned by root, at most group read
 * (0640: a Kubernetes Secret mounted with fsGroup is root:fsGroup 0440). A key that others
 * can read is a key others may hold: refused, whatever the file's contents. */
static int check_key_mode(const char *opt, const char *path, char *why, size_t n) {
  struct stat st;
  if (stat(path, &st) != 0) {
    snprintf(why, n, "%s %s: %s", opt, path, strerror(errno));
    return -1;
  }
  unsigned mode = (unsigned)st.st_mode & 0777;
  if (st.st_uid == geteuid() && (mode & 077) != 0)
    snprintf(why, n,
             "%s %s: private key is accessible by group or others (mode %04o); "
             "chmod 0600 it (docs/DEPLOY.md)",
             opt, path, mode);
  else if (st.st_uid != geteuid() && st.st_uid == 0 && (mode & 037) != 0)
    snprintf(why, n,
             "%s %s: private key owned by root allows more than owner read/write and group read "
             "(mode %04o); chmod 0640 or less (docs/DEPLOY.md)",
             opt, path, mode);
  else if (st.st_uid != geteuid() && st.st_uid != 0)
    snprintf(why, n, "%s %s: private key owned by uid %u: it must be owned by this user or root",
             opt, path, (unsigned)st.st_uid);
  else
    return 0;
  return -1;
}

static int no_passphrase(char *buf, int size, int rwflag, void *u) {
  (void)buf, (void)size, (void)rwflag, (void)u;
  return 0; /* an encrypted key fails here instead of prompting */
}

/* The certificate and key are PEM that OpenSSL reads and the key is the certificate's. */
static int check_tls(const fl_config *cfg, char *why, size_t n) {
  if (check_readable("--tls-cert", cfg->tls_cert, why, n) ||
      check_readable("--tls-key", cfg->tls_key, why, n) ||
      check_key_mode("--tls-key", cfg->tls_key, why, n))
    return -1;
  FILE *fc = fopen(cfg->tls_cert, "r"), *fk = fopen(cfg->tls_key, "r");
  /* Unbuffered: stdio's buffer would keep a copy of the key text in freed heap memory
   * (OpenSSL's PEM reader clears its own buffers). */
  if (fk != NULL)
    setvbuf(fk, NULL, _IONBF, 0);
  X509 *x = fc ? PEM_read_X509(fc, NULL, no_passphrase, NULL) : NULL;
  EVP_PKEY *k = fk ? PEM_read_PrivateKey(fk, NULL, no_passphrase, NULL) : NULL;
  int rc = -1;
  if (x == NULL)
    snprintf(why, n, "--tls-cert %s: not a PEM certificate", cfg->tls_cert);
  else if (k == NULL)
    snprintf(why, n, "--tls-key %s: not an unencrypted PEM private key", cfg->tls_key);
  else if (X509_check_private_key(x, k) != 1)
    snprintf(why, n, "--tls-key %s: not the key of the certificate in %s", cfg->tls_key,
             cfg->tls_cert);
  else
    rc = 0;
  ERR_clear_error();
  X509_free(x);
  EVP_PKEY_free(k);
  if (fc)
    fclose(fc);
  if (fk)
    fclose(fk);
  return rc;
}

/* An existing signing key must be readable and private; a missing one is created in its
 * directory. */
static int check_signing_key(const fl_config *cfg, char *why, size_t n) {
  char dir[4096];
  if (access(cfg->signing_key, F_OK) == 0)
    return check_readable("--signing-key", cfg->signing_key, why, n) ||
                   check_key_mode("--signing-key", cfg->signing_key, why, n)
               ? -1
               : 0;
  if (errno != ENOENT) {
    snprintf(why, n, "--signing-key %s: %s", cfg->signing_key, strerror(errno));
    return -1;
  }
  const char *slash = strrchr(cfg->signing_key, '/');
  snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - cfg->signing_key) : 1,
           slash ? cfg->signing_key : ".");
  if (dir[0] == '\0')
    snprintf(dir, sizeof dir, "/");
  if (access(dir, W_OK | X_OK) != 0) {
    snprintf(why, n, "--signing-key %s: missing, and it cannot be created in %s: %s",
             cfg->signing_key, dir, strerror(errno));
    return -1;
  }
  return 0;
}

int fl__token_strength(const char *tok, char *why, size_t n) {
  size_t len = strlen(tok), count[128] = {0}, distinct = 0;
  for (size_t i = 0; i < len; i++) {
    unsigned char ch = (unsigned char)tok[i];
    if (ch <= 0x20 || ch >= 0x7f) {
      snprintf(why, n, "has a character that is not printable ASCII (or a space) at %zu", i);
      return -1;
    }
    distinct += count[ch]++ == 0;
  }
  /* The Shannon entropy of the token's own character frequencies, times its length: no
   * measure of how the token was made, but it refuses the usual mistakes ("changeme"
   * repeated: 7 distinct characters, 88 bits) while random 32 hex digits pass (about 117 bits
   * expected; of a million, none had fewer than 8 distinct characters or 80 bits, while with
   * 10 and 96 one in 5000 was refused). */
  double bits = 0;
  for (int c = 0; c < 128; c++)
    if (count[c] > 0) {
      double p = (double)count[c] / (double)len;
      bits -= (double)count[c] * log2(p);
    }
  if (len < FL_TOKEN_MIN_LEN || len > FL_TOKEN_MAX_LEN)
    snprintf(why, n, "is %zu characters long; a bootstrap token has %d to %d", len,
             FL_TOKEN_MIN_LEN, FL_TOKEN_MAX_LEN);
  else if (distinct < 8 || bits < 80)
    snprintf(why, n,
             "is too predictable (%zu distinct characters, about %.0f bits; at least 8 and 80)",
             distinct, bits);
  else
    return 0;
  return -1;
}

/* The bootstrap token: FL_ADMIN_TOKEN, else the first line of FL_ADMIN_TOKEN_FILE, which then
 * must exist and be readable (fail closed: a file that was named and cannot be read is not
 * "no token", which would generate one). Either must be strong enough. */
static int check_bootstrap_token(fl_config *cfg, char *why, size_t n) {
  static char tok[FL_TOKEN_MAX_LEN + 2];
  char msg[160];
  const char *tf = cfg->admin_token_file, *src = "FL_ADMIN_TOKEN";
  if (cfg->admin_token != NULL && cfg->admin_token[0] != '\0') {
    snprintf(tok, sizeof tok, "%s", cfg->admin_token);
    if (strlen(cfg->admin_token) >= sizeof tok)
      tok[sizeof tok - 1] = '\0'; /* too long: refused below by its length */
  } else if (tf != NULL && tf[0] != '\0') {
    src = "FL_ADMIN_TOKEN_FILE";
    if (check_readable("FL_ADMIN_TOKEN_FILE", tf, why, n))
      return -1;
    int fd = open(tf, O_RDONLY | O_CLOEXEC);
    ssize_t got = fd < 0 ? -1 : read(fd, tok, sizeof tok - 1);
    if (fd >= 0)
      close(fd);
    if (got < 0) {
      snprintf(why, n, "FL_ADMIN_TOKEN_FILE %s: %s", tf, strerror(errno));
      return -1;
    }
    tok[got] = '\0';
    tok[strcspn(tok, "\r\n")] = '\0';
    if (tok[0] == '\0') {
      snprintf(why, n, "FL_ADMIN_TOKEN_FILE %s: the first line is empty", tf);
      return -1;
    }
  } else {
    cfg->bootstrap_token = NULL;
    return 0;
  }
  if (fl__token_strength(tok, msg, sizeof msg)) {
    snprintf(why, n, "%s%s%s: the bootstrap admin token %s (make one with: openssl rand -hex 32)",
             src, tf && strcmp(src, "FL_ADMIN_TOKEN_FILE") == 0 ? " " : "",
             strcmp(src, "FL_ADMIN_TOKEN_FILE") == 0 ? tf : "", msg);
    return -1;
  }
  cfg->bootstrap_token = tok;
  return 0;
}

int fl__config_check(fl_config *cfg, char *why, size_t n) {
  static char out[4096];
  if (cfg->tls_cert != NULL && check_tls(cfg, why, n))
    return -1;
  if (check_signing_key(cfg, why, n))
    return -1;
  if (check_bootstrap_token(cfg, why, n))
    return -1;
  if (cfg->admin_token_out == NULL) {
    const char *slash = strrchr(cfg->signing_key, '/');
    snprintf(out, sizeof out, "%.*sadmin-token", slash ? (int)(slash - cfg->signing_key + 1) : 0,
             cfg->signing_key);
    cfg->admin_token_out = out;
  }
  return check_listeners(cfg, why, n);
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
