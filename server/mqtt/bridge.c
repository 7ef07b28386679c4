/*
 * fl-mqtt-bridge: carries the device API between an MQTT 5 broker and fl-coordinator.
 *
 * A separate process rather than a module of fl-coordinator (docs/MQTT.md): each MQTT request
 * is forwarded over HTTP to the coordinator's device API, so envelopes, signatures, nonces,
 * status and reason codes go through the one code path HTTP devices use, and a broker outage
 * cannot stall the coordinator. Several bridges share the requests through one MQTT 5 shared
 * subscription ($share/<group>/<prefix>/+/req/#); each has its own client id.
 *
 * One thread: curl_multi_poll() waits on the coordinator transfers and on the broker socket;
 * libmosquitto's non-blocking loop functions read, write and keep the connection alive. When
 * --max-inflight requests are being forwarded the broker socket is not read (backpressure on
 * the broker instead of an unbounded queue here).
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "bridge.h"
#include "fl/version.h"

static volatile sig_atomic_t g_stop;

static void on_signal(int sig) {
  (void)sig;
  g_stop = 1;
}

void fl__bridge_log(const char *event, const char *fmt, ...) {
  char line[1024];
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm;
  gmtime_r(&ts.tv_sec, &tm);
  int n = snprintf(line, sizeof line, "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ event=%s ",
                   tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                   ts.tv_nsec / 1000000, event);
  va_list ap;
  va_start(ap, fmt);
  if (n > 0 && (size_t)n < sizeof line)
    n += vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
  va_end(ap);
  if (n < 0 || (size_t)n >= sizeof line - 1)
    n = (int)sizeof line - 2;
  line[n++] = '\n';
  if (write(2, line, (size_t)n) < 0)
    return;
}

static int64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void usage(FILE *f) {
  fprintf(f,
          "usage: fl-mqtt-bridge --broker mqtt[s]://HOST[:PORT] --username NAME\n"
          "                      [--password-file FILE] --coordinator URL [options]\n"
          "  --broker URL          the MQTT 5 broker (mqtts://: TLS, checked with --ca-file)\n"
          "  --username NAME       the bridge's broker account (password: --password-file,\n"
          "                        or the environment variable FL_MQTT_BRIDGE_PASSWORD)\n"
          "  --ca-file FILE        CA bundle for the broker's certificate (mqtts)\n"
          "  --client-id ID        default: <username>-<pid>; unique per bridge\n"
          "  --coordinator URL     the coordinator's device API, e.g. http://127.0.0.1:8080\n"
          "  --coordinator-ca FILE CA bundle for an https:// coordinator\n"
          "  --group NAME          shared subscription group (default fl-bridge)\n"
          "  --prefix TOPIC        topic prefix (default fl/v1/dev)\n"
          "  --max-inflight N      requests forwarded at once (default 256)\n"
          "  --max-answer BYTES    largest answer published (default 8388608, the broker's\n"
          "                        max_packet_size in deploy/mosquitto)\n"
          "  --http-timeout-ms MS  per forwarded request (default 60000)\n");
}

static int read_password_file(fl_bridge_opts *o, const char *path) {
  static char buf[512];
  FILE *f = fopen(path, "r");
  if (f == NULL) {
    fprintf(stderr, "fl-mqtt-bridge: %s: %s\n", path, strerror(errno));
    return -1;
  }
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = '\0';
  buf[strcspn(buf, "\r\n")] = '\0';
  o->password = buf;
  return 0;
}

static int parse_number(const char *s, unsigned long long max, unsigned long long *out) {
  char *e;
  errno = 0;
  unsigned long long v = strtoull(s, &e, 10);
  if (errno != 0 || *e != '\0' || e == s || v == 0 || v > max)
    return -1;
  *out = v;
  return 0;
}

static int parse_options(fl_bridge_opts *o, int argc, char **argv) {
  static const struct option lo[] = {
      {"broker", 1, 0, 'b'},         {"username", 1, 0, 'u'},   {"password-file", 1, 0, 'p'},
      {"ca-file", 1, 0, 'C'},        {"client-id", 1, 0, 'i'},  {"coordinator", 1, 0, 'c'},
      {"coordinator-ca", 1, 0, 'A'}, {"group", 1, 0, 'g'},      {"prefix", 1, 0, 'P'},
      {"max-inflight", 1, 0, 'm'},   {"max-answer", 1, 0, 'M'}, {"http-timeout-ms", 1, 0, 't'},
      {"help", 0, 0, 'h'},           {"version", 0, 0, 'V'},    {0, 0, 0, 0}};
  *o = (fl_bridge_opts){.group = "fl-bridge",
                        .prefix = "fl/v1/dev",
                        .max_inflight = 256,
                        .max_answer = 8u << 20,
                        .http_timeout_ms = 60000,
                        .password = getenv("FL_MQTT_BRIDGE_PASSWORD")};
  int c;
  unsigned long long v;
  while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
    switch (c) {
      case 'b':
        o->broker = optarg;
        break;
      case 'u':
        o->username = optarg;
        break;
      case 'p':
        if (read_password_file(o, optarg) != 0)
          return 2;
        break;
      case 'C':
        o->ca_file = optarg;
        break;
      case 'i':
        o->client_id = optarg;
        break;
      case 'c':
        o->coordinator = optarg;
        break;
      case 'A':
        o->coordinator_ca = optarg;
        break;
      case 'g':
        o->group = optarg;
        break;
      case 'P':
        o->prefix = optarg;
        break;
      case 'm':
      case 'M':
      case 't':
        if (parse_number(optarg, c == 'm' ? 65536 : c == 'M' ? 268435455 : 3600000, &v) != 0) {
          fprintf(stderr, "fl-mqtt-bridge: bad number %s\n", optarg);
          return 2;
        }
        if (c == 'm')
          o->max_inflight = (unsigned)v;
        else if (c == 'M')
          o->max_answer = (size_t)v;
        else
          o->http_timeout_ms = (long)v;
        break;
      case 'h':
        usage(stdout);
        return 1;
      case 'V':
        printf("fl-mqtt-bridge %s\n", FL_VERSION_STRING);
        return 1;
      default:
        usage(stderr);
        return 2;
    }
  }
  if (o->broker == NULL || o->username == NULL || o->coordinator == NULL || optind != argc) {
    usage(stderr);
    return 2;
  }
  if (strchr(o->group, '/') != NULL || strpbrk(o->group, "+#") != NULL ||
      strpbrk(o->prefix, "+#") != NULL || o->prefix[0] == '\0') {
    fprintf(stderr, "fl-mqtt-bridge: --group and --prefix must not contain wildcards\n");
    return 2;
  }
  return 0;
}

static int parse_broker(fl_bridge *b) {
  const char *u = b->o.broker, *rest;
  if (strncasecmp(u, "mqtts://", 8) == 0) {
    b->tls = true;
    rest = u + 8;
  } else if (strncasecmp(u, "mqtt://", 7) == 0) {
    rest = u + 7;
  } else {
    fprintf(stderr, "fl-mqtt-bridge: --broker %s: mqtt:// or mqtts:// expected\n", u);
    return -1;
  }
  b->port = b->tls ? 8883 : 1883;
  size_t hl = strcspn(rest, ":/");
  if (hl == 0 || hl >= sizeof b->host) {
    fprintf(stderr, "fl-mqtt-bridge: --broker %s: no host\n", u);
    return -1;
  }
  memcpy(b->host, rest, hl);
  b->host[hl] = '\0';
  unsigned long long p;
  if (rest[hl] == ':') {
    char tmp[8];
    size_t pl = strcspn(rest + hl + 1, "/");
    if (pl == 0 || pl >= sizeof tmp)
      return -1;
    memcpy(tmp, rest + hl + 1, pl);
    tmp[pl] = '\0';
    if (parse_number(tmp, 65535, &p) != 0) {
      fprintf(stderr, "fl-mqtt-bridge: --broker %s: bad port\n", u);
      return -1;
    }
    b->port = (int)p;
  }
  return 0;
}

static void on_connect(struct mosquitto *m, void *ud, int rc, int flags,
                       const mosquitto_property *p) {
  (void)flags;
  (void)p;
  fl_bridge *b = ud;
  if (rc != 0) {
    fl__bridge_log("broker_refused", "reason=\"%s\"", mosquitto_reason_string(rc));
    return;
  }
  char sub[512];
  snprintf(sub, sizeof sub, "$share/%s/%s/+/req/#", b->o.group, b->o.prefix);
  rc = mosquitto_subscribe_v5(m, NULL, sub, 1, 0, NULL);
  if (rc != MOSQ_ERR_SUCCESS) {
    fl__bridge_log("subscribe_failed", "err=\"%s\"", mosquitto_strerror(rc));
    return;
  }
  b->connected = true;
  b->stats.connects++;
  fl__bridge_log("broker_connected", "host=%s port=%d subscription=%s", b->host, b->port, sub);
}

static void on_subscribe(struct mosquitto *m, void *ud, int mid, int n, const int *granted,
                         const mosquitto_property *p) {
  (void)m;
  (void)ud;
  (void)mid;
  (void)p;
  if (n < 1 || granted[0] > 2)
    fl__bridge_log("subscribe_refused", "code=%d (check the bridge's ACL)", n ? granted[0] : -1);
}

static void on_disconnect(struct mosquitto *m, void *ud, int rc, const mosquitto_property *p) {
  (void)m;
  (void)p;
  fl_bridge *b = ud;
  b->connected = false;
  fl__bridge_log("broker_disconnected", "reason=\"%s\"", mosquitto_reason_string(rc));
}

static int setup(fl_bridge *b) {
  char id[256];
  if (b->o.client_id == NULL)
    snprintf(id, sizeof id, "%s-%ld", b->o.username, (long)getpid());
  b->mosq = mosquitto_new(b->o.client_id != NULL ? b->o.client_id : id, true, b);
  b->multi = curl_multi_init();
  if (b->mosq == NULL || b->multi == NULL)
    return -1;
  mosquitto_int_option(b->mosq, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V5);
  mosquitto_int_option(b->mosq, MOSQ_OPT_TCP_NODELAY, 1);
  mosquitto_username_pw_set(b->mosq, b->o.username, b->o.password);
  if (b->tls) {
    int rc = b->o.ca_file != NULL ? mosquitto_tls_set(b->mosq, b->o.ca_file, NULL, NULL, NULL, NULL)
                                  : mosquitto_int_option(b->mosq, MOSQ_OPT_TLS_USE_OS_CERTS, 1);
    if (rc != MOSQ_ERR_SUCCESS) {
      fprintf(stderr, "fl-mqtt-bridge: TLS: %s\n", mosquitto_strerror(rc));
      return -1;
    }
  }
  mosquitto_connect_v5_callback_set(b->mosq, on_connect);
  mosquitto_subscribe_v5_callback_set(b->mosq, on_subscribe);
  mosquitto_disconnect_v5_callback_set(b->mosq, on_disconnect);
  mosquitto_message_v5_callback_set(b->mosq, fl__bridge_on_message);
  curl_multi_setopt(b->multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)b->o.max_inflight);
  return 0;
}

/* One pass: wait for the broker socket or a transfer (at most 100 ms), then move both on. */
static void loop_once(fl_bridge *b, int64_t *next_connect_ms) {
  int fd = mosquitto_socket(b->mosq);
  if (fd < 0 && mono_ms() >= *next_connect_ms) {
    b->connected = false;
    int rc = mosquitto_connect_bind_v5(b->mosq, b->host, b->port, 30, NULL, NULL);
    if (rc != MOSQ_ERR_SUCCESS) {
      *next_connect_ms = mono_ms() + 250; /* a restarting broker is back within moments */
      if (b->stats.connects == 0 || rc != MOSQ_ERR_ERRNO)
        fl__bridge_log("broker_connect_failed", "err=\"%s\"",
                       rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc));
    }
    fd = mosquitto_socket(b->mosq);
  }
  bool room = b->inflight < b->o.max_inflight;
  struct curl_waitfd w = {
      .fd = fd,
      .events = (short)((room ? CURL_WAIT_POLLIN : 0) |
                        (mosquitto_want_write(b->mosq) ? CURL_WAIT_POLLOUT : 0))};
  bool wait_fd = fd >= 0 && w.events != 0;
  curl_multi_poll(b->multi, wait_fd ? &w : NULL, wait_fd ? 1 : 0, 100, NULL);
  if (fd >= 0) {
    int rc = MOSQ_ERR_SUCCESS;
    if (room && (w.revents & (CURL_WAIT_POLLIN | CURL_WAIT_POLLPRI)))
      rc = mosquitto_loop_read(b->mosq, 1);
    if (rc == MOSQ_ERR_SUCCESS && mosquitto_want_write(b->mosq))
      rc = mosquitto_loop_write(b->mosq, 1);
    if (rc == MOSQ_ERR_SUCCESS)
      rc = mosquitto_loop_misc(b->mosq);
    if (rc != MOSQ_ERR_SUCCESS) {
      b->connected = false;
      mosquitto_disconnect(b->mosq);
      *next_connect_ms = mono_ms() + 100;
    }
  }
  int running = 0;
  curl_multi_perform(b->multi, &running);
  fl__bridge_collect(b);
  fl__bridge_flush(b);
}

int main(int argc, char **argv) {
  fl_bridge b = {0};
  int rc = parse_options(&b.o, argc, argv);
  if (rc != 0)
    return rc == 1 ? 0 : 2;
  if (parse_broker(&b) != 0)
    return 2;
  signal(SIGPIPE, SIG_IGN);
  struct sigaction sa = {.sa_handler = on_signal};
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  mosquitto_lib_init();
  curl_global_init(CURL_GLOBAL_DEFAULT);
  int status = 1;
  if (setup(&b) != 0) {
    fprintf(stderr, "fl-mqtt-bridge: out of memory\n");
    goto out;
  }
  fl__bridge_log("start", "version=%s coordinator=%s group=%s", FL_VERSION_STRING, b.o.coordinator,
                 b.o.group);
  int64_t next_connect_ms = 0;
  while (!g_stop)
    loop_once(&b, &next_connect_ms);
  status = 0;
  fl__bridge_log("stop", "requests=%llu answered=%llu dropped=%llu http_errors=%llu connects=%llu",
                 (unsigned long long)b.stats.requests, (unsigned long long)b.stats.answered,
                 (unsigned long long)b.stats.dropped, (unsigned long long)b.stats.http_errors,
                 (unsigned long long)b.stats.connects);
out:
  fl__bridge_free_jobs(&b);
  if (b.mosq != NULL) {
    mosquitto_disconnect(b.mosq);
    mosquitto_destroy(b.mosq);
  }
  if (b.multi != NULL)
    curl_multi_cleanup(b.multi);
  curl_global_cleanup();
  mosquitto_lib_cleanup();
  return status;
}
