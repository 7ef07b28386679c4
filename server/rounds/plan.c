/*
 * Training plan parsing. The stored form is the output of fl__plan_to_json, so a plan read
 * back from the database goes through the same validation as one posted by an operator.
 */
#include "rounds/plan.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static const char *const ENCODINGS[] = {NULL, "float32", "float16", "int8", "topk"};

const char *fl__encoding_name(int e) { return e >= 1 && e <= 4 ? ENCODINGS[e] : "unknown"; }

static void defaults(fl_plan *p) {
  memset(p, 0, sizeof *p);
  p->participants = 10;
  p->over_selection = 1.3;
  p->deadline_s = 60;
  p->local_epochs = 1;
  p->batch_size = 10;
  p->learning_rate = 0.1;
  p->clip_norm = 10.0;
  p->encoding = 1;
  p->topk_fraction = 0.1;
  p->selection_pool = 3.0;
  p->target_delta = 1e-5;
  p->clip_learning_rate = 0.2;
  fl__opt_defaults(&p->opt, 0);
}

typedef struct num_field {
  const char *name;
  double lo, hi;
  bool integer;
} num_field;

/* Order matches num_ptr(). */
static const num_field NUMS[] = {
    {"participants", 1, 1e6, true},
    {"min_participants", 1, 1e6, true},
    {"over_selection", 1, 10, false},
    {"deadline_s", 1, 7 * 86400, true},
    {"local_epochs", 1, 1000, true},
    {"batch_size", 1, 1e6, true},
    {"learning_rate", 0, 100, false},
    {"momentum", 0, 1, false},
    {"weight_decay", 0, 1, false},
    {"prox_mu", 0, 1e3, false},
    {"clip_norm", 0, 1e9, false},
    {"noise_multiplier", 0, 1e3, false},
    {"local_noise_stddev", 0, 1e3, false},
    {"topk_fraction", 1e-6, 1, false},
    {"server_lr", 1e-9, 1e3, false},
    {"server_momentum", 0, 1, false},
    {"beta1", 0, 1, false},
    {"beta2", 0, 1, false},
    {"tau", 1e-12, 1, false},
    {"rounds", 0, 1e9, true},
    {"trim_fraction", 0, 0.5, false},
    {"byzantine", 0, 1e6, true},
    {"krum_select", 0, 1e6, true},
};
#define N_NUMS (sizeof NUMS / sizeof NUMS[0])

static void set_num(fl_plan *p, size_t i, double v) {
  switch (i) {
  case 0: p->participants = (uint32_t)v; break;
  case 1: p->min_participants = (uint32_t)v; break;
  case 2: p->over_selection = v; break;
  case 3: p->deadline_s = (uint32_t)v; break;
  case 4: p->local_epochs = (uint32_t)v; break;
  case 5: p->batch_size = (uint32_t)v; break;
  case 6: p->learning_rate = v; break;
  case 7: p->momentum = v; break;
  case 8: p->weight_decay = v; break;
  case 9: p->prox_mu = v; break;
  case 10: p->clip_norm = v; break;
  case 11: p->noise_multiplier = v; break;
  case 12: p->local_noise_stddev = v; break;
  case 13: p->topk_fraction = v; break;
  case 14: p->opt.lr = v; break;
  case 15: p->opt.momentum = v; break;
  case 16: p->opt.beta1 = v; break;
  case 17: p->opt.beta2 = v; break;
  case 18: p->opt.tau = v; break;
  case 19:
    p->rounds = (uint32_t)v;
    break;
  case 20:
    p->agg.trim_fraction = v;
    break;
  case 21:
    p->agg.byzantine = (uint32_t)v;
    break;
  default:
    p->agg.krum_select = (uint32_t)v;
    break;
  }
}

static int parse_enum(fl_plan *p, const json_t *j, char msg[160]) {
  const json_t *e = json_object_get(j, "encoding");
  const json_t *o = json_object_get(j, "server_optimizer");
  const json_t *g = json_object_get(j, "aggregator");
  if (g != NULL) {
    int k = json_is_string(g) ? fl__agg_rule(json_string_value(g)) : -1;
    if (k < 0) {
      snprintf(msg, 160,
               "aggregator must be fedavg, median, trimmed_mean, krum, multi_krum or bulyan");
      return -1;
    }
    p->agg.rule = (fl_agg_rule)k;
  }
  if (e != NULL) {
    p->encoding = 0;
    for (int i = 1; i <= 4; i++)
      if (json_is_string(e) && strcmp(json_string_value(e), ENCODINGS[i]) == 0)
        p->encoding = i;
    if (p->encoding == 0) {
      snprintf(msg, 160, "encoding must be float32, float16, int8 or topk");
      return -1;
    }
  }
  if (o != NULL) {
    int k = json_is_string(o) ? fl__opt_kind(json_string_value(o)) : -1;
    if (k < 0) {
      snprintf(msg, 160, "server_optimizer must be fedavg, fedavgm, fedadam or fedyogi");
      return -1;
    }
    fl__opt_defaults(&p->opt, k);
  }
  return 0;
}

/* Fair selection (rounds.c), apart from NUMS: the fields of one feature in one place. */
static const num_field SELECTION[] = {
    {"selection_window_s", 0, 3600, false},
    {"selection_pool", 1, 100, false},
};

static int parse_selection(fl_plan *p, const json_t *j, char msg[160]) {
  for (size_t i = 0; i < sizeof SELECTION / sizeof SELECTION[0]; i++) {
    const json_t *v = json_object_get(j, SELECTION[i].name);
    double d = json_number_value(v);
    if (v == NULL)
      continue;
    if (!json_is_number(v) || !isfinite(d) || d < SELECTION[i].lo || d > SELECTION[i].hi) {
      snprintf(msg, 160, "%s must be a number in [%g, %g]", SELECTION[i].name, SELECTION[i].lo,
               SELECTION[i].hi);
      return -1;
    }
    *(i == 0 ? &p->selection_window_s : &p->selection_pool) = d;
  }
  return 0;
}

/* Differential privacy (docs/PRIVACY.md), in the order of dp_ptr(). */
static const num_field DP[] = {
    {"target_delta", 1e-15, 0.1, false},   {"max_epsilon", 0, 1e6, false},
    {"clip_target_quantile", 0, 1, false}, {"clip_learning_rate", 0, 10, false},
    {"clip_count_stddev", 0, 1e9, false},
};
#define N_DP (sizeof DP / sizeof DP[0])

static double *dp_ptr(fl_plan *p, size_t i) {
  double *f[N_DP] = {&p->target_delta, &p->max_epsilon, &p->clip_target_quantile,
                     &p->clip_learning_rate, &p->clip_count_stddev};
  return f[i];
}

double fl__plan_count_stddev(const fl_plan *p) {
  return p->clip_count_stddev > 0 ? p->clip_count_stddev : p->participants / 20.0;
}

static int parse_dp(fl_plan *p, const json_t *j, char msg[160]) {
  for (size_t i = 0; i < N_DP; i++) {
    const json_t *v = json_object_get(j, DP[i].name);
    double d = json_number_value(v);
    if (v == NULL)
      continue;
    if (!json_is_number(v) || !isfinite(d) || d < DP[i].lo || d > DP[i].hi) {
      snprintf(msg, 160, "%s must be a number in [%g, %g]", DP[i].name, DP[i].lo, DP[i].hi);
      return -1;
    }
    *dp_ptr(p, i) = d;
  }
  return 0;
}

/* The DP fields against the rest of the plan (after every field is read). */
static int check_dp(const fl_plan *p, char msg[160]) {
  if (p->max_epsilon > 0 && !FL_PLAN_DP(p)) {
    snprintf(msg, 160, "max_epsilon needs noise_multiplier > 0");
    return -1;
  }
  if (p->clip_target_quantile <= 0)
    return 0;
  if (p->clip_norm <= 0) {
    snprintf(msg, 160, "clip_target_quantile needs clip_norm > 0 (the initial clip)");
    return -1;
  }
  if (fl__agg_kind(p->agg.rule) == FL_AGG_STORED) {
    snprintf(msg, 160, "clip_target_quantile applies to the fedavg aggregator only");
    return -1;
  }
  /* Andrew et al. 2021: the update noise z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2) exists only
   * when the count's noise alone is below the budget z. */
  double sb = fl__plan_count_stddev(p);
  if (FL_PLAN_DP(p) && !(2.0 * sb > p->noise_multiplier)) {
    snprintf(msg, 160,
             "clip_count_stddev %g must exceed noise_multiplier / 2 (%g) for adaptive clipping", sb,
             p->noise_multiplier / 2.0);
    return -1;
  }
  return 0;
}

static int known_key(const char *k) {
  for (size_t i = 0; i < sizeof SELECTION / sizeof SELECTION[0]; i++)
    if (strcmp(k, SELECTION[i].name) == 0)
      return 1;
  for (size_t i = 0; i < N_DP; i++)
    if (strcmp(k, DP[i].name) == 0)
      return 1;
  if (strcmp(k, "encoding") == 0 || strcmp(k, "server_optimizer") == 0 ||
      strcmp(k, "aggregator") == 0 || strcmp(k, "drift") == 0 || strcmp(k, "retrain") == 0 ||
      strcmp(k, "cohort") == 0)
    return 1;
  for (size_t i = 0; i < N_NUMS; i++)
    if (strcmp(k, NUMS[i].name) == 0)
      return 1;
  return 0;
}

int fl__plan_from_json(fl_plan *p, const json_t *j, char msg[160]) {
  const char *key;
  json_t *val;
  defaults(p);
  if (!json_is_object(j)) {
    snprintf(msg, 160, "plan must be a JSON object");
    return -1;
  }
  json_object_foreach((json_t *)j, key, val) {
    if (!known_key(key)) {
      snprintf(msg, 160, "unknown field %.60s", key);
      return -1;
    }
  }
  /* The optimizer first: it sets the defaults that server_lr etc. then override. */
  if (parse_enum(p, j, msg))
    return -1;
  if (parse_selection(p, j, msg) || parse_dp(p, j, msg) ||
      fl__drift_policy_from_json(&p->drift, j, msg))
    return -1;
  bool have_min = false;
  for (size_t i = 0; i < N_NUMS; i++) {
    const json_t *v = json_object_get(j, NUMS[i].name);
    if (v == NULL)
      continue;
    double d = json_number_value(v);
    if (!json_is_number(v) || !isfinite(d) || d < NUMS[i].lo || d > NUMS[i].hi ||
        (NUMS[i].integer && d != floor(d))) {
      snprintf(msg, 160, "%s must be a number in [%g, %g]", NUMS[i].name, NUMS[i].lo,
               NUMS[i].hi);
      return -1;
    }
    set_num(p, i, d);
    have_min |= i == 1;
  }
  if (!have_min)
    p->min_participants = p->participants;
  if (p->min_participants > p->participants) {
    snprintf(msg, 160, "min_participants must not exceed participants");
    return -1;
  }
  if (p->noise_multiplier > 0 && p->clip_norm <= 0) {
    snprintf(msg, 160, "noise_multiplier needs clip_norm > 0");
    return -1;
  }
  if (p->agg.trim_fraction >= 0.5) {
    snprintf(msg, 160, "trim_fraction must be in [0, 0.5)");
    return -1;
  }
  /* The Gaussian mechanism's stddev is calibrated to the sensitivity of a mean of clipped
   * updates; a median or a Krum pick has another one, so the noise would promise nothing. */
  if (p->noise_multiplier > 0 && fl__agg_kind(p->agg.rule) == FL_AGG_STORED) {
    snprintf(msg, 160, "noise_multiplier applies to the fedavg aggregator only");
    return -1;
  }
  /* A round may close with min_participants updates, so the rule must work with that many:
   * a round then never reaches its close with too few updates for its aggregator. */
  if (fl__agg_check(&p->agg, p->min_participants, p->participants, msg, 160))
    return -1;
  return check_dp(p, msg);
}

static json_t *base_json(const fl_plan *p) {
  return json_pack(
      "{s:i, s:i, s:f, s:i, s:i, s:i, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:s,"
      " s:f, s:s, s:f, s:f, s:f, s:f, s:f, s:i, s:s, s:f, s:i, s:i}",
      "participants", (json_int_t)p->participants, "min_participants",
      (json_int_t)p->min_participants, "over_selection", p->over_selection, "deadline_s",
      (json_int_t)p->deadline_s, "local_epochs", (json_int_t)p->local_epochs, "batch_size",
      (json_int_t)p->batch_size, "learning_rate", p->learning_rate, "momentum", p->momentum,
      "weight_decay", p->weight_decay, "prox_mu", p->prox_mu, "clip_norm", p->clip_norm,
      "noise_multiplier", p->noise_multiplier, "local_noise_stddev", p->local_noise_stddev,
      "encoding", fl__encoding_name(p->encoding), "topk_fraction", p->topk_fraction,
      "server_optimizer", fl__opt_name(p->opt.kind), "server_lr", p->opt.lr, "server_momentum",
      p->opt.momentum, "beta1", p->opt.beta1, "beta2", p->opt.beta2, "tau", p->opt.tau, "rounds",
      (json_int_t)p->rounds, "aggregator", fl__agg_rule_name(p->agg.rule), "trim_fraction",
      p->agg.trim_fraction, "byzantine", (json_int_t)p->agg.byzantine, "krum_select",
      (json_int_t)p->agg.krum_select);
}

json_t *fl__plan_to_json(const fl_plan *p) {
  json_t *j = base_json(p);
  if (j != NULL &&
      (json_object_set_new(j, "selection_window_s", json_real(p->selection_window_s)) ||
       json_object_set_new(j, "selection_pool", json_real(p->selection_pool)))) {
    json_decref(j);
    j = NULL;
  }
  fl_plan c = *p; /* dp_ptr names fields of a writable plan */
  for (size_t i = 0; j != NULL && i < N_DP; i++)
    if (json_object_set_new(j, DP[i].name, json_real(*dp_ptr(&c, i)))) {
      json_decref(j);
      j = NULL;
    }
  if (j != NULL && fl__drift_policy_to_json(&p->drift, j)) {
    json_decref(j);
    j = NULL;
  }
  return j;
}

uint32_t fl__plan_max_assign(const fl_plan *p) {
  double m = ceil((double)p->participants * p->over_selection - 1e-9);
  return m < p->participants ? p->participants : (uint32_t)m;
}

uint32_t fl__plan_pool(const fl_plan *p) {
  double m = ceil((double)fl__plan_max_assign(p) * p->selection_pool - 1e-9);
  return m > 1e9 ? 1000000000u : (uint32_t)m;
}
