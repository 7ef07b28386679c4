/*
 * A plan's drift settings (policy.c, docs/API.md's plan table, docs/DRIFT.md): the "drift"
 * test and the "retrain" policy. The "cohort" a retraining plan is opened for is the plan's own
 * training cohort (rounds/cohort.h), which selection enforces.
 */
#ifndef FL__DRIFT_POLICY_H
#define FL__DRIFT_POLICY_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "rounds/cohort.h"

typedef struct fl_drift_policy {
  bool on; /* the plan has a "drift" object */
  /* cohort_label: devices sharing its value form a cohort (as long as a cohort's labels) */
  char label[FL_COHORT_NAME_MAX];
  double psi_threshold;    /* drift when the score histogram's PSI exceeds it */
  double shift_threshold;  /* mean_shift_threshold: or a feature's |dmean| / sd_r exceeds it */
  uint32_t min_devices;    /* a cohort is tested with reports of at least this many devices */
  uint64_t min_samples;    /* and at least this many examples */
  double window_s;         /* reports older than this are not pooled */
  uint32_t warmup_rounds;  /* versions of the plan's first rounds are not tested */
  bool retrain;            /* retrain.on_drift */
  double cooldown_s;       /* no second retrain of a cohort within it */
  uint32_t max_concurrent; /* retraining plans active at once, over all models */
  uint32_t retrain_rounds; /* the retraining plan's "rounds" */
  /* retrain.rollout: the retrained version's staged, gated rollout to the cohort (handoff.c);
   * on unless "rollout": false. */
  bool rollout;
  char channel[64];       /* the channel whose devices of the cohort get it ("stable") */
  double rollout_percent; /* the first stage's share of the cohort, until the gate passes */
  char gate[256];         /* the rollout's gate, normalized (fl__rollout_gate_normalize) */
} fl_drift_policy;

/* Reads "drift" and "retrain" of plan j (absent: off). -1 with msg on a bad one. */
int fl__drift_policy_from_json(fl_drift_policy *p, const json_t *j, char msg[160]);
/* Adds the same objects, complete, to plan j. -1 on allocation failure. */
int fl__drift_policy_to_json(const fl_drift_policy *p, json_t *j);

#endif
