/*
 * Built-in neural-network layers and models for on-device training and server-side
 * evaluation. A model is built from an fl_model_spec; its parameters are one flat float32
 * vector (layer by layer: weights then bias), its gradients another of the same layout.
 *
 * Layouts: activations are row-major [batch, features] or [batch, C, H, W]. Dense weights are
 * [out, in]; conv2d weights are [out_channels, in_channels, k, k]; biases are [out].
 */
#ifndef FL__MODEL_H
#define FL__MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "fl/alloc.h"
#include "fl/err.h"

/* Numbers equal the proto enums fl.v1.LayerType / fl.v1.LossType. */
enum {
  FL_LAYER_DENSE = 1,
  FL_LAYER_CONV2D = 2,
  FL_LAYER_MAXPOOL2D = 3,
  FL_LAYER_FLATTEN = 4,
  FL_LAYER_RELU = 5,
  FL_LAYER_SIGMOID = 6,
  FL_LAYER_TANH = 7
};
enum { FL_LOSS_SOFTMAX_CE = 1, FL_LOSS_MSE = 2 };

#define FL_MAX_LAYERS 32
/* Bounds a spec must respect (FL_E_TOOBIG otherwise): parameters in total, floats of one
 * example's activation (also of a conv layer's im2col columns), each input/channel dimension,
 * kernel sizes and strides. */
#define FL_SPEC_MAX_PARAMS ((uint64_t)1 << 26)
#define FL_SPEC_MAX_ACTIVATION ((uint64_t)1 << 24)
#define FL_SPEC_MAX_DIM 65535u
#define FL_SPEC_MAX_KERNEL 1024u

typedef struct fl_layer_spec {
  int type;
  uint32_t units;        /* dense */
  uint32_t out_channels; /* conv2d */
  uint32_t kernel;       /* conv2d, maxpool2d */
  uint32_t stride;       /* conv2d, maxpool2d; 0 means 1 for conv, kernel for pool */
  uint32_t padding;      /* conv2d */
} fl_layer_spec;

typedef struct fl_model_spec {
  uint32_t input_ndim; /* 1: [features]; 3: [C, H, W] */
  uint32_t input_shape[3];
  uint32_t n_layers;
  fl_layer_spec layers[FL_MAX_LAYERS];
  int loss;
} fl_model_spec;

typedef struct fl_model fl_model;

/* Checks a spec (shapes fit, sizes bounded) without allocating. FL_E_INVAL for unknown types,
 * zero sizes, padding >= kernel, padded maxpool, a model without any dense/conv layer;
 * FL_E_SHAPE for shapes that do not fit (conv/maxpool on a 1-D input, a kernel larger than
 * its (padded) input, softmax cross-entropy over a 3-D output or fewer than 2 classes);
 * FL_E_TOOBIG beyond the bounds above. Fields a layer type does not use are ignored. A dense
 * layer accepts a [C, H, W] input in its row-major order, as if flattened. */
int fl__spec_validate(const fl_model_spec *spec);

/* Builds a model with zeroed parameters. On error *out is untouched. A model is used by one
 * thread at a time (it owns its work buffers). */
int fl__model_new(fl_model **out, const fl_model_spec *spec, const fl_allocator *a);
void fl__model_free(fl_model *m);
const fl_model_spec *fl__model_spec(const fl_model *m);

size_t fl__model_num_params(const fl_model *m);
float *fl__model_params(fl_model *m); /* flat, owned by the model */
const float *fl__model_params_const(const fl_model *m);
float *fl__model_grads(fl_model *m);             /* same layout as params */
size_t fl__model_input_size(const fl_model *m);  /* floats per example */
size_t fl__model_output_size(const fl_model *m); /* floats per example (classes for CE) */

/* Parameter tensors in flat order (two per dense/conv layer: weight, bias). */
size_t fl__model_num_tensors(const fl_model *m);
typedef struct fl_tensor_info {
  size_t offset, count;
  uint32_t ndim, shape[4];
} fl_tensor_info;
void fl__model_tensor_info(const fl_model *m, size_t i, fl_tensor_info *info);
/* A spec's parameter tensors as a model built from it would have them, without building one
 * (nothing is allocated, whatever the spec declares): *n gets their number (at most
 * FL_SPEC_MAX_TENSORS), the first `cap` go into infos. fl__spec_validate's errors. */
#define FL_SPEC_MAX_TENSORS (2 * FL_MAX_LAYERS)
int fl__spec_layout(const fl_model_spec *spec, fl_tensor_info *infos, size_t cap, size_t *n);

/* Seeded initialisation: He normal for layers followed by ReLU, Glorot uniform otherwise;
 * biases zero. Same seed, same spec -> same bits. */
void fl__model_init(fl_model *m, uint64_t seed);

/* Forward pass for `batch` examples; `out` receives batch*output_size floats (logits for CE).
 * Work buffers are grown as needed: FL_E_NOMEM leaves the model usable. */
int fl__model_forward(fl_model *m, const float *x, size_t batch, float *out);

/* Targets: for FL_LOSS_SOFTMAX_CE `labels` (batch ints in [0, classes)), for FL_LOSS_MSE
 * `targets` (batch*output_size floats; NULL means the input itself, as for an autoencoder). */
typedef struct fl_batch {
  const float *x;
  const int32_t *labels;
  const float *targets;
  size_t n;
} fl_batch;

/* Mean loss over the batch and its gradient w.r.t. the parameters into fl__model_grads().
 * CE: mean over examples of -log softmax(z)[label]. MSE: mean over all batch*output_size
 * values of (y - t)^2. FL_E_INVAL for a NULL x, n == 0 or a label out of range (checked before
 * anything is touched), FL_E_SHAPE for MSE without targets when output and input sizes
 * differ. `loss` may be NULL. */
int fl__model_loss_grad(fl_model *m, const fl_batch *b, double *loss);

/* Mean loss (and accuracy for CE, else 0) over a batch without touching gradients. Any batch
 * size: large batches are evaluated in pieces with bounded memory. Either output may be NULL. */
int fl__model_evaluate(fl_model *m, const fl_batch *b, double *loss, double *accuracy);

/* SGD with momentum, decoupled-from-nothing classic weight decay (added to the gradient) and
 * the FedProx proximal term mu/2*||w - anchor||^2 (anchor NULL or mu 0: off). */
typedef struct fl_sgd {
  float lr, momentum, weight_decay, prox_mu;
  const float *anchor; /* the round's base weights, num_params floats */
  float *velocity;     /* num_params floats, zeroed by the caller; NULL when momentum is 0 */
} fl_sgd;

/* One step: loss_grad on the batch, then with g = grad + weight_decay*w + prox_mu*(w - anchor):
 * v = momentum*v + g; w -= lr*v (momentum 0: w -= lr*g). fl__model_grads() keeps the plain
 * loss gradient. FL_E_INVAL for negative or non-finite hyper-parameters, momentum outside
 * [0, 1) or without velocity; FL_E_NONFINITE (weights untouched) when the loss is not
 * finite, so that a diverging device never trains on. */
int fl__model_sgd_step(fl_model *m, const fl_batch *b, const fl_sgd *opt, double *loss);

#endif
