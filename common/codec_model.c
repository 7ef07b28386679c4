/*
 * Proto conversions that follow a model's layout: ModelSpec <-> fl_model_spec, weights and
 * deltas as one Tensor per parameter tensor (weight then bias of each dense/conv layer).
 *
 * Tensor arrays made here are one allocation: n pointers followed by n Tensor structs, so an
 * array can be handed to protobuf-c as a repeated field and released with one call.
 */
#include <stdbool.h>
#include <string.h>

#include "codec.h"
#include "fl/err.h"
#include "mem.h"

int fl__spec_from_proto(fl_model_spec *out, const Fl__V1__ModelSpec *p) {
  if (out == NULL || p == NULL)
    return FL_E_INVAL;
  if (p->n_input_shape != 1 && p->n_input_shape != 3)
    return FL_E_SHAPE;
  if (p->n_layers > FL_MAX_LAYERS)
    return FL_E_TOOBIG;
  if (p->input_shape == NULL || (p->n_layers > 0 && p->layers == NULL))
    return FL_E_PARSE;
  fl_model_spec s;
  memset(&s, 0, sizeof s);
  s.input_ndim = (uint32_t)p->n_input_shape;
  memcpy(s.input_shape, p->input_shape, p->n_input_shape * sizeof *p->input_shape);
  s.n_layers = (uint32_t)p->n_layers;
  for (size_t i = 0; i < p->n_layers; i++) {
    const Fl__V1__LayerSpec *l = p->layers[i];
    if (l == NULL)
      return FL_E_PARSE;
    s.layers[i] =
        (fl_layer_spec){(int)l->type, l->units, l->out_channels, l->kernel, l->stride, l->padding};
  }
  s.loss = (int)p->loss;
  int err = fl__spec_validate(&s);
  if (err != FL_OK)
    return err;
  *out = s;
  return FL_OK;
}

void fl__spec_to_proto(fl_spec_proto_storage *st, const fl_model_spec *spec) {
  fl__v1__model_spec__init(&st->spec);
  uint32_t ndim = spec->input_ndim <= 3 ? spec->input_ndim : 3;
  uint32_t nl = spec->n_layers <= FL_MAX_LAYERS ? spec->n_layers : FL_MAX_LAYERS;
  memcpy(st->input_shape, spec->input_shape, sizeof st->input_shape);
  st->spec.n_input_shape = ndim;
  st->spec.input_shape = st->input_shape;
  for (uint32_t i = 0; i < nl; i++) {
    const fl_layer_spec *l = &spec->layers[i];
    Fl__V1__LayerSpec *pl = &st->layers[i];
    fl__v1__layer_spec__init(pl);
    pl->type = (Fl__V1__LayerType)l->type;
    pl->units = l->units;
    pl->out_channels = l->out_channels;
    pl->kernel = l->kernel;
    pl->stride = l->stride;
    pl->padding = l->padding;
    st->layer_ptrs[i] = pl;
  }
  st->spec.n_layers = nl;
  st->spec.layers = st->layer_ptrs;
  st->spec.loss = (Fl__V1__LossType)spec->loss;
}

/* ---- tensor arrays ------------------------------------------------------------------------- */

static Fl__V1__Tensor **tensor_array_new(size_t n, const fl_allocator *a) {
  if (n > SIZE_MAX / (sizeof(Fl__V1__Tensor *) + sizeof(Fl__V1__Tensor)))
    return NULL;
  Fl__V1__Tensor **ptrs = fl__malloc(a, n * (sizeof *ptrs + sizeof(Fl__V1__Tensor)));
  if (ptrs == NULL)
    return NULL;
  /* Pointers are 8-aligned and so is a Tensor (it holds pointers), so the structs may follow. */
  Fl__V1__Tensor *structs = (Fl__V1__Tensor *)(void *)(ptrs + n);
  for (size_t i = 0; i < n; i++) {
    fl__v1__tensor__init(&structs[i]);
    ptrs[i] = &structs[i];
  }
  return ptrs;
}

void fl__delta_release(Fl__V1__Tensor **tensors, size_t n, const fl_allocator *a) {
  if (tensors == NULL)
    return;
  for (size_t i = 0; i < n; i++)
    fl__tensor_release(tensors[i], a);
  fl__free(a, tensors);
}

static int encode_layout(const fl_model *m, const float *x, int encoding, float fraction,
                         Fl__V1__Tensor ***out_tensors, size_t *out_n, const fl_allocator *a) {
  if (m == NULL || x == NULL || out_tensors == NULL || out_n == NULL)
    return FL_E_INVAL;
  size_t n = fl__model_num_tensors(m);
  Fl__V1__Tensor **ts = tensor_array_new(n, a);
  if (ts == NULL)
    return FL_E_NOMEM;
  for (size_t i = 0; i < n; i++) {
    fl_tensor_info info;
    fl__model_tensor_info(m, i, &info);
    int err = fl__tensor_encode(ts[i], x + info.offset, info.count, info.shape, info.ndim, encoding,
                                fraction, a);
    if (err != FL_OK) {
      fl__delta_release(ts, i, a);
      return err;
    }
  }
  *out_tensors = ts;
  *out_n = n;
  return FL_OK;
}

int fl__delta_encode(const fl_model *m, const float *delta, int encoding, float topk_fraction,
                     Fl__V1__Tensor ***out_tensors, size_t *out_n, const fl_allocator *a) {
  return encode_layout(m, delta, encoding, topk_fraction, out_tensors, out_n, a);
}

int fl__weights_to_proto(const fl_model *m, Fl__V1__Tensor ***out_tensors, size_t *out_n,
                         const fl_allocator *a) {
  if (m == NULL)
    return FL_E_INVAL;
  return encode_layout(m, fl__model_params_const(m), FL__V1__ENCODING__ENCODING_FLOAT32, 1.0f,
                       out_tensors, out_n, a);
}

/* ---- layout checks ------------------------------------------------------------------------- */

static bool same_shape(const Fl__V1__Tensor *t, const fl_tensor_info *info) {
  if (t->n_shape != info->ndim || (t->n_shape > 0 && t->shape == NULL))
    return false;
  for (uint32_t d = 0; d < info->ndim; d++)
    if (t->shape[d] != info->shape[d])
      return false;
  return true;
}

/* sq == NULL: the check alone. */
static int check_layout(const fl_tensor_info *layout, size_t n_layout,
                        Fl__V1__Tensor *const *tensors, size_t n, double *sq) {
  double sum = 0, one = 0;
  if (n != n_layout)
    return FL_E_SHAPE;
  if (n > 0 && (layout == NULL || tensors == NULL))
    return FL_E_INVAL;
  for (size_t i = 0; i < n; i++) {
    if (tensors[i] == NULL)
      return FL_E_PARSE;
    if (!same_shape(tensors[i], &layout[i]))
      return FL_E_SHAPE;
    int err = sq != NULL ? fl__tensor_check_sqnorm(tensors[i], layout[i].count, &one)
                         : fl__tensor_check(tensors[i], layout[i].count);
    if (err != FL_OK)
      return err;
    sum += one;
  }
  if (sq != NULL)
    *sq = sum;
  return FL_OK;
}

int fl__delta_check_layout(const fl_tensor_info *layout, size_t n_layout,
                           Fl__V1__Tensor *const *tensors, size_t n) {
  return check_layout(layout, n_layout, tensors, n, NULL);
}

int fl__delta_check_layout_sqnorm(const fl_tensor_info *layout, size_t n_layout,
                                  Fl__V1__Tensor *const *tensors, size_t n, double *sq) {
  return check_layout(layout, n_layout, tensors, n, sq);
}

int fl__layout_new(const fl_model_spec *spec, fl_tensor_info **out, size_t *out_n,
                   const fl_allocator *a) {
  fl_tensor_info stack[FL_SPEC_MAX_TENSORS];
  size_t n = 0;
  if (spec == NULL || out == NULL || out_n == NULL)
    return FL_E_INVAL;
  int err = fl__spec_layout(spec, stack, FL_SPEC_MAX_TENSORS, &n);
  if (err != FL_OK)
    return err;
  fl_tensor_info *infos = fl__calloc(a, n, sizeof *infos);
  if (infos == NULL)
    return FL_E_NOMEM;
  memcpy(infos, stack, n * sizeof *infos);
  *out = infos;
  *out_n = n;
  return FL_OK;
}

int fl__delta_check(const fl_model_spec *spec, Fl__V1__Tensor *const *tensors, size_t n) {
  fl_tensor_info layout[FL_SPEC_MAX_TENSORS];
  size_t n_layout = 0;
  if (spec == NULL)
    return FL_E_INVAL;
  int err = fl__spec_layout(spec, layout, FL_SPEC_MAX_TENSORS, &n_layout);
  if (err != FL_OK)
    return err;
  return fl__delta_check_layout(layout, n_layout, tensors, n);
}

int fl__weights_from_proto(fl_model *m, Fl__V1__Tensor *const *tensors, size_t n) {
  if (m == NULL)
    return FL_E_INVAL;
  size_t nt = fl__model_num_tensors(m);
  if (n != nt)
    return FL_E_SHAPE;
  /* Everything is checked before the first write, so a bad tensor leaves the model as it was. */
  for (size_t i = 0; i < n; i++) {
    fl_tensor_info info;
    fl__model_tensor_info(m, i, &info);
    if (tensors[i] == NULL)
      return FL_E_PARSE;
    if (!same_shape(tensors[i], &info))
      return FL_E_SHAPE;
    int err = fl__tensor_check(tensors[i], info.count);
    if (err != FL_OK)
      return err;
  }
  float *params = fl__model_params(m);
  for (size_t i = 0; i < n; i++) {
    fl_tensor_info info;
    fl__model_tensor_info(m, i, &info);
    int err = fl__tensor_decode(tensors[i], params + info.offset, info.count);
    if (err != FL_OK)
      return err;
  }
  return FL_OK;
}
