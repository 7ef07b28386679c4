/*
 * fl-gateway (client/examples/gateway.c), the binary, against a real fl-coordinator and
 * PostgreSQL (run under pg_virtualenv): its training data is checked before the one-time
 * enrollment token is used, a failed round gives a non-zero exit status, a good round zero.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

#define NFEAT 6 /* FL_H_SMALL_SPEC's input */
#define NEX 40

static char g_db[64];
static fl_h_coord g_coord;
static char g_dir[64]; /* scratch: CSV files, the gateway's output, its state directory */

static void setup(void) {
  static const char *const extra[] = {"--tick=50", "--checkin-interval=100", NULL};
  cr_assert_eq(fl_h_db_create(g_db), 0, "CREATE DATABASE (run under pg_virtualenv)");
  cr_assert_eq(fl_h_coord_start(&g_coord, g_db, NULL, extra), 0, "coordinator start");
  snprintf(g_dir, sizeof g_dir, "/tmp/fl-itest-gateway-XXXXXX");
  cr_assert_not_null(mkdtemp(g_dir));
}

static void teardown(void) {
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
  cr_assert_eq(system(cmd), 0);
  fl_h_coord_cleanup(&g_coord);
  fl_h_db_drop(g_db);
}

/* g_dir/name with `nfeat` features and the label last, three separable classes. */
static void write_csv(const char *name, int nfeat) {
  char path[128];
  snprintf(path, sizeof path, "%s/%s", g_dir, name);
  FILE *f = fopen(path, "w");
  cr_assert_not_null(f);
  for (int i = 0; i < NEX; i++) {
    int y = i % 3;
    for (int j = 0; j < nfeat; j++)
      fprintf(f, "%.3f,", (j / 2 == y ? 1.0 : 0.0) + 0.01 * ((i * 7 + j) % 5));
    fprintf(f, "%d\n", y);
  }
  cr_assert_eq(fclose(f), 0);
}

/* Text of g_dir/name ("" when missing), in a static buffer. */
static const char *slurp(const char *name) {
  static char buf[16384];
  char path[128];
  snprintf(path, sizeof path, "%s/%s", g_dir, name);
  buf[0] = '\0';
  FILE *f = fopen(path, "r");
  if (f != NULL) {
    buf[fread(buf, 1, sizeof buf - 1, f)] = '\0';
    fclose(f);
  }
  return buf;
}

/* Runs fl-gateway -s URL -I -d g_dir/state -n 1 -m 0 plus `args` (-I: the coordinator is on
 * loopback, plain http); returns its exit status, stdout and stderr in g_dir/out and
 * g_dir/err. */
static int gateway(const char *args) {
  char cmd[1024];
  snprintf(cmd, sizeof cmd,
           "'%s' -s '%s' -I -d '%s/state' -n 1 -m 0 %s >'%s/out' 2>'%s/err' </dev/null",
           FL_GATEWAY_BIN, g_coord.url, g_dir, args, g_dir, g_dir);
  int st = system(cmd);
  cr_assert(WIFEXITED(st), "fl-gateway did not exit normally (status %d): %s", st, slurp("err"));
  return WEXITSTATUS(st);
}

static bool enrolled(void) {
  char path[128];
  struct stat sb;
  snprintf(path, sizeof path, "%s/state/identity", g_dir);
  return stat(path, &sb) == 0;
}

Test(gateway, data_checked_before_the_token_and_failed_rounds_exit_non_zero, .init = setup,
     .fini = teardown, .timeout = 300) {
  uint64_t model_id = 0, round_id = 0;
  cr_assert_eq(fl_h_model_and_plan(&g_coord, "gateway-itest", FL_H_SMALL_SPEC,
                                   "{\"participants\":1,\"min_participants\":1,"
                                   "\"over_selection\":1.0,\"deadline_s\":600,"
                                   "\"local_epochs\":1,\"batch_size\":8,\"learning_rate\":0.1}",
                                   &model_id, &round_id),
               0);
  json_t *tok = fl_h_admin_ok(&g_coord, "POST", "/admin/v1/enrollment-tokens", "{\"count\":1}");
  cr_assert_not_null(tok);
  char token[256];
  snprintf(token, sizeof token, "%s",
           json_string_value(json_array_get(json_object_get(tok, "tokens"), 0)));
  json_decref(tok);
  write_csv("good.csv", NFEAT);
  write_csv("narrow.csv", NFEAT - 1); /* loads, but does not fit the model */
  char path[128];
  snprintf(path, sizeof path, "%s/empty.csv", g_dir);
  FILE *f = fopen(path, "w");
  cr_assert_not_null(f);
  fclose(f);

  /* Bad data (missing, empty, an unreadable -p file): refused before the token is used. */
  char args[512];
  snprintf(args, sizeof args, "-t '%s' -l %d -c '%s/missing.csv'", token, NFEAT, g_dir);
  cr_assert_eq(gateway(args), 1, "%s", slurp("err"));
  cr_assert(strstr(slurp("err"), "missing.csv") != NULL, "%s", slurp("err"));
  cr_assert(!enrolled(), "enrolled although the training data is missing");
  snprintf(args, sizeof args, "-t '%s' -l %d -c '%s/empty.csv'", token, NFEAT, g_dir);
  cr_assert_eq(gateway(args), 1, "%s", slurp("err"));
  cr_assert(strstr(slurp("err"), "empty.csv") != NULL, "%s", slurp("err"));
  snprintf(args, sizeof args, "-t '%s' -l %d -c '%s/good.csv' -p '%s/nowhere.csv'", token, NFEAT,
           g_dir, g_dir);
  cr_assert_eq(gateway(args), 1, "%s", slurp("err"));
  cr_assert(strstr(slurp("err"), "nowhere.csv") != NULL, "%s", slurp("err"));
  cr_assert(!enrolled(), "enrolled although the data was bad");
  cr_assert_eq(fl_h_db_int(g_db, "SELECT count(*) FROM devices"), 0);
  /* A usage error is 2, and is not a round. */
  snprintf(args, sizeof args, "-t '%s' -l %d -c '%s/good.csv' -n many", token, NFEAT, g_dir);
  cr_assert_eq(gateway(args), 2, "%s", slurp("err"));

  /* Data of the wrong width: the token (still unused) enrolls, the round fails: exit 1. */
  snprintf(args, sizeof args, "-t '%s' -l %d -c '%s/narrow.csv'", token, NFEAT - 1, g_dir);
  cr_assert_eq(gateway(args), 1, "%s", slurp("err"));
  cr_assert(enrolled(), "the token was spent by an earlier run: %s", slurp("err"));
  cr_assert(strstr(slurp("err"), "round failed") != NULL, "%s", slurp("err"));
  cr_assert_eq(fl_h_db_int(g_db, "SELECT count(*) FROM devices"), 1);

  /* The right data, no token needed any more: the round uploads, exit 0. */
  snprintf(args, sizeof args, "-l %d -c '%s/good.csv' -p '%s/good.csv'", NFEAT, g_dir, g_dir);
  cr_assert_eq(gateway(args), 0, "%s", slurp("err"));
  char want[64];
  snprintf(want, sizeof want, "round %llu: %d samples", (unsigned long long)round_id, NEX);
  cr_assert(strstr(slurp("out"), want) != NULL, "stdout: %s\nstderr: %s", slurp("out"),
            slurp("err"));
  json_t *round = fl_h_wait_round(&g_coord, round_id, "closed", 30000);
  cr_assert_not_null(round, "the gateway's update did not close the round");
  json_decref(round);
}
