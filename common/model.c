/*
 * Models built from an fl_model_spec: shape resolution and validation, parameter layout,
 * seeded initialisation, work buffers, and the training entry points (forward, loss and
 * gradient, evaluation, SGD). The layer arithmetic itself is in layers.c.
 *
 * A batch is processed in pieces of at most `chunk` examples (chosen at build time so that the
 * work buffers stay within FL__MODEL_WORK_BUDGET), which bounds memory for evaluation on a whole
 * test set and for full-batch gradients; the gradients of the pieces are summed in place.
 */
#include "model.h"

#include <math.h>
#include <stdbool.h>
#include <string.h>

#include "layers.h"
#include "mem.h"
#include "rng.h"
#include "tensor.h"

/* Floats of work buffers (activations, deltas, indices) one piece of a batch may use. */
#define FL__MODEL_WORK_BUDGET ((size_t)1 << 21)
#define FL__MODEL_MAX_CHUNK 256

struct fl_model {
  fl_model_spec spec;
  const fl_allocator *alloc;
  uint32_t n_layers;
  uint32_t first_param; /* index of the first layer with parameters */
  fl__layer layers[FL_MAX_LAYERS];
  size_t n_params, n_tensors;
  size_t in_size, out_size;
  size_t max_size; /* largest activation of one example, input included */
  size_t chunk;    /* examples per piece of a batch */
  float *params, *grads;
  size_t cap;                           /* examples the work buffers currently hold */
  float *delta[2];                      /* ping-pong gradients w.r.t. activations */
  const float *acts[FL_MAX_LAYERS + 1]; /* activations of the last forward pass */
};

typedef struct shape {
  uint32_t ndim, c, h, w;
} shape;

static bool has_params(int type) {
  return type == FL_LAYER_DENSE || type == FL_LAYER_CONV2D;
}

static bool is_activation(int type) {
  return type == FL_LAYER_RELU || type == FL_LAYER_SIGMOID || type == FL_LAYER_TANH;
}

/* ---- spec resolution ------------------------------------------------------------------- */

static int check_input(const fl_model_spec *spec, shape *in) {
  const uint32_t *d = spec->input_shape;
  if (spec->input_ndim == 1) {
    if (d[0] == 0)
      return FL_E_SHAPE;
    if (d[0] > FL_SPEC_MAX_ACTIVATION)
      return FL_E_TOOBIG;
    *in = (shape){1, d[0], 1, 1};
    return FL_OK;
  }
  if (spec->input_ndim != 3)
    return FL_E_INVAL;
  if (d[0] == 0 || d[1] == 0 || d[2] == 0)
    return FL_E_SHAPE;
  if (d[0] > FL_SPEC_MAX_DIM || d[1] > FL_SPEC_MAX_DIM || d[2] > FL_SPEC_MAX_DIM ||
      (uint64_t)d[0] * d[1] * d[2] > FL_SPEC_MAX_ACTIVATION)
    return FL_E_TOOBIG;
  *in = (shape){3, d[0], d[1], d[2]};
  return FL_OK;
}

static int resolve_dense(const fl_layer_spec *ls, uint64_t in, fl__layer *l) {
  if (ls->units == 0)
    return FL_E_INVAL;
  if (ls->units > FL_SPEC_MAX_ACTIVATION)
    return FL_E_TOOBIG;
  l->out_ndim = 1;
  l->out_c = ls->units;
  l->out_h = l->out_w = 1;
  uint64_t wc = (uint64_t)ls->units * in; /* both <= 2^24: no overflow */
  if (wc > FL_SPEC_MAX_PARAMS)
    return FL_E_TOOBIG;
  l->w_count = (size_t)wc;
  l->b_count = ls->units;
  return FL_OK;
}

static int resolve_conv(const fl_layer_spec *ls, shape in, fl__layer *l) {
  if (in.ndim != 3)
    return FL_E_SHAPE;
  uint32_t k = ls->kernel, s = ls->stride ? ls->stride : 1, p = ls->padding;
  if (ls->out_channels == 0 || k == 0 || p >= k)
    return FL_E_INVAL;
  if (ls->out_channels > FL_SPEC_MAX_DIM || k > FL_SPEC_MAX_KERNEL || s > FL_SPEC_MAX_KERNEL)
    return FL_E_TOOBIG;
  if ((uint64_t)in.h + 2u * p < k || (uint64_t)in.w + 2u * p < k)
    return FL_E_SHAPE;
  l->kernel = k;
  l->stride = s;
  l->padding = p;
  l->out_ndim = 3;
  l->out_c = ls->out_channels;
  l->out_h = (uint32_t)(((uint64_t)in.h + 2u * p - k) / s + 1);
  l->out_w = (uint32_t)(((uint64_t)in.w + 2u * p - k) / s + 1);
  uint64_t ckk = (uint64_t)in.c * k * k;
  uint64_t col = ckk * l->out_h * l->out_w;
  if (col > FL_SPEC_MAX_ACTIVATION || ckk * l->out_c > FL_SPEC_MAX_PARAMS)
    return FL_E_TOOBIG;
  l->col_per_ex = (size_t)col;
  l->w_count = (size_t)(ckk * l->out_c);
  l->b_count = l->out_c;
  return FL_OK;
}

static int resolve_maxpool(const fl_layer_spec *ls, shape in, fl__layer *l) {
  if (in.ndim != 3)
    return FL_E_SHAPE;
  uint32_t k = ls->kernel, s = ls->stride ? ls->stride : ls->kernel;
  /* Pooling with padding is refused: silently ignoring the field would train another model. */
  if (k == 0 || ls->padding != 0)
    return FL_E_INVAL;
  if (k > FL_SPEC_MAX_KERNEL || s > FL_SPEC_MAX_KERNEL)
    return FL_E_TOOBIG;
  if (k > in.h || k > in.w)
    return FL_E_SHAPE;
  l->kernel = k;
  l->stride = s;
  l->out_ndim = 3;
  l->out_c = in.c;
  l->out_h = (in.h - k) / s + 1;
  l->out_w = (in.w - k) / s + 1;
  return FL_OK;
}

/* Fills `l` for layer spec `ls` applied to `in`; parameters are not placed yet. */
static int resolve_layer(const fl_layer_spec *ls, shape in, fl__layer *l) {
  memset(l, 0, sizeof *l);
  l->type = ls->type;
  l->in_c = in.c;
  l->in_h = in.h;
  l->in_w = in.w;
  l->in_size = (size_t)in.c * in.h * in.w;
  int rc = FL_OK;
  switch (ls->type) {
    case FL_LAYER_DENSE:
      /* A dense layer reads a [C, H, W] input in its row-major order, as if flattened. */
      rc = resolve_dense(ls, l->in_size, l);
      break;
    case FL_LAYER_CONV2D:
      rc = resolve_conv(ls, in, l);
      break;
    case FL_LAYER_MAXPOOL2D:
      rc = resolve_maxpool(ls, in, l);
      break;
    case FL_LAYER_FLATTEN:
      l->out_ndim = 1;
      l->out_c = (uint32_t)l->in_size;
      l->out_h = l->out_w = 1;
      break;
    case FL_LAYER_RELU:
    case FL_LAYER_SIGMOID:
    case FL_LAYER_TANH:
      l->out_ndim = in.ndim;
      l->out_c = in.c;
      l->out_h = in.h;
      l->out_w = in.w;
      break;
    default:
      return FL_E_INVAL;
  }
  if (rc != FL_OK)
    return rc;
  uint64_t out = (uint64_t)l->out_c * l->out_h * l->out_w;
  if (out > FL_SPEC_MAX_ACTIVATION)
    return FL_E_TOOBIG;
  l->out_size = (size_t)out;
  return FL_OK;
}

/* Resolves every layer into `layers` and the model-wide sizes into `m` (which may be a scratch
 * model: nothing is allocated). */
static int resolve_spec(const fl_model_spec *spec, fl_model *m) {
  if (!spec || spec->n_layers == 0 || spec->n_layers > FL_MAX_LAYERS)
    return FL_E_INVAL;
  if (spec->loss != FL_LOSS_SOFTMAX_CE && spec->loss != FL_LOSS_MSE)
    return FL_E_INVAL;
  shape cur;
  int rc = check_input(spec, &cur);
  if (rc != FL_OK)
    return rc;
  uint64_t n_params = 0;
  m->in_size = m->max_size = (size_t)cur.c * cur.h * cur.w;
  m->first_param = FL_MAX_LAYERS;
  m->n_tensors = 0;
  for (uint32_t i = 0; i < spec->n_layers; i++) {
    fl__layer *l = &m->layers[i];
    rc = resolve_layer(&spec->layers[i], cur, l);
    if (rc != FL_OK)
      return rc;
    if (has_params(l->type)) {
      if (m->first_param == FL_MAX_LAYERS)
        m->first_param = i;
      l->w_off = (size_t)n_params;
      l->b_off = l->w_off + l->w_count;
      n_params += (uint64_t)l->w_count + l->b_count;
      if (n_params > FL_SPEC_MAX_PARAMS)
        return FL_E_TOOBIG;
      m->n_tensors += 2;
    }
    /* In place only over an owned buffer whose contents no backward pass reads again. */
    l->in_place =
        is_activation(l->type) && i > 0 &&
        (has_params(m->layers[i - 1].type) || m->layers[i - 1].type == FL_LAYER_MAXPOOL2D);
    if (l->out_size > m->max_size)
      m->max_size = l->out_size;
    cur = (shape){l->out_ndim, l->out_c, l->out_h, l->out_w};
  }
  if (m->first_param == FL_MAX_LAYERS)
    return FL_E_INVAL; /* nothing to train */
  if (spec->loss == FL_LOSS_SOFTMAX_CE && (cur.ndim != 1 || cur.c < 2))
    return FL_E_SHAPE;
  m->n_layers = spec->n_layers;
  m->n_params = (size_t)n_params;
  m->out_size = (size_t)cur.c * cur.h * cur.w;
  return FL_OK;
}

int fl__spec_validate(const fl_model_spec *spec) {
  fl_model scratch; /* about 5 KB of resolved layers, nothing allocated */
  memset(&scratch, 0, sizeof scratch);
  return resolve_spec(spec, &scratch);
}

int fl__spec_layout(const fl_model_spec *spec, fl_tensor_info *infos, size_t cap, size_t *n) {
  fl_model scratch; /* as fl__spec_validate: resolved on the stack, nothing allocated */
  memset(&scratch, 0, sizeof scratch);
  int rc = resolve_spec(spec, &scratch);
  if (rc != FL_OK)
    return rc;
  *n = scratch.n_tensors;
  for (size_t i = 0; i < scratch.n_tensors && i < cap; i++)
    fl__model_tensor_info(&scratch, i, &infos[i]);
  return FL_OK;
}

/* ---- construction and work buffers ----------------------------------------------------- */

/* Floats of work buffers per example; sets the piece size of a batch. */
static size_t work_per_example(const fl_model *m) {
  size_t per = 2 * m->max_size; /* the two deltas */
  for (uint32_t i = 0; i < m->n_layers; i++) {
    const fl__layer *l = &m->layers[i];
    if (l->type == FL_LAYER_FLATTEN || l->in_place)
      continue;
    per += l->out_size;
    if (l->type == FL_LAYER_MAXPOOL2D)
      per += l->out_size; /* indices, one int32 each */
  }
  return per;
}

/* Resize *p to `count` elements; on failure *p is kept as it was. */
static int grow_floats(const fl_allocator *a, float **p, size_t count) {
  if (count > SIZE_MAX / sizeof(float))
    return FL_E_NOMEM;
  float *q = fl__realloc(a, *p, count * sizeof(float));
  if (!q)
    return FL_E_NOMEM;
  *p = q;
  return FL_OK;
}

static int grow_ints(const fl_allocator *a, int32_t **p, size_t count) {
  if (count > SIZE_MAX / sizeof(int32_t))
    return FL_E_NOMEM;
  int32_t *q = fl__realloc(a, *p, count * sizeof(int32_t));
  if (!q)
    return FL_E_NOMEM;
  *p = q;
  return FL_OK;
}

/* Sizes the work buffers for pieces of n examples (n <= chunk). Buffers grown before a
 * failure stay grown, which is harmless: `cap` only moves once all of them fit. */
static int ensure_capacity(fl_model *m, size_t n) {
  if (n <= m->cap)
    return FL_OK;
  const fl_allocator *a = m->alloc;
  int rc = FL_OK;
  for (uint32_t i = 0; i < m->n_layers && rc == FL_OK; i++) {
    fl__layer *l = &m->layers[i];
    if (l->type == FL_LAYER_FLATTEN || l->in_place)
      continue;
    rc = grow_floats(a, &l->out, n * l->out_size);
    if (rc == FL_OK && l->type == FL_LAYER_MAXPOOL2D)
      rc = grow_ints(a, &l->argmax, n * l->out_size);
    if (rc == FL_OK && l->type == FL_LAYER_CONV2D) {
      /* Each conv layer has its own columns: they are kept from forward to backward. */
      size_t pass = fl__conv_pass_examples(l, n);
      l->conv.col_x = NULL;
      rc = grow_floats(a, &l->conv.col, pass * l->col_per_ex);
      if (rc == FL_OK)
        rc = grow_floats(a, &l->conv.tmp, pass * l->out_size);
    }
  }
  if (rc == FL_OK)
    rc = grow_floats(a, &m->delta[0], n * m->max_size);
  if (rc == FL_OK)
    rc = grow_floats(a, &m->delta[1], n * m->max_size);
  if (rc != FL_OK)
    return rc;
  m->cap = n;
  return FL_OK;
}

static void free_work(fl_model *m) {
  for (uint32_t i = 0; i < m->n_layers; i++) {
    fl__free(m->alloc, m->layers[i].out);
    fl__free(m->alloc, m->layers[i].argmax);
    fl__free(m->alloc, m->layers[i].conv.col);
    fl__free(m->alloc, m->layers[i].conv.tmp);
    m->layers[i].out = NULL;
    m->layers[i].argmax = NULL;
    m->layers[i].conv = (fl__conv_ws){0};
  }
  fl__free(m->alloc, m->delta[0]);
  fl__free(m->alloc, m->delta[1]);
  m->cap = 0;
}

int fl__model_new(fl_model **out, const fl_model_spec *spec, const fl_allocator *a) {
  if (!out)
    return FL_E_INVAL;
  fl_model *m = fl__calloc(a, 1, sizeof *m);
  if (!m)
    return FL_E_NOMEM;
  m->alloc = a;
  int rc = resolve_spec(spec, m);
  if (rc != FL_OK)
    goto out_free_model;
  m->spec = *spec;
  size_t per = work_per_example(m);
  m->chunk = FL__MODEL_WORK_BUDGET / per;
  if (m->chunk < 1)
    m->chunk = 1;
  if (m->chunk > FL__MODEL_MAX_CHUNK)
    m->chunk = FL__MODEL_MAX_CHUNK;
  rc = FL_E_NOMEM;
  m->params = fl__calloc(a, m->n_params, sizeof(float));
  if (!m->params)
    goto out_free_model;
  m->grads = fl__calloc(a, m->n_params, sizeof(float));
  if (!m->grads)
    goto out_free_params;
  *out = m;
  return FL_OK;

out_free_params:
  fl__free(a, m->params);
out_free_model:
  fl__free(a, m);
  return rc;
}

void fl__model_free(fl_model *m) {
  if (!m)
    return;
  free_work(m);
  fl__free(m->alloc, m->params);
  fl__free(m->alloc, m->grads);
  fl__free(m->alloc, m);
}

const fl_model_spec *fl__model_spec(const fl_model *m) {
  return &m->spec;
}
size_t fl__model_num_params(const fl_model *m) {
  return m->n_params;
}
float *fl__model_params(fl_model *m) {
  return m->params;
}
const float *fl__model_params_const(const fl_model *m) {
  return m->params;
}
float *fl__model_grads(fl_model *m) {
  return m->grads;
}
size_t fl__model_input_size(const fl_model *m) {
  return m->in_size;
}
size_t fl__model_output_size(const fl_model *m) {
  return m->out_size;
}
size_t fl__model_num_tensors(const fl_model *m) {
  return m->n_tensors;
}

void fl__model_tensor_info(const fl_model *m, size_t i, fl_tensor_info *info) {
  memset(info, 0, sizeof *info);
  for (uint32_t j = 0; j < m->n_layers; j++) {
    const fl__layer *l = &m->layers[j];
    if (!has_params(l->type))
      continue;
    if (i >= 2) {
      i -= 2;
      continue;
    }
    if (i == 1) {
      *info = (fl_tensor_info){l->b_off, l->b_count, 1, {l->out_c, 0, 0, 0}};
    } else if (l->type == FL_LAYER_DENSE) {
      *info = (fl_tensor_info){l->w_off, l->w_count, 2, {l->out_c, (uint32_t)l->in_size, 0, 0}};
    } else {
      *info = (fl_tensor_info){l->w_off, l->w_count, 4, {l->out_c, l->in_c, l->kernel, l->kernel}};
    }
    return;
  }
}

/* ---- initialisation -------------------------------------------------------------------- */

/* Layers are drawn in order from one generator, weights only: the same seed and spec give the
 * same bits on every platform with IEEE floats and the same libm. */
void fl__model_init(fl_model *m, uint64_t seed) {
  fl_rng rng;
  fl__rng_seed(&rng, seed);
  memset(m->params, 0, m->n_params * sizeof(float));
  for (uint32_t i = 0; i < m->n_layers; i++) {
    const fl__layer *l = &m->layers[i];
    if (!has_params(l->type))
      continue;
    double k2 = l->type == FL_LAYER_CONV2D ? (double)l->kernel * l->kernel : 1.0;
    double fan_in = l->type == FL_LAYER_CONV2D ? l->in_c * k2 : (double)l->in_size;
    double fan_out = l->out_c * k2;
    float *w = m->params + l->w_off;
    bool relu_next = i + 1 < m->n_layers && m->layers[i + 1].type == FL_LAYER_RELU;
    if (relu_next) {
      double sd = sqrt(2.0 / fan_in); /* He et al. 2015, normal */
      for (size_t j = 0; j < l->w_count; j++)
        w[j] = (float)(sd * fl__rng_normal(&rng));
    } else {
      double lim = sqrt(6.0 / (fan_in + fan_out)); /* Glorot and Bengio 2010, uniform */
      for (size_t j = 0; j < l->w_count; j++)
        w[j] = (float)(lim * (2.0 * fl__rng_uniform(&rng) - 1.0));
    }
  }
}

/* ---- forward and backward -------------------------------------------------------------- */

/* Runs n <= cap examples through every layer, recording the activations in m->acts. */
static void forward_pass(fl_model *m, const float *x, size_t n) {
  const float *p = m->params;
  m->acts[0] = x;
  for (uint32_t i = 0; i < m->n_layers; i++) {
    fl__layer *l = &m->layers[i];
    const float *in = m->acts[i];
    float *y = l->in_place ? m->layers[i - 1].out : l->out;
    switch (l->type) {
      case FL_LAYER_DENSE:
        fl__dense_forward(l, p + l->w_off, p + l->b_off, in, n, y);
        break;
      case FL_LAYER_CONV2D:
        fl__conv_forward(l, p + l->w_off, p + l->b_off, in, n, y, &l->conv);
        break;
      case FL_LAYER_MAXPOOL2D:
        fl__maxpool_forward(l, in, n, y, l->argmax);
        break;
      case FL_LAYER_FLATTEN:
        m->acts[i + 1] = in; /* same bytes, new shape */
        continue;
      default:
        fl__act_forward(l->type, in, y, n * l->out_size);
        break;
    }
    m->acts[i + 1] = y;
  }
}

/* Back-propagates the loss gradient in m->delta[0] (for the n examples of the last forward
 * pass) down to the first layer with parameters, which needs no input gradient. */
static void backward_pass(fl_model *m, size_t n, bool accumulate) {
  const float *p = m->params;
  float *g = m->grads;
  float *dy = m->delta[0], *dx = m->delta[1];
  for (uint32_t i = m->n_layers; i-- > m->first_param;) {
    fl__layer *l = &m->layers[i];
    float *dxi = i > m->first_param ? dx : NULL;
    switch (l->type) {
      case FL_LAYER_DENSE:
        fl__dense_backward(l, p + l->w_off, m->acts[i], dy, n, g + l->w_off, g + l->b_off, dxi,
                           accumulate);
        break;
      case FL_LAYER_CONV2D:
        fl__conv_backward(l, p + l->w_off, m->acts[i], dy, n, g + l->w_off, g + l->b_off, dxi,
                          accumulate, &l->conv);
        break;
      case FL_LAYER_MAXPOOL2D:
        fl__maxpool_backward(l, dy, l->argmax, n, dx);
        break;
      case FL_LAYER_FLATTEN:
        continue;
      default:
        fl__act_backward(l->type, m->acts[i + 1], dy, dy, n * l->out_size);
        continue;
    }
    float *t = dy;
    dy = dx;
    dx = t;
  }
}

/* ---- losses over a batch --------------------------------------------------------------- */

static int check_batch(const fl_model *m, const fl_batch *b) {
  if (!b || !b->x || b->n == 0)
    return FL_E_INVAL;
  if (m->spec.loss == FL_LOSS_SOFTMAX_CE) {
    if (!b->labels)
      return FL_E_INVAL;
    for (size_t i = 0; i < b->n; i++) {
      if (b->labels[i] < 0 || (size_t)b->labels[i] >= m->out_size)
        return FL_E_INVAL;
    }
  } else if (!b->targets && m->in_size != m->out_size) {
    return FL_E_SHAPE;
  }
  return FL_OK;
}

/* Loss of the last forward pass over examples [off, off + n) of the batch; the gradient goes
 * to m->delta[0] when `scale` is not zero (scale = d mean / d sum). */
static void loss_piece(fl_model *m, const fl_batch *b, size_t off, size_t n, float scale,
                       double *sum, size_t *correct) {
  const float *z = m->acts[m->n_layers];
  float *dz = scale != 0.0f ? m->delta[0] : NULL;
  if (m->spec.loss == FL_LOSS_SOFTMAX_CE) {
    fl__softmax_ce(z, b->labels + off, n, m->out_size, scale, dz, sum, correct);
  } else {
    const float *t = b->targets ? b->targets + off * m->out_size : b->x + off * m->in_size;
    fl__mse(z, t, n * m->out_size, scale, dz, sum);
  }
}

/* Divisor that turns a summed loss into the documented mean. */
static double loss_count(const fl_model *m, size_t n) {
  return m->spec.loss == FL_LOSS_SOFTMAX_CE ? (double)n : (double)n * m->out_size;
}

int fl__model_loss_grad(fl_model *m, const fl_batch *b, double *loss) {
  int rc = check_batch(m, b);
  if (rc != FL_OK)
    return rc;
  size_t piece = b->n < m->chunk ? b->n : m->chunk;
  rc = ensure_capacity(m, piece);
  if (rc != FL_OK)
    return rc;
  double count = loss_count(m, b->n), sum = 0.0;
  size_t correct = 0;
  float scale = (float)(1.0 / count);
  for (size_t off = 0; off < b->n; off += piece) {
    size_t n = b->n - off < piece ? b->n - off : piece;
    forward_pass(m, b->x + off * m->in_size, n);
    loss_piece(m, b, off, n, scale, &sum, &correct);
    backward_pass(m, n, off > 0);
  }
  if (loss)
    *loss = sum / count;
  return FL_OK;
}

int fl__model_evaluate(fl_model *m, const fl_batch *b, double *loss, double *accuracy) {
  int rc = check_batch(m, b);
  if (rc != FL_OK)
    return rc;
  size_t piece = b->n < m->chunk ? b->n : m->chunk;
  rc = ensure_capacity(m, piece);
  if (rc != FL_OK)
    return rc;
  double sum = 0.0;
  size_t correct = 0;
  for (size_t off = 0; off < b->n; off += piece) {
    size_t n = b->n - off < piece ? b->n - off : piece;
    forward_pass(m, b->x + off * m->in_size, n);
    loss_piece(m, b, off, n, 0.0f, &sum, &correct);
  }
  if (loss)
    *loss = sum / loss_count(m, b->n);
  if (accuracy)
    *accuracy = m->spec.loss == FL_LOSS_SOFTMAX_CE ? (double)correct / (double)b->n : 0.0;
  return FL_OK;
}

int fl__model_forward(fl_model *m, const float *x, size_t batch, float *out) {
  if (!x || !out)
    return FL_E_INVAL;
  size_t piece = batch < m->chunk ? batch : m->chunk;
  int rc = ensure_capacity(m, piece);
  if (rc != FL_OK)
    return rc;
  for (size_t off = 0; off < batch; off += piece) {
    size_t n = batch - off < piece ? batch - off : piece;
    forward_pass(m, x + off * m->in_size, n);
    memcpy(out + off * m->out_size, m->acts[m->n_layers], n * m->out_size * sizeof(float));
  }
  return FL_OK;
}

/* ---- SGD ------------------------------------------------------------------------------- */

static bool nonneg_finite(float v) {
  return isfinite(v) && v >= 0.0f;
}

static int check_sgd(const fl_sgd *o) {
  if (!o || !nonneg_finite(o->lr) || !nonneg_finite(o->weight_decay) ||
      !nonneg_finite(o->prox_mu) || !nonneg_finite(o->momentum) || o->momentum >= 1.0f)
    return FL_E_INVAL;
  if (o->momentum > 0.0f && !o->velocity)
    return FL_E_INVAL;
  return FL_OK;
}

/* One fused pass over the parameters: the step is memory-bound, and a device may run
 * thousands of them per round. */
static void sgd_update(fl_model *m, const fl_sgd *o) {
  float *w = m->params, *v = o->velocity;
  const float *g = m->grads, *anchor = o->prox_mu > 0.0f ? o->anchor : NULL;
  float lr = o->lr, wd = o->weight_decay, mu = o->prox_mu, mom = o->momentum;
  for (size_t i = 0; i < m->n_params; i++) {
    float gi = g[i] + wd * w[i];
    if (anchor)
      gi += mu * (w[i] - anchor[i]);
    if (mom > 0.0f) {
      v[i] = mom * v[i] + gi;
      gi = v[i];
    }
    w[i] -= lr * gi;
  }
}

/* Plain SGD (no momentum, weight decay or proximal term) on a batch of one piece through a
 * model of dense layers and activations (the 2NN, the autoencoders): the step can be
 * taken layer by layer during the backward pass, once a layer's input gradient is made,
 * instead of storing the whole gradient and passing over the parameters again. At batch 10
 * the step is memory-bound, and that saves the gradient's zeroing and writing and the
 * update's read-modify-write of every parameter. */
static bool fused_sgd_applies(const fl_model *m, const fl_batch *b, const fl_sgd *o) {
  if (o->momentum > 0.0f || o->weight_decay > 0.0f || o->prox_mu > 0.0f || b->n > m->chunk)
    return false;
  for (uint32_t i = 0; i < m->n_layers; i++) {
    int t = m->layers[i].type;
    if (t == FL_LAYER_CONV2D || t == FL_LAYER_MAXPOOL2D)
      return false;
  }
  return true;
}

/* backward_pass with the step fused in (fused_sgd_applies); m->grads is scratch for biases. */
static void backward_sgd(fl_model *m, size_t n, float lr) {
  float *p = m->params, *g = m->grads;
  float *dy = m->delta[0], *dx = m->delta[1];
  for (uint32_t i = m->n_layers; i-- > m->first_param;) {
    fl__layer *l = &m->layers[i];
    if (l->type == FL_LAYER_FLATTEN)
      continue;
    if (l->type != FL_LAYER_DENSE) {
      fl__act_backward(l->type, m->acts[i + 1], dy, dy, n * l->out_size);
      continue;
    }
    fl__dense_backward_sgd(l, p + l->w_off, p + l->b_off, m->acts[i], dy, n, lr, g + l->b_off,
                           i > m->first_param ? dx : NULL);
    float *t = dy;
    dy = dx;
    dx = t;
  }
}

static int fused_sgd_step(fl_model *m, const fl_batch *b, float lr, double *loss) {
  int rc = check_batch(m, b);
  if (rc == FL_OK)
    rc = ensure_capacity(m, b->n);
  if (rc != FL_OK)
    return rc;
  double count = loss_count(m, b->n), sum = 0.0;
  size_t correct = 0;
  forward_pass(m, b->x, b->n);
  loss_piece(m, b, 0, b->n, (float)(1.0 / count), &sum, &correct);
  double l = sum / count;
  if (loss)
    *loss = l;
  if (!isfinite(l))
    return FL_E_NONFINITE;
  backward_sgd(m, b->n, lr);
  return FL_OK;
}

int fl__model_sgd_step(fl_model *m, const fl_batch *b, const fl_sgd *opt, double *loss) {
  int rc = check_sgd(opt);
  if (rc != FL_OK)
    return rc;
  if (b != NULL && fused_sgd_applies(m, b, opt))
    return fused_sgd_step(m, b, opt->lr, loss);
  double l = 0.0;
  rc = fl__model_loss_grad(m, b, &l);
  if (rc != FL_OK)
    return rc;
  if (loss)
    *loss = l;
  if (!isfinite(l))
    return FL_E_NONFINITE;
  sgd_update(m, opt);
  return FL_OK;
}
