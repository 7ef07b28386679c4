/*
 * Gradient checks: the analytic gradient of every layer and loss against central finite
 * differences of the loss, for every parameter of small models, plus one directional
 * derivative over all parameters at once.
 *
 * The forward pass runs in float, so a difference quotient carries rounding noise of roughly
 * ulp(loss) / step. Each parameter passes when its relative error is below 1e-3 or its
 * absolute error is below 1e-5 (at least a quarter must be large enough to be held to the
 * relative bound: the test counts them); the directional derivative must meet the relative bound
 * outright.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "layers.h"
#include "model.h"
#include "rng.h"

#define REL_TOL 1e-3
#define ABS_TOL 1e-5

static fl_layer_spec L(int type) {
  return (fl_layer_spec){.type = type};
}
static fl_layer_spec dense(uint32_t units) {
  return (fl_layer_spec){.type = FL_LAYER_DENSE, .units = units};
}
static fl_layer_spec conv(uint32_t oc, uint32_t k, uint32_t stride, uint32_t pad) {
  return (fl_layer_spec){
      .type = FL_LAYER_CONV2D, .out_channels = oc, .kernel = k, .stride = stride, .padding = pad};
}
static fl_layer_spec pool(uint32_t k, uint32_t stride) {
  return (fl_layer_spec){.type = FL_LAYER_MAXPOOL2D, .kernel = k, .stride = stride};
}

typedef struct gc_data {
  float *x, *targets;
  int32_t *labels;
  size_t n;
} gc_data;

static void gc_data_make(gc_data *d, const fl_model *m, size_t n, bool with_targets,
                         uint64_t seed) {
  fl_rng r;
  fl__rng_seed(&r, seed);
  size_t in = fl__model_input_size(m), out = fl__model_output_size(m);
  d->n = n;
  d->x = malloc(n * in * sizeof(float));
  d->labels = malloc(n * sizeof(int32_t));
  d->targets = with_targets ? malloc(n * out * sizeof(float)) : NULL;
  for (size_t i = 0; i < n * in; i++)
    d->x[i] = (float)(2.0 * fl__rng_uniform(&r) - 1.0);
  for (size_t i = 0; i < n; i++)
    d->labels[i] = (int32_t)fl__rng_below(&r, out);
  for (size_t i = 0; with_targets && i < n * out; i++)
    d->targets[i] = (float)(2.0 * fl__rng_uniform(&r) - 1.0);
}

static void gc_data_free(gc_data *d) {
  free(d->x);
  free(d->labels);
  free(d->targets);
}

static double loss_at(fl_model *m, const fl_batch *b) {
  double l = NAN;
  cr_assert_eq(fl__model_evaluate(m, b, &l, NULL), FL_OK);
  return l;
}

/* Central difference quotient along direction d (NULL: the unit vector of parameter j) with
 * step h, from base weights w0. */
static double diff_quot(fl_model *m, const fl_batch *b, const float *w0, const float *d, size_t j,
                        double h) {
  size_t np = fl__model_num_params(m);
  float *w = fl__model_params(m);
  double l[2];
  for (int side = 0; side < 2; side++) {
    double sh = side ? -h : h;
    if (d) {
      for (size_t k = 0; k < np; k++)
        w[k] = (float)(w0[k] + sh * d[k]);
    } else {
      w[j] = (float)(w0[j] + sh);
    }
    l[side] = loss_at(m, b);
  }
  memcpy(w, w0, np * sizeof(float));
  return (l[0] - l[1]) / (2.0 * h);
}

/* Steps tried: a kink (relu, max) inside a large step spoils that quotient, rounding spoils
 * the small ones (the float32 loss's rounding, about 1e-8, divided by 2h: 1e-5 at h = 1e-3,
 * as large as ABS_TOL); a correct derivative agrees with at least one of them, a wrong one with
 * none. The ladder is dense enough that a step falls between a nearby kink and the rounding
 * (pool_then_conv_then_dense_mse's parameter 3 in the portable-GEMM build: 5e-3 crosses a max,
 * 2e-3 and 1e-3 are 1e-5 off by rounding, 3e-3 agrees to 8e-7). Returns the smallest error
 * relative to max(|numeric|, |analytic|, floor). */
static const double steps[] = {1e-2, 5e-3, 3e-3, 2e-3, 1.5e-3, 1e-3};

static double check_one(fl_model *m, const fl_batch *b, const float *w0, const float *d, size_t j,
                        double ana, double floor) {
  double best = INFINITY;
  for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
    double num = diff_quot(m, b, w0, d, j, steps[i]);
    best = fmin(best, fabs(num - ana) / fmax(fmax(fabs(num), fabs(ana)), floor));
  }
  return best;
}

/* Builds the model, randomises weights and biases, and checks every parameter's gradient and
 * one directional derivative (unit-norm random direction, no absolute floor). */
static void gradcheck(const fl_model_spec *spec, size_t n, bool with_targets, uint64_t seed) {
  fl_model *m = NULL;
  cr_assert_eq(fl__model_new(&m, spec, NULL), FL_OK);
  fl__model_init(m, seed);
  size_t np = fl__model_num_params(m);
  float *w = fl__model_params(m);
  fl_rng r;
  fl__rng_seed(&r, seed + 1);
  for (size_t t = 0; t < fl__model_num_tensors(m); t += 2) {
    fl_tensor_info bi;
    fl__model_tensor_info(m, t + 1, &bi);
    for (size_t j = 0; j < bi.count; j++)
      w[bi.offset + j] = (float)(0.2 * fl__rng_uniform(&r) - 0.1);
  }
  gc_data d;
  gc_data_make(&d, m, n, with_targets, seed + 2);
  fl_batch b = {.x = d.x, .labels = d.labels, .targets = d.targets, .n = n};
  double l0;
  cr_assert_eq(fl__model_loss_grad(m, &b, &l0), FL_OK);
  cr_assert(isfinite(l0));
  float *g = malloc(np * sizeof(float)), *w0 = malloc(np * sizeof(float));
  float *dir = malloc(np * sizeof(float));
  memcpy(g, fl__model_grads(m), np * sizeof(float));
  memcpy(w0, w, np * sizeof(float));

  double worst = 0.0, gmax = 0.0;
  size_t strict = 0;
  for (size_t j = 0; j < np; j++) {
    double rel = check_one(m, &b, w0, NULL, j, g[j], ABS_TOL / REL_TOL);
    cr_assert(rel <= REL_TOL, "param %zu of %zu: analytic %.8g, rel err %.3g", j, np, g[j], rel);
    worst = fmax(worst, rel);
    strict += fabs(g[j]) >= ABS_TOL / REL_TOL;
    gmax = fmax(gmax, fabs(g[j]));
  }
  cr_assert(gmax > 1e-2, "gradient too small to tell anything: %g", gmax);
  cr_assert(strict >= np / 4,
            "only %zu of %zu parameters are large enough to be checked on the "
            "relative bound",
            strict, np);

  double ana = 0.0;
  for (size_t j = 0; j < np; j++) {
    dir[j] = (float)((fl__rng_below(&r, 2) ? 1.0 : -1.0) / sqrt((double)np));
    ana += (double)dir[j] * g[j];
  }
  double rel = check_one(m, &b, w0, dir, 0, ana, 0.0);
  cr_log_info("%zu params (%zu above the floor), worst rel err %.2g, directional %.2g", np, strict,
              worst, rel);
  cr_assert(rel < REL_TOL, "directional derivative: analytic %.8g, rel err %.3g", ana, rel);
  free(dir);
  free(w0);
  free(g);
  gc_data_free(&d);
  fl__model_free(m);
}

static fl_model_spec spec1(uint32_t features, int loss) {
  return (fl_model_spec){.input_ndim = 1, .input_shape = {features}, .loss = loss};
}
static fl_model_spec spec3(uint32_t c, uint32_t h, uint32_t w, int loss) {
  return (fl_model_spec){.input_ndim = 3, .input_shape = {c, h, w}, .loss = loss};
}
#define ADD(spec, layer) ((spec).layers[(spec).n_layers++] = (layer))

Test(gradcheck, dense_softmax_ce) {
  fl_model_spec s = spec1(6, FL_LOSS_SOFTMAX_CE);
  ADD(s, dense(4));
  gradcheck(&s, 5, false, 11);
}

Test(gradcheck, dense_sigmoid_dense_ce) {
  fl_model_spec s = spec1(5, FL_LOSS_SOFTMAX_CE);
  ADD(s, dense(7));
  ADD(s, L(FL_LAYER_SIGMOID));
  ADD(s, dense(3));
  gradcheck(&s, 4, false, 12);
}

Test(gradcheck, dense_relu_dense_ce) {
  fl_model_spec s = spec1(5, FL_LOSS_SOFTMAX_CE);
  ADD(s, dense(8));
  ADD(s, L(FL_LAYER_RELU));
  ADD(s, dense(8));
  ADD(s, L(FL_LAYER_RELU));
  ADD(s, dense(3));
  gradcheck(&s, 4, false, 13);
}

Test(gradcheck, dense_tanh_dense_mse_targets) {
  fl_model_spec s = spec1(4, FL_LOSS_MSE);
  ADD(s, dense(6));
  ADD(s, L(FL_LAYER_TANH));
  ADD(s, dense(3));
  gradcheck(&s, 5, true, 14);
}

Test(gradcheck, autoencoder_mse_reconstructs_input) {
  fl_model_spec s = spec1(8, FL_LOSS_MSE);
  ADD(s, dense(3));
  ADD(s, L(FL_LAYER_TANH));
  ADD(s, dense(8));
  gradcheck(&s, 6, false, 15);
}

/* Activations back to back: the second must not overwrite what the first needs. */
Test(gradcheck, stacked_activations) {
  fl_model_spec s = spec1(4, FL_LOSS_SOFTMAX_CE);
  ADD(s, dense(5));
  ADD(s, L(FL_LAYER_TANH));
  ADD(s, L(FL_LAYER_SIGMOID));
  ADD(s, L(FL_LAYER_RELU));
  ADD(s, dense(3));
  gradcheck(&s, 4, false, 16);
}

Test(gradcheck, conv_relu_pool_dense) {
  fl_model_spec s = spec3(1, 8, 8, FL_LOSS_SOFTMAX_CE);
  ADD(s, conv(3, 3, 1, 0));
  ADD(s, L(FL_LAYER_RELU));
  ADD(s, pool(2, 0));
  ADD(s, L(FL_LAYER_FLATTEN));
  ADD(s, dense(4));
  gradcheck(&s, 3, false, 17);
}

/* Stride and padding in both convs, an overlapping pool (stride < kernel) whose windows share
 * inputs, and the input gradient of a conv flowing into another conv. */
Test(gradcheck, conv_stride_padding_overlapping_pool) {
  fl_model_spec s = spec3(2, 9, 7, FL_LOSS_SOFTMAX_CE);
  ADD(s, conv(3, 3, 2, 1));
  ADD(s, L(FL_LAYER_TANH));
  ADD(s, pool(2, 1));
  ADD(s, conv(2, 3, 1, 2));
  ADD(s, L(FL_LAYER_SIGMOID));
  ADD(s, L(FL_LAYER_FLATTEN));
  ADD(s, dense(3));
  gradcheck(&s, 2, false, 18);
}

/* Pool with a size that does not divide the input, before a conv; dense reads a [C,H,W]
 * activation directly; MSE on a 1-D output. */
Test(gradcheck, pool_then_conv_then_dense_mse) {
  fl_model_spec s = spec3(2, 7, 7, FL_LOSS_MSE);
  ADD(s, conv(2, 2, 1, 1));
  ADD(s, pool(3, 2));
  ADD(s, conv(3, 2, 1, 0));
  ADD(s, L(FL_LAYER_TANH));
  ADD(s, dense(2));
  gradcheck(&s, 3, true, 19);
}

/* MSE over a 3-D output (a conv autoencoder-like shape with targets). */
Test(gradcheck, conv_output_mse) {
  fl_model_spec s = spec3(1, 5, 5, FL_LOSS_MSE);
  ADD(s, conv(2, 3, 1, 1));
  ADD(s, L(FL_LAYER_TANH));
  ADD(s, conv(1, 3, 1, 1));
  gradcheck(&s, 2, false, 20);
}

/* A batch larger than one piece of work (the gradient of the pieces is summed in place), for a
 * dense and a conv model. */
Test(gradcheck, batch_split_into_pieces, .timeout = 120) {
  fl_model_spec s = spec1(3, FL_LOSS_SOFTMAX_CE);
  ADD(s, dense(4));
  ADD(s, L(FL_LAYER_TANH));
  ADD(s, dense(3));
  gradcheck(&s, 600, false, 21);
  fl_model_spec c = spec3(1, 4, 4, FL_LOSS_SOFTMAX_CE);
  ADD(c, conv(2, 3, 1, 0));
  ADD(c, L(FL_LAYER_SIGMOID));
  ADD(c, L(FL_LAYER_FLATTEN));
  ADD(c, dense(2));
  gradcheck(&c, 300, false, 22);
}

/* A conv whose columns for the batch exceed FL__CONV_COL_BUDGET (32*32*81 floats per example,
 * 12 examples per pass, batch 14) runs in two passes, whose columns are built again in backward
 * rather than kept from forward as in the single-pass batches above. Its gradient must equal
 * the mean of the examples' own gradients (one pass each, columns kept): finite differences
 * over this many positions are too noisy to tell a small error from rounding. */
Test(gradcheck, conv_batch_in_two_passes) {
  fl_model_spec s = spec3(1, 40, 40, FL_LOSS_SOFTMAX_CE);
  ADD(s, conv(1, 9, 1, 0));
  ADD(s, L(FL_LAYER_TANH));
  ADD(s, conv(2, 8, 8, 0));
  ADD(s, L(FL_LAYER_TANH));
  ADD(s, L(FL_LAYER_FLATTEN));
  ADD(s, dense(3));
  fl__layer l = {.col_per_ex = 32 * 32 * 81, .out_size = 32 * 32};
  cr_assert_eq(fl__conv_pass_examples(&l, 14), 12);
  fl_model *m = NULL;
  cr_assert_eq(fl__model_new(&m, &s, NULL), FL_OK);
  fl__model_init(m, 24);
  size_t np = fl__model_num_params(m), n = 14, in = fl__model_input_size(m);
  gc_data d;
  gc_data_make(&d, m, n, false, 25);
  fl_batch b = {.x = d.x, .labels = d.labels, .n = n};
  cr_assert_eq(fl__model_loss_grad(m, &b, NULL), FL_OK);
  float *g = malloc(np * sizeof(float));
  double *mean = calloc(np, sizeof(double));
  memcpy(g, fl__model_grads(m), np * sizeof(float));
  for (size_t e = 0; e < n; e++) {
    fl_batch one = {.x = d.x + e * in, .labels = d.labels + e, .n = 1};
    cr_assert_eq(fl__model_loss_grad(m, &one, NULL), FL_OK);
    for (size_t j = 0; j < np; j++)
      mean[j] += fl__model_grads(m)[j] / (double)n;
  }
  double gmax = 0.0;
  for (size_t j = 0; j < np; j++) {
    cr_assert(fabs(g[j] - mean[j]) <= 1e-4 * fmax(fabs(mean[j]), 1e-4),
              "param %zu: batch %.8g, mean of examples %.8g", j, g[j], mean[j]);
    gmax = fmax(gmax, fabs(g[j]));
  }
  cr_assert(gmax > 1e-2, "gradient too small to tell anything: %g", gmax);
  free(mean);
  free(g);
  gc_data_free(&d);
  fl__model_free(m);
}

/* Layers without parameters in front (pool, then an activation over the input, flatten) run
 * forward only; the first dense layer needs no input gradient. */
Test(gradcheck, parameterless_layers_first) {
  fl_model_spec s = spec3(2, 6, 6, FL_LOSS_SOFTMAX_CE);
  ADD(s, pool(2, 0));
  ADD(s, L(FL_LAYER_TANH));
  ADD(s, L(FL_LAYER_FLATTEN));
  ADD(s, dense(5));
  ADD(s, L(FL_LAYER_SIGMOID));
  ADD(s, dense(3));
  gradcheck(&s, 3, false, 23);
}
