/*
 * fl-sim's option checks: everything that the coordinator, the data or the plan would refuse
 * later is refused by sim_options_parse, before any service starts.
 */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "fl/err.h"
#include "options.h"
#include "transport.h"

#define ARGV(...)               \
  (char *[]) {                  \
    "fl-sim", __VA_ARGS__, NULL \
  }
#define ARGC(...) ((int)(sizeof((char *[]){"fl-sim", __VA_ARGS__}) / sizeof(char *)))
#define PARSE(o, ...) sim_options_parse((o), ARGC(__VA_ARGS__), ARGV(__VA_ARGS__))

static sim_options opts(void) {
  sim_options o;
  sim_options_defaults(&o);
  return o;
}

/* The check's message for o, "" when it passes. */
static const char *why(const sim_options *o) {
  static char msg[256];
  msg[0] = '\0';
  if (sim_options_check(o, msg, sizeof(msg)) == FL_OK)
    return "";
  cr_assert(msg[0] != '\0', "a refusal says why");
  return msg;
}

Test(sim_options, defaults_pass) {
  sim_options o = opts();
  cr_expect_str_empty(why(&o));
  cr_expect_float_eq(o.over_selection, 1.3, 1e-12);
  o.dataset = "sensor";
  cr_expect_str_empty(why(&o), "the sensor scenario defaults to the autoencoder");
  o.dataset = "synthetic";
  cr_expect_str_empty(why(&o));
}

Test(sim_options, negative_learning_rate_refused_by_parse) {
  sim_options o = opts();
  cr_expect_eq(PARSE(&o, "--lr", "-1"), FL_E_INVAL);
  o = opts();
  o.lr = -1;
  cr_expect(strstr(why(&o), "--lr") != NULL, "%s", why(&o));
  o.lr = 101;
  cr_expect(strstr(why(&o), "--lr") != NULL);
}

Test(sim_options, participants_beyond_devices) {
  sim_options o = opts();
  cr_expect_eq(PARSE(&o, "--devices", "50", "--participants", "60"), FL_E_INVAL);
  o = opts();
  cr_expect_eq(PARSE(&o, "--devices", "50", "--participants", "50"), FL_OK);
  o = opts();
  o.devices = 50;
  o.participants = 20;
  o.min_participants = 21;
  cr_expect(strstr(why(&o), "--min-participants") != NULL, "%s", why(&o));
  o.participants = 0; /* all 50 */
  cr_expect_str_empty(why(&o));
  o.min_participants = 51;
  cr_expect(strstr(why(&o), "--min-participants") != NULL);
}

Test(sim_options, output_layer_must_match_classes) {
  sim_options o = opts();
  o.layers = "dense:32,relu,dense:7";
  cr_expect(strstr(why(&o), "7 units") != NULL, "%s", why(&o));
  cr_expect(strstr(why(&o), "10") != NULL, "names the class count: %s", why(&o));
  o.layers = "dense:32,relu,dense:10";
  cr_expect_str_empty(why(&o));
  o.dataset = "sensor"; /* an autoencoder: the output must be the input's 64 bins */
  cr_expect(strstr(why(&o), "10 units") != NULL, "%s", why(&o));
  o.layers = "dense:8,relu,dense:64";
  cr_expect_str_empty(why(&o));
  o = opts();
  cr_expect_eq(PARSE(&o, "--layers", "dense:32,relu,dense:7"), FL_E_INVAL);
}

Test(sim_options, model_must_suit_the_data) {
  sim_options o = opts();
  o.model = "autoencoder"; /* Fashion-MNIST is labelled: a classifier */
  cr_expect(strstr(why(&o), "classifier") != NULL, "%s", why(&o));
  o.dataset = "sensor";
  cr_expect_str_empty(why(&o));
  o.model = "2nn";
  cr_expect_str_neq(why(&o), "");
  o = opts();
  o.model = "nosuchmodel";
  cr_expect(strstr(why(&o), "nosuchmodel") != NULL);
  o.model = "cnn";
  cr_expect_str_empty(why(&o));
  o.dataset = "synthetic"; /* 60 features: no square image for a CNN */
  cr_expect_str_neq(why(&o), "");
  o = opts();
  o.layers = "dense:32,bogus";
  cr_expect(strstr(why(&o), "--layers") != NULL);
}

Test(sim_options, over_selection_option) {
  sim_options o = opts();
  cr_expect_eq(PARSE(&o, "--over-selection", "2.5"), FL_OK);
  cr_expect_float_eq(o.over_selection, 2.5, 1e-12);
  o = opts();
  cr_expect_eq(PARSE(&o, "--over-selection", "0.5"), FL_E_INVAL);
  o = opts();
  cr_expect_eq(PARSE(&o, "--over-selection", "11"), FL_E_INVAL);
  o = opts();
  cr_expect_eq(PARSE(&o, "--over-selection", "nan"), FL_E_INVAL);
}

Test(sim_options, ranges_and_names) {
  sim_options o = opts();
  o.deadline_s = 2.5;
  cr_expect(strstr(why(&o), "--deadline") != NULL);
  o = opts();
  o.deadline_s = 0;
  cr_expect(strstr(why(&o), "--deadline") != NULL);
  o = opts();
  o.dropout = 1.5;
  cr_expect(strstr(why(&o), "--dropout") != NULL);
  o = opts();
  o.net_fail = 1;
  cr_expect(strstr(why(&o), "--net-fail") != NULL);
  o = opts();
  o.epochs = 0;
  cr_expect(strstr(why(&o), "--epochs") != NULL);
  o = opts();
  o.rounds = 0;
  cr_expect(strstr(why(&o), "--rounds") != NULL);
  o = opts();
  o.devices = 4;
  o.threads = 5;
  cr_expect(strstr(why(&o), "--threads") != NULL);
  o = opts();
  o.max_inflight = 0;
  cr_expect(strstr(why(&o), "--max-inflight") != NULL);
  o = opts();
  o.train_threads = -1;
  cr_expect(strstr(why(&o), "--train-threads") != NULL);
  o = opts();
  cr_expect_eq(o.max_inflight, 256, "no longer capped at 2 workers x 32");
  cr_expect_eq(PARSE(&o, "--max-inflight=1024", "--train-threads=3"), FL_OK);
  cr_expect_eq(o.max_inflight, 1024);
  cr_expect_eq(o.train_threads, 3);
  o = opts();
  o.encoding = "float8";
  cr_expect(strstr(why(&o), "--encoding") != NULL);
  o = opts();
  o.server_optimizer = "sgd";
  cr_expect(strstr(why(&o), "--server-optimizer") != NULL);
  o = opts();
  o.partition = "dirichlet";
  cr_expect(strstr(why(&o), "--partition") != NULL);
  o = opts();
  o.dataset = "mnist";
  cr_expect(strstr(why(&o), "--dataset") != NULL);
  o = opts();
  o.bad_kinds = "poison,evil";
  cr_expect(strstr(why(&o), "--bad-kinds") != NULL);
  o = opts();
  o.model_name = "";
  cr_expect(strstr(why(&o), "--model-name") != NULL);
  o = opts();
  o.devices = 1001; /* x 60 examples > Fashion-MNIST's 60000 */
  cr_expect_str_neq(why(&o), "");
  o.samples_per_device = 0; /* the whole set spread */
  cr_expect_str_empty(why(&o));
}

Test(sim_options, an_honest_device_is_left) {
  sim_options o = opts();
  o.devices = 20;
  o.bad_frac = 0.98; /* rounds to all 20 */
  cr_expect(strstr(why(&o), "--bad-devices") != NULL);
  o.bad_frac = 0.9;
  cr_expect_str_empty(why(&o));
}

Test(sim_options, url_needs_a_token) {
  unsetenv("FL_ADMIN_TOKEN");
  sim_options o = opts();
  o.url = "http://127.0.0.1:1";
  cr_expect(strstr(why(&o), "--admin-token") != NULL);
  o.admin_token = "t";
  cr_expect_str_empty(why(&o));
}

Test(sim_options, model_name_option) {
  sim_options o = opts();
  cr_expect_null(o.model_name, "unique per run unless given");
  cr_expect_eq(PARSE(&o, "--model-name", "my model"), FL_OK);
  cr_expect_str_eq(o.model_name, "my model");
}

Test(sim_options, robust_aggregation_and_in_bound_attacks) {
  sim_options o = opts();
  cr_expect_eq(PARSE(&o, "--aggregator", "trimmed_mean", "--trim-fraction", "0.2", "--byzantine",
                     "2", "--krum-select", "3", "--bad-kinds", "signflip,lie,labelflip"),
               FL_OK);
  cr_expect_str_eq(o.aggregator, "trimmed_mean");
  cr_expect_float_eq(o.trim_fraction, 0.2, 1e-12);
  cr_expect_eq(o.byzantine, 2);
  cr_expect_eq(o.krum_select, 3);
  cr_expect_eq(sim_options_bad_kinds(o.bad_kinds),
               (1 << SIM_SIGNFLIP) | (1 << SIM_LIE) | (1 << SIM_LABELFLIP));
  cr_expect_eq(sim_options_bad_kinds("scaled,noise"), (1 << SIM_SCALED) | (1 << SIM_NOISE));
  o = opts();
  o.aggregator = "geomedian";
  cr_expect(strstr(why(&o), "--aggregator") != NULL, "%s", why(&o));
  o = opts();
  o.trim_fraction = 0.5;
  cr_expect(strstr(why(&o), "--trim-fraction") != NULL, "%s", why(&o));
}

Test(sim_options, drift_options) {
  sim_options o = opts();
  cr_assert_eq(PARSE(&o, "--dataset", "sensor2", "--rounds", "10", "--drift-round", "4",
                     "--drift-share", "0.25", "--drift-kind", "machine"),
               FL_OK);
  cr_expect_eq(o.drift_round, 4);
  cr_expect_float_eq(o.drift_share, 0.25, 1e-12);
  cr_expect_str_eq(o.drift_kind, "machine");
  o.dataset = "sensor";
  cr_expect(strstr(why(&o), "needs --dataset sensor2") != NULL, "%s", why(&o));
  o.dataset = "sensor2";
  o.drift_round = 11;
  cr_expect(strstr(why(&o), "past the last round") != NULL, "%s", why(&o));
  o.drift_round = 4;
  o.drift_share = 1.5;
  cr_expect(strstr(why(&o), "--drift-share") != NULL, "%s", why(&o));
  o.drift_share = 0.3;
  o.drift_kind = "rust";
  cr_expect(strstr(why(&o), "bad --drift-kind rust") != NULL, "%s", why(&o));
  o.drift_kind = "wear";
  cr_expect_str_empty(why(&o));
}

Test(sim_options, drift_detection_options) {
  sim_options o = opts();
  cr_assert_eq(PARSE(&o, "--dataset", "sensor2", "--rounds", "10", "--drift-round", "4",
                     "--drift-detect", "--retrain-rounds", "3", "--psi-threshold", "0.2"),
               FL_OK);
  cr_expect_eq(o.drift_detect, 1);
  cr_expect_eq(o.retrain_rounds, 3);
  cr_expect_float_eq(o.psi_threshold, 0.2, 1e-12);
  cr_expect_str_empty(why(&o));
  o.retrain_rounds = 7; /* the run would end before the retraining */
  cr_expect(strstr(why(&o), "do not fit between --drift-round 4 and --rounds 10") != NULL, "%s",
            why(&o));
  o.retrain_rounds = 3;
  o.drift_detect = 0;
  cr_expect(strstr(why(&o), "--retrain-rounds needs --drift-detect") != NULL, "%s", why(&o));
  o.drift_detect = 1;
  o.drift_round = 0;
  cr_expect(strstr(why(&o), "need --drift-round") != NULL, "%s", why(&o));
  o.drift_round = 4;
  o.psi_threshold = 0;
  cr_expect(strstr(why(&o), "--psi-threshold") != NULL, "%s", why(&o));
  o.psi_threshold = 0.2;
  o.labels = "hw=a:0.5"; /* --drift-detect labels devices by site */
  cr_expect(strstr(why(&o), "--labels and --drift-detect exclude") != NULL, "%s", why(&o));
}

Test(sim_options, secure_aggregation_and_its_dropouts) {
  sim_options o = opts();
  uint32_t t, k;
  double drop[SIM_SA_PHASES];
  char msg[256];
  cr_expect_eq(sim_secagg_parse(&o, &t, &k, drop, msg, sizeof msg), FL_OK);
  cr_expect_eq(t, 0);
  o.secure_aggregation = "6:10";
  o.secagg_drop = "keys:0.05,masked:0.25,unmask:1";
  cr_assert_eq(sim_secagg_parse(&o, &t, &k, drop, msg, sizeof msg), FL_OK, "%s", msg);
  cr_expect_eq(t, 6);
  cr_expect_eq(k, 10);
  cr_expect_float_eq(drop[SIM_SA_KEYS], 0.05, 1e-12);
  cr_expect_float_eq(drop[SIM_SA_SHARES], 0, 1e-12);
  cr_expect_float_eq(drop[SIM_SA_MASKED], 0.25, 1e-12);
  cr_expect_float_eq(drop[SIM_SA_UNMASK], 1, 1e-12);
  cr_expect_str_empty(why(&o));
  static const char *const bad_sa[] = {"6", "6:5", "0:4", "6:10x", "a:b"};
  for (size_t i = 0; i < sizeof bad_sa / sizeof bad_sa[0]; i++) {
    o.secure_aggregation = bad_sa[i];
    o.secagg_drop = NULL;
    cr_expect(strstr(why(&o), "--secure-aggregation") != NULL, "%s: %s", bad_sa[i], why(&o));
  }
  static const char *const bad_drop[] = {
      "keys", "keys:2", "train:0.1", "keys:0.1,", "keys:0.1;shares:0.2", "keys:"};
  o.secure_aggregation = "6:10";
  for (size_t i = 0; i < sizeof bad_drop / sizeof bad_drop[0]; i++) {
    o.secagg_drop = bad_drop[i];
    cr_expect(strstr(why(&o), "--secagg-drop") != NULL, "%s: %s", bad_drop[i], why(&o));
  }
  o.secure_aggregation = NULL;
  o.secagg_drop = "keys:0.1";
  cr_expect(strstr(why(&o), "needs --secure-aggregation") != NULL, "%s", why(&o));
}

Test(sim_options, async_and_intermittency_options) {
  sim_options o = opts();
  cr_assert_eq(PARSE(&o, "--devices", "40", "--mode", "async", "--buffer-size", "8",
                     "--max-staleness", "3", "--offline-share", "0.5", "--offline-mean", "4"),
               FL_OK);
  cr_expect_str_eq(o.mode, "async");
  cr_expect_eq(o.buffer_size, 8);
  cr_expect_eq(o.max_staleness, 3);
  cr_expect_float_eq(o.offline_share, 0.5, 1e-12);
  cr_expect_float_eq(o.offline_mean_s, 4, 1e-12);
  o.buffer_size = 41;
  cr_expect(strstr(why(&o), "--buffer-size 41 exceeds") != NULL, "%s", why(&o));
  o.buffer_size = 8;
  o.selection_window_s = 2;
  cr_expect(strstr(why(&o), "no --selection-window") != NULL, "%s", why(&o));
  o.selection_window_s = -1;
  o.mode = "fedbuff";
  cr_expect(strstr(why(&o), "bad --mode fedbuff") != NULL, "%s", why(&o));
  o.mode = "sync";
  cr_expect(strstr(why(&o), "--buffer-size needs --mode async") != NULL, "%s", why(&o));
  o.buffer_size = 0;
  cr_expect_str_empty(why(&o));
  o.offline_share = 1.5;
  cr_expect(strstr(why(&o), "--offline-share") != NULL, "%s", why(&o));
}

Test(sim_options, cohort_and_evaluation_options) {
  sim_options o = opts();
  cr_assert_eq(
      PARSE(&o, "--labels", "site=a:0.5,site=b:0.5", "--conditions", "charging:0.7", "--cohort",
            "{\"labels\":{\"site\":\"a\"}}", "--eval-share", "0.2", "--eval-by", "site"),
      FL_OK);
  cr_expect_str_empty(why(&o));
  cr_expect_float_eq(o.eval_share, 0.2, 1e-12);
  o = opts();
  o.labels = "site=a";
  cr_expect(strstr(why(&o), "--labels") != NULL, "%s", why(&o));
  o = opts();
  o.conditions = "charging";
  cr_expect(strstr(why(&o), "--conditions") != NULL);
  o = opts();
  o.cohort = "[\"site\"]";
  cr_expect(strstr(why(&o), "--cohort") != NULL);
  o = opts();
  o.eval_share = 0.5;
  o.eval_count = 3;
  cr_expect(strstr(why(&o), "exclude") != NULL);
  o = opts();
  o.eval_by = "site";
  cr_expect(strstr(why(&o), "--eval-by") != NULL);
  o = opts();
  o.eval_share = 1.5;
  cr_expect(strstr(why(&o), "--eval-share") != NULL);
}
