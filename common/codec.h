/*
 * Update encodings and proto <-> in-memory conversions.
 *
 * Encodings of one tensor (see proto Encoding): float32, float16 (IEEE binary16, round to
 * nearest even), int8 with one scale per tensor (scale = max|x|/127, q = round(x/scale)), and
 * top-k sparse (the k = ceil(fraction*count) largest |x|, indices ascending). Decoding checks
 * every size, index and value before writing, so a malformed tensor changes nothing.
 *
 * Error codes of check/decode: FL_E_SHAPE (count differs from the expected one, or from the
 * product of shape), FL_E_PARSE (data or indices of the wrong length, indices not strictly
 * ascending or out of range, negative scale, unknown encoding), FL_E_NONFINITE (a NaN or
 * infinite value or scale), FL_E_TOOBIG (a count whose byte size does not fit in size_t).
 */
#ifndef FL__CODEC_H
#define FL__CODEC_H

#include <stddef.h>
#include <stdint.h>

#include "fl/alloc.h"
#include "fl/v1/fleetlearn.pb-c.h"
#include "model.h"

uint16_t fl__f32_to_f16(float f); /* round to nearest even; overflow -> inf; NaN kept */
float fl__f16_to_f32(uint16_t h); /* exact */

/* k = ceil(fraction * count), the product rounded to float precision first so that 0.1f of
 * 1000 keeps 100 rather than 101; clamped to [1, count] for count > 0. fraction in (0, 1]. */
size_t fl__topk_count(float fraction, size_t count);

/* Fills *t (initialised by the caller with fl__v1__tensor__init) with the encoding of
 * x[0..count). Buffers are allocated with `a`; release them with fl__tensor_release().
 * shape may be NULL with ndim 0; otherwise its product must equal count (FL_E_SHAPE).
 * FL_E_NONFINITE if any x is NaN/inf, FL_E_INVAL for an unknown encoding or a top-k fraction
 * outside (0, 1]. On error *t is untouched. */
int fl__tensor_encode(Fl__V1__Tensor *t, const float *x, size_t count, const uint32_t *shape,
                      uint32_t ndim, int encoding, float topk_fraction, const fl_allocator *a);
void fl__tensor_release(Fl__V1__Tensor *t, const fl_allocator *a);

/* Validates t against expected_count (and encoding-specific sizes) and writes the dense values
 * to out. FL_E_SHAPE / FL_E_PARSE / FL_E_NONFINITE; on error out is untouched. */
int fl__tensor_decode(const Fl__V1__Tensor *t, float *out, size_t expected_count);
/* Validation only, no output: the same checks as decode. */
int fl__tensor_check(const Fl__V1__Tensor *t, size_t expected_count);
/* acc += w * decode(t) without a temporary vector. Call fl__tensor_check first: this does not
 * re-validate (it is the aggregation hot path). */
void fl__tensor_fold(const Fl__V1__Tensor *t, float w, float *acc);
/* Squared L2 norm of the decoded values, in double (for the server's norm check). */
double fl__tensor_sqnorm(const Fl__V1__Tensor *t);
/* fl__tensor_check and fl__tensor_sqnorm in one pass over float32 and top-k values (the check
 * of an update on the server's upload path): the same verdicts, *sq set when FL_OK. */
int fl__tensor_check_sqnorm(const Fl__V1__Tensor *t, size_t expected_count, double *sq);

/* Whole-vector helpers over a model's tensor layout: encode a flat delta tensor by tensor into
 * a newly allocated array of n_tensors Fl__V1__Tensor (pointers array + structs). */
int fl__delta_encode(const fl_model *m, const float *delta, int encoding, float topk_fraction,
                     Fl__V1__Tensor ***out_tensors, size_t *out_n, const fl_allocator *a);
void fl__delta_release(Fl__V1__Tensor **tensors, size_t n, const fl_allocator *a);
/* Checks n tensors against the model layout (count and shape of each, then fl__tensor_check).
 * FL_E_SHAPE when n or a shape differs, else the first failing tensor's fl__tensor_check code
 * (so FL_E_NONFINITE can be told apart from FL_E_PARSE). This resolves the layout from the spec
 * on each call (nothing allocated: fl__spec_layout); a server checking many updates caches the
 * layout once with fl__layout_new and calls fl__delta_check_layout. A model's weights have the
 * same layout: checked with this before a model is built for them, a spec declaring far more
 * than the weights sent costs nothing. */
int fl__delta_check(const fl_model_spec *spec, Fl__V1__Tensor *const *tensors, size_t n);
int fl__delta_check_layout(const fl_tensor_info *layout, size_t n_layout,
                           Fl__V1__Tensor *const *tensors, size_t n);
/* fl__delta_check_layout that also sums the tensors' squared norms into *sq (when FL_OK), with
 * one pass over the values of float32 and top-k tensors instead of two. */
int fl__delta_check_layout_sqnorm(const fl_tensor_info *layout, size_t n_layout,
                                  Fl__V1__Tensor *const *tensors, size_t n, double *sq);
/* The parameter tensors of a spec (offset, count, shape), as fl__model_tensor_info gives them;
 * *out is allocated with `a` (free with fl__free(a, *out)). On error *out is untouched. */
int fl__layout_new(const fl_model_spec *spec, fl_tensor_info **out, size_t *out_n,
                   const fl_allocator *a);

/* Stored updates (robust aggregators keep every update until the round closes). pack
 * serialises n tensors as sent (each encoding's bytes unchanged, so compressed updates stay
 * compressed) into one buffer allocated with `a`; view parses such a buffer into n tensors
 * that point into it (no copy; blob must outlive them), checking each with fl__tensor_check
 * against layout[i].count: FL_E_PARSE for a malformed buffer, else check's code. */
int fl__delta_pack(Fl__V1__Tensor *const *t, size_t n, uint8_t **out, size_t *out_len,
                   const fl_allocator *a);
int fl__delta_view(const uint8_t *blob, size_t len, const fl_tensor_info *layout, size_t n,
                   Fl__V1__Tensor *views);
/* Decodes the flat coordinates [off, off + len) of n checked tensors laid out by layout into
 * out[0 .. len): the same values as a full decode, for a block only (top-k finds its first
 * index by binary search). FL_E_INVAL when the range exceeds the layout. */
int fl__delta_decode_range(Fl__V1__Tensor *const *t, const fl_tensor_info *layout, size_t n,
                           size_t off, size_t len, float *out);

/* ModelSpec conversions. from_proto validates (fl__spec_validate). */
int fl__spec_from_proto(fl_model_spec *out, const Fl__V1__ModelSpec *p);
/* Fills a proto spec whose repeated fields point into `storage` (no allocation). */
typedef struct fl_spec_proto_storage {
  Fl__V1__ModelSpec spec;
  Fl__V1__LayerSpec layers[FL_MAX_LAYERS];
  Fl__V1__LayerSpec *layer_ptrs[FL_MAX_LAYERS];
  uint32_t input_shape[3];
} fl_spec_proto_storage;
void fl__spec_to_proto(fl_spec_proto_storage *st, const fl_model_spec *spec);

/* Model weights as float32 tensors in the model's layout, or back (shapes checked). */
int fl__weights_to_proto(const fl_model *m, Fl__V1__Tensor ***out_tensors, size_t *out_n,
                         const fl_allocator *a);
int fl__weights_from_proto(fl_model *m, Fl__V1__Tensor *const *tensors, size_t n);

#endif
