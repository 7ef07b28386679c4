/*
 * Rollouts end to end (run under pg_virtualenv): a real coordinator and PostgreSQL, 300
 * libflclient devices driven by one fl_multi on this thread, every operator action through
 * the flctl binary.
 *
 * Versions 2 and 3 come from two training rounds of harness devices. The devices' hold-out
 * labels are version 2's own predictions, so version 2 is the better model by construction and
 * version 3 (or 1) the worse one; the test checks that on the data before relying on it.
 * Scenario: channel stable on v1 -> staged rollout of v2 at 10% (exactly the devices the
 * documented hash selects, within a binomial bound) -> raised to 50% (the first 10% stay in)
 * -> its accuracy gate passes -> promote -> a rollout of v3 to a cohort fails its gate and
 * stops -> rollback of v2 returns every device to v1 at its next check-in. Every device
 * verified what it runs, and the coordinator's fleet view agrees with the devices.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fl/client.h"
#include "harness.h"

#define NDEV 300
#define NFEAT 6
#define NCLS 3
#define NHOLD 20

static char g_db[64];
static fl_h_coord g_coord;

static void setup(void) {
  static const char *const extra[] = {"--tick=50", "--checkin-interval=100",
                                      "--max-connections=600", NULL};
  cr_assert_eq(fl_h_db_create(g_db), 0, "CREATE DATABASE (run under pg_virtualenv)");
  cr_assert_eq(fl_h_coord_start(&g_coord, g_db, NULL, extra), 0, "coordinator start");
  setenv("FL_URL", g_coord.url, 1);
  setenv("FL_ADMIN_TOKEN", g_coord.admin_token, 1);
}

static void teardown(void) {
  fl_h_coord_cleanup(&g_coord);
  fl_h_db_drop(g_db);
}

/* ---- flctl -------------------------------------------------------------------------------- */

/* Runs `flctl ARGS` (a shell command line tail); stdout into out, returns the exit status. */
static int flctl(char *out, size_t cap, const char *fmt, ...) {
  char args[2048], cmd[2300];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(args, sizeof args, fmt, ap);
  va_end(ap);
  snprintf(cmd, sizeof cmd, "'%s' %s", FL_FLCTL_BIN, args);
  FILE *p = popen(cmd, "r");
  cr_assert_not_null(p);
  size_t n = fread(out, 1, cap - 1, p);
  out[n] = '\0';
  int st = pclose(p);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* `flctl --json ARGS` that must succeed; the parsed JSON (caller decrefs). */
static json_t *flctl_json(const char *fmt, ...) {
  static char out[1 << 20];
  char args[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(args, sizeof args, fmt, ap);
  va_end(ap);
  int st = flctl(out, sizeof out, "--json %s", args);
  cr_assert_eq(st, 0, "flctl %s: exit %d", args, st);
  json_t *j = json_loads(out, 0, NULL);
  cr_assert_not_null(j, "flctl %s: not JSON: %.200s", args, out);
  return j;
}

static json_int_t jint(const json_t *o, const char *key) {
  return json_integer_value(json_object_get(o, key));
}

static const char *jstr(const json_t *o, const char *key) {
  const char *s = json_string_value(json_object_get(o, key));
  return s ? s : "";
}

/* ---- models ------------------------------------------------------------------------------- */

/* FL_H_SMALL_SPEC's MLP (6 -> 4 relu -> 3): the predicted class. */
static int predict(const float *w, const float *x) {
  const float *w1 = w, *b1 = w + 24, *w2 = w + 28, *b2 = w + 40;
  float h[4];
  int best = 0;
  double best_v = -INFINITY;
  for (int i = 0; i < 4; i++) {
    double s = b1[i];
    for (int j = 0; j < NFEAT; j++)
      s += (double)w1[i * NFEAT + j] * x[j];
    h[i] = s > 0 ? (float)s : 0.0f;
  }
  for (int k = 0; k < NCLS; k++) {
    double s = b2[k];
    for (int j = 0; j < 4; j++)
      s += (double)w2[k * 4 + j] * h[j];
    if (s > best_v) {
      best_v = s;
      best = k;
    }
  }
  return best;
}

/* One round of two harness devices with a fixed large delta; returns the closed round. */
static void train_round(fl_h_device *hd, uint64_t model_id, int seed) {
  Fl__V1__CheckInResponse *resp[2];
  Fl__V1__ModelVersion *base = NULL;
  uint64_t round_id = 0;
  for (int i = 0; i < 2; i++) {
    cr_assert_eq(fl_h_checkin(&g_coord, &hd[i], model_id, &resp[i]), 0);
    cr_assert_eq(resp[i]->assignment_case, FL__V1__CHECK_IN_RESPONSE__ASSIGNMENT_TASK);
    round_id = resp[i]->task->round_id;
  }
  cr_assert_eq(fl_h_download(&g_coord, &hd[0], model_id, resp[0]->task->base_version, &base), 0);
  float delta[43];
  for (int i = 0; i < 43; i++)
    delta[i] = 1.5f * (float)sin(1.7 * i + 3.1 * seed);
  for (int i = 0; i < 2; i++) {
    fl_h_resp r;
    cr_assert_eq(fl_h_upload(&g_coord, &hd[i], base, round_id, delta, 10, NULL, &r), 0);
    cr_assert_eq(r.status, 200, "upload: %s", fl_h_error_reason(&r));
    fl_h_resp_free(&r);
    fl__v1__check_in_response__free_unpacked(resp[i], NULL);
  }
  fl__v1__model_version__free_unpacked(base, NULL);
  json_t *round = fl_h_wait_round(&g_coord, round_id, "closed", 30000);
  cr_assert_not_null(round, "round %llu did not close", (unsigned long long)round_id);
  json_decref(round);
}

typedef struct version {
  float *w;
  size_t n;
  uint8_t sha[FL_SHA256_LEN];
} version;

static version g_v[4]; /* g_v[k]: version k as downloaded and verified by the harness */

static void fetch_versions(fl_h_device *hd, uint64_t model_id) {
  for (uint64_t k = 1; k <= 3; k++) {
    Fl__V1__ModelVersion *mv = NULL;
    cr_assert_eq(fl_h_download(&g_coord, hd, model_id, k, &mv), 0, "v%llu verifies",
                 (unsigned long long)k);
    cr_assert_eq(fl_h_weights(mv, &g_v[k].w, &g_v[k].n), 0);
    memcpy(g_v[k].sha, mv->sha256.data, FL_SHA256_LEN);
    fl__v1__model_version__free_unpacked(mv, NULL);
  }
}

/* ---- the fleet ---------------------------------------------------------------------------- */

typedef struct dev {
  char dir[64];
  fl_client *c;
  uint64_t id;
  bool rev_b; /* label hw=rev-b, else hw=rev-a */
  float x[NHOLD * NFEAT];
  int32_t y[NHOLD];
} dev;

static dev g_dev[NDEV];
static fl_multi *g_multi;

/* Hold-out examples with version 2's predictions as labels. */
static void make_holdout(dev *d, int k) {
  uint64_t s = 0x9e3779b97f4a7c15ULL * (uint64_t)(k + 1);
  for (int i = 0; i < NHOLD * NFEAT; i++) {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    d->x[i] = (float)((double)(s >> 11) / 9007199254740992.0 * 4.0 - 2.0);
  }
  for (int i = 0; i < NHOLD; i++)
    d->y[i] = predict(g_v[2].w, d->x + i * NFEAT);
}

static double accuracy(const float *w) {
  int ok = 0;
  for (int k = 0; k < NDEV; k++)
    for (int i = 0; i < NHOLD; i++)
      ok += predict(w, g_dev[k].x + i * NFEAT) == g_dev[k].y[i];
  return (double)ok / (NDEV * NHOLD);
}

static void open_fleet(uint64_t model_id) {
  json_t *ta = flctl_json("enrollment-tokens create --count %d --labels hw=rev-a", NDEV / 2);
  json_t *tb = flctl_json("enrollment-tokens create --count %d --labels hw=rev-b", NDEV / 2);
  cr_assert_eq(fl_multi_new(&g_multi, NULL), FL_OK);
  for (int k = 0; k < NDEV; k++) {
    dev *d = &g_dev[k];
    d->rev_b = k % 2 == 1;
    json_t *tok = json_array_get(json_object_get(d->rev_b ? tb : ta, "tokens"), (size_t)k / 2);
    snprintf(d->dir, sizeof d->dir, "/tmp/fl-itest-rollout-XXXXXX");
    cr_assert_not_null(mkdtemp(d->dir));
    fl_client_opts o = {.version = FL_CLIENT_OPTS_VERSION,
                        .server_url = g_coord.url,
                        .allow_insecure_http = 1, /* the coordinator is on loopback */
                        .state_dir = d->dir,
                        .request_timeout_ms = 30000,
                        .backoff_base_ms = 50,
                        .backoff_max_ms = 500,
                        .model_id = model_id};
    cr_assert_eq(fl_client_new(&d->c, &o), FL_OK);
    cr_assert_eq(fl_client_enroll(d->c, json_string_value(tok), NULL, 0, "itest"), FL_OK, "%s",
                 fl_client_errmsg(d->c));
    d->id = fl_client_device_id(d->c);
    make_holdout(d, k);
    cr_assert_eq(fl_client_set_holdout_memory(d->c, d->x, d->y, NHOLD, NFEAT), FL_OK);
    cr_assert_eq(fl_multi_add(g_multi, d->c), FL_OK);
  }
  json_decref(ta);
  json_decref(tb);
}

static void close_fleet(void) {
  for (int k = 0; k < NDEV; k++) {
    char cmd[128];
    cr_assert_eq(fl_multi_remove(g_multi, g_dev[k].c), FL_OK);
    fl_client_free(g_dev[k].c);
    int n = snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dev[k].dir);
    cr_assert(n > 0 && (size_t)n < sizeof cmd, "state dir path too long: %s", g_dev[k].dir);
    cr_assert_eq(system(cmd), 0);
  }
  fl_multi_free(g_multi);
  for (int k = 1; k <= 3; k++)
    free(g_v[k].w);
}

/* Every device checks in once (no round is open: rollouts and evaluations only). Returns the
 * number of evaluations reported. */
static int wave(void) {
  int done = 0, evals = 0;
  for (int k = 0; k < NDEV; k++)
    cr_assert_eq(fl_client_round_begin(g_dev[k].c), FL_OK);
  for (int iter = 0; iter < 20000 && done < NDEV; iter++) {
    cr_assert_eq(fl_multi_perform(g_multi, 50), FL_OK);
    fl_client *c;
    fl_step st;
    fl_err err;
    while (fl_multi_next(g_multi, &c, &st, &err)) {
      cr_assert_eq(st, FL_STEP_DONE);
      cr_assert_eq(err, FL_OK, "%s", fl_client_errmsg(c));
      fl_round_result r = {.size = sizeof r};
      fl_client_round_result(c, &r);
      cr_assert_eq(r.outcome, FL_ROUND_NOT_SELECTED);
      cr_assert_eq(r.rollout_err, FL_OK, "%s", fl_client_errmsg(c));
      cr_assert_eq(r.eval_err, FL_OK, "%s", fl_client_errmsg(c));
      evals += r.eval_version != 0;
      done++;
    }
  }
  cr_assert_eq(done, NDEV, "only %d devices finished their check-in", done);
  return evals;
}

/* The version a device serves, checked against the coordinator's signed version: the model
 * digest it verified is the one the harness verified for that version. */
static uint64_t running(const dev *d) {
  fl_model_info mi = {.size = sizeof mi};
  cr_assert_eq(fl_client_model_info(d->c, &mi), FL_OK, "device %llu has no model",
               (unsigned long long)d->id);
  cr_assert(mi.version >= 1 && mi.version <= 3);
  cr_assert_eq(memcmp(mi.sha256, g_v[mi.version].sha, FL_SHA256_LEN), 0);
  return mi.version;
}

/* Devices of the cohort (all when cohort < 0) in the hash set run `in`, the others `out`;
 * returns how many are in. The pinned device is left out. */
static int check_split(uint64_t rollout, double pct, int cohort_rev_b, uint64_t in, uint64_t out,
                       uint64_t pinned) {
  int n_in = 0;
  for (int k = 0; k < NDEV; k++) {
    const dev *d = &g_dev[k];
    if (d->id == pinned)
      continue;
    bool eligible = cohort_rev_b < 0 || d->rev_b == (cohort_rev_b == 1);
    bool is_in = eligible && fl_sup_doc_member("fl.v1.rollout", d->id, rollout, pct);
    uint64_t v = running(d);
    cr_assert_eq(v, is_in ? in : out, "device %llu runs v%llu", (unsigned long long)d->id,
                 (unsigned long long)v);
    n_in += is_in;
  }
  return n_in;
}

/* |k - n p| within 4 standard deviations of a binomial(n, p). */
static void binomial_ok(int k, int n, double p) {
  double sd = sqrt(n * p * (1 - p));
  cr_assert(fabs(k - n * p) <= 4 * sd, "%d of %d is not about %.0f%%", k, n, 100 * p);
}

/* The coordinator's fleet view of channel stable: the share running `version`. */
static double fleet_share(uint64_t model_id, uint64_t version) {
  json_t *j = flctl_json("fleet %llu", (unsigned long long)model_id);
  json_t *ch = json_array_get(json_object_get(j, "channels"), 0), *run;
  size_t i;
  double share = 0;
  cr_assert_str_eq(jstr(ch, "channel"), "stable");
  cr_assert_eq(jint(ch, "devices"), NDEV);
  json_array_foreach(json_object_get(ch, "running"), i,
                     run) if (jint(run, "version") == (json_int_t)version) share =
      json_number_value(json_object_get(run, "fraction"));
  json_decref(j);
  return share;
}

/* How many devices the coordinator's record shows running what they run. */
static int devices_matching(uint64_t model_id) {
  json_t *j = flctl_json("devices list");
  json_t *row;
  size_t i;
  int seen = 0;
  json_array_foreach(json_object_get(j, "devices"), i, row) {
    for (int k = 0; k < NDEV; k++)
      if ((json_int_t)g_dev[k].id == jint(row, "device_id") &&
          jint(row, "running_model_id") == (json_int_t)model_id &&
          jint(row, "running_version") == (json_int_t)running(&g_dev[k]))
        seen++;
  }
  json_decref(j);
  return seen;
}

/* The coordinator's record of what each device reported running equals what it runs, once
 * the check-ins' telemetry is flushed (batched: store/seen.h, within about a second). */
static void devices_agree(uint64_t model_id) {
  int seen = 0;
  for (int i = 0; i < 50 && (seen = devices_matching(model_id)) != NDEV; i++)
    usleep(100000);
  cr_assert_eq(seen, NDEV, "%d of %d devices' reports recorded", seen, NDEV);
}

/* ---- the scenario ------------------------------------------------------------------------- */

static uint64_t g_model;

static void make_model_and_versions(void) {
  char out[4096];
  json_t *m = flctl_json("models create rollout-itest --seed 1 --spec '%s'", FL_H_SMALL_SPEC);
  g_model = (uint64_t)jint(m, "model_id");
  json_decref(m);
  json_t *p = flctl_json(
      "plans create %llu --plan '{\"participants\":2,\"min_participants\":2,"
      "\"over_selection\":1.0,\"deadline_s\":600,\"rounds\":2,"
      "\"clip_norm\":0}'",
      (unsigned long long)g_model);
  uint64_t plan = (uint64_t)jint(p, "plan_id");
  json_decref(p);
  fl_h_device hd[2];
  memset(hd, 0, sizeof hd);
  cr_assert_eq(fl_h_enroll_devices(&g_coord, hd, 2), 0);
  train_round(hd, g_model, 1);
  train_round(hd, g_model, 2);
  fetch_versions(&hd[0], g_model);
  /* The trainers are done: revoked devices leave the fleet view. */
  for (int i = 0; i < 2; i++) {
    json_t *rv = flctl_json("devices revoke %llu", (unsigned long long)hd[i].id);
    cr_assert_str_eq(jstr(rv, "state"), "revoked");
    json_decref(rv);
    fl_h_device_free(&hd[i]);
  }
  /* The plan has run its rounds; stopping it changes nothing but must answer. */
  json_t *st = flctl_json("plans stop %llu", (unsigned long long)plan);
  cr_assert_str_eq(jstr(st, "state"), "done");
  json_decref(st);
  /* Lineage in the versions table: 3 <- 2 <- 1. */
  json_t *v = flctl_json("versions list %llu", (unsigned long long)g_model);
  cr_assert_eq(json_array_size(json_object_get(v, "versions")), 3);
  cr_assert_eq(jint(json_array_get(json_object_get(v, "versions"), 2), "parent_version"), 2);
  json_decref(v);
  cr_assert_eq(flctl(out, sizeof out, "versions list %llu", (unsigned long long)g_model), 0);
  cr_assert(strstr(out, "PARENT") != NULL && strstr(out, "participants=2") != NULL, "%s", out);
  cr_assert_eq(flctl(out, sizeof out, "models list"), 0);
  cr_assert(strstr(out, "rollout-itest") != NULL, "%s", out);
  json_t *rounds = flctl_json("rounds list --model %llu", (unsigned long long)g_model);
  json_t *r0 = json_array_get(json_object_get(rounds, "rounds"), 0);
  cr_assert_eq(json_array_size(json_object_get(rounds, "rounds")), 2);
  json_t *one = flctl_json("rounds get %lld", (long long)jint(r0, "round_id"));
  cr_assert_eq(jint(one, "result_version"), 2);
  json_decref(one);
  json_decref(rounds);
}

static json_t *rollout_get(uint64_t id) {
  return flctl_json("rollouts get %llu", (unsigned long long)id);
}

Test(rollout, staged_gated_promoted_stopped_and_rolled_back, .init = setup, .fini = teardown,
     .timeout = 600) {
  char out[1 << 16];
  make_model_and_versions();
  open_fleet(g_model);
  /* By construction v2 is right on every hold-out example; v1 and v3 are clearly worse. */
  cr_assert_float_eq(accuracy(g_v[2].w), 1.0, 1e-12);
  cr_assert_lt(accuracy(g_v[1].w), 0.95);
  cr_assert_lt(accuracy(g_v[3].w), 0.95);

  /* Channel stable on v1; one device pinned to v3 for the whole staged part. */
  json_t *ch = flctl_json("channels set %llu stable 1", (unsigned long long)g_model);
  uint64_t channel = (uint64_t)jint(ch, "channel_id");
  json_decref(ch);
  uint64_t pinned = g_dev[7].id;
  json_t *pin = flctl_json("pins add %llu 3 --device %llu", (unsigned long long)g_model,
                           (unsigned long long)pinned);
  uint64_t pin_id = (uint64_t)jint(pin, "pin_id");
  json_decref(pin);
  cr_assert_eq(wave(), 0);
  cr_assert_eq(check_split(1, 0, -1, 2, 1, pinned), 0);
  cr_assert_eq(running(&g_dev[7]), 3);

  /* Stage 1: v2 to 10% of stable with an accuracy gate relative to the channel's version. */
  json_t *r1 = flctl_json(
      "rollouts create %llu 2 --percent 10 --gate '{\"metric\":\"accuracy\","
      "\"min_delta\":-0.005,\"sample_pct\":30,\"min_reports\":20}'",
      (unsigned long long)g_model);
  uint64_t rid1 = (uint64_t)jint(r1, "rollout_id");
  cr_assert_str_eq(jstr(r1, "gate_state"), "evaluating");
  json_decref(r1);
  int evals = wave();
  int in10 = check_split(rid1, 10, -1, 2, 1, pinned);
  binomial_ok(in10, NDEV - 1, 0.10);
  cr_assert_gt(evals, 20, "the gate's sample evaluated the candidate (%d)", evals);
  /* Only the candidate is evaluated so far: promotion must wait for the gate. */
  cr_assert_eq(flctl(out, sizeof out, "rollouts promote %llu", (unsigned long long)rid1), 1);

  /* Stage 2: 50%; the first 10% stay in (check_split asserts every device's version). */
  json_decref(flctl_json("rollouts raise %llu 50", (unsigned long long)rid1));
  evals = wave();
  int in50 = check_split(rid1, 50, -1, 2, 1, pinned);
  binomial_ok(in50, NDEV - 1, 0.50);
  cr_assert_gt(in50, in10);
  for (int k = 0; k < NDEV; k++)
    if (g_dev[k].id != pinned && fl_sup_doc_member("fl.v1.rollout", g_dev[k].id, rid1, 10))
      cr_assert_eq(running(&g_dev[k]), 2);
  cr_assert_gt(evals, 20, "the sample evaluated the current version (%d)", evals);
  json_t *g1 = rollout_get(rid1);
  cr_assert_str_eq(jstr(g1, "gate_state"), "passed", "%s", jstr(g1, "reason"));
  json_t *res = json_object_get(g1, "gate_result");
  cr_assert_float_eq(json_number_value(json_object_get(res, "candidate")), 1.0, 1e-9);
  cr_assert_lt(json_number_value(json_object_get(res, "current")), 0.95);
  json_decref(g1);

  /* Pause freezes the rollout: raising is refused until it resumes. */
  json_t *pz = flctl_json("rollouts pause %llu", (unsigned long long)rid1);
  cr_assert_str_eq(jstr(pz, "state"), "paused");
  json_decref(pz);
  cr_assert_eq(flctl(out, sizeof out, "rollouts raise %llu 60", (unsigned long long)rid1), 1);
  json_t *rs = flctl_json("rollouts resume %llu", (unsigned long long)rid1);
  cr_assert_str_eq(jstr(rs, "state"), "active");
  json_decref(rs);

  /* Promote: every device of the channel runs v2. */
  json_t *pr = flctl_json("rollouts promote %llu", (unsigned long long)rid1);
  cr_assert_str_eq(jstr(pr, "state"), "promoted");
  json_decref(pr);
  wave();
  cr_assert_eq(check_split(rid1, 0, -1, 1, 2, pinned), 0);

  /* v3 to 25% of the hw=rev-b cohort: rev-a devices never get it; the gate fails. */
  json_t *r2 = flctl_json(
      "rollouts create %llu 3 --percent 25 --cohort hw=rev-b --gate '{\"metric\":\"accuracy\","
      "\"min_delta\":-0.005,\"sample_pct\":40,\"min_reports\":15}'",
      (unsigned long long)g_model);
  uint64_t rid2 = (uint64_t)jint(r2, "rollout_id");
  json_decref(r2);
  wave();
  int in25 = check_split(rid2, 25, 1, 3, 2, pinned);
  binomial_ok(in25, NDEV / 2 - 1, 0.25);
  wave(); /* the sample reports v2; the gate decides during this wave */
  json_t *g2 = rollout_get(rid2);
  cr_assert_str_eq(jstr(g2, "state"), "stopped");
  cr_assert_str_eq(jstr(g2, "gate_state"), "failed");
  cr_assert(strncmp(jstr(g2, "reason"), "gate_failed: accuracy", 21) == 0, "%s",
            jstr(g2, "reason"));
  json_decref(g2);
  cr_assert_eq(flctl(out, sizeof out, "rollouts promote %llu", (unsigned long long)rid2), 1);
  wave();
  cr_assert_eq(check_split(rid2, 0, 1, 3, 2, pinned), 0);

  /* Unpin, then roll the promoted v2 back: every device returns to v1 at its next check-in. */
  json_decref(flctl_json("pins remove %llu", (unsigned long long)pin_id));
  json_t *rb = flctl_json("rollouts rollback %llu", (unsigned long long)rid1);
  cr_assert_str_eq(jstr(rb, "state"), "rolled_back");
  json_decref(rb);
  wave();
  cr_assert_eq(check_split(rid1, 0, -1, 2, 1, 0), 0);
  /* Once more, so that every device has reported the version it now runs. */
  wave();
  devices_agree(g_model);
  cr_assert_float_eq(fleet_share(g_model, 1), 1.0, 1e-12);
  cr_assert_eq(flctl(out, sizeof out, "fleet %llu", (unsigned long long)g_model), 0);
  cr_assert(strstr(out, "100.0%") != NULL, "%s", out);

  /* Channel-level rollback flips between the last two versions. */
  json_t *c1 = flctl_json("channels rollback %llu", (unsigned long long)channel);
  cr_assert_eq(jint(c1, "version"), 2);
  json_decref(c1);
  json_t *c2 = flctl_json("channels rollback %llu", (unsigned long long)channel);
  cr_assert_eq(jint(c2, "version"), 1);
  json_decref(c2);
  cr_assert_eq(flctl(out, sizeof out, "channels list --model %llu", (unsigned long long)g_model),
               0);
  cr_assert(strstr(out, "stable") != NULL, "%s", out);

  /* Tables for the rollouts and the audit trail of every change. */
  cr_assert_eq(flctl(out, sizeof out, "rollouts list --model %llu", (unsigned long long)g_model),
               0);
  cr_assert(strstr(out, "rolled_back") != NULL && strstr(out, "stopped") != NULL, "%s", out);
  json_t *audit = flctl_json("audit --limit 1000");
  static const char *const actions[] = {
      "channel.set",         "pin.create",     "rollout.create",      "rollout.raise",
      "rollout.pause",       "rollout.resume", "rollout.gate_passed", "rollout.promote",
      "rollout.gate_failed", "pin.delete",     "rollout.rollback",    "channel.rollback"};
  for (size_t a = 0; a < sizeof actions / sizeof actions[0]; a++) {
    bool found = false;
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(audit, "entries"), i, e) found |=
        strcmp(jstr(e, "action"), actions[a]) == 0;
    cr_assert(found, "no audit entry %s", actions[a]);
  }
  json_decref(audit);
  cr_assert_eq(flctl(out, sizeof out, "audit --limit 5"), 0);
  cr_assert(strstr(out, "ACTION") != NULL, "%s", out);
  close_fleet();
}

Test(rollout, flctl_devices_tokens_pins_and_errors, .init = setup, .fini = teardown,
     .timeout = 120) {
  char out[1 << 16];
  json_t *tok = flctl_json("tokens create viewer --name ro");
  cr_assert_eq(strlen(jstr(tok, "token")), 64);
  /* A viewer may read but not change. */
  cr_assert_eq(flctl(out, sizeof out, "--token %s models list", jstr(tok, "token")), 0);
  cr_assert_eq(flctl(out, sizeof out, "--token %s models create x --spec '%s'", jstr(tok, "token"),
                     FL_H_SMALL_SPEC),
               1);
  json_decref(tok);
  fl_h_device d;
  memset(&d, 0, sizeof d);
  cr_assert_eq(fl_h_enroll_devices(&g_coord, &d, 1), 0);
  cr_assert_eq(flctl(out, sizeof out, "devices list"), 0);
  cr_assert(strstr(out, "DEVICE") != NULL && strstr(out, "active") != NULL, "%s", out);
  json_t *rv = flctl_json("devices revoke %llu", (unsigned long long)d.id);
  cr_assert_str_eq(jstr(rv, "state"), "revoked");
  json_decref(rv);
  fl_h_device_free(&d);
  cr_assert_eq(flctl(out, sizeof out, "enrollment-tokens create --count 2 --ttl 60"), 0);
  cr_assert_eq(strlen(out), 2 * 33, "two tokens, one a line: %s", out);
  json_t *m = flctl_json("models create pins-m --spec '%s'", FL_H_SMALL_SPEC);
  unsigned long long mid = (unsigned long long)jint(m, "model_id");
  json_decref(m);
  /* A rollout needs its channel; a channel needs an existing version. */
  cr_assert_eq(flctl(out, sizeof out, "rollouts create %llu 1 --percent 5", mid), 1);
  cr_assert_eq(flctl(out, sizeof out, "channels set %llu stable 9", mid), 1);
  json_decref(flctl_json("channels set %llu canary 1", mid));
  json_t *pin = flctl_json("pins add %llu 1 --labels site=plant-3,hw=rev-b", mid);
  cr_assert_str_eq(jstr(json_object_get(pin, "labels"), "site"), "plant-3");
  json_decref(pin);
  cr_assert_eq(flctl(out, sizeof out, "pins list"), 0);
  cr_assert(strstr(out, "site=plant-3") != NULL, "%s", out);
  /* Bad gates and unknown commands are refused before anything changes. */
  cr_assert_eq(
      flctl(out, sizeof out,
            "rollouts create %llu 1 --channel canary --gate '{\"metric\":\"accuracy\"}'", mid),
      1);
  cr_assert_eq(flctl(out, sizeof out, "rollouts frobnicate 1"), 2);
  cr_assert_eq(flctl(out, sizeof out, "info"), 0);
  cr_assert(strstr(out, "public_key") != NULL, "%s", out);
}
