/* Server optimizers (server/optimizer.c): each update rule against a hand computation. */
#include <criterion/criterion.h>
#include <math.h>

#include "rounds/optimizer.h"

static void params(fl_opt_params *p, int kind) { fl__opt_defaults(p, kind); }

Test(optimizer, names_round_trip) {
  for (int k = 0; k < 4; k++)
    cr_assert_eq(fl__opt_kind(fl__opt_name(k)), k);
  cr_assert_eq(fl__opt_kind("sgd"), -1);
  cr_assert_null(fl__opt_name(7));
}

Test(optimizer, defaults_follow_reddi_et_al) {
  fl_opt_params p;
  params(&p, FL_OPT_FEDADAM);
  cr_assert_float_eq(p.beta1, 0.9, 1e-12);
  cr_assert_float_eq(p.beta2, 0.99, 1e-12);
  cr_assert_float_eq(p.tau, 1e-3, 1e-15);
  cr_assert_float_eq(p.lr, 0.01, 1e-12);
  params(&p, FL_OPT_FEDAVG);
  cr_assert_float_eq(p.lr, 1.0, 1e-12);
  cr_assert_eq(fl__opt_num_state(FL_OPT_FEDAVG), 0);
  cr_assert_eq(fl__opt_num_state(FL_OPT_FEDAVGM), 1);
  cr_assert_eq(fl__opt_num_state(FL_OPT_FEDYOGI), 2);
}

Test(optimizer, fedavg_adds_lr_times_delta) {
  fl_opt_params p;
  params(&p, FL_OPT_FEDAVG);
  p.lr = 0.5;
  float w[3] = {1, -2, 3}, d[3] = {0.2f, 0.4f, -1};
  fl__opt_step(&p, w, d, NULL, NULL, 3);
  cr_assert_float_eq(w[0], 1.1f, 1e-6);
  cr_assert_float_eq(w[1], -1.8f, 1e-6);
  cr_assert_float_eq(w[2], 2.5f, 1e-6);
}

Test(optimizer, fedavgm_accumulates_momentum) {
  fl_opt_params p;
  params(&p, FL_OPT_FEDAVGM);
  float w[1] = {0}, m[1], d1[1] = {1}, d2[1] = {0.5f};
  fl__opt_init_state(&p, m, NULL, 1);
  cr_assert_float_eq(m[0], 0.0f, 0);
  fl__opt_step(&p, w, d1, m, NULL, 1);
  cr_assert_float_eq(w[0], 1.0f, 1e-6);
  fl__opt_step(&p, w, d2, m, NULL, 1);
  /* m = 0.9 * 1 + 0.5 = 1.4; w = 1 + 1.4 */
  cr_assert_float_eq(m[0], 1.4f, 1e-6);
  cr_assert_float_eq(w[0], 2.4f, 1e-6);
}

static double adam_ref(double w, double d, double *m, double *v, const fl_opt_params *p,
                       bool yogi) {
  *m = p->beta1 * *m + (1 - p->beta1) * d;
  if (yogi) {
    double s = (*v - d * d > 0) - (*v - d * d < 0);
    *v = *v - (1 - p->beta2) * d * d * s;
  } else {
    *v = p->beta2 * *v + (1 - p->beta2) * d * d;
  }
  return w + p->lr * *m / (sqrt(*v) + p->tau);
}

static void check_adaptive(int kind) {
  fl_opt_params p;
  params(&p, kind);
  float w[2] = {0.5f, -0.25f}, m[2], v[2];
  const float ds[3][2] = {{0.3f, -0.02f}, {0.0001f, 0.5f}, {-0.2f, 0.0f}};
  double rw[2] = {0.5, -0.25}, rm[2] = {0, 0}, rv[2];
  fl__opt_init_state(&p, m, v, 2);
  for (int i = 0; i < 2; i++) {
    rv[i] = p.tau * p.tau;
    cr_assert_float_eq(v[i], (float)rv[i], 1e-12);
  }
  for (int s = 0; s < 3; s++) {
    fl__opt_step(&p, w, ds[s], m, v, 2);
    for (int i = 0; i < 2; i++) {
      rw[i] = adam_ref(rw[i], ds[s][i], &rm[i], &rv[i], &p, kind == FL_OPT_FEDYOGI);
      cr_assert_float_eq(w[i], (float)rw[i], 1e-5, "step %d param %d", s, i);
      cr_assert_float_eq(v[i], (float)rv[i], 1e-7 + 1e-5 * rv[i]);
    }
  }
}

Test(optimizer, fedadam_matches_reference) { check_adaptive(FL_OPT_FEDADAM); }

Test(optimizer, fedyogi_matches_reference) { check_adaptive(FL_OPT_FEDYOGI); }

Test(optimizer, yogi_and_adam_differ_when_v_exceeds_d2) {
  fl_opt_params a, y;
  params(&a, FL_OPT_FEDADAM);
  params(&y, FL_OPT_FEDYOGI);
  float wa[1] = {0}, wy[1] = {0}, ma[1], va[1], my[1], vy[1];
  fl__opt_init_state(&a, ma, va, 1);
  fl__opt_init_state(&y, my, vy, 1);
  const float big[1] = {1}, small[1] = {0.01f};
  fl__opt_step(&a, wa, big, ma, va, 1);
  fl__opt_step(&y, wy, big, my, vy, 1);
  fl__opt_step(&a, wa, small, ma, va, 1);
  fl__opt_step(&y, wy, small, my, vy, 1);
  /* Adam shrinks v by beta2; Yogi only by (1-beta2) d^2: Yogi keeps the larger v. */
  cr_assert_gt(vy[0], va[0]);
}
