/*
 * fl-gateway: a complete gateway program on libflclient.
 *
 * Enrolls once (the identity stays in the state directory), then every N minutes trains on a
 * CSV of sensor readings and uploads the update, and classifies the latest readings with the
 * model the coordinator rolled out (or, without rollouts, the newest one it trained on).
 *
 *   fl-gateway -s https://coord:8443 -d /var/lib/fl -t TOKEN -c readings.csv -l 0 \
 *              -p latest.csv -m 15
 *
 * Over MQTT (docs/MQTT.md), through a broker and fl-mqtt-bridge instead of HTTPS:
 *
 *   FL_MQTT_PASSWORD=... fl-gateway -s mqtts://gw-0042@broker:8883 -d /var/lib/fl ...
 *
 * The user part of the URL is the gateway's broker account (its topics are fl/v1/dev/<user>/#);
 * the password comes from FL_MQTT_PASSWORD (or mqtts://user:password@..., which other users of
 * the machine can read in the process list). mqtt:// (plain TCP) needs -I like http:// does.
 *
 * A plain http:// URL is refused unless -I is given (allow_insecure_http): over plain HTTP
 * whoever is on the path at enrollment chooses the coordinator key the gateway pins. -I is for
 * a coordinator on loopback (tests).
 *
 * With a libflclient built without libcurl (FL_WITH_CURL=OFF, docs/PORTING.md) the gateway
 * brings its own transport (transport_http.c: plain HTTP/1.1 on POSIX sockets, so -I too).
 *
 * readings.csv: one reading per line, the label in column -l (-1: none, for an autoencoder);
 * latest.csv: features only.
 *
 * The data is loaded (and -p checked) before the one-time token is used, so that a wrong path
 * or a broken file does not cost a token. Exit status: 0 when every round ended uploaded or
 * not selected, 1 when a round failed or the gateway could not start, 2 on a usage error.
 * With -n, the first failed round stops the gateway. Without -n, a round that failed for a
 * reason time can cure (network, coordinator busy) is tried again at the next period, and any
 * other failure (revoked, refused, data that does not fit the model) stops it.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <fl/client.h>

#include "transport_http.h"

static volatile sig_atomic_t stop;
static void on_signal(int sig) {
  (void)sig;
  stop = 1;
}

static void log_line(void *ctx, fl_log_level level, const char *line) {
  (void)ctx;
  static const char *const names[] = {"error", "warn", "info", "debug"};
  fprintf(stderr, "fl-gateway: %s: %s\n", names[level], line);
}

/* Reads up to max rows of `dim` comma-separated floats; returns the number of rows. */
static size_t read_rows(const char *path, float *x, size_t dim, size_t max) {
  FILE *f = fopen(path, "r");
  char line[4096];
  size_t rows = 0;
  while (f != NULL && rows < max && fgets(line, sizeof line, f) != NULL) {
    char *p = line, *end;
    size_t k = 0;
    for (; k < dim; k++, p = end + (*end == ',')) {
      x[rows * dim + k] = strtof(p, &end);
      if (end == p)
        break;
    }
    rows += k == dim; /* a header or a short line is skipped */
  }
  if (f != NULL)
    fclose(f);
  return rows;
}

static void predict(fl_client *c, const char *path) {
  fl_model_info mi = {.size = sizeof mi};
  if (path == NULL || fl_client_model_info(c, &mi) != FL_OK)
    return;
  float x[16 * 64], out[16 * 64];
  if (mi.input_size > 64 || mi.output_size > 64)
    return;
  size_t n = read_rows(path, x, mi.input_size, 16);
  if (n == 0 || fl_client_predict(c, x, n, out) != FL_OK)
    return;
  for (size_t i = 0; i < n; i++) {
    size_t best = 0;
    for (size_t k = 1; k < mi.output_size; k++)
      best = out[i * mi.output_size + k] > out[i * mi.output_size + best] ? k : best;
    printf("reading %zu: class %zu (model %llu v%llu)\n", i, best, (unsigned long long)mi.model_id,
           (unsigned long long)mi.version);
  }
}

/* A decimal integer >= min, the whole argument. */
static int parse_int(const char *arg, const char *what, long min, int *out) {
  char *end;
  errno = 0;
  long v = strtol(arg, &end, 10);
  if (errno != 0 || end == arg || *end != '\0' || v < min || v > INT_MAX) {
    fprintf(stderr, "fl-gateway: %s must be an integer >= %ld, not \"%s\"\n", what, min, arg);
    return -1;
  }
  *out = (int)v;
  return 0;
}

/* Failures another round may not have: the network or the coordinator's load. */
static int transient(fl_err err) {
  return err == FL_E_TRANSPORT || err == FL_E_TIMEOUT || err == FL_E_RETRY_LATER;
}

/* mqtt[s]://user[:password]@host[:port]: the broker URL without the user part, and the
 * account. The password defaults to FL_MQTT_PASSWORD. */
static fl_err mqtt_transport(fl_transport *tr, const fl_client_opts *o) {
  static char user[129], password[256], broker[512];
  const char *url = o->server_url, *scheme_end = strstr(url, "://");
  const char *at = scheme_end != NULL ? strchr(scheme_end + 3, '@') : NULL;
  if (at == NULL || strlen(url) >= sizeof broker) {
    fprintf(stderr, "fl-gateway: %s: the broker account is missing (mqtts://USER@host:port)\n",
            url);
    return FL_E_INVAL;
  }
  const char *u = scheme_end + 3, *colon = memchr(u, ':', (size_t)(at - u));
  size_t ul = (size_t)((colon != NULL ? colon : at) - u);
  size_t pl = colon != NULL ? (size_t)(at - colon - 1) : 0;
  const char *env = getenv("FL_MQTT_PASSWORD");
  if (ul == 0 || ul >= sizeof user || pl >= sizeof password ||
      (colon == NULL && env != NULL && strlen(env) >= sizeof password)) {
    fprintf(stderr, "fl-gateway: %s: bad broker account\n", url);
    return FL_E_INVAL;
  }
  memcpy(user, u, ul);
  user[ul] = '\0';
  if (colon != NULL) {
    memcpy(password, colon + 1, pl);
    password[pl] = '\0';
  } else {
    snprintf(password, sizeof password, "%s", env != NULL ? env : "");
  }
  snprintf(broker, sizeof broker, "%.*s%s", (int)(scheme_end + 3 - url), url, at + 1);
  fl_mqtt_opts mo = {.version = FL_MQTT_OPTS_VERSION,
                     .broker_url = broker,
                     .username = user,
                     .password = password[0] != '\0' ? password : NULL};
  fl_err err = fl_transport_mqtt(tr, o, &mo);
  if (err != FL_OK)
    fprintf(stderr, "fl-gateway: MQTT transport: %s\n", fl_strerror(err));
  return err;
}

static bool is_mqtt(const char *url) {
  return strncmp(url, "mqtt://", 7) == 0 || strncmp(url, "mqtts://", 8) == 0;
}

/* A libflclient without libcurl has no built-in transport (fl_transport_curl answers
 * FL_E_UNSUPPORTED): then o->transport becomes the gateway's own plain-HTTP one, in *own.
 * An mqtt[s]:// URL takes the MQTT transport instead (start()). */
static fl_err pick_transport(fl_client_opts *o, fl_transport *own) {
  if (is_mqtt(o->server_url))
    return FL_OK;
  fl_client_opts quiet = *o;
  quiet.log_fn = NULL;
  fl_transport probe;
  fl_err err = fl_transport_curl(&probe, &quiet);
  if (err == FL_OK)
    probe.destroy(probe.ctx);
  if (err != FL_E_UNSUPPORTED)
    return FL_OK; /* the built-in transport; fl_client_new() reports what is wrong with it */
  if (!o->allow_insecure_http) {
    fprintf(stderr,
            "fl-gateway: this libflclient has no TLS transport (built without libcurl): "
            "only a plain http:// URL with -I works\n");
    return FL_E_UNSUPPORTED;
  }
  char why[512];
  err = gw_transport_http(own, o->server_url, o->connect_timeout_ms, o->request_timeout_ms,
                          o->max_response_bytes, why, sizeof why);
  if (err != FL_OK) {
    fprintf(stderr, "fl-gateway: %s\n", why);
    return err;
  }
  o->transport = own;
  return FL_OK;
}

/* Opens the client and loads the training data; then, if needed, enrolls. */
static fl_err start(fl_client **c, fl_client_opts *o, const char *token, const char *csv,
                    int label_col, const char *latest) {
  fl_transport tr;
  if (is_mqtt(o->server_url)) {
    fl_err err = mqtt_transport(&tr, o);
    if (err != FL_OK)
      return err;
    o->transport = &tr;
  }
  fl_err err = fl_client_new(c, o);
  if (err != FL_OK && o->transport != NULL && o->transport->destroy != NULL)
    o->transport->destroy(o->transport->ctx); /* still ours when fl_client_new() fails */
  o->transport = NULL; /* the client copied the table: tr (and main's own) may go */
  if (err != FL_OK) {
    fprintf(stderr, "fl-gateway: cannot open state directory %s: %s\n", o->state_dir,
            fl_strerror(err));
    return err;
  }
  err = fl_client_set_data_csv(*c, csv, label_col);
  if (err != FL_OK) {
    fprintf(stderr, "fl-gateway: training data %s: %s (%s)\n", csv, fl_strerror(err),
            fl_client_errmsg(*c));
    return err;
  }
  if (latest != NULL && access(latest, R_OK) != 0) {
    fprintf(stderr, "fl-gateway: readings to classify %s: %s\n", latest, strerror(errno));
    return FL_E_IO;
  }
  if (fl_client_is_enrolled(*c))
    return FL_OK;
  if (token == NULL) {
    fprintf(stderr, "fl-gateway: not enrolled yet: give the enrollment token with -t\n");
    return FL_E_NOT_ENROLLED;
  }
  err = fl_client_enroll(*c, token, NULL, 0, "fl-gateway/1");
  if (err != FL_OK)
    fprintf(stderr, "fl-gateway: enrollment failed: %s (%s)\n", fl_strerror(err),
            fl_client_errmsg(*c));
  return err;
}

int main(int argc, char **argv) {
  fl_client_opts o = {.version = FL_CLIENT_OPTS_VERSION,
                      .log_fn = log_line,
                      .log_level = FL_LOG_INFO,
                      .follow_training_base = 1};
  const char *token = NULL, *csv = NULL, *latest = NULL;
  int label_col = 0, minutes = 15, rounds = 0, opt;
  while ((opt = getopt(argc, argv, "s:d:t:c:l:p:m:n:a:I")) != -1) {
    switch (opt) {
      case 's':
        o.server_url = optarg;
        break;
      case 'd':
        o.state_dir = optarg;
        break;
      case 't':
        token = optarg;
        break;
      case 'c':
        csv = optarg;
        break;
      case 'l':
        if (parse_int(optarg, "-l", -1, &label_col) != 0)
          goto usage;
        break;
      case 'p':
        latest = optarg;
        break;
      case 'm':
        if (parse_int(optarg, "-m", 0, &minutes) != 0)
          goto usage;
        break;
      case 'n': /* 0: run until stopped */
        if (parse_int(optarg, "-n", 0, &rounds) != 0)
          goto usage;
        break;
      case 'a':
        o.ca_file = optarg;
        break;
      case 'I':
        o.allow_insecure_http = 1;
        break;
      default:
        goto usage;
    }
  }
  if (o.server_url == NULL || o.state_dir == NULL || csv == NULL || optind != argc)
    goto usage;
  signal(SIGINT, on_signal);
  signal(SIGTERM, on_signal);
  fl_client *c = NULL;
  fl_transport own;
  fl_err err = pick_transport(&o, &own);
  if (err == FL_OK)
    err = start(&c, &o, token, csv, label_col, latest);
  int failed = 0;
  for (int done = 0; err == FL_OK && !stop && (rounds == 0 || done < rounds); done++) {
    fl_round_result r = {.size = sizeof r};
    fl_err rerr = fl_client_run_round(c, &r);
    if (rerr != FL_OK) {
      failed++;
      fprintf(stderr, "fl-gateway: round failed: %s (%s)\n", fl_strerror(rerr),
              fl_client_errmsg(c));
      if (rounds == 0 && transient(rerr))
        rerr = FL_OK; /* a gateway without -n keeps trying at the next period */
      err = rerr;
    } else if (r.outcome == FL_ROUND_UPLOADED)
      printf("round %llu: %llu samples, loss %.4f, %zu bytes sent\n",
             (unsigned long long)r.round_id, (unsigned long long)r.sample_count, r.loss,
             r.upload_bytes);
    predict(c, latest);
    fflush(stdout);
    time_t wake = time(NULL) + 60L * minutes;
    if (r.retry_at_ms / 1000 > wake)
      wake = (time_t)(r.retry_at_ms / 1000); /* the coordinator asked us to stay away longer */
    while (err == FL_OK && !stop && (rounds == 0 || done + 1 < rounds) && time(NULL) < wake)
      sleep(1);
  }
  fl_client_free(c);
  return err == FL_OK && failed == 0 ? 0 : 1;
usage:
  fprintf(
      stderr,
      "usage: %s -s URL -d STATE_DIR -c READINGS.csv [-t TOKEN] [-l LABEL_COL]\n"
      "       [-p LATEST.csv] [-m MINUTES] [-n ROUNDS] [-a CA_FILE] [-I]\n"
      "  -s: https://coordinator:port, or mqtts://USER@broker:port (password in\n"
      "      FL_MQTT_PASSWORD; docs/MQTT.md)\n"
      "  -I: accept a plain http:// or mqtt:// URL (no server authentication; loopback tests)\n",
      argv[0]);
  return 2;
}
