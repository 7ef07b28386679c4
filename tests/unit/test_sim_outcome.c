/* fl-sim's reading of a failed round (sim/outcome.c, sim_target_reached, which fleet.c counts by):
 * a 409 target_reached is counted as "not folded", every other refusal as a failure. The client
 * runs against the fake coordinator, so the message read is the one libflclient writes. */
#include "outcome.h"
#include "test_client_fake.h"

/* One round refused with `status` and `reason`: whether fl-sim takes it for target_reached. */
static bool refused_round(fake_env *e, int status, const char *reason) {
  fl_round_result r = {.size = sizeof r};
  e->f.refuse_uploads = status;
  e->f.upload_reason = reason;
  cr_assert_eq(fl_client_run_round(e->c, &r), FL_E_REFUSED, "%s", fl_client_errmsg(e->c));
  cr_assert_eq(r.outcome, FL_ROUND_FAILED);
  return sim_target_reached(r.err, fl_client_errmsg(e->c));
}

Test(sim_outcome, target_reached_is_told_apart_from_failures) {
  fake_env e;
  fake_env_enrolled(&e);
  cr_expect(refused_round(&e, 409, "target_reached"), "%s", fl_client_errmsg(e.c));
  cr_expect(!refused_round(&e, 409, "round_closed"), "%s", fl_client_errmsg(e.c));
  cr_expect(!refused_round(&e, 409, "conflicting_update"), "%s", fl_client_errmsg(e.c));
  cr_expect(!refused_round(&e, 403, "target_reached"), "%s", fl_client_errmsg(e.c));
  /* A round that uploads is not one, and neither is another error with the same words. */
  e.f.refuse_uploads = 0;
  fl_round_result r = {.size = sizeof r};
  cr_assert_eq(fl_client_run_round(e.c, &r), FL_OK, "%s", fl_client_errmsg(e.c));
  cr_expect(!sim_target_reached(r.err, fl_client_errmsg(e.c)));
  cr_expect(!sim_target_reached(FL_E_TRANSPORT, "POST /v1/updates: HTTP 409 target_reached"));
  cr_expect(!sim_target_reached(FL_E_REFUSED, NULL));
  fake_env_down(&e);
}
