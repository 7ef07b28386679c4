/*
 * Kernels of the built-in layers and losses, shared by model.c. Each works on a whole batch of
 * `n` examples at once so that the heavy lifting is one sgemm per layer (conv2d: one per group
 * of examples whose im2col columns fit the column budget).
 *
 * Activations are row-major [n, size] with size = c*h*w. Backward kernels either overwrite
 * their parameter gradients or add to them (`accumulate`), so that a batch processed in pieces
 * sums its gradient in place.
 */
#ifndef FL__LAYERS_H
#define FL__LAYERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Floats of im2col columns one conv2d pass may use; more examples per pass means bigger, faster
 * sgemms, but the buffer is part of a device's memory footprint (only while it trains: a
 * device's training model is freed after the round). When a training batch fits in one pass,
 * the forward pass's columns are kept for the backward pass instead of being built again: with
 * 4 MB per layer NIID-Bench's CNN at batch 64 (3.7 and 2.5 MB of columns) does. */
#define FL__CONV_COL_BUDGET ((size_t)1 << 20)

/* conv2d scratch, one per conv layer. */
typedef struct fl__conv_ws {
  float *col; /* im2col columns, reused as their gradient in backward */
  float *tmp; /* [out_c, examples * out_h * out_w] sgemm result / gathered gradient */
  /* Set by a forward pass that built the columns of all its examples in one pass: its input
   * and example count, so that the backward pass that follows it over the same examples
   * (model.c always runs them in that order) uses them again. Cleared once they are
   * overwritten by their gradient. */
  const float *col_x;
  size_t col_n;
} fl__conv_ws;

/* A layer as built from its spec: shapes resolved, parameter offsets assigned. */
typedef struct fl__layer {
  int type;
  uint32_t in_c, in_h, in_w; /* 1-D activations: in_c = features, in_h = in_w = 1 */
  uint32_t out_c, out_h, out_w;
  uint32_t out_ndim; /* 1 or 3 */
  uint32_t kernel, stride, padding;
  size_t in_size, out_size; /* floats per example */
  size_t w_off, w_count;    /* weights in the flat parameter vector */
  size_t b_off, b_count;    /* biases */
  size_t col_per_ex;        /* conv2d: im2col floats per example */
  bool in_place;            /* activation that overwrites its input buffer */
  float *out;               /* owned output buffer, NULL when aliased or in place */
  int32_t *argmax;          /* maxpool2d: winning input index per output */
  fl__conv_ws conv;         /* conv2d: owned scratch */
} fl__layer;

/* Examples handled by one conv2d pass when the batch has n. */
size_t fl__conv_pass_examples(const fl__layer *l, size_t n);

void fl__dense_forward(const fl__layer *l, const float *w, const float *b, const float *x, size_t n,
                       float *y);
/* dx may be NULL (first layer: nobody needs the input gradient). */
void fl__dense_backward(const fl__layer *l, const float *w, const float *x, const float *dy,
                        size_t n, float *dw, float *db, float *dx, bool accumulate);
/* Plain SGD fused into the backward pass: dx (may be NULL) from the weights before the step,
 * then W -= lr * dy^T x by one sgemm onto W (beta = 1) and b -= lr * sum(dy), with db as
 * scratch for the bias gradient. No gradient of W is stored and no separate pass over the
 * parameters made. */
void fl__dense_backward_sgd(const fl__layer *l, float *w, float *b, const float *x, const float *dy,
                            size_t n, float lr, float *db, float *dx);

void fl__conv_forward(const fl__layer *l, const float *w, const float *b, const float *x, size_t n,
                      float *y, fl__conv_ws *ws);
void fl__conv_backward(const fl__layer *l, const float *w, const float *x, const float *dy,
                       size_t n, float *dw, float *db, float *dx, bool accumulate, fl__conv_ws *ws);

void fl__maxpool_forward(const fl__layer *l, const float *x, size_t n, float *y, int32_t *argmax);
void fl__maxpool_backward(const fl__layer *l, const float *dy, const int32_t *argmax, size_t n,
                          float *dx);

/* Element-wise activations; x and y may be the same buffer, as may dy and dx. The backward
 * passes use the forward output y, which is all relu, sigmoid and tanh need. */
void fl__act_forward(int type, const float *x, float *y, size_t count);
void fl__act_backward(int type, const float *y, const float *dy, float *dx, size_t count);

/* Softmax cross-entropy over n rows of k logits with integer labels (already checked to be in
 * range). Adds the summed loss to *loss_sum and the number of rows whose arg-max equals the
 * label to *correct. When dz is not NULL it receives scale * (softmax - onehot). */
void fl__softmax_ce(const float *z, const int32_t *labels, size_t n, size_t k, float scale,
                    float *dz, double *loss_sum, size_t *correct);

/* Squared error over n*d values: adds sum (y - t)^2 to *loss_sum; dy (optional) receives
 * scale * 2 * (y - t). */
void fl__mse(const float *y, const float *t, size_t count, float scale, float *dy,
             double *loss_sum);

#endif
