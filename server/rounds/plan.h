/*
 * Training plans (plan.c): the JSON form used by the admin API and stored in plans.config,
 * with defaults and validation in one place.
 */
#ifndef FL__PLAN_H
#define FL__PLAN_H

#include <jansson.h>
#include <stdint.h>

#include "drift/policy.h"
#include "registry/evaluation.h"
#include "rounds/aggregator.h"
#include "rounds/cohort.h"
#include "rounds/optimizer.h"
#include "rounds/staleness.h"

typedef struct fl_plan {
  uint32_t participants;     /* target accepted updates per round */
  uint32_t min_participants; /* at the deadline, close with at least this many */
  double over_selection;     /* assign up to ceil(participants * over_selection) devices */
  uint32_t deadline_s;
  uint32_t local_epochs, batch_size;
  double learning_rate, momentum, weight_decay, prox_mu;
  double clip_norm;          /* 0: no bound */
  double noise_multiplier;   /* central DP (docs/PRIVACY.md): z; 0 = not a DP plan */
  double local_noise_stddev; /* devices add N(0, s^2) per element after clipping */
  int encoding;              /* fl.v1.Encoding */
  double topk_fraction;
  fl_opt_params opt;
  fl_agg_params agg;         /* the rounds' aggregator: fedavg streams, the others store updates */
  uint32_t rounds;           /* 0: continuous */
  double selection_window_s; /* fair selection window (rounds.c); 0: first come, first served */
  double selection_pool;     /* draw early at ceil(max_assign x pool) candidates */
  /* Differential privacy (docs/PRIVACY.md, close.c, privacy/accountant.h). */
  double target_delta;         /* the delta of the reported epsilon */
  double max_epsilon;          /* stop the plan before a round would exceed it; 0: no limit */
  double clip_target_quantile; /* adaptive clipping's gamma; 0: the clip is fixed */
  double clip_learning_rate;   /* eta_C of the geometric clip update */
  double clip_count_stddev;    /* sigma_b, the noise on the unclipped count; 0 = participants/20 */
  fl_drift_policy drift;       /* "drift", "retrain" (drift/policy.h) */
  /* Secure aggregation, SecAgg+ (docs/SECAGG.md, server/secagg/): threshold 0 = off. */
  struct {
    uint32_t threshold; /* t: shares that reconstruct a secret, k/2 < t <= k */
    uint32_t neighbors; /* k: neighbours per participant in the graph */
  } secagg;
  /* Asynchronous (FedBuff) plans (rounds/async.h): every round is a buffer of buffer_size
   * updates, which participants and min_participants equal; tasks of up to max_staleness
   * versions ago are folded with weight staleness(tau); at most max_concurrency tasks per
   * buffer. */
  int mode; /* FL_PLAN_SYNC or FL_PLAN_ASYNC */
  uint32_t buffer_size, max_staleness, max_concurrency;
  fl_staleness staleness;
  fl_cohort cohort;    /* the devices its rounds select (cohort.h); empty: all */
  fl_eval_policy eval; /* federated evaluation of each new version (evaluation.h) */
} fl_plan;

enum { FL_PLAN_SYNC = 0, FL_PLAN_ASYNC = 1 };
#define FL_PLAN_IS_ASYNC(p) ((p)->mode == FL_PLAN_ASYNC)

#define FL_PLAN_SECAGG(p) ((p)->secagg.threshold > 0)

/* A DP plan: central noise, uniform weights, an accountant (docs/PRIVACY.md). */
#define FL_PLAN_DP(p) ((p)->noise_multiplier > 0)
/* sigma_b as used: the plan's, or the paper's default of participants / 20. */
double fl__plan_count_stddev(const fl_plan *p);

/* Parses and validates; fields not given take their defaults; unknown fields are refused.
 * On error returns -1 with a message in msg. */
int fl__plan_from_json(fl_plan *p, const json_t *j, char msg[160]);
/* The complete plan (all fields) as JSON; NULL on allocation failure. */
json_t *fl__plan_to_json(const fl_plan *p);
uint32_t fl__plan_max_assign(const fl_plan *p);
/* Candidates at which a selection window draws early: ceil(max_assign * selection_pool). */
uint32_t fl__plan_pool(const fl_plan *p);
const char *fl__encoding_name(int encoding);

#endif
