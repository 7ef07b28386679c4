/*
 * Rollout membership hash (server/rollouts.c, docs/API.md "Rollout membership"): known
 * vectors computed independently (Python hashlib), the percentage threshold, monotonicity
 * (raising a percentage only adds devices) and the share of a large population.
 */
#include <criterion/criterion.h>
#include <math.h>

#include "registry/rollouts.h"

Test(rollout_hash, known_vectors) {
  cr_assert_eq(fl__rollout_hash(FL_ROLLOUT_DOMAIN, 1, 1), 0x2830e69d8b6c4abaULL);
  cr_assert_eq(fl__rollout_hash(FL_ROLLOUT_DOMAIN, 42, 7), 0x62bd88acb6ec541cULL);
  cr_assert_eq(fl__rollout_hash(FL_ROLLOUT_DOMAIN, 123456789, 987654321), 0x635cd567abb86967ULL);
  cr_assert_eq(fl__rollout_hash(FL_GATE_DOMAIN, 5, 3), 0xebd27853ed7940eaULL);
}

Test(rollout_hash, threshold_edges) {
  /* 0x2830.. / 2^64 = 0.1570..: inside 16%, outside 15%. */
  cr_assert(fl__rollout_member(FL_ROLLOUT_DOMAIN, 1, 1, 16));
  cr_assert_not(fl__rollout_member(FL_ROLLOUT_DOMAIN, 1, 1, 15));
  cr_assert_not(fl__rollout_member(FL_ROLLOUT_DOMAIN, 1, 1, 0));
  cr_assert_not(fl__rollout_member(FL_ROLLOUT_DOMAIN, 1, 1, -5));
  cr_assert(fl__rollout_member(FL_ROLLOUT_DOMAIN, 1, 1, 100));
}

Test(rollout_hash, raising_only_adds_and_shares_match) {
  static const double steps[] = {1, 5, 10, 25, 50, 99.5, 100};
  enum { N = 20000 };
  int prev_count = 0;
  for (size_t s = 0; s < sizeof steps / sizeof steps[0]; s++) {
    int count = 0;
    for (uint64_t d = 1; d <= N; d++) {
      bool in = fl__rollout_member(FL_ROLLOUT_DOMAIN, d, 77, steps[s]);
      if (s > 0 && fl__rollout_member(FL_ROLLOUT_DOMAIN, d, 77, steps[s - 1]))
        cr_assert(in, "device %llu left when raising to %g", (unsigned long long)d, steps[s]);
      count += in;
    }
    /* Binomial: within 5 standard deviations of N p. */
    double p = steps[s] / 100, sd = sqrt(N * p * (1 - p));
    cr_assert(fabs(count - N * p) <= 5 * sd + 1e-9, "%g%%: %d of %d", steps[s], count, N);
    cr_assert_geq(count, prev_count);
    prev_count = count;
  }
}

Test(rollout_hash, rollouts_pick_different_devices) {
  int both = 0, a = 0;
  for (uint64_t d = 1; d <= 10000; d++) {
    bool x = fl__rollout_member(FL_ROLLOUT_DOMAIN, d, 1, 50);
    bool y = fl__rollout_member(FL_ROLLOUT_DOMAIN, d, 2, 50);
    a += x;
    both += x && y;
  }
  /* Independent halves overlap in about a quarter, not in all of them. */
  cr_assert(both > 2200 && both < 2800, "overlap %d of %d", both, a);
}
