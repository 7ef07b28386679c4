/*
 * A DP plan's privacy spent (budget.c), on top of the accountant: the figures the admin API,
 * the versions' metrics and the max_epsilon stop use, in one place (docs/PRIVACY.md).
 */
#ifndef FL__BUDGET_H
#define FL__BUDGET_H

#include <jansson.h>
#include <libpq-fe.h>
#include <stdint.h>

#include "rounds/plan.h"

/* The sampling rate of a plan that starts with `population` enrolled, non-revoked devices:
 * participants / population, capped at 1 (1 also when the fleet is empty: no amplification
 * is claimed for devices that are not there yet). */
double fl__privacy_rate(const fl_plan *p, uint64_t population);

/* Epsilon at the plan's target_delta after `rounds` closed rounds with sampling rate q;
 * 0 for a plan without central noise is never asked (callers check FL_PLAN_DP). */
double fl__privacy_epsilon(const fl_plan *p, double q, uint64_t rounds);

/* {"epsilon", "delta", "rounds", "sampling_rate", "noise_multiplier"} (epsilon null when
 * infinite), or JSON null for a plan without central noise. NULL on allocation failure. */
json_t *fl__privacy_json(const fl_plan *p, double q, uint64_t rounds);

/* At a plan's start, in its creating transaction: the population (enrolled devices that are
 * not revoked) and the sampling rate taken from it. FL_OK or FL_E_DB. */
int fl__privacy_population(PGconn *c, const fl_plan *p, uint64_t *population, double *q);

#endif
