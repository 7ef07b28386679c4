/* The load-sized group commit's arithmetic (server/rounds/pace.c) against values worked out by
 * hand from pace.h's rules: the floor for sparse uploads, the FL_AUTO_WANT gaps of a burst,
 * the idle cut, the cap, the smoothing, and the claims' own deadline. */
#include <criterion/criterion.h>

#include "rounds/pace.h"

#define EPS 1e-9

/* Uploads at t0, t0 + g, ... (n of them), each with the ones before it waiting. Times are
 * monotonic seconds, never 0 (pace.c takes a last upload of 0 for none yet). */
static fl_pace burst(double t0, double g, int n) {
  fl_pace p = {0};
  for (int i = 0; i < n; i++)
    fl__pace_upload(&p, t0 + i * g, (uint32_t)i);
  return p;
}

Test(pace, first_upload_commits_after_the_floor) {
  fl_pace p = {0};
  fl__pace_upload(&p, 100.0, 0);
  cr_expect_float_eq(p.gap, 0.0, EPS, "no gap seen yet");
  cr_expect_float_eq(fl__pace_uploads_due(&p), 100.0 + FL_AUTO_FLOOR_S, EPS);
}

Test(pace, a_burst_gathers_want_gaps_or_idle_gaps) {
  /* 1 ms apart: the gap converges to 1 ms (every gap equal). Full: first + 32 ms; idle: last
   * + 8 ms. After 5 uploads the idle cut (4 ms + 8 ms = 12 ms) comes before the full one. */
  fl_pace p = burst(10.0, 0.001, 5);
  cr_expect_float_eq(p.gap, 0.001, EPS);
  cr_expect_float_eq(fl__pace_uploads_due(&p), 10.0 + 0.004 + FL_AUTO_IDLE * 0.001, EPS);
  /* After 30 uploads the full rule (32 ms after the first) comes first. */
  p = burst(10.0, 0.001, 30);
  cr_expect_float_eq(fl__pace_uploads_due(&p), 10.0 + FL_AUTO_WANT * 0.001, EPS);
}

Test(pace, waits_are_capped_and_sparse_uploads_use_the_floor) {
  /* 20 ms apart: 32 gaps would be 640 ms, 8 gaps 160 ms: idle after the third upload. */
  fl_pace p = burst(1.0, 0.020, 3);
  cr_expect_float_eq(fl__pace_uploads_due(&p), 1.040 + 0.160, EPS);
  /* 100 ms apart: 3.2 s capped at FL_AUTO_MAX_WAIT_S, idle 800 ms from the last. */
  p = burst(1.0, 0.100, 2);
  cr_expect_float_eq(fl__pace_uploads_due(&p), 1.100 + 0.800, EPS);
  /* Rarer than FL_AUTO_MAX_WAIT_S / 4 apart: commit after the floor, as a fixed interval. */
  p = burst(1.0, 0.300, 2);
  cr_expect_float_eq(fl__pace_uploads_due(&p), 1.0 + FL_AUTO_FLOOR_S, EPS);
}

Test(pace, gaps_are_smoothed_and_the_pause_before_a_batch_does_not_count) {
  fl_pace p = burst(1.0, 0.001, 2); /* gap 1 ms */
  fl__pace_upload(&p, 1.011, 2);    /* a 10 ms gap inside the batch: 0.8 * 1 + 0.2 * 10 ms */
  cr_expect_float_eq(p.gap, 0.0028, EPS);
  /* The batch committed; the next upload after a 5 s silence starts a new one: the silence is
   * not a gap (it may be the committer's own wait), and the pace's first upload moves. */
  fl__pace_upload(&p, 6.011, 0);
  cr_expect_float_eq(p.gap, 0.0028, EPS);
  cr_expect_float_eq(p.first_upload, 6.011, EPS);
  /* A long gap inside a batch counts at most FL_AUTO_MAX_WAIT_S. */
  fl__pace_upload(&p, 11.0, 1);
  cr_expect_float_eq(p.gap, 0.8 * 0.0028 + 0.2 * FL_AUTO_MAX_WAIT_S, EPS);
}

Test(pace, claims_wait_the_floor_and_at_most_the_batch_cap) {
  fl_pace p = {0};
  fl__pace_claim(&p, 1.0, 0);
  cr_expect_float_eq(fl__pace_claims_due(&p), 1.0 + FL_AUTO_FLOOR_S, EPS);
  for (int i = 1; i <= 20; i++)
    fl__pace_claim(&p, 1.0 + i * 0.0015, (uint32_t)i); /* each within the floor of the last */
  cr_expect_float_eq(p.first_claim, 1.0, EPS);
  cr_expect_float_eq(fl__pace_claims_due(&p), 1.0 + FL_BATCH_MAX_WAIT_S, EPS);
}
