/*
 * Automatic retraining on drift (retrain.c, docs/DRIFT.md).
 */
#ifndef FL__DRIFT_RETRAIN_H
#define FL__DRIFT_RETRAIN_H

#include <libpq-fe.h>

#include "drift/policy.h"

/* For each open drift event of the model's cohort label without a retraining plan: opens one
 * (the event's plan with label: value added to its "cohort" labels, so that selection draws
 * only the drifted cohort, and "rounds": retrain.rounds, from the model's newest version), unless
 * the cohort was retrained within cooldown_s, max_concurrent retraining plans are active, or the
 * model has an active plan; the reason goes into the event's retrain_note and the attempt is made
 * again at the next pass. Inside the caller's transaction. 0 or -1. */
int fl__drift_retrain(PGconn *c, uint64_t model_id, const fl_drift_policy *pol);

#endif
