/* A plan's privacy spent: the accountant applied to a plan's fields (budget.h). */
#include "privacy/budget.h"

#include <math.h>

#include "fl/err.h"
#include "privacy/accountant.h"
#include "store/store_pg.h"

double fl__privacy_rate(const fl_plan *p, uint64_t population) {
  if (population == 0 || p->participants >= population)
    return 1.0;
  return (double)p->participants / (double)population;
}

double fl__privacy_epsilon(const fl_plan *p, double q, uint64_t rounds) {
  return fl__dp_epsilon(q, p->noise_multiplier, rounds, p->target_delta, NULL);
}

json_t *fl__privacy_json(const fl_plan *p, double q, uint64_t rounds) {
  if (!FL_PLAN_DP(p))
    return json_null();
  double e = fl__privacy_epsilon(p, q, rounds);
  return json_pack("{s:o, s:f, s:I, s:f, s:f}", "epsilon", isfinite(e) ? json_real(e) : json_null(),
                   "delta", p->target_delta, "rounds", (json_int_t)rounds, "sampling_rate", q,
                   "noise_multiplier", p->noise_multiplier);
}

int fl__privacy_population(PGconn *c, const fl_plan *p, uint64_t *population, double *q) {
  /* Devices are not bound to models: any enrolled device may train the plan's model. */
  PGresult *r =
      fl__pg_exec(c, "SELECT count(*) FROM devices WHERE state = 'active'", NULL, false, NULL);
  if (r == NULL)
    return FL_E_DB;
  *population = fl__pg_u64(r, 0, 0);
  PQclear(r);
  *q = fl__privacy_rate(p, *population);
  return FL_OK;
}
