/*
 * fl-sim's side of drift detection (--drift-detect, docs/DRIFT.md): devices enrolled by site
 * (sensor2's drifted motors are one site, the others split over two), the plan's "drift" and
 * "retrain" objects, and after each round what the coordinator raised: the first event of
 * each site, its delay from the drift round, and the retraining plan.
 */
#ifndef SIM_DRIFT_H
#define SIM_DRIFT_H

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>

#include "admin.h"
#include "sim.h"

#define SIM_DRIFT_SITE "plant-3" /* the drifted motors' site */

/* n enrollment tokens, tokens[k] for device k with its site label. */
int sim_drift_tokens(sim_admin *a, const sim_data *d, size_t n, char ***tokens);
/* Adds "drift" (and with --retrain-rounds "retrain", whose retraining plan runs beside this
 * one and whose version goes to a staged, gated rollout for the drifted site) to plan j.
 * FL_OK or FL_E_NOMEM. */
int sim_drift_plan(json_t *j, const sim_options *o);

typedef struct sim_drift_track {
  uint64_t last_event_id;
  int event_round;          /* the round after which the drifted site's first event of a version
                               served on drifted data was seen; 0: none */
  double event_delay_s;     /* from the start of the drift round to that poll */
  double psi;               /* that event's */
  int n_features;           /* features it names */
  int before_events;        /* events of versions served before the drift (false alarms) */
  int false_events;         /* events of the other sites from the drift on */
  uint64_t retrain_plan_id; /* the drifted site's */
  int retrain_round;        /* the round after which it was seen */
  int other_retrains;       /* retraining plans of the other sites (false alarms) */
  uint64_t other_plan_id;   /* the newest of them */
  /* The retrained version's rollout to the drifted site (docs/DRIFT.md 4): the rounds after
   * which it was seen staged and then raised to the whole site (0: not yet), its version. */
  uint64_t rollout_id, rollout_version;
  int staged_round, rolled_out_round;
  int resolved_round; /* the drifted site's event resolved (0: open) */
  char rollout_note[32];
} sim_drift_track;

/* After round r: reads GET /admin/v1/drift and records (and prints to out) what is new. */
void sim_drift_poll(sim_admin *a, uint64_t model_id, int r, int drift_round, double since_drift_s,
                    sim_drift_track *t, FILE *out);

#endif
