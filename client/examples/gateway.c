/*
 * fl-gateway: a complete gateway program on libflclient.
 *
 * Enrolls once (the identity stays in the state directory), then every N minutes trains on a
 * CSV of sensor readings and uploads the update, and classifies the latest readings with the
 * model the coordinator rolled out (or, without rollouts, the newest one it trained on).
 *
 *   fl-gateway -s http://coord:8080 -d /var/lib/fl -t TOKEN -c readings.csv -l 0 \
 *              -p latest.csv -m 15
 *
 * readings.csv: one reading per line, the label in column -l; latest.csv: features only.
 */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <fl/client.h>

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

int main(int argc, char **argv) {
  fl_client_opts o = {.version = FL_CLIENT_OPTS_VERSION,
                      .log_fn = log_line,
                      .log_level = FL_LOG_INFO,
                      .follow_training_base = 1};
  const char *token = NULL, *csv = NULL, *latest = NULL;
  int label_col = 0, minutes = 15, rounds = 0, opt;
  while ((opt = getopt(argc, argv, "s:d:t:c:l:p:m:n:a:")) != -1) {
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
        label_col = atoi(optarg);
        break;
      case 'p':
        latest = optarg;
        break;
      case 'm':
        minutes = atoi(optarg);
        break;
      case 'n':
        rounds = atoi(optarg);
        break; /* 0: run until stopped */
      case 'a':
        o.ca_file = optarg;
        break;
      default:
        goto usage;
    }
  }
  if (o.server_url == NULL || o.state_dir == NULL || csv == NULL)
    goto usage;
  signal(SIGINT, on_signal);
  signal(SIGTERM, on_signal);
  fl_client *c = NULL;
  int err = fl_client_new(&c, &o);
  if (err == FL_OK && !fl_client_is_enrolled(c))
    err = token != NULL ? fl_client_enroll(c, token, NULL, 0, "fl-gateway/1") : FL_E_NOT_ENROLLED;
  if (err == FL_OK)
    err = fl_client_set_data_csv(c, csv, label_col);
  for (int done = 0; err == FL_OK && !stop && (rounds == 0 || done < rounds); done++) {
    fl_round_result r = {.size = sizeof r};
    int rerr = fl_client_run_round(c, &r);
    if (rerr != FL_OK)
      fprintf(stderr, "round failed: %s (%s)\n", fl_strerror(rerr), fl_client_errmsg(c));
    else if (r.outcome == FL_ROUND_UPLOADED)
      printf("round %llu: %llu samples, loss %.4f, %zu bytes sent\n",
             (unsigned long long)r.round_id, (unsigned long long)r.sample_count, r.loss,
             r.upload_bytes);
    predict(c, latest);
    fflush(stdout);
    time_t wake = time(NULL) + 60L * minutes;
    if (r.retry_at_ms / 1000 > wake)
      wake = (time_t)(r.retry_at_ms / 1000); /* the coordinator asked us to stay away longer */
    while (!stop && (rounds == 0 || done + 1 < rounds) && time(NULL) < wake)
      sleep(1);
  }
  if (err != FL_OK)
    fprintf(stderr, "fl-gateway: %s: %s\n", fl_strerror(err), c ? fl_client_errmsg(c) : "");
  fl_client_free(c);
  return err == FL_OK ? 0 : 1;
usage:
  fprintf(stderr,
          "usage: %s -s URL -d STATE_DIR -c READINGS.csv [-t TOKEN] [-l LABEL_COL]\n"
          "       [-p LATEST.csv] [-m MINUTES] [-n ROUNDS] [-a CA_FILE]\n",
          argv[0]);
  return 2;
}
