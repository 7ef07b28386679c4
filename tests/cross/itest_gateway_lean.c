/*
 * One fl-gateway round of the sensor model (the autoencoder 64-32-8-32-64 of fl-sim --dataset
 * sensor) against a real fl-coordinator and PostgreSQL (run under pg_virtualenv), with the
 * gateway's peak resident set size.
 *
 * The gateway is this build's fl-gateway unless FL_LEAN_GATEWAY names another binary: a lean
 * build's (FL_LEAN=ON, docs/PORTING.md), or an aarch64 one with FL_LEAN_RUNNER set to
 * "qemu-aarch64 -L /" (tests/cross/run-aarch64.sh). The round must be
 * uploaded and close into version 2 on the coordinator. The peak RSS is printed (and written
 * to FL_LEAN_RSS_FILE when set); under qemu it is the emulator's, not the gateway's.
 *
 * a_sensor_round_over_mqtt (where libmosquitto is built in, FL_HAVE_MQTT) is the same round
 * with `-s mqtt://g000@...`: through a real Mosquitto broker configured by
 * deploy/mosquitto/gen-config.sh and one fl-mqtt-bridge (tests/integration/itest_mqtt_env.h).
 *
 * The gateway runs under /usr/bin/time -f %M: a process forked from this one starts with this
 * one's resident pages, and Linux keeps that high-water mark across exec, so wait4()'s
 * ru_maxrss (or the child's own getrusage) would report the test program's size. time(1) is
 * small, so the peak it reports after its own fork and exec is the gateway's.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#ifdef FL_HAVE_MQTT
#include "itest_mqtt_env.h"
#endif

#define BINS 64
#define NEX 60

#define SENSOR_SPEC                                                                          \
  "{\"input_shape\":[64],\"layers\":[{\"type\":\"dense\",\"units\":32},{\"type\":\"relu\"}," \
  "{\"type\":\"dense\",\"units\":8},{\"type\":\"relu\"},{\"type\":\"dense\",\"units\":32},"  \
  "{\"type\":\"relu\"},{\"type\":\"dense\",\"units\":64}],\"loss\":\"mse\"}"

static char g_db[64];
static fl_h_coord g_coord;
static char g_dir[64];

static void setup(void) {
  static const char *const extra[] = {"--tick=50", "--checkin-interval=100", NULL};
  cr_assert_eq(fl_h_db_create(g_db), 0, "CREATE DATABASE (run under pg_virtualenv)");
  cr_assert_eq(fl_h_coord_start(&g_coord, g_db, NULL, extra), 0, "coordinator start");
  snprintf(g_dir, sizeof g_dir, "/tmp/fl-itest-lean-XXXXXX");
  cr_assert_not_null(mkdtemp(g_dir));
}

static void teardown(void) {
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
  cr_assert_eq(system(cmd), 0);
  fl_h_coord_cleanup(&g_coord);
  fl_h_db_drop(g_db);
}

/* Spectra-like rows: a decaying floor in log10 units with a line at bin 8 and its harmonics. */
static void write_spectra(const char *path, int rows) {
  FILE *f = fopen(path, "w");
  cr_assert_not_null(f);
  for (int i = 0; i < rows; i++)
    for (int b = 0; b < BINS; b++) {
      double v = -2.0 - 0.02 * b + 0.05 * ((i * 13 + b * 7) % 11) / 11.0;
      if (b % 8 == 0 && b > 0)
        v += 1.5 / (b / 8);
      fprintf(f, "%.4f%c", v, b + 1 < BINS ? ',' : '\n');
    }
  cr_assert_eq(fclose(f), 0);
}

/* Text of path ("" when missing), in a static buffer. */
static const char *slurp(const char *path) {
  static char buf[16384];
  buf[0] = '\0';
  FILE *f = fopen(path, "r");
  if (f != NULL) {
    buf[fread(buf, 1, sizeof buf - 1, f)] = '\0';
    fclose(f);
  }
  return buf;
}

/* Runs time -f %M -o g_dir/rss [runner words...] gateway args... with stdout and stderr in
 * g_dir/out and g_dir/err; returns the exit status and the gateway's peak RSS in kB. */
static int run_gateway(const char *server, const char *token, long *maxrss_kb) {
  const char *gw = getenv("FL_LEAN_GATEWAY");
  char runner[256];
  snprintf(runner, sizeof runner, "%s", getenv("FL_LEAN_RUNNER") ? getenv("FL_LEAN_RUNNER") : "");
  char state[128], csv[128], out[128], err[128];
  snprintf(state, sizeof state, "%s/state", g_dir);
  snprintf(csv, sizeof csv, "%s/spectra.csv", g_dir);
  snprintf(out, sizeof out, "%s/out", g_dir);
  snprintf(err, sizeof err, "%s/err", g_dir);
  char rssfile[128];
  snprintf(rssfile, sizeof rssfile, "%s/rss", g_dir);
  const char *argv[40] = {"/usr/bin/time", "-f", "%M", "-o", rssfile};
  int n = 5;
  for (char *w = strtok(runner, " "); w != NULL && n < 16; w = strtok(NULL, " "))
    argv[n++] = w;
  argv[n++] = gw != NULL && gw[0] != '\0' ? gw : FL_GATEWAY_BIN;
  const char *rest[] = {"-s", server, "-I", "-d", state, "-n", "1",  "-m", "0",
                        "-t", token,  "-l", "-1", "-c",  csv,  "-p", csv};
  for (size_t i = 0; i < sizeof rest / sizeof rest[0]; i++)
    argv[n++] = rest[i];
  argv[n] = NULL;
  pid_t pid = fork();
  cr_assert(pid >= 0);
  if (pid == 0) {
    if (freopen(out, "w", stdout) == NULL || freopen(err, "w", stderr) == NULL)
      _exit(127);
    execvp(argv[0], (char *const *)argv);
    _exit(127);
  }
  int st = 0;
  cr_assert_eq(waitpid(pid, &st, 0), pid);
  cr_assert(WIFEXITED(st), "fl-gateway did not exit normally (status %d): %s", st, slurp(err));
  *maxrss_kb = strtol(slurp(rssfile), NULL, 10);
  return WEXITSTATUS(st);
}

/* One round of the sensor model through `server`: enrolment, download, training, upload,
 * predictions, and the round closed into version 2. Returns the gateway's peak RSS. */
static long sensor_round(const char *server) {
  uint64_t model_id = 0, round_id = 0;
  cr_assert_eq(fl_h_model_and_plan(&g_coord, "sensor-lean", SENSOR_SPEC,
                                   "{\"participants\":1,\"min_participants\":1,"
                                   "\"over_selection\":1.0,\"deadline_s\":600,"
                                   "\"local_epochs\":1,\"batch_size\":10,\"learning_rate\":0.05}",
                                   &model_id, &round_id),
               0);
  json_t *tok = fl_h_admin_ok(&g_coord, "POST", "/admin/v1/enrollment-tokens", "{\"count\":1}");
  cr_assert_not_null(tok);
  char token[256];
  snprintf(token, sizeof token, "%s",
           json_string_value(json_array_get(json_object_get(tok, "tokens"), 0)));
  json_decref(tok);
  char path[128];
  snprintf(path, sizeof path, "%s/spectra.csv", g_dir);
  write_spectra(path, NEX);

  long rss = 0;
  int status = run_gateway(server, token, &rss);
  char out[128], err[128];
  snprintf(out, sizeof out, "%s/out", g_dir);
  snprintf(err, sizeof err, "%s/err", g_dir);
  char got_out[4096];
  snprintf(got_out, sizeof got_out, "%s", slurp(out));
  cr_assert_eq(status, 0, "stdout: %s\nstderr: %s", got_out, slurp(err));
  char want[64];
  snprintf(want, sizeof want, "round %llu: %d samples", (unsigned long long)round_id, NEX);
  cr_assert(strstr(got_out, want) != NULL, "stdout: %s\nstderr: %s", got_out, slurp(err));
  cr_assert(strstr(got_out, "reading 0: class") != NULL, "no prediction: %s", got_out);
  json_t *round = fl_h_wait_round(&g_coord, round_id, "closed", 30000);
  cr_assert_not_null(round, "the gateway's update did not close the round");
  json_decref(round);
  char sql[128];
  snprintf(sql, sizeof sql, "SELECT count(*) FROM versions WHERE model_id = %llu",
           (unsigned long long)model_id);
  cr_assert_eq(fl_h_db_int(g_db, sql), 2, "version 2 from the gateway's update");
  printf("fl-gateway peak RSS over %.4s: %ld kB (%s)\n", server, rss,
         getenv("FL_LEAN_RUNNER") ? "under the runner: the emulator's" : "native");
  return rss;
}

Test(gateway_lean, a_sensor_round_and_the_gateways_peak_rss, .init = setup, .fini = teardown,
     .timeout = 600) {
  long rss = sensor_round(g_coord.url);
  const char *rf = getenv("FL_LEAN_RSS_FILE");
  if (rf != NULL) {
    FILE *f = fopen(rf, "w");
    cr_assert_not_null(f);
    fprintf(f, "%ld\n", rss);
    fclose(f);
  }
}

#ifdef FL_HAVE_MQTT
static mq_broker g_broker;
static pid_t g_bridge;

static void setup_mqtt(void) {
  setup();
  cr_assert_eq(mq_broker_start(&g_broker, "g", 1), 0, "broker start");
  g_bridge = mq_bridge_start(&g_broker, g_coord.url, 0);
  cr_assert_gt(g_bridge, 0, "bridge start");
}

static void teardown_mqtt(void) {
  if (g_bridge > 0)
    mq_bridge_stop(&g_broker, g_bridge, 0);
  mq_broker_stop(&g_broker);
  teardown();
}

Test(gateway_lean, a_sensor_round_over_mqtt, .init = setup_mqtt, .fini = teardown_mqtt,
     .timeout = 600) {
  char url[96];
  snprintf(url, sizeof url, "mqtt://g000@127.0.0.1:%d", g_broker.port);
  cr_assert_eq(setenv("FL_MQTT_PASSWORD", MQ_PASSWORD, 1), 0); /* the gateway inherits it */
  sensor_round(url);
  long forwarded = mq_bridge_stop(&g_broker, g_bridge, 0);
  g_bridge = 0;
  cr_assert_gt(forwarded, 0, "the round did not go through the bridge");
}
#endif
