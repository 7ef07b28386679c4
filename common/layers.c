/*
 * Forward and backward kernels of the built-in layers and losses. Shapes were checked when the
 * model was built (model.c), so nothing here can fail: every function works on buffers the
 * model has already sized for the batch.
 */
#include "layers.h"

#include <math.h>
#include <string.h>

#include "model.h"
#include "tensor.h"

/* ---- dense ----------------------------------------------------------------------------- */

/* y[n, out] = x[n, in] * W^T + b, with W stored [out, in]. The bias is written first so that
 * the sgemm adds onto it (beta = 1) instead of a second pass over y. */
void fl__dense_forward(const fl__layer *l, const float *w, const float *b, const float *x, size_t n,
                       float *y) {
  size_t out = l->out_size;
  for (size_t i = 0; i < n; i++)
    memcpy(y + i * out, b, out * sizeof(float));
  fl__gemm(false, true, n, out, l->in_size, 1.0f, x, w, 1.0f, y);
}

void fl__dense_backward(const fl__layer *l, const float *w, const float *x, const float *dy,
                        size_t n, float *dw, float *db, float *dx, bool accumulate) {
  size_t out = l->out_size, in = l->in_size;
  /* dW[out, in] = dy^T[out, n] * x[n, in] */
  fl__gemm(true, false, out, in, n, 1.0f, dy, x, accumulate ? 1.0f : 0.0f, dw);
  if (!accumulate)
    memset(db, 0, out * sizeof(float));
  for (size_t i = 0; i < n; i++) {
    const float *row = dy + i * out;
    for (size_t j = 0; j < out; j++)
      db[j] += row[j];
  }
  /* dx[n, in] = dy[n, out] * W[out, in] */
  if (dx)
    fl__gemm(false, false, n, in, out, 1.0f, dy, w, 0.0f, dx);
}

void fl__dense_backward_sgd(const fl__layer *l, float *w, float *b, const float *x, const float *dy,
                            size_t n, float lr, float *db, float *dx) {
  size_t out = l->out_size, in = l->in_size;
  if (dx)
    fl__gemm(false, false, n, in, out, 1.0f, dy, w, 0.0f, dx);
  /* W[out, in] += -lr * dy^T[out, n] * x[n, in]: the same products summed in the same order
   * as the gradient sgemm; only the step's rounding may differ (the kernel may fuse the
   * multiply by -lr with the add onto W). */
  fl__gemm(true, false, out, in, n, -lr, dy, x, 1.0f, w);
  /* The bias exactly as dense_backward then sgd_update compute it. */
  memset(db, 0, out * sizeof(float));
  for (size_t i = 0; i < n; i++) {
    const float *row = dy + i * out;
    for (size_t j = 0; j < out; j++)
      db[j] += row[j];
  }
  for (size_t j = 0; j < out; j++)
    b[j] -= lr * db[j];
}

/* ---- conv2d ---------------------------------------------------------------------------- */

size_t fl__conv_pass_examples(const fl__layer *l, size_t n) {
  size_t per_ex = l->col_per_ex > l->out_size ? l->col_per_ex : l->out_size;
  size_t cn = FL__CONV_COL_BUDGET / per_ex;
  if (cn < 1)
    cn = 1;
  return cn < n ? cn : n;
}

/* Input row (or column) of kernel tap `t` for output position `o`; negative or >= limit means
 * the tap falls on padding. */
static long tap_pos(uint32_t o, const fl__layer *l, uint32_t t) {
  return (long)o * (long)l->stride - (long)l->padding + (long)t;
}

/* Output positions [*lo, *hi) whose tap `t` falls inside an input of `n_in` (the others read
 * padding), so that the inner loops below need no bounds checks. */
static void tap_range(const fl__layer *l, uint32_t n_out, uint32_t n_in, uint32_t t, uint32_t *lo,
                      uint32_t *hi) {
  long s = (long)l->stride, first = (long)l->padding - (long)t;
  long last = (long)n_in - 1 + (long)l->padding - (long)t; /* o*s must lie in [first, last] */
  long a = first <= 0 ? 0 : (first + s - 1) / s;
  long b = last < 0 ? 0 : last / s + 1;
  if (b > (long)n_out)
    b = (long)n_out;
  if (a > b)
    a = b;
  *lo = (uint32_t)a;
  *hi = (uint32_t)b;
}

/* Columns for `cn` examples: col[(c*k + ki)*k + kj, e*OH*OW + oh*OW + ow] holds the input
 * under tap (ki, kj) of output (oh, ow) of example e, zero on padding. With all examples of a
 * pass side by side, the layer is one sgemm W[out_c, C*k*k] * col. */
static void im2col(const fl__layer *l, const float *x, size_t cn, float *col) {
  uint32_t k = l->kernel, s = l->stride, oh_n = l->out_h, ow_n = l->out_w;
  size_t ohw = (size_t)oh_n * ow_n, plane = (size_t)l->in_h * l->in_w, ncols = cn * ohw;
  for (uint32_t c = 0; c < l->in_c; c++) {
    for (uint32_t ki = 0; ki < k; ki++) {
      uint32_t h_lo, h_hi;
      tap_range(l, oh_n, l->in_h, ki, &h_lo, &h_hi);
      for (uint32_t kj = 0; kj < k; kj++) {
        uint32_t w_lo, w_hi;
        tap_range(l, ow_n, l->in_w, kj, &w_lo, &w_hi);
        float *dst = col + (((size_t)c * k + ki) * k + kj) * ncols;
        for (size_t e = 0; e < cn; e++) {
          const float *xp = x + e * l->in_size + c * plane;
          float *d = dst + e * ohw;
          /* memcpy and memset: the rows are short (24 and 8 floats in NIID-Bench's CNN), and
           * element loops the compiler cannot prove alias-free cost 8 instructions a float.
           * Padding is rare: its memsets are skipped when empty, as they are without it. */
          if (h_lo > 0)
            memset(d, 0, (size_t)h_lo * ow_n * sizeof(float));
          for (uint32_t oh = h_lo; oh < h_hi; oh++) {
            float *dr = d + (size_t)oh * ow_n;
            const float *xr = xp + (size_t)tap_pos(oh, l, ki) * l->in_w;
            const float *xs = xr + tap_pos(w_lo, l, kj);
            if (w_lo > 0)
              memset(dr, 0, w_lo * sizeof(float));
            if (s == 1) {
              memcpy(dr + w_lo, xs, (size_t)(w_hi - w_lo) * sizeof(float));
            } else {
              for (uint32_t ow = w_lo; ow < w_hi; ow++)
                dr[ow] = xs[(size_t)(ow - w_lo) * s];
            }
            if (w_hi < ow_n)
              memset(dr + w_hi, 0, (size_t)(ow_n - w_hi) * sizeof(float));
          }
          if (h_hi < oh_n)
            memset(d + (size_t)h_hi * ow_n, 0, (ohw - (size_t)h_hi * ow_n) * sizeof(float));
        }
      }
    }
  }
}

/* The adjoint of im2col: adds every column entry back onto the input position it was copied
 * from. dx must hold zeros (or a gradient to add to) for the `cn` examples. */
static void col2im(const fl__layer *l, const float *col, size_t cn, float *dx) {
  uint32_t k = l->kernel, s = l->stride, oh_n = l->out_h, ow_n = l->out_w;
  size_t ohw = (size_t)oh_n * ow_n, plane = (size_t)l->in_h * l->in_w, ncols = cn * ohw;
  for (uint32_t c = 0; c < l->in_c; c++) {
    for (uint32_t ki = 0; ki < k; ki++) {
      uint32_t h_lo, h_hi;
      tap_range(l, oh_n, l->in_h, ki, &h_lo, &h_hi);
      for (uint32_t kj = 0; kj < k; kj++) {
        uint32_t w_lo, w_hi;
        tap_range(l, ow_n, l->in_w, kj, &w_lo, &w_hi);
        const float *src = col + (((size_t)c * k + ki) * k + kj) * ncols;
        for (size_t e = 0; e < cn; e++) {
          float *xp = dx + e * l->in_size + c * plane;
          const float *sp = src + e * ohw;
          for (uint32_t oh = h_lo; oh < h_hi; oh++) {
            const float *sr = sp + (size_t)oh * ow_n;
            float *xs = xp + (size_t)tap_pos(oh, l, ki) * l->in_w + tap_pos(w_lo, l, kj);
            if (s == 1) {
              /* Column and input never overlap; restrict lets the compiler vectorise. */
              float *restrict xd = xs;
              const float *restrict sd = sr + w_lo;
              for (uint32_t i = 0; i < w_hi - w_lo; i++)
                xd[i] += sd[i];
            } else {
              for (uint32_t ow = w_lo; ow < w_hi; ow++)
                xs[(size_t)(ow - w_lo) * s] += sr[ow];
            }
          }
        }
      }
    }
  }
}

void fl__conv_forward(const fl__layer *l, const float *w, const float *b, const float *x, size_t n,
                      float *y, fl__conv_ws *ws) {
  size_t ohw = (size_t)l->out_h * l->out_w, ckk = (size_t)l->in_c * l->kernel * l->kernel;
  size_t pass = fl__conv_pass_examples(l, n);
  ws->col_x = NULL;
  for (size_t e0 = 0; e0 < n; e0 += pass) {
    size_t cn = n - e0 < pass ? n - e0 : pass;
    im2col(l, x + e0 * l->in_size, cn, ws->col);
    /* tmp[out_c, cn*ohw] = b + W[out_c, ckk] * col[ckk, cn*ohw]: the bias written first and
     * the sgemm adding onto it (beta = 1), as in dense, spares the sgemm's own zeroing pass
     * over tmp. The same sum: OpenBLAS adds its product onto C, so only where it splits k
     * into panels (far above these layers' C*k*k) would the bias join the partial sums
     * earlier. */
    for (uint32_t o = 0; o < l->out_c; o++) {
      float *row = ws->tmp + o * cn * ohw;
      for (size_t p = 0; p < cn * ohw; p++)
        row[p] = b[o];
    }
    fl__gemm(false, false, l->out_c, cn * ohw, ckk, 1.0f, w, ws->col, 1.0f, ws->tmp);
    /* Scatter back to [example, channel, position] order. */
    for (size_t e = 0; e < cn; e++) {
      for (uint32_t o = 0; o < l->out_c; o++)
        memcpy(y + (e0 + e) * l->out_size + o * ohw, ws->tmp + (o * cn + e) * ohw,
               ohw * sizeof(float));
    }
  }
  if (pass >= n) {
    ws->col_x = x;
    ws->col_n = n;
  }
}

/* Sum of a row, in 16 interleaved partial sums: one float accumulator would be a chain of
 * dependent adds (the compiler may not reorder them), which for a conv1 bias of 36,864 terms
 * per batch costs more than the row's copy. */
static float row_sum(const float *r, size_t len) {
  float acc[16] = {0};
  size_t i = 0;
  for (; i + 16 <= len; i += 16) {
    for (size_t j = 0; j < 16; j++)
      acc[j] += r[i + j];
  }
  float s = 0.0f;
  for (; i < len; i++)
    s += r[i];
  for (size_t j = 0; j < 16; j++)
    s += acc[j];
  return s;
}

void fl__conv_backward(const fl__layer *l, const float *w, const float *x, const float *dy,
                       size_t n, float *dw, float *db, float *dx, bool accumulate,
                       fl__conv_ws *ws) {
  size_t ohw = (size_t)l->out_h * l->out_w, ckk = (size_t)l->in_c * l->kernel * l->kernel;
  size_t pass = fl__conv_pass_examples(l, n);
  bool kept = pass >= n && ws->col_x == x && ws->col_n == n;
  ws->col_x = NULL;
  if (!accumulate)
    memset(db, 0, l->out_c * sizeof(float));
  for (size_t e0 = 0; e0 < n; e0 += pass) {
    size_t cn = n - e0 < pass ? n - e0 : pass;
    /* Gather dy into the [out_c, cn*ohw] layout of the forward sgemm result. */
    for (size_t e = 0; e < cn; e++) {
      for (uint32_t o = 0; o < l->out_c; o++) {
        const float *src = dy + (e0 + e) * l->out_size + o * ohw;
        memcpy(ws->tmp + (o * cn + e) * ohw, src, ohw * sizeof(float));
      }
    }
    for (uint32_t o = 0; o < l->out_c; o++)
      db[o] += row_sum(ws->tmp + o * cn * ohw, cn * ohw);
    if (!kept)
      im2col(l, x + e0 * l->in_size, cn, ws->col);
    /* dW[out_c, ckk] (+)= dy[out_c, cn*ohw] * col^T */
    float beta = (accumulate || e0 > 0) ? 1.0f : 0.0f;
    fl__gemm(false, true, l->out_c, ckk, cn * ohw, 1.0f, ws->tmp, ws->col, beta, dw);
    if (!dx)
      continue;
    /* dcol[ckk, cn*ohw] = W^T * dy, written over the columns that are no longer needed. */
    fl__gemm(true, false, ckk, cn * ohw, l->out_c, 1.0f, w, ws->tmp, 0.0f, ws->col);
    float *dxe = dx + e0 * l->in_size;
    memset(dxe, 0, cn * l->in_size * sizeof(float));
    col2im(l, ws->col, cn, dxe);
  }
}

/* ---- maxpool2d ------------------------------------------------------------------------- */

/* Windows lie entirely inside the input (no padding; the output size rounds down). The first
 * maximum wins, and its index within the example is kept for the backward pass. */
/* The 2x2 window with stride 2 of every CNN here, without the generic loop's index arithmetic
 * per tap: the same taps in the same order (row by row, the first maximum wins), so the same
 * results. */
static void maxpool2_forward(const fl__layer *l, const float *x, size_t n, float *y,
                             int32_t *argmax) {
  size_t plane = (size_t)l->in_h * l->in_w, w_in = l->in_w;
  for (size_t e = 0; e < n; e++) {
    const float *xe = x + e * l->in_size;
    float *yo = y + e * l->out_size;
    int32_t *ao = argmax + e * l->out_size;
    for (uint32_t c = 0; c < l->in_c; c++) {
      for (uint32_t oh = 0; oh < l->out_h; oh++) {
        size_t r0 = c * plane + (size_t)oh * 2 * w_in, r1 = r0 + w_in;
        for (uint32_t ow = 0; ow < l->out_w; ow++) {
          size_t i = r0 + 2 * (size_t)ow, best_i = i;
          float best = xe[i];
          if (xe[i + 1] > best) {
            best = xe[i + 1];
            best_i = i + 1;
          }
          i = r1 + 2 * (size_t)ow;
          if (xe[i] > best) {
            best = xe[i];
            best_i = i;
          }
          if (xe[i + 1] > best) {
            best = xe[i + 1];
            best_i = i + 1;
          }
          *yo++ = best;
          *ao++ = (int32_t)best_i;
        }
      }
    }
  }
}

void fl__maxpool_forward(const fl__layer *l, const float *x, size_t n, float *y, int32_t *argmax) {
  if (l->kernel == 2 && l->stride == 2) {
    maxpool2_forward(l, x, n, y, argmax);
    return;
  }
  size_t plane = (size_t)l->in_h * l->in_w;
  for (size_t e = 0; e < n; e++) {
    const float *xe = x + e * l->in_size;
    float *ye = y + e * l->out_size;
    int32_t *ae = argmax + e * l->out_size;
    for (uint32_t c = 0; c < l->in_c; c++) {
      for (uint32_t oh = 0; oh < l->out_h; oh++) {
        for (uint32_t ow = 0; ow < l->out_w; ow++) {
          size_t h0 = (size_t)oh * l->stride, w0 = (size_t)ow * l->stride;
          size_t best_i = c * plane + h0 * l->in_w + w0;
          float best = xe[best_i];
          for (uint32_t ki = 0; ki < l->kernel; ki++) {
            for (uint32_t kj = 0; kj < l->kernel; kj++) {
              size_t i = c * plane + (h0 + ki) * l->in_w + w0 + kj;
              if (xe[i] > best) {
                best = xe[i];
                best_i = i;
              }
            }
          }
          size_t o = ((size_t)c * l->out_h + oh) * l->out_w + ow;
          ye[o] = best;
          ae[o] = (int32_t)best_i;
        }
      }
    }
  }
}

void fl__maxpool_backward(const fl__layer *l, const float *dy, const int32_t *argmax, size_t n,
                          float *dx) {
  memset(dx, 0, n * l->in_size * sizeof(float));
  for (size_t e = 0; e < n; e++) {
    float *dxe = dx + e * l->in_size;
    const float *dye = dy + e * l->out_size;
    const int32_t *ae = argmax + e * l->out_size;
    /* Overlapping windows (stride < kernel) may pick the same input: gradients add. */
    for (size_t o = 0; o < l->out_size; o++)
      dxe[ae[o]] += dye[o];
  }
}

/* ---- activations ----------------------------------------------------------------------- */

/* exp(-x) overflows for very negative x; the other branch keeps every intermediate in range. */
static float sigmoidf(float x) {
  if (x >= 0.0f)
    return 1.0f / (1.0f + expf(-x));
  float e = expf(x);
  return e / (1.0f + e);
}

void fl__act_forward(int type, const float *x, float *y, size_t count) {
  switch (type) {
    case FL_LAYER_RELU:
      /* Written so that a NaN passes through: divergence must stay visible downstream. */
      for (size_t i = 0; i < count; i++)
        y[i] = x[i] < 0.0f ? 0.0f : x[i];
      break;
    case FL_LAYER_SIGMOID:
      for (size_t i = 0; i < count; i++)
        y[i] = sigmoidf(x[i]);
      break;
    case FL_LAYER_TANH:
      for (size_t i = 0; i < count; i++)
        y[i] = tanhf(x[i]);
      break;
    default:
      break;
  }
}

void fl__act_backward(int type, const float *y, const float *dy, float *dx, size_t count) {
  switch (type) {
    case FL_LAYER_RELU:
      /* A mask on the bits rather than a conditional copy: the compiler keeps a branch (and
       * mispredicts half of them) for the conditional form when dx aliases dy, as it does in
       * model.c. Same values: dy where y > 0 (a NaN included), +0 elsewhere. */
      for (size_t i = 0; i < count; i++) {
        uint32_t bits, mask = (uint32_t)0 - (uint32_t)(y[i] > 0.0f);
        memcpy(&bits, &dy[i], sizeof bits);
        bits &= mask;
        memcpy(&dx[i], &bits, sizeof bits);
      }
      break;
    case FL_LAYER_SIGMOID:
      for (size_t i = 0; i < count; i++)
        dx[i] = dy[i] * y[i] * (1.0f - y[i]);
      break;
    case FL_LAYER_TANH:
      for (size_t i = 0; i < count; i++)
        dx[i] = dy[i] * (1.0f - y[i] * y[i]);
      break;
    default:
      break;
  }
}

/* ---- losses ---------------------------------------------------------------------------- */

/* log-sum-exp around the row maximum: exp never overflows and the largest term is exactly 1, so
 * the sum never underflows to zero either. */
void fl__softmax_ce(const float *z, const int32_t *labels, size_t n, size_t k, float scale,
                    float *dz, double *loss_sum, size_t *correct) {
  for (size_t i = 0; i < n; i++) {
    const float *zi = z + i * k;
    size_t best = 0;
    for (size_t j = 1; j < k; j++) {
      if (zi[j] > zi[best])
        best = j;
    }
    float m = zi[best];
    double s = 0.0;
    if (dz) {
      float *di = dz + i * k;
      for (size_t j = 0; j < k; j++) {
        di[j] = expf(zi[j] - m);
        s += di[j];
      }
      float inv = (float)(1.0 / s);
      for (size_t j = 0; j < k; j++)
        di[j] = scale * di[j] * inv;
      di[labels[i]] -= scale;
    } else {
      for (size_t j = 0; j < k; j++)
        s += expf(zi[j] - m);
    }
    *loss_sum += (double)m + log(s) - (double)zi[labels[i]];
    if (best == (size_t)labels[i])
      (*correct)++;
  }
}

void fl__mse(const float *y, const float *t, size_t count, float scale, float *dy,
             double *loss_sum) {
  double s = 0.0;
  for (size_t i = 0; i < count; i++) {
    float d = y[i] - t[i];
    s += (double)d * d;
    if (dy)
      dy[i] = scale * 2.0f * d;
  }
  *loss_sum += s;
}
