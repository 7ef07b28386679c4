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
  p->max_staleness = 4;
  p->staleness = (fl_staleness){.exponent = 0.5, .kind = FL_STALE_SQRT};
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

/* "secure_aggregation": {"threshold": t, "neighbors": k}. */
static int parse_secagg(fl_plan *p, const json_t *j, char msg[160]) {
  const json_t *o = json_object_get(j, "secure_aggregation");
  const char *key;
  json_t *val;
  if (o == NULL || json_is_null(o))
    return 0;
  if (!json_is_object(o))
    goto bad;
  json_object_foreach((json_t *)o, key, val) {
    double d = json_number_value(val);
    bool t = strcmp(key, "threshold") == 0;
    if ((!t && strcmp(key, "neighbors") != 0) || !json_is_number(val) || d != floor(d) ||
        d < (t ? 1 : 2) || d > 1e6)
      goto bad;
    *(t ? &p->secagg.threshold : &p->secagg.neighbors) = (uint32_t)d;
  }
  if (p->secagg.threshold == 0 || p->secagg.neighbors == 0)
    goto bad;
  return 0;
bad:
  snprintf(msg, 160,
           "secure_aggregation must be {\"threshold\": t, \"neighbors\": k} with integers"
           " 1 <= t <= k, 2 <= k <= 1e6");
  return -1;
}

/* Secure aggregation against the rest of the plan. The coordinator sees only the sum, so what
 * needs individual updates (a robust rule) or per-update noise and clipping at the server
 * (central DP, adaptive clipping) cannot run on it; local noise would push coordinates past
 * the quantization range. Quantization needs a clip. */
static int check_secagg(const fl_plan *p, char msg[160]) {
  const char *why = NULL;
  if (!FL_PLAN_SECAGG(p))
    return 0;
  if (p->secagg.threshold > p->secagg.neighbors || 2 * p->secagg.threshold <= p->secagg.neighbors)
    why = "secure_aggregation needs neighbors / 2 < threshold <= neighbors";
  else if (p->noise_multiplier > 0 || p->max_epsilon > 0 || p->clip_target_quantile > 0 ||
           p->local_noise_stddev > 0)
    why =
        "secure_aggregation cannot be combined with differential privacy (noise_multiplier,"
        " max_epsilon, clip_target_quantile, local_noise_stddev)";
  else if (p->agg.rule != FL_AGGR_FEDAVG)
    why = "secure_aggregation needs the fedavg aggregator (a robust rule needs every update)";
  else if (p->clip_norm <= 0)
    why = "secure_aggregation needs clip_norm > 0 (the quantization range)";
  else if (FL_PLAN_IS_ASYNC(p))
    why = "secure_aggregation needs synchronous rounds (mode sync): a buffer has no phases";
  else if (p->min_participants <= p->secagg.threshold)
    why = "secure_aggregation needs min_participants > threshold";
  if (why != NULL)
    snprintf(msg, 160, "%s", why);
  return why != NULL ? -1 : 0;
}

/* Asynchronous (FedBuff) plans, apart from NUMS: the fields of one feature in one place. */
static const num_field ASYNC[] = {
    {"buffer_size", 1, 1e6, true},
    {"max_staleness", 0, 1e6, true},
    {"max_concurrency", 1, 1e6, true},
};
#define N_ASYNC (sizeof ASYNC / sizeof ASYNC[0])

static uint32_t *async_ptr(fl_plan *p, size_t i) {
  uint32_t *f[N_ASYNC] = {&p->buffer_size, &p->max_staleness, &p->max_concurrency};
  return f[i];
}

/* The async fields (read before NUMS: participants is checked against buffer_size after). */
static int parse_async(fl_plan *p, const json_t *j, char msg[160]) {
  const json_t *m = json_object_get(j, "mode"), *st = json_object_get(j, "staleness");
  if (m != NULL) {
    const char *t = json_is_string(m) ? json_string_value(m) : "";
    if (strcmp(t, "sync") != 0 && strcmp(t, "async") != 0) {
      snprintf(msg, 160, "mode must be sync or async");
      return -1;
    }
    p->mode = strcmp(t, "async") == 0 ? FL_PLAN_ASYNC : FL_PLAN_SYNC;
  }
  for (size_t i = 0; i < N_ASYNC; i++) {
    const json_t *v = json_object_get(j, ASYNC[i].name);
    double d = json_number_value(v);
    if (v == NULL)
      continue;
    if (!FL_PLAN_IS_ASYNC(p)) {
      snprintf(msg, 160, "%s needs \"mode\": \"async\"", ASYNC[i].name);
      return -1;
    }
    if (!json_is_number(v) || !isfinite(d) || d < ASYNC[i].lo || d > ASYNC[i].hi || d != floor(d)) {
      snprintf(msg, 160, "%s must be an integer in [%g, %g]", ASYNC[i].name, ASYNC[i].lo,
               ASYNC[i].hi);
      return -1;
    }
    *async_ptr(p, i) = (uint32_t)d;
  }
  if (st != NULL && !FL_PLAN_IS_ASYNC(p)) {
    snprintf(msg, 160, "staleness needs \"mode\": \"async\"");
    return -1;
  }
  if (st != NULL &&
      fl__staleness_parse(json_is_string(st) ? json_string_value(st) : NULL, &p->staleness, msg))
    return -1;
  return 0;
}

/* An async plan against the rest (after every field is read): a buffer is a round of
 * buffer_size updates, so participants and min_participants are buffer_size (given otherwise
 * they are refused, not overridden); what needs a synchronous round is refused. */
static int check_async(fl_plan *p, const json_t *j, char msg[160]) {
  if (!FL_PLAN_IS_ASYNC(p))
    return 0;
  bool have_k = json_object_get(j, "buffer_size") != NULL;
  if (!have_k)
    p->buffer_size = p->participants; /* participants' value or default */
  if ((json_object_get(j, "participants") != NULL && p->participants != p->buffer_size) ||
      (json_object_get(j, "min_participants") != NULL && p->min_participants != p->buffer_size)) {
    snprintf(msg, 160, "an async plan's participants and min_participants are its buffer_size");
    return -1;
  }
  p->participants = p->min_participants = p->buffer_size;
  if (json_object_get(j, "max_concurrency") == NULL)
    p->max_concurrency = p->buffer_size > 500000 ? 1000000 : 2 * p->buffer_size;
  if (p->max_concurrency < p->buffer_size) {
    snprintf(msg, 160, "max_concurrency must be at least buffer_size");
    return -1;
  }
  const char *why = NULL;
  if (p->selection_window_s > 0)
    why = "selection_window_s (devices get a task whenever they check in)";
  else if (FL_PLAN_DP(p))
    why = "noise_multiplier (the accountant assumes sampled synchronous rounds)";
  else if (fl__agg_kind(p->agg.rule) == FL_AGG_STORED)
    why = "a stored aggregator (robust rules are not defined over staleness weights)";
  if (why != NULL) {
    snprintf(msg, 160, "mode async does not support %s", why);
    return -1;
  }
  return 0;
}

static int known_key(const char *k) {
  for (size_t i = 0; i < N_ASYNC; i++)
    if (strcmp(k, ASYNC[i].name) == 0)
      return 1;
  if (strcmp(k, "mode") == 0 || strcmp(k, "staleness") == 0)
    return 1;
  for (size_t i = 0; i < sizeof SELECTION / sizeof SELECTION[0]; i++)
    if (strcmp(k, SELECTION[i].name) == 0)
      return 1;
  for (size_t i = 0; i < N_DP; i++)
    if (strcmp(k, DP[i].name) == 0)
      return 1;
  if (strcmp(k, "encoding") == 0 || strcmp(k, "server_optimizer") == 0 ||
      strcmp(k, "aggregator") == 0 || strcmp(k, "cohort") == 0 || strcmp(k, "evaluation") == 0 ||
      strcmp(k, "drift") == 0 || strcmp(k, "retrain") == 0 || strcmp(k, "secure_aggregation") == 0)
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
  if (parse_selection(p, j, msg) || parse_dp(p, j, msg) || parse_async(p, j, msg) ||
      fl__cohort_parse(&p->cohort, json_object_get(j, "cohort"), msg) ||
      fl__eval_policy_parse(&p->eval, json_object_get(j, "evaluation"), msg) ||
      fl__drift_policy_from_json(&p->drift, j, msg) || parse_secagg(p, j, msg))
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
  if (check_async(p, j, msg))
    return -1;
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
  return check_dp(p, msg) || check_secagg(p, msg) ? -1 : 0;
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

/* "mode" always; the async fields only in an async plan (a sync plan refuses them). */
static json_t *async_json(fl_plan *p, json_t *j) {
  char st[40];
  int bad = j == NULL ||
            json_object_set_new(j, "mode", json_string(FL_PLAN_IS_ASYNC(p) ? "async" : "sync"));
  fl__staleness_name(&p->staleness, st, sizeof st);
  for (size_t i = 0; !bad && FL_PLAN_IS_ASYNC(p) && i < N_ASYNC; i++)
    bad = json_object_set_new(j, ASYNC[i].name, json_integer(*async_ptr(p, i)));
  if (!bad && FL_PLAN_IS_ASYNC(p))
    bad = json_object_set_new(j, "staleness", json_string(st));
  if (bad) {
    json_decref(j);
    return NULL;
  }
  return j;
}

/* The cohort and the evaluation policy, when set, into j. 0 or -1 (allocation). */
static int add_cohort_eval(json_t *j, const fl_plan *p) {
  json_t *co = fl__cohort_to_json(&p->cohort), *ev = fl__eval_policy_to_json(&p->eval);
  int rc = (!fl__cohort_empty(&p->cohort) && co == NULL) || (p->eval.on && ev == NULL) ? -1 : 0;
  if (rc == 0 && co != NULL)
    rc = json_object_set(j, "cohort", co);
  if (rc == 0 && ev != NULL)
    rc = json_object_set(j, "evaluation", ev);
  json_decref(co);
  json_decref(ev);
  return rc;
}

json_t *fl__plan_to_json(const fl_plan *p) {
  json_t *j = base_json(p);
  if (j != NULL &&
      (json_object_set_new(j, "selection_window_s", json_real(p->selection_window_s)) ||
       json_object_set_new(j, "selection_pool", json_real(p->selection_pool)))) {
    json_decref(j);
    j = NULL;
  }
  if (j != NULL && add_cohort_eval(j, p)) {
    json_decref(j);
    j = NULL;
  }
  if (j != NULL && FL_PLAN_SECAGG(p) &&
      json_object_set_new(j, "secure_aggregation",
                          json_pack("{s:i, s:i}", "threshold", (json_int_t)p->secagg.threshold,
                                    "neighbors", (json_int_t)p->secagg.neighbors))) {
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
  return async_json(&c, j);
}

uint32_t fl__plan_max_assign(const fl_plan *p) {
  if (FL_PLAN_IS_ASYNC(p))
    return p->max_concurrency; /* tasks per buffer (rounds/async.h) */
  double m = ceil((double)p->participants * p->over_selection - 1e-9);
  return m < p->participants ? p->participants : (uint32_t)m;
}

uint32_t fl__plan_pool(const fl_plan *p) {
  double m = ceil((double)fl__plan_max_assign(p) * p->selection_pool - 1e-9);
  return m > 1e9 ? 1000000000u : (uint32_t)m;
}
