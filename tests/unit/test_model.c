/*
 * Models: spec validation, parameter counts and layouts of the reference models, seeded
 * initialisation, forward values against naive references, loss values, work buffers that
 * stop allocating once sized, and allocation failures. The SGD rule is in test_sgd.c.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

#include "model.h"
#include "rng.h"
#include "test_alloc.h"

#define ADD(spec, ...) ((spec).layers[(spec).n_layers++] = (fl_layer_spec){__VA_ARGS__})

static fl_model_spec spec1(uint32_t features, int loss) {
  return (fl_model_spec){.input_ndim = 1, .input_shape = {features}, .loss = loss};
}

static fl_model_spec mlp(uint32_t in, const uint32_t *hidden, int n_hidden, uint32_t out) {
  fl_model_spec s = spec1(in, FL_LOSS_SOFTMAX_CE);
  for (int i = 0; i < n_hidden; i++) {
    ADD(s, .type = FL_LAYER_DENSE, .units = hidden[i]);
    ADD(s, .type = FL_LAYER_RELU);
  }
  ADD(s, .type = FL_LAYER_DENSE, .units = out);
  return s;
}

/* The simple CNN of NIID-Bench (ARCHITECTURE.md section 6). */
static fl_model_spec simple_cnn(void) {
  fl_model_spec s = {.input_ndim = 3, .input_shape = {1, 28, 28}, .loss = FL_LOSS_SOFTMAX_CE};
  ADD(s, .type = FL_LAYER_CONV2D, .out_channels = 6, .kernel = 5);
  ADD(s, .type = FL_LAYER_RELU);
  ADD(s, .type = FL_LAYER_MAXPOOL2D, .kernel = 2);
  ADD(s, .type = FL_LAYER_CONV2D, .out_channels = 16, .kernel = 5);
  ADD(s, .type = FL_LAYER_RELU);
  ADD(s, .type = FL_LAYER_MAXPOOL2D, .kernel = 2);
  ADD(s, .type = FL_LAYER_FLATTEN);
  ADD(s, .type = FL_LAYER_DENSE, .units = 120);
  ADD(s, .type = FL_LAYER_RELU);
  ADD(s, .type = FL_LAYER_DENSE, .units = 84);
  ADD(s, .type = FL_LAYER_RELU);
  ADD(s, .type = FL_LAYER_DENSE, .units = 10);
  return s;
}

static fl_model_spec autoencoder(void) {
  fl_model_spec s = spec1(64, FL_LOSS_MSE);
  ADD(s, .type = FL_LAYER_DENSE, .units = 16);
  ADD(s, .type = FL_LAYER_TANH);
  ADD(s, .type = FL_LAYER_DENSE, .units = 64);
  return s;
}

static fl_model *build(const fl_model_spec *s) {
  fl_model *m = NULL;
  cr_assert_eq(fl__model_new(&m, s, NULL), FL_OK);
  cr_assert_not_null(m);
  return m;
}

static void random_fill(float *v, size_t n, uint64_t seed) {
  fl_rng r;
  fl__rng_seed(&r, seed);
  for (size_t i = 0; i < n; i++)
    v[i] = (float)(2.0 * fl__rng_uniform(&r) - 1.0);
}

/* ---- reference models ------------------------------------------------------------------ */

Test(model, reference_param_counts_and_sizes) {
  const uint32_t h2[2] = {200, 200}, h1[1] = {100};
  struct {
    fl_model_spec spec;
    size_t params, in, out, tensors;
  } cases[] = {
      {mlp(784, NULL, 0, 10), 7850, 784, 10, 2}, /* logistic regression */
      {mlp(784, h2, 2, 10), 199210, 784, 10, 6}, /* McMahan et al. 2NN */
      {mlp(784, h1, 1, 10), 79510, 784, 10, 4},  /* Xiao et al. MLP */
      {simple_cnn(), 44426, 784, 10, 10},        /* NIID-Bench CNN */
      {mlp(60, NULL, 0, 10), 610, 60, 10, 2},    /* FedProx synthetic */
      {autoencoder(), 2128, 64, 64, 4},          /* sensor anomaly detection */
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    cr_assert_eq(fl__spec_validate(&cases[i].spec), FL_OK, "case %zu", i);
    fl_model *m = build(&cases[i].spec);
    cr_assert_eq(fl__model_num_params(m), cases[i].params, "case %zu: %zu params", i,
                 fl__model_num_params(m));
    cr_assert_eq(fl__model_input_size(m), cases[i].in);
    cr_assert_eq(fl__model_output_size(m), cases[i].out);
    cr_assert_eq(fl__model_num_tensors(m), cases[i].tensors);
    /* Tensors tile the flat vector in order, and each count is the product of its shape. */
    size_t off = 0;
    for (size_t t = 0; t < fl__model_num_tensors(m); t++) {
      fl_tensor_info ti;
      fl__model_tensor_info(m, t, &ti);
      cr_assert_eq(ti.offset, off);
      size_t prod = 1;
      for (uint32_t d = 0; d < ti.ndim; d++)
        prod *= ti.shape[d];
      cr_assert_eq(prod, ti.count);
      off += ti.count;
    }
    cr_assert_eq(off, cases[i].params);
    cr_assert_eq(memcmp(fl__model_spec(m), &cases[i].spec, sizeof cases[i].spec), 0);
    /* Parameters start zeroed. */
    for (size_t j = 0; j < fl__model_num_params(m); j++)
      cr_assert_eq(fl__model_params_const(m)[j], 0.0f);
    fl__model_free(m);
  }
}

Test(model, cnn_tensor_shapes) {
  fl_model_spec s = simple_cnn();
  fl_model *m = build(&s);
  const uint32_t want[10][4] = {{6, 1, 5, 5}, {6},       {16, 6, 5, 5}, {16},     {120, 256},
                                {120},        {84, 120}, {84},          {10, 84}, {10}};
  const uint32_t ndim[10] = {4, 1, 4, 1, 2, 1, 2, 1, 2, 1};
  for (size_t t = 0; t < 10; t++) {
    fl_tensor_info ti;
    fl__model_tensor_info(m, t, &ti);
    cr_assert_eq(ti.ndim, ndim[t], "tensor %zu", t);
    for (uint32_t d = 0; d < ti.ndim; d++)
      cr_assert_eq(ti.shape[d], want[t][d], "tensor %zu dim %u", t, d);
  }
  fl_tensor_info none;
  fl__model_tensor_info(m, 10, &none);
  cr_assert_eq(none.count, 0);
  fl__model_free(m);
}

Test(model, forward_writes_exactly_the_output) {
  fl_model_spec s = simple_cnn();
  fl_model *m = build(&s);
  fl__model_init(m, 3);
  enum { B = 5 };
  float *x = malloc(B * 784 * sizeof(float));
  random_fill(x, B * 784, 9);
  float out[B * 10 + 4];
  for (size_t i = 0; i < sizeof out / sizeof out[0]; i++)
    out[i] = -12345.0f;
  cr_assert_eq(fl__model_forward(m, x, B, out), FL_OK);
  for (int i = 0; i < B * 10; i++)
    cr_assert(isfinite(out[i]) && out[i] != -12345.0f);
  for (int i = B * 10; i < B * 10 + 4; i++)
    cr_assert_eq(out[i], -12345.0f);
  /* Each example's output is independent of the others in its batch. */
  float one[10];
  cr_assert_eq(fl__model_forward(m, x + 3 * 784, 1, one), FL_OK);
  for (int i = 0; i < 10; i++)
    cr_assert_float_eq(one[i], out[30 + i], 1e-5f);
  cr_assert_eq(fl__model_forward(m, NULL, 1, one), FL_E_INVAL);
  free(x);
  fl__model_free(m);
}

/* ---- forward values against naive references ------------------------------------------- */

Test(model, dense_forward_is_wx_plus_b) {
  fl_model_spec s = spec1(3, FL_LOSS_MSE);
  ADD(s, .type = FL_LAYER_DENSE, .units = 2);
  fl_model *m = build(&s);
  /* W [out, in] = [[1, 2, 3], [4, 5, 6]], b = [0.5, -1] */
  const float p[8] = {1, 2, 3, 4, 5, 6, 0.5f, -1};
  memcpy(fl__model_params(m), p, sizeof p);
  const float x[6] = {1, 0, -1, 2, 1, 0};
  float y[4];
  cr_assert_eq(fl__model_forward(m, x, 2, y), FL_OK);
  const float want[4] = {1 - 3 + 0.5f, 4 - 6 - 1, 2 + 2 + 0.5f, 8 + 5 - 1};
  for (int i = 0; i < 4; i++)
    cr_assert_float_eq(y[i], want[i], 1e-6f);
  fl__model_free(m);
}

static float at3(const float *x, uint32_t h, uint32_t w, uint32_t c, long i, long j) {
  if (i < 0 || j < 0 || i >= (long)h || j >= (long)w)
    return 0.0f;
  return x[((size_t)c * h + (size_t)i) * w + (size_t)j];
}

typedef struct conv_case {
  int c, h, w, oc, k, s, p, pk, ps;
} conv_case;

/* The model conv2d -> maxpool2d of `cc` against plain loops, for two examples. */
static void check_conv_pool(const conv_case *cc) {
  const int B = 2, oh = (cc->h + 2 * cc->p - cc->k) / cc->s + 1;
  const int ow = (cc->w + 2 * cc->p - cc->k) / cc->s + 1;
  const int ph = (oh - cc->pk) / cc->ps + 1, pw = (ow - cc->pk) / cc->ps + 1;
  fl_model_spec s = {.input_ndim = 3,
                     .input_shape = {(uint32_t)cc->c, (uint32_t)cc->h, (uint32_t)cc->w},
                     .loss = FL_LOSS_MSE};
  ADD(s, .type = FL_LAYER_CONV2D, .out_channels = (uint32_t)cc->oc, .kernel = (uint32_t)cc->k,
      .stride = (uint32_t)cc->s, .padding = (uint32_t)cc->p);
  ADD(s, .type = FL_LAYER_MAXPOOL2D, .kernel = (uint32_t)cc->pk, .stride = (uint32_t)cc->ps);
  fl_model *m = build(&s);
  cr_assert_eq(fl__model_output_size(m), (size_t)(cc->oc * ph * pw));
  float *p = fl__model_params(m);
  random_fill(p, fl__model_num_params(m), 4);
  const float *wt = p, *bias = p + cc->oc * cc->c * cc->k * cc->k;
  size_t in = (size_t)(cc->c * cc->h * cc->w), out = (size_t)(cc->oc * ph * pw);
  float *x = malloc(B * in * sizeof(float)), *y = malloc(B * out * sizeof(float));
  float *conv = malloc((size_t)(cc->oc * oh * ow) * sizeof(float));
  random_fill(x, B * in, 5);
  cr_assert_eq(fl__model_forward(m, x, B, y), FL_OK);
  for (int e = 0; e < B; e++) {
    const float *xe = x + e * in;
    for (int o = 0; o < cc->oc; o++)
      for (int i = 0; i < oh; i++)
        for (int j = 0; j < ow; j++) {
          double acc = bias[o];
          for (int c = 0; c < cc->c; c++)
            for (int ki = 0; ki < cc->k; ki++)
              for (int kj = 0; kj < cc->k; kj++)
                acc += wt[((o * cc->c + c) * cc->k + ki) * cc->k + kj] *
                       at3(xe, (uint32_t)cc->h, (uint32_t)cc->w, (uint32_t)c,
                           i * cc->s - cc->p + ki, j * cc->s - cc->p + kj);
          conv[(o * oh + i) * ow + j] = (float)acc;
        }
    for (int o = 0; o < cc->oc; o++)
      for (int i = 0; i < ph; i++)
        for (int j = 0; j < pw; j++) {
          float mx = -INFINITY;
          for (int a = 0; a < cc->pk; a++)
            for (int b = 0; b < cc->pk; b++)
              mx = fmaxf(mx, conv[(o * oh + i * cc->ps + a) * ow + j * cc->ps + b]);
          cr_assert_float_eq(y[e * out + (size_t)((o * ph + i) * pw + j)], mx, 1e-5f,
                             "example %d channel %d (%d, %d)", e, o, i, j);
        }
  }
  free(conv);
  free(x);
  free(y);
  fl__model_free(m);
}

/* Strides larger than one, padding up to kernel - 1, kernels wider than the unpadded input,
 * non-square inputs, overlapping and disjoint pools. */
Test(model, conv_and_maxpool_match_naive_loops) {
  const conv_case cases[] = {
      {2, 7, 6, 3, 3, 2, 1, 2, 1}, {1, 28, 28, 6, 5, 1, 0, 2, 2}, {3, 5, 9, 2, 4, 3, 2, 2, 1},
      {1, 3, 4, 2, 5, 1, 4, 3, 2}, {2, 8, 8, 4, 1, 2, 0, 2, 2},   {1, 6, 5, 1, 3, 4, 1, 1, 1},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    check_conv_pool(&cases[i]);
}

Test(model, activations_values) {
  const int types[3] = {FL_LAYER_RELU, FL_LAYER_SIGMOID, FL_LAYER_TANH};
  const float x[4] = {-2.0f, 0.0f, 0.5f, -100.0f};
  for (int t = 0; t < 3; t++) {
    fl_model_spec s = spec1(4, FL_LOSS_MSE);
    ADD(s, .type = FL_LAYER_DENSE, .units = 4);
    ADD(s, .type = types[t]);
    fl_model *m = build(&s);
    float *p = fl__model_params(m); /* identity weights, zero bias */
    for (int i = 0; i < 4; i++)
      p[i * 4 + i] = 1.0f;
    float y[4];
    cr_assert_eq(fl__model_forward(m, x, 1, y), FL_OK);
    for (int i = 0; i < 4; i++) {
      double want = types[t] == FL_LAYER_RELU      ? fmax(x[i], 0.0)
                    : types[t] == FL_LAYER_SIGMOID ? 1.0 / (1.0 + exp(-x[i]))
                                                   : tanh(x[i]);
      cr_assert_float_eq(y[i], want, 1e-6, "type %d x %g", types[t], x[i]);
    }
    fl__model_free(m);
  }
}

/* ---- losses ---------------------------------------------------------------------------- */

Test(model, softmax_ce_loss_and_accuracy) {
  fl_model_spec s = spec1(2, FL_LOSS_SOFTMAX_CE);
  ADD(s, .type = FL_LAYER_DENSE, .units = 2);
  fl_model *m = build(&s);
  float *p = fl__model_params(m);
  p[0] = p[3] = 1.0f; /* W = I, b = 0: logits equal the input */
  const float x[4] = {1, 0, 0, 1};
  const int32_t y[2] = {0, 0};
  fl_batch b = {.x = x, .labels = y, .n = 2};
  double loss, acc;
  cr_assert_eq(fl__model_evaluate(m, &b, &loss, &acc), FL_OK);
  double want = ((log(exp(1.0) + 1.0) - 1.0) + log(1.0 + exp(1.0))) / 2.0;
  cr_assert_float_eq(loss, want, 1e-6);
  cr_assert_float_eq(acc, 0.5, 1e-12);
  double lg;
  cr_assert_eq(fl__model_loss_grad(m, &b, &lg), FL_OK);
  cr_assert_float_eq(lg, want, 1e-6);
  fl__model_free(m);
}

/* Logits of +-1000 overflow a naive exp; the log-sum-exp form gives exact values. */
Test(model, softmax_ce_is_stable_for_huge_logits) {
  fl_model_spec s = spec1(1, FL_LOSS_SOFTMAX_CE);
  ADD(s, .type = FL_LAYER_DENSE, .units = 3);
  fl_model *m = build(&s);
  float *p = fl__model_params(m); /* W = 0, b = [1000, 0, -1000] */
  p[3] = 1000.0f;
  p[5] = -1000.0f;
  const float x[2] = {0, 0};
  const int32_t y[2] = {1, 0};
  fl_batch b = {.x = x, .labels = y, .n = 2};
  double loss;
  cr_assert_eq(fl__model_loss_grad(m, &b, &loss), FL_OK);
  cr_assert_float_eq(loss, 500.0, 1e-9);
  const float *g = fl__model_grads(m); /* bias gradient: mean(softmax - onehot) */
  cr_assert_float_eq(g[3], 0.5f, 1e-6f);
  cr_assert_float_eq(g[4], -0.5f, 1e-6f);
  for (size_t i = 0; i < 6; i++)
    cr_assert(isfinite(g[i]));
  fl__model_free(m);
}

Test(model, mse_mean_over_all_values_and_autoencoder_targets) {
  fl_model_spec s = spec1(2, FL_LOSS_MSE);
  ADD(s, .type = FL_LAYER_DENSE, .units = 2);
  fl_model *m = build(&s);
  float *p = fl__model_params(m);
  p[4] = 1.0f; /* W = 0, b = [1, 0]: output [1, 0] for every input */
  const float x[4] = {0, 0, 1, 2};
  const float t[4] = {3, 0, 1, 0};
  fl_batch b = {.x = x, .targets = t, .n = 2};
  double loss;
  cr_assert_eq(fl__model_evaluate(m, &b, &loss, NULL), FL_OK);
  cr_assert_float_eq(loss, (4.0 + 0.0 + 0.0 + 0.0) / 4.0, 1e-9);
  b.targets = NULL; /* reconstruct the input: (1-0)^2 + 0 + (1-1)^2 + (0-2)^2 over 4 */
  double acc = -1.0;
  cr_assert_eq(fl__model_evaluate(m, &b, &loss, &acc), FL_OK);
  cr_assert_float_eq(loss, 5.0 / 4.0, 1e-9);
  cr_assert_eq(acc, 0.0);
  cr_assert_eq(fl__model_loss_grad(m, &b, &loss), FL_OK);
  cr_assert_float_eq(loss, 5.0 / 4.0, 1e-9);
  /* d loss / d b = 2 * mean over batch of (y - t) / out = [2*(1+0)/4, 2*(0-2)/4] */
  cr_assert_float_eq(fl__model_grads(m)[4], 0.5f, 1e-6f);
  cr_assert_float_eq(fl__model_grads(m)[5], -1.0f, 1e-6f);
  fl__model_free(m);
}

Test(model, bad_batches_are_refused_before_touching_anything) {
  fl_model_spec s = spec1(2, FL_LOSS_SOFTMAX_CE);
  ADD(s, .type = FL_LAYER_DENSE, .units = 3);
  fl_model *m = build(&s);
  float *g = fl__model_grads(m);
  for (int i = 0; i < 9; i++)
    g[i] = 7.0f;
  const float x[4] = {1, 2, 3, 4};
  const int32_t bad_hi[2] = {0, 3}, bad_neg[2] = {-1, 0};
  fl_batch b = {.x = x, .labels = bad_hi, .n = 2};
  cr_assert_eq(fl__model_loss_grad(m, &b, NULL), FL_E_INVAL);
  b.labels = bad_neg;
  cr_assert_eq(fl__model_loss_grad(m, &b, NULL), FL_E_INVAL);
  b.labels = NULL;
  cr_assert_eq(fl__model_evaluate(m, &b, NULL, NULL), FL_E_INVAL);
  b.labels = bad_hi;
  b.n = 0;
  cr_assert_eq(fl__model_loss_grad(m, &b, NULL), FL_E_INVAL);
  for (int i = 0; i < 9; i++)
    cr_assert_eq(g[i], 7.0f);
  fl__model_free(m);
  /* MSE without targets needs output size == input size. */
  fl_model_spec r = spec1(2, FL_LOSS_MSE);
  ADD(r, .type = FL_LAYER_DENSE, .units = 3);
  m = build(&r);
  fl_batch rb = {.x = x, .n = 2};
  cr_assert_eq(fl__model_loss_grad(m, &rb, NULL), FL_E_SHAPE);
  fl__model_free(m);
}

/* Batches larger than one internal piece give the same loss and gradient as the sum of their
 * parts. */
Test(model, large_batches_equal_their_parts) {
  const uint32_t h[1] = {20};
  fl_model_spec s = mlp(30, h, 1, 5);
  fl_model *m = build(&s);
  fl__model_init(m, 8);
  enum { N = 1000, P = 250 };
  float *x = malloc(N * 30 * sizeof(float));
  int32_t y[N];
  random_fill(x, N * 30, 2);
  for (int i = 0; i < N; i++)
    y[i] = i % 5;
  size_t np = fl__model_num_params(m);
  fl_batch all = {.x = x, .labels = y, .n = N};
  double loss_all;
  cr_assert_eq(fl__model_loss_grad(m, &all, &loss_all), FL_OK);
  float *g_all = malloc(np * sizeof(float)), *g_sum = calloc(np, sizeof(float));
  memcpy(g_all, fl__model_grads(m), np * sizeof(float));
  double loss_sum = 0.0;
  for (int i = 0; i < N; i += P) {
    fl_batch part = {.x = x + i * 30, .labels = y + i, .n = P};
    double l;
    cr_assert_eq(fl__model_loss_grad(m, &part, &l), FL_OK);
    loss_sum += l * P / N;
    for (size_t j = 0; j < np; j++)
      g_sum[j] += fl__model_grads(m)[j] * P / N;
  }
  cr_assert_float_eq(loss_all, loss_sum, 1e-6);
  for (size_t j = 0; j < np; j++)
    cr_assert_float_eq(g_all[j], g_sum[j], 1e-5f, "param %zu", j);
  double loss_eval;
  cr_assert_eq(fl__model_evaluate(m, &all, &loss_eval, NULL), FL_OK);
  cr_assert_float_eq(loss_eval, loss_all, 1e-6);
  free(g_all);
  free(g_sum);
  free(x);
  fl__model_free(m);
}

/* ---- spec validation ------------------------------------------------------------------- */

Test(model, invalid_specs_are_refused) {
  fl_model_spec base = spec1(4, FL_LOSS_SOFTMAX_CE);
  ADD(base, .type = FL_LAYER_DENSE, .units = 3);
  cr_assert_eq(fl__spec_validate(&base), FL_OK);
  cr_assert_eq(fl__spec_validate(NULL), FL_E_INVAL);
  struct {
    const char *what;
    fl_model_spec s;
    int want;
  } cases[32];
  int n = 0;
#define CASE(desc, code, ...) \
  do {                        \
    fl_model_spec s_ = base;  \
    __VA_ARGS__;              \
    cases[n].what = desc;     \
    cases[n].s = s_;          \
    cases[n++].want = code;   \
  } while (0)
  fl_model_spec img = {.input_ndim = 3, .input_shape = {1, 8, 8}, .loss = FL_LOSS_SOFTMAX_CE};
  CASE("no layers", FL_E_INVAL, s_.n_layers = 0);
  CASE("too many layers", FL_E_INVAL, s_.n_layers = FL_MAX_LAYERS + 1);
  CASE("unknown loss", FL_E_INVAL, s_.loss = 3);
  CASE("unknown layer", FL_E_INVAL, s_.layers[0].type = 8);
  CASE("input ndim 2", FL_E_INVAL, s_.input_ndim = 2);
  CASE("zero features", FL_E_SHAPE, s_.input_shape[0] = 0);
  CASE("zero units", FL_E_INVAL, s_.layers[0].units = 0);
  CASE("one class", FL_E_SHAPE, s_.layers[0].units = 1);
  CASE("no parameters", FL_E_INVAL, s_.layers[0].type = FL_LAYER_RELU);
  CASE("conv on 1-D", FL_E_SHAPE,
       s_.layers[0] = (fl_layer_spec){.type = FL_LAYER_CONV2D, .out_channels = 2, .kernel = 3});
  CASE("features too many", FL_E_TOOBIG, s_.input_shape[0] = (1u << 24) + 1);
  CASE("too many params", FL_E_TOOBIG, s_.input_shape[0] = 1u << 20; s_.layers[0].units = 128);
  CASE("activation too big", FL_E_TOOBIG, s_.layers[0].units = (1u << 24) + 1);
  base = img;
  ADD(base, .type = FL_LAYER_CONV2D, .out_channels = 2, .kernel = 3, .padding = 1);
  ADD(base, .type = FL_LAYER_MAXPOOL2D, .kernel = 2);
  ADD(base, .type = FL_LAYER_FLATTEN);
  ADD(base, .type = FL_LAYER_DENSE, .units = 3);
  cr_assert_eq(fl__spec_validate(&base), FL_OK);
  CASE("zero channels in", FL_E_SHAPE, s_.input_shape[0] = 0);
  CASE("height too big", FL_E_TOOBIG, s_.input_shape[1] = 70000);
  CASE("zero out channels", FL_E_INVAL, s_.layers[0].out_channels = 0);
  CASE("zero kernel", FL_E_INVAL, s_.layers[0].kernel = 0);
  CASE("padding >= kernel", FL_E_INVAL, s_.layers[0].padding = 3);
  CASE("kernel beyond padded input", FL_E_SHAPE, s_.layers[0].kernel = 11;
       s_.layers[0].padding = 0);
  CASE("pool kernel beyond input", FL_E_SHAPE, s_.layers[1].kernel = 9);
  CASE("padded pool", FL_E_INVAL, s_.layers[1].padding = 1);
  CASE("zero pool kernel", FL_E_INVAL, s_.layers[1].kernel = 0);
  CASE("CE over a 3-D output", FL_E_SHAPE, s_.n_layers = 2);
  CASE("pool after flatten", FL_E_SHAPE, s_.layers[3] = s_.layers[1]; s_.n_layers = 4);
  CASE("huge im2col", FL_E_TOOBIG, s_.input_shape[0] = 64; s_.input_shape[1] = 1024;
       s_.input_shape[2] = 256; s_.layers[0].kernel = 5; s_.layers[0].padding = 2);
#undef CASE
  for (int i = 0; i < n; i++) {
    cr_assert_eq(fl__spec_validate(&cases[i].s), cases[i].want, "%s: got %d", cases[i].what,
                 fl__spec_validate(&cases[i].s));
    fl_model *m = (fl_model *)&n; /* untouched on error */
    cr_assert_eq(fl__model_new(&m, &cases[i].s, NULL), cases[i].want, "%s", cases[i].what);
    cr_assert_eq(m, (fl_model *)&n);
  }
  /* Fields a layer does not use are ignored; a dense layer reads a [C, H, W] input. */
  fl_model_spec ok = img;
  ADD(ok, .type = FL_LAYER_RELU, .units = 99, .kernel = 7);
  ADD(ok, .type = FL_LAYER_DENSE, .units = 4);
  cr_assert_eq(fl__spec_validate(&ok), FL_OK);
}

/* ---- initialisation -------------------------------------------------------------------- */

Test(model, init_is_reproducible_bit_for_bit) {
  const uint32_t h2[2] = {200, 200};
  fl_model_spec specs[2] = {mlp(784, h2, 2, 10), simple_cnn()};
  for (int k = 0; k < 2; k++) {
    fl_model *a = build(&specs[k]), *b = build(&specs[k]);
    size_t np = fl__model_num_params(a);
    fl__model_init(a, 42);
    fl__model_init(b, 42);
    cr_assert_eq(memcmp(fl__model_params(a), fl__model_params(b), np * sizeof(float)), 0);
    /* Re-initialising overwrites everything, including trained biases. */
    for (size_t j = 0; j < np; j++)
      fl__model_params(b)[j] += 1.0f;
    fl__model_init(b, 42);
    cr_assert_eq(memcmp(fl__model_params(a), fl__model_params(b), np * sizeof(float)), 0);
    fl__model_init(b, 43);
    size_t same = 0;
    for (size_t j = 0; j < np; j++)
      same += fl__model_params(a)[j] == fl__model_params(b)[j] && fl__model_params(a)[j] != 0.0f;
    cr_assert_lt(same, np / 1000, "%zu of %zu weights equal under another seed", same, np);
    fl__model_free(a);
    fl__model_free(b);
  }
}

/* He normal (std sqrt(2/fan_in)) before a relu, Glorot uniform (bound sqrt(6/(in+out)))
 * otherwise, zero biases. */
Test(model, init_scales_follow_he_and_glorot) {
  const uint32_t h2[2] = {200, 200};
  fl_model_spec s = mlp(784, h2, 2, 10);
  fl_model *m = build(&s);
  fl__model_init(m, 1);
  const float *p = fl__model_params_const(m);
  fl_tensor_info w1, b1, w3;
  fl__model_tensor_info(m, 0, &w1);
  fl__model_tensor_info(m, 1, &b1);
  fl__model_tensor_info(m, 4, &w3);
  double s2 = 0.0, mean = 0.0;
  for (size_t j = 0; j < w1.count; j++) {
    mean += p[w1.offset + j];
    s2 += (double)p[w1.offset + j] * p[w1.offset + j];
  }
  mean /= (double)w1.count;
  double sd = sqrt(s2 / (double)w1.count);
  cr_assert_lt(fabs(mean), 0.002);
  cr_assert_float_eq(sd, sqrt(2.0 / 784.0), 0.02 * sqrt(2.0 / 784.0));
  for (size_t j = 0; j < b1.count; j++)
    cr_assert_eq(p[b1.offset + j], 0.0f);
  double bound = sqrt(6.0 / 210.0), mx = 0.0;
  s2 = 0.0;
  for (size_t j = 0; j < w3.count; j++) {
    mx = fmax(mx, fabs(p[w3.offset + j]));
    s2 += (double)p[w3.offset + j] * p[w3.offset + j];
  }
  cr_assert_leq(mx, bound);
  cr_assert_gt(mx, 0.95 * bound);
  cr_assert_float_eq(sqrt(s2 / (double)w3.count), bound / sqrt(3.0), 0.1 * bound / sqrt(3.0));
  fl__model_free(m);
}

/* ---- allocation ------------------------------------------------------------------------ */

/* Every allocation of building a CNN and training it fails in turn: each failure reports
 * FL_E_NOMEM, leaves nothing behind, and the model stays usable afterwards. */
Test(alloc, every_failure_is_reported_and_recoverable) {
  fl_model_spec s = simple_cnn();
  enum { B = 3 };
  float *x = calloc(B * 784, sizeof(float));
  const int32_t y[B] = {1, 2, 3};
  fl_batch b = {.x = x, .labels = y, .n = B};
  bool completed = false;
  for (long k = 0; !completed; k++) {
    test_alloc c = {.fail_at = k};
    fl_allocator a = test_alloc_hooks(&c);
    fl_model *m = NULL;
    int rc = fl__model_new(&m, &s, &a);
    if (rc != FL_OK) {
      cr_assert_eq(rc, FL_E_NOMEM);
      cr_assert_null(m);
      cr_assert_eq(c.live, 0);
      continue;
    }
    fl__model_init(m, 1);
    rc = fl__model_loss_grad(m, &b, NULL);
    if (rc != FL_OK) {
      cr_assert_eq(rc, FL_E_NOMEM);
      c.fail_at = -1;
      cr_assert_eq(fl__model_loss_grad(m, &b, NULL), FL_OK, "unusable after failure %ld", k);
    } else {
      completed = true;
    }
    fl__model_free(m);
    cr_assert_eq(c.live, 0);
  }
  free(x);
}

/* Once sized for a batch, training steps and evaluation of smaller batches allocate nothing. */
Test(alloc, no_allocation_per_step_once_sized) {
  const uint32_t h2[2] = {200, 200};
  fl_model_spec s = mlp(784, h2, 2, 10);
  test_alloc c = {.fail_at = -1};
  fl_allocator a = test_alloc_hooks(&c);
  fl_model *m = NULL;
  cr_assert_eq(fl__model_new(&m, &s, &a), FL_OK);
  fl__model_init(m, 2);
  enum { B = 10 };
  float *x = calloc(B * 784, sizeof(float));
  int32_t y[B] = {0};
  fl_batch b = {.x = x, .labels = y, .n = B};
  fl_sgd o = {.lr = 0.01f};
  cr_assert_eq(fl__model_sgd_step(m, &b, &o, NULL), FL_OK);
  long after_first = c.calls;
  for (int i = 0; i < 5; i++) {
    b.n = (size_t)(B - i);
    cr_assert_eq(fl__model_sgd_step(m, &b, &o, NULL), FL_OK);
    cr_assert_eq(fl__model_evaluate(m, &b, NULL, NULL), FL_OK);
  }
  cr_assert_eq(c.calls, after_first);
  free(x);
  fl__model_free(m);
  cr_assert_eq(c.live, 0);
}
