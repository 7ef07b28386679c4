/* fl-sim's device labels and conditions (sim/mix.c): parsing, the label shares over a fleet,
 * the conditions drawn per check-in. */
#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

#include "mix.h"

Test(sim_mix, parses_labels_and_conditions) {
  sim_mix m;
  char msg[160];
  cr_assert_eq(sim_mix_parse_labels(&m, "site=a:0.5,site=b:0.3,hw=rev-b:0.2", msg, sizeof msg), 0,
               "%s", msg);
  cr_expect_eq(m.n, 3);
  cr_expect_str_eq(m.key[0], "site");
  cr_expect_str_eq(m.value[1], "b");
  cr_expect_str_eq(m.key[2], "hw");
  cr_expect_float_eq(m.p[2], 0.2, 1e-12);
  cr_assert_eq(sim_mix_parse_conditions(&m, "charging:0.7,idle:1", msg, sizeof msg), 0);
  cr_expect_eq(m.n, 2);
  cr_expect_str_eq(m.key[1], "idle");
  cr_expect_eq(sim_mix_parse_labels(&m, NULL, msg, sizeof msg), 0);
  cr_expect_eq(m.n, 0);
  cr_expect_eq(sim_mix_parse_conditions(&m, "", msg, sizeof msg), 0);
  cr_expect_eq(m.n, 0);
}

Test(sim_mix, refuses_bad_specs) {
  sim_mix m;
  char msg[160];
  static const char *const labels[] = {"site=a",
                                       "site=a:0",
                                       "site=a:1.5",
                                       "site:0.5",
                                       "=a:0.5",
                                       "site=:0.5",
                                       "site=a:0.6,site=b:0.6",
                                       "site=a b:0.5",
                                       "site=a:x"};
  for (size_t i = 0; i < sizeof labels / sizeof labels[0]; i++) {
    msg[0] = '\0';
    cr_expect_eq(sim_mix_parse_labels(&m, labels[i], msg, sizeof msg), -1, "%s", labels[i]);
    cr_expect(strstr(msg, "--labels") != NULL, "%s: %s", labels[i], msg);
  }
  static const char *const conds[] = {"charging", "charging:0", "a=b:0.5", ":0.5", "x:2"};
  for (size_t i = 0; i < sizeof conds / sizeof conds[0]; i++)
    cr_expect_eq(sim_mix_parse_conditions(&m, conds[i], msg, sizeof msg), -1, "%s", conds[i]);
}

Test(sim_mix, label_shares_over_a_fleet) {
  sim_mix m;
  char msg[160];
  cr_assert_eq(sim_mix_parse_labels(&m, "site=a:0.5,site=b:0.3", msg, sizeof msg), 0);
  size_t count[3] = {0}, n = 20000;
  for (size_t k = 0; k < n; k++) {
    int g = sim_mix_label_of(&m, 7, k);
    cr_assert(g >= -1 && g <= 1);
    count[g + 1]++;
    cr_assert_eq(sim_mix_label_of(&m, 7, k), g, "stable per device");
  }
  /* Binomial sd at n = 20000 is below 0.0036: 5 sd. */
  cr_expect_float_eq(count[1] / (double)n, 0.5, 0.018);
  cr_expect_float_eq(count[2] / (double)n, 0.3, 0.017);
  cr_expect_float_eq(count[0] / (double)n, 0.2, 0.015);
}

Test(sim_mix, conditions_by_probability) {
  sim_mix m;
  char msg[160];
  cr_assert_eq(sim_mix_parse_conditions(&m, "charging:0.7,unmetered:0.2", msg, sizeof msg), 0);
  const char *out[SIM_MIX_MAX];
  double u1[] = {0.69, 0.19}, u2[] = {0.7, 0.1}, u3[] = {0.9, 0.5};
  cr_expect_eq(sim_mix_conditions(&m, u1, out), 2);
  cr_expect_str_eq(out[0], "charging");
  cr_expect_eq(sim_mix_conditions(&m, u2, out), 1);
  cr_expect_str_eq(out[0], "unmetered");
  cr_expect_eq(sim_mix_conditions(&m, u3, out), 0);
}
