/*
 * The SGD update (momentum, weight decay, FedProx term) against hand-computed numbers, refused
 * options, the non-finite guard, and loss decreasing on small problems.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "rng.h"

#define ADD(spec, ...) ((spec).layers[(spec).n_layers++] = (fl_layer_spec){__VA_ARGS__})

static fl_model_spec spec1(uint32_t features, int loss) {
  return (fl_model_spec){.input_ndim = 1, .input_shape = {features}, .loss = loss};
}

static fl_model *build(const fl_model_spec *s) {
  fl_model *m = NULL;
  cr_assert_eq(fl__model_new(&m, s, NULL), FL_OK);
  return m;
}

/* y = w*x + b with MSE: at x = 1, t = 0, w = 0.5, b = 0.25 the loss is 0.5625 and both
 * gradients are 2 * 0.75 = 1.5, so every update below can be worked out by hand. */
static fl_model *tiny_regression(void) {
  fl_model_spec s = spec1(1, FL_LOSS_MSE);
  ADD(s, .type = FL_LAYER_DENSE, .units = 1);
  fl_model *m = build(&s);
  fl__model_params(m)[0] = 0.5f;
  fl__model_params(m)[1] = 0.25f;
  return m;
}

static const float one_x = 1.0f, zero_t = 0.0f;
static const fl_batch tiny_batch = {.x = &one_x, .targets = &zero_t, .n = 1};

Test(sgd, plain_step) {
  fl_model *m = tiny_regression();
  fl_sgd o = {.lr = 0.1f};
  double loss;
  cr_assert_eq(fl__model_sgd_step(m, &tiny_batch, &o, &loss), FL_OK);
  cr_assert_float_eq(loss, 0.5625, 1e-9);
  cr_assert_float_eq(fl__model_params(m)[0], 0.5f - 0.15f, 1e-7f);
  cr_assert_float_eq(fl__model_params(m)[1], 0.25f - 0.15f, 1e-7f);
  fl__model_free(m);
}

Test(sgd, momentum_weight_decay_and_prox) {
  fl_model *m = tiny_regression();
  const float anchor[2] = {0.1f, -0.25f};
  float v[2] = {0.2f, -0.1f};
  fl_sgd o = {.lr = 0.1f,
              .momentum = 0.9f,
              .weight_decay = 0.1f,
              .prox_mu = 0.5f,
              .anchor = anchor,
              .velocity = v};
  cr_assert_eq(fl__model_sgd_step(m, &tiny_batch, &o, NULL), FL_OK);
  /* g_w = 1.5 + 0.1*0.5 + 0.5*(0.5 - 0.1) = 1.75;   v_w = 0.9*0.2 + 1.75 = 1.93
   * g_b = 1.5 + 0.1*0.25 + 0.5*(0.25 + 0.25) = 1.775; v_b = 0.9*-0.1 + 1.775 = 1.685 */
  cr_assert_float_eq(v[0], 1.93f, 1e-6f);
  cr_assert_float_eq(v[1], 1.685f, 1e-6f);
  cr_assert_float_eq(fl__model_params(m)[0], 0.5f - 0.193f, 1e-6f);
  cr_assert_float_eq(fl__model_params(m)[1], 0.25f - 0.1685f, 1e-6f);
  /* The gradient buffer keeps the plain loss gradient. */
  cr_assert_float_eq(fl__model_grads(m)[0], 1.5f, 1e-6f);
  cr_assert_float_eq(fl__model_grads(m)[1], 1.5f, 1e-6f);
  fl__model_free(m);
}

Test(sgd, prox_needs_an_anchor_and_a_mu) {
  fl_model *a = tiny_regression(), *b = tiny_regression();
  const float anchor[2] = {3.0f, 3.0f};
  fl_sgd off1 = {.lr = 0.1f, .prox_mu = 0.5f, .anchor = NULL};
  fl_sgd off2 = {.lr = 0.1f, .prox_mu = 0.0f, .anchor = anchor};
  cr_assert_eq(fl__model_sgd_step(a, &tiny_batch, &off1, NULL), FL_OK);
  cr_assert_eq(fl__model_sgd_step(b, &tiny_batch, &off2, NULL), FL_OK);
  cr_assert_float_eq(fl__model_params(a)[0], 0.35f, 1e-7f);
  cr_assert_float_eq(fl__model_params(b)[0], 0.35f, 1e-7f);
  /* Weight decay alone: g_w = 1.5 + 0.01 * 0.5 */
  fl_sgd wd = {.lr = 1.0f, .weight_decay = 0.01f};
  cr_assert_eq(fl__model_sgd_step(a, &tiny_batch, &wd, NULL), FL_OK);
  float w = 0.35f, bias = 0.1f, g = 2.0f * (w + bias);
  cr_assert_float_eq(fl__model_params(a)[0], w - (g + 0.01f * w), 1e-6f);
  fl__model_free(a);
  fl__model_free(b);
}

Test(sgd, bad_options_and_nonfinite_loss) {
  fl_model *m = tiny_regression();
  float v[2] = {0, 0};
  const fl_sgd bad[] = {
      {.lr = -0.1f},
      {.lr = NAN},
      {.lr = 0.1f, .momentum = 0.9f}, /* no velocity */
      {.lr = 0.1f, .momentum = 1.0f, .velocity = v},
      {.lr = 0.1f, .weight_decay = -1.0f},
      {.lr = 0.1f, .prox_mu = INFINITY},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    cr_assert_eq(fl__model_sgd_step(m, &tiny_batch, &bad[i], NULL), FL_E_INVAL, "case %zu", i);
  cr_assert_eq(fl__model_sgd_step(m, &tiny_batch, NULL, NULL), FL_E_INVAL);
  cr_assert_eq(fl__model_params(m)[0], 0.5f);
  /* A NaN weight makes the loss NaN: the step is refused and nothing moves. */
  fl__model_params(m)[0] = NAN;
  fl_sgd o = {.lr = 0.1f};
  double loss = 0.0;
  cr_assert_eq(fl__model_sgd_step(m, &tiny_batch, &o, &loss), FL_E_NONFINITE);
  cr_assert(isnan(loss));
  cr_assert_eq(fl__model_params(m)[1], 0.25f);
  fl__model_free(m);
}

/* Two Gaussian blobs: a few dozen steps of logistic regression must cut the loss by far. */
Test(sgd, steps_decrease_the_loss) {
  fl_model_spec s = spec1(5, FL_LOSS_SOFTMAX_CE);
  ADD(s, .type = FL_LAYER_DENSE, .units = 8);
  ADD(s, .type = FL_LAYER_RELU);
  ADD(s, .type = FL_LAYER_DENSE, .units = 2);
  fl_model *m = build(&s);
  fl__model_init(m, 5);
  enum { N = 64 };
  float x[N * 5];
  int32_t y[N];
  fl_rng r;
  fl__rng_seed(&r, 77);
  for (int i = 0; i < N; i++) {
    y[i] = i & 1;
    for (int j = 0; j < 5; j++)
      x[i * 5 + j] = (float)(fl__rng_normal(&r) * 0.5 + (y[i] ? 1.0 : -1.0));
  }
  fl_batch b = {.x = x, .labels = y, .n = N};
  double first, loss, acc;
  cr_assert_eq(fl__model_evaluate(m, &b, &first, NULL), FL_OK);
  float *v = calloc(fl__model_num_params(m), sizeof(float));
  fl_sgd o = {.lr = 0.05f, .momentum = 0.9f, .velocity = v};
  for (int it = 0; it < 40; it++)
    cr_assert_eq(fl__model_sgd_step(m, &b, &o, NULL), FL_OK);
  cr_assert_eq(fl__model_evaluate(m, &b, &loss, &acc), FL_OK);
  cr_assert_lt(loss, first / 4, "loss %g -> %g", first, loss);
  cr_assert_geq(acc, 0.95);
  free(v);
  fl__model_free(m);
}

/* The autoencoder learns to reconstruct inputs from a 16-dimensional code. */
Test(sgd, autoencoder_learns) {
  fl_model_spec s = spec1(64, FL_LOSS_MSE); /* the sensor autoencoder 64-16-64 */
  ADD(s, .type = FL_LAYER_DENSE, .units = 16);
  ADD(s, .type = FL_LAYER_TANH);
  ADD(s, .type = FL_LAYER_DENSE, .units = 64);
  fl_model *m = build(&s);
  fl__model_init(m, 6);
  enum { N = 128 };
  float *x = malloc(N * 64 * sizeof(float));
  fl_rng r;
  fl__rng_seed(&r, 8);
  for (int i = 0; i < N; i++) { /* signals on a 2-dimensional manifold */
    double a = fl__rng_normal(&r), c = fl__rng_normal(&r);
    for (int j = 0; j < 64; j++)
      x[i * 64 + j] = (float)(0.5 * a * sin(j * 0.2) + 0.5 * c * cos(j * 0.3));
  }
  fl_batch b = {.x = x, .n = N};
  double first, loss;
  cr_assert_eq(fl__model_evaluate(m, &b, &first, NULL), FL_OK);
  fl_sgd o = {.lr = 0.1f};
  for (int it = 0; it < 300; it++)
    cr_assert_eq(fl__model_sgd_step(m, &b, &o, NULL), FL_OK);
  cr_assert_eq(fl__model_evaluate(m, &b, &loss, NULL), FL_OK);
  cr_assert_lt(loss, first / 5, "loss %g -> %g", first, loss);
  free(x);
  fl__model_free(m);
}

/* Plain SGD on dense models is fused into the backward pass (model.c): the step must equal
 * the gradient of fl__model_loss_grad applied by hand, w - lr * g, to float rounding, through
 * every activation, both losses and a first layer that needs no input gradient. It fails when
 * a layer's input gradient is taken from the weights after their step. */
static void check_fused_step(fl_model_spec s, int32_t classes) {
  fl_model *a = build(&s), *b = build(&s);
  fl__model_init(a, 3);
  memcpy(fl__model_params(b), fl__model_params(a), fl__model_num_params(a) * sizeof(float));
  size_t in = fl__model_input_size(a), np = fl__model_num_params(a);
  enum { N = 7 };
  float *x = malloc(N * in * sizeof(float)), *g = malloc(np * sizeof(float));
  int32_t y[N];
  fl_rng r;
  fl__rng_seed(&r, 11);
  for (size_t i = 0; i < N * in; i++)
    x[i] = (float)fl__rng_normal(&r);
  for (int i = 0; i < N; i++)
    y[i] = classes > 0 ? i % classes : 0;
  fl_batch bt = {.x = x, .labels = classes > 0 ? y : NULL, .n = N};
  const float lr = 0.3f;
  for (int step = 0; step < 3; step++) {
    double la = 0, lb = 0;
    cr_assert_eq(fl__model_loss_grad(b, &bt, &lb), FL_OK);
    memcpy(g, fl__model_grads(b), np * sizeof(float));
    float *wb = fl__model_params(b);
    for (size_t j = 0; j < np; j++)
      wb[j] -= lr * g[j];
    fl_sgd o = {.lr = lr};
    cr_assert_eq(fl__model_sgd_step(a, &bt, &o, &la), FL_OK);
    cr_assert_float_eq(la, lb, 1e-6 * lb, "step %d: loss %.9g against %.9g", step, la, lb);
    const float *wa = fl__model_params(a);
    for (size_t j = 0; j < np; j++)
      cr_assert_float_eq(wa[j], wb[j], 1e-6f * (1.0f + fabsf(wb[j])),
                         "step %d param %zu: %.9g, %.9g", step, j, wa[j], wb[j]);
  }
  free(x);
  free(g);
  fl__model_free(a);
  fl__model_free(b);
}

Test(sgd, fused_plain_step_equals_gradient_then_update) {
  fl_model_spec s = spec1(12, FL_LOSS_SOFTMAX_CE);
  ADD(s, .type = FL_LAYER_DENSE, .units = 9);
  ADD(s, .type = FL_LAYER_RELU);
  ADD(s, .type = FL_LAYER_DENSE, .units = 6);
  ADD(s, .type = FL_LAYER_SIGMOID);
  ADD(s, .type = FL_LAYER_DENSE, .units = 4);
  check_fused_step(s, 4);
  fl_model_spec ae = spec1(10, FL_LOSS_MSE);
  ADD(ae, .type = FL_LAYER_DENSE, .units = 3);
  ADD(ae, .type = FL_LAYER_TANH);
  ADD(ae, .type = FL_LAYER_DENSE, .units = 10);
  check_fused_step(ae, 0);
}
