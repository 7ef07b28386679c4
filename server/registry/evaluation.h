/*
 * Federated evaluation of every version a plan produces (evaluation.c; the math is
 * evalstats.c). A plan's "evaluation" policy opens an evaluation campaign for each new version
 * when its round closes; check-ins hand the version as an EvalTask (campaign_id set, gate_id 0)
 * to a sample of the plan's cohort: a share of it (a stable hash of device and campaign, as
 * gates sample) or the first `count` eligible devices (per value of `by_label` when given).
 * Reports of the sampled devices are stored and aggregated into the campaign's result, which
 * the admin API shows with the version (docs/API.md, "Federated evaluation").
 */
#ifndef FL__EVALUATION_H
#define FL__EVALUATION_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "crypto.h"
#include "rounds/cohort.h"
#include "store/store_pg.h"

#define FL_EVAL_DOMAIN "fl.v1.evaluation"
#define FL_EVAL_LABEL_MAX 64

typedef struct fl_eval_policy {
  bool on;
  double share;      /* (0, 1]: this share of the cohort; 0 when count is used */
  uint32_t count;    /* the first `count` devices (per by_label value); 0 when share is used */
  double max_weight; /* per-device weight cap in examples */
  char by_label[FL_EVAL_LABEL_MAX]; /* "" or a label key: results (and counts) per its value */
} fl_eval_policy;

/* {"share": s} or {"count": n}, optional "max_weight" (default 1000) and "by_label".
 * NULL j: no evaluation. -1 with a message on anything else. */
int fl__eval_policy_parse(fl_eval_policy *p, const json_t *j, char msg[160]);
/* The policy's JSON form; NULL when off (or on OOM). */
json_t *fl__eval_policy_to_json(const fl_eval_policy *p);

/* Opens the campaign of a new version of a plan with the policy ev (on) and the plan's cohort
 * inside the caller's transaction (the one that stores the version), closing the plan's
 * earlier campaigns: devices are handed the newest version. 0 or -1. */
int fl__eval_open(PGconn *c, uint64_t plan_id, const fl_eval_policy *ev, const fl_cohort *co,
                  uint64_t model_id, uint64_t version);

/* An EvalTask for a checking-in device, when an open campaign of the model (0: any) samples
 * it and it has not been given this one yet. conds: the check-in's conditions (the plan's
 * cohort must hold). 1 with *t filled (and the hand-out recorded), 0 none, -1 error. */
typedef struct fl_eval_hand {
  uint64_t campaign_id, model_id, version;
  uint8_t sha256[FL_SHA256_LEN];
} fl_eval_hand;
int fl__eval_for_checkin(PGconn *c, uint64_t device_id, uint64_t model_id, char *const *conds,
                         size_t n_conds, fl_eval_hand *t);

/* Whether device_id may report for the campaign on (model_id, version): 1 it was handed the
 * task, 2 the campaign exists but did not sample it, 0 no such campaign, -1 error. */
int fl__eval_sampled(PGconn *c, uint64_t campaign_id, uint64_t device_id, uint64_t model_id,
                     uint64_t version);

/* A report of the campaign was stored: recomputes its result from the newest report of each
 * device (evalstats.h). 0 or -1. */
int fl__eval_on_report(PGconn *c, uint64_t campaign_id);

#endif
