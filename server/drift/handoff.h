/*
 * The retrained version's rollout (handoff.c, docs/DRIFT.md 4): what a drift retraining plan
 * produced is handed to the rollout machinery (registry/rollouts.h), staged and gated, for the
 * drifted cohort only.
 */
#ifndef FL__DRIFT_HANDOFF_H
#define FL__DRIFT_HANDOFF_H

#include <libpq-fe.h>
#include <stdint.h>

/* For the model's drift events whose retraining plan ended: with the plan's "retrain.rollout"
 * (on by default), a rollout of the plan's last version on its channel, cohort = the plan's
 * cohort labels, at rollout.percent with rollout.gate (the gate is the version's evaluation:
 * a sample of the cohort evaluates it and the channel's version); once the gate has passed,
 * the rollout is raised to 100% of the cohort. A channel that has a live rollout is tried
 * again at the next pass. Every step has an audit row (actor "coordinator") and its state in
 * the event's rollout_note. Inside the caller's transaction. 0 or -1. */
int fl__drift_handoff(PGconn *c, uint64_t model_id);

#endif
