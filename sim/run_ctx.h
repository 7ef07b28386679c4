/*
 * fl-sim's run state, shared by the rounds (run.c) and the summary table (summary.c).
 * Private to fl-sim.
 */
#ifndef SIM_RUN_CTX_H
#define SIM_RUN_CTX_H

#include <stddef.h>
#include <stdint.h>

#include "admin.h"
#include "drift.h"
#include "eval.h"
#include "fl/client.h"
#include "fleet.h"
#include "metrics.h"
#include "mix.h"
#include "report.h"
#include "sim.h"

typedef struct run_ctx {
  const sim_options *o;
  const sim_data *d;
  const char *url;
  sim_admin *admin;
  sim_fleet *fleet;
  uint64_t model_id, initial_version;
  fl_model *model; /* evaluation copy */
  fl_key *obs_key; /* an honest device's key, to download versions */
  uint64_t obs_id;
  uint8_t coord_pub[FL_PUBKEY_LEN]; /* verifies the versions evaluated */
  sim_round_row *rows;
  int n_rows;
  /* With drift: the detector on the drifted motors [0] and the others [1] after each round
   * (index 0: the initial model), and the last version before the drift on the drifted data;
   * [2] and [3] the same with each cohort's own alarm threshold (cohort_figures). */
  sim_detection (*cohort)[4];
  sim_detection at_drift[4];
  int have_at_drift;
  sim_detection retrained[4]; /* --drift-detect: the retrained version rolled out to the site */
  int have_retrained;
  double eval_s;
  int have_stats;            /* the coordinator's /metrics could be read */
  sim_coord_stats stats;     /* as of the start of the current round */
  uint32_t min_participants; /* the plan's */
  int explained;             /* why the rounds stopped has been printed */
  int n_versions;            /* rounds that produced a version */
  uint64_t plan_id;
  sim_mix labels, conds; /* --labels, --conditions (mix.h) */
  sim_drift_track drift; /* --drift-detect */
} run_ctx;

/* Prints the "fl-sim summary" table of the run: data, versions, accuracy or the detectors'
 * figures (with drift, per cohort), the privacy spent, the fleet's counts, refusals by reason,
 * and the coordinator's federated evaluation when the plan has a policy. */
void sim_run_summary(run_ctx *x, double total_s);

#endif
