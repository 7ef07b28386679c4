/*
 * Local training: where the examples come from (a callback source, or the built-in in-memory
 * source behind the CSV/IDX loaders and borrowed arrays) and the training itself (built-in
 * layers with SGD, momentum, weight decay and the FedProx term, or the embedder's trainer).
 * fl_client_train() is pure CPU work on the handle: no I/O, so a simulator may run it on a
 * worker thread.
 */
#include <string.h>

#include "client_internal.h"
#include "rng.h"
#include "tensor.h"

/* ---- the built-in in-memory source ------------------------------------------------------- */

void fl__mem_source_free(fl__mem_source *s) {
  fl__dataset_free(&s->owned);
  fl__free(s->alloc, s->order);
  memset(s, 0, sizeof *s);
}

static fl_err mem_reset(void *ctx, uint64_t seed) {
  fl__mem_source *s = ctx;
  for (size_t i = 0; i < s->n; i++)
    s->order[i] = (uint32_t)i;
  fl_rng r;
  fl__rng_seed(&r, seed);
  fl__rng_shuffle_u32(&r, s->order, s->n);
  s->pos = 0;
  return FL_OK;
}

static fl_err mem_next(void *ctx, float *x, int32_t *labels, float *targets, size_t max,
                       size_t *n) {
  fl__mem_source *s = ctx;
  (void)targets; /* only autoencoders train on unlabelled data: targets are the inputs */
  size_t k = 0;
  for (; k < max && s->pos < s->n; k++, s->pos++) {
    size_t i = s->order[s->pos];
    memcpy(x + k * s->x_dim, s->x + i * s->x_dim, s->x_dim * sizeof *x);
    if (labels != NULL) {
      if (s->labels == NULL)
        return FL_E_INVAL;
      labels[k] = s->labels[i];
    }
  }
  *n = k;
  return FL_OK;
}

int fl__mem_source_install(fl__mem_source *s, fl_data_source *src, const fl_allocator *a,
                           fl_dataset *owned, const float *x, const int32_t *labels, size_t n,
                           size_t x_dim) {
  if (n == 0 || x_dim == 0 || n > UINT32_MAX)
    return FL_E_INVAL;
  uint32_t *order = fl__calloc(a, n, sizeof *order);
  if (order == NULL)
    return FL_E_NOMEM;
  fl__mem_source_free(s);
  s->alloc = a;
  if (owned != NULL) {
    s->owned = *owned;
    memset(owned, 0, sizeof *owned);
  }
  s->x = x;
  s->labels = labels;
  s->n = n;
  s->x_dim = x_dim;
  s->order = order;
  *src = (fl_data_source){.version = FL_DATA_SOURCE_VERSION,
                          .ctx = s,
                          .x_dim = x_dim,
                          .n_examples = n,
                          .reset = mem_reset,
                          .next = mem_next};
  return FL_OK;
}

/* ---- data slots: the training and the hold-out data ---------------------------------------- */

int fl__slot_set_source(fl_client *c, fl__data_slot *d, const fl_data_source *src) {
  fl_data_source s;
  int err = fl__data_source_read(c, src, &s);
  if (err != FL_OK)
    return err;
  fl__mem_source_free(&d->mem);
  d->src = s;
  d->have = true;
  return FL_OK;
}

int fl__slot_set_memory(fl__data_slot *d, const fl_allocator *a, fl_dataset *owned, const float *x,
                        const int32_t *labels, size_t n, size_t x_dim) {
  int err = fl__mem_source_install(&d->mem, &d->src, a, owned, x, labels, n, x_dim);
  if (err == FL_OK)
    d->have = true;
  else if (owned != NULL)
    fl__dataset_free(owned);
  return err;
}

/* A data set loaded from `file` (err is the loader's result) goes into the slot. */
static int slot_set_loaded(fl_client *c, fl__data_slot *d, fl_dataset *ds, const char *file,
                           int err) {
  if (err != FL_OK) {
    fl__client_err(c, "cannot load %s: %s", file, fl_strerror(err));
    return err;
  }
  return fl__slot_set_memory(d, c->alloc, ds, ds->x, ds->labels, ds->n, ds->x_dim);
}

int fl__slot_set_csv(fl_client *c, fl__data_slot *d, const char *path, int label_col) {
  fl_dataset ds;
  memset(&ds, 0, sizeof ds);
  return slot_set_loaded(c, d, &ds, path, fl__csv_load(&ds, path, label_col, c->alloc));
}

/* ---- the training data ------------------------------------------------------------------- */

fl_err fl_client_set_data_memory(fl_client *c, const float *x, const int32_t *labels, size_t n,
                                 size_t x_dim) {
  if (c == NULL || x == NULL)
    return FL_E_INVAL;
  return fl__slot_set_memory(&c->data, c->alloc, NULL, x, labels, n, x_dim);
}

fl_err fl_client_set_data_csv(fl_client *c, const char *path, int label_col) {
  if (c == NULL || path == NULL)
    return FL_E_INVAL;
  return fl__slot_set_csv(c, &c->data, path, label_col);
}

fl_err fl_client_set_data_idx(fl_client *c, const char *images, const char *labels) {
  if (c == NULL || images == NULL)
    return FL_E_INVAL;
  fl_dataset ds;
  memset(&ds, 0, sizeof ds);
  return slot_set_loaded(c, &c->data, &ds, images, fl__idx_load(&ds, images, labels, c->alloc));
}

fl_err fl_client_set_data_source(fl_client *c, const fl_data_source *src) {
  if (c == NULL)
    return FL_E_INVAL;
  return fl__slot_set_source(c, &c->data, src);
}

/* ---- training ---------------------------------------------------------------------------- */

typedef struct train_bufs {
  float *x, *targets, *velocity;
  int32_t *labels;
} train_bufs;

static void bufs_free(const fl_allocator *a, train_bufs *b) {
  fl__free(a, b->x);
  fl__free(a, b->targets);
  fl__free(a, b->velocity);
  fl__free(a, b->labels);
}

/* Buffers for one batch; targets only when a regression model's output differs from its
 * input (an autoencoder's targets are its inputs). */
static int bufs_alloc(fl_client *c, fl_model *m, size_t bs, train_bufs *b) {
  size_t in = fl__model_input_size(m), out = fl__model_output_size(m), nx, nt;
  bool ce = fl__model_spec(m)->loss == FL_LOSS_SOFTMAX_CE;
  memset(b, 0, sizeof *b);
  /* The batch size comes from the coordinator and the sizes from its model: checked products,
   * or a wrapped one would allocate a small buffer that next() then overruns. */
  if (__builtin_mul_overflow(bs, in, &nx) || __builtin_mul_overflow(bs, out, &nt)) {
    fl__client_err(c, "batches of %zu examples of %zu values do not fit in memory", bs,
                   in > out ? in : out);
    return FL_E_TOOBIG;
  }
  b->x = fl__calloc(c->alloc, nx, sizeof *b->x);
  if (ce)
    b->labels = fl__calloc(c->alloc, bs, sizeof *b->labels);
  else if (out != in)
    b->targets = fl__calloc(c->alloc, nt, sizeof *b->targets);
  if (c->task.momentum > 0)
    b->velocity = fl__calloc(c->alloc, fl__model_num_params(m), sizeof *b->velocity);
  if (b->x == NULL || (ce && b->labels == NULL) || (!ce && out != in && b->targets == NULL) ||
      (c->task.momentum > 0 && b->velocity == NULL)) {
    bufs_free(c->alloc, b);
    return FL_E_NOMEM;
  }
  return FL_OK;
}

static int check_labels(const int32_t *labels, size_t n, size_t classes) {
  for (size_t i = 0; labels != NULL && i < n; i++)
    if (labels[i] < 0 || (size_t)labels[i] >= classes)
      return FL_E_INVAL;
  return FL_OK;
}

/* One epoch over the data source; adds to *loss_sum (loss x examples) and *count. */
static int run_epoch(fl_client *c, fl_model *m, train_bufs *b, size_t bs, const fl_sgd *opt,
                     uint64_t seed, double *loss_sum, uint64_t *count) {
  const fl_data_source *s = &c->data.src;
  int err = s->reset != NULL ? s->reset(s->ctx, seed) : FL_OK;
  while (err == FL_OK) {
    size_t n = 0;
    err = s->next(s->ctx, b->x, b->labels, b->targets, bs, &n);
    if (err != FL_OK || n == 0)
      break;
    if (n > bs)
      return FL_E_INVAL;
    err = check_labels(b->labels, n, fl__model_output_size(m));
    if (err != FL_OK) {
      fl__client_err(c, "a training label is outside [0, %zu)", fl__model_output_size(m));
      return err;
    }
    fl_batch batch = {.x = b->x, .labels = b->labels, .targets = b->targets, .n = n};
    double loss = 0;
    err = fl__model_sgd_step(m, &batch, opt, &loss);
    *loss_sum += loss * (double)n;
    *count += n;
  }
  return err;
}

static int train_builtin(fl_client *c, fl_model *m, const float *anchor, uint64_t *samples,
                         float *mean_loss) {
  if (!c->data.have) {
    fl__client_err(c, "no training data: set a data source first");
    return FL_E_STATE;
  }
  if (c->data.src.x_dim != fl__model_input_size(m)) {
    fl__client_err(c, "data has %zu features, the model takes %zu", c->data.src.x_dim,
                   fl__model_input_size(m));
    return FL_E_SHAPE;
  }
  /* A batch larger than an epoch is the epoch: buffers for more examples than the source
   * has would only take memory. */
  size_t bs = c->task.batch_size;
  if (c->data.src.n_examples > 0 && c->data.src.n_examples < bs)
    bs = c->data.src.n_examples;
  train_bufs b;
  int err = bufs_alloc(c, m, bs, &b);
  if (err != FL_OK)
    return err;
  const fl__task *t = &c->task;
  fl_sgd opt = {.lr = t->learning_rate,
                .momentum = t->momentum,
                .weight_decay = t->weight_decay,
                .prox_mu = t->prox_mu,
                .anchor = t->prox_mu > 0 ? anchor : NULL,
                .velocity = b.velocity};
  double loss_sum = 0;
  uint64_t count = 0;
  for (uint32_t e = 0; e < t->local_epochs && err == FL_OK; e++)
    err = run_epoch(c, m, &b, bs, &opt, t->seed + e, &loss_sum, &count);
  bufs_free(c->alloc, &b);
  if (err != FL_OK)
    return err;
  if (count == 0) {
    fl__client_err(c, "the data source yielded no examples");
    return FL_E_STATE;
  }
  *samples = c->data.src.n_examples > 0 ? c->data.src.n_examples : count / t->local_epochs;
  *mean_loss = (float)(loss_sum / (double)count);
  return FL_OK;
}

static int train_callback(fl_client *c, fl_model *m, uint64_t *samples, float *loss) {
  const fl__task *t = &c->task;
  fl_train_task task = {.size = sizeof task,
                        .round_id = t->round_id,
                        .model_id = t->model_id,
                        .base_version = t->base_version,
                        .seed = t->seed,
                        .local_epochs = t->local_epochs,
                        .batch_size = t->batch_size,
                        .learning_rate = t->learning_rate,
                        .momentum = t->momentum,
                        .weight_decay = t->weight_decay,
                        .prox_mu = t->prox_mu,
                        .n_params = fl__model_num_params(m),
                        .input_size = fl__model_input_size(m),
                        .output_size = fl__model_output_size(m)};
  *samples = 0;
  *loss = 0;
  int err = c->trainer(c->trainer_ctx, &task, fl__model_params(m), samples, loss);
  if (err != FL_OK) {
    fl__client_err(c, "trainer callback failed: %s", fl_strerror(err));
    return err;
  }
  if (*samples == 0) {
    fl__client_err(c, "trainer callback reported no samples");
    return FL_E_INVAL;
  }
  return FL_OK;
}

/* Trains, then builds the signed upload and queues it as the next request. */
static int train_and_pack(fl_client *c) {
  /* A base shared through the model store stays as it is: training runs on a private copy
   * made now, and the delta is taken against the shared weights. An own base is trained in
   * place, its weights saved first. */
  fl_model *m = c->base.model, *own = NULL;
  float *base = NULL;
  fl__drift_acc *acc = NULL;
  if (m == NULL) {
    int err = fl__loaded_take_model(c, &c->base, &own);
    if (err != FL_OK)
      return err;
    m = own;
  } else {
    base = fl__malloc(c->alloc, fl__model_num_params(m) * sizeof *base);
    if (base == NULL)
      return FL_E_NOMEM;
    memcpy(base, fl__model_params_const(m), fl__model_num_params(m) * sizeof *base);
  }
  const float *anchor = base != NULL ? base : fl__loaded_params(&c->base);
  /* Reference statistics of the local data for the version this round makes (drift.c),
   * scored before training by the base, the version the fleet serves: a model trained on
   * these examples alone would score them better than any version of the fleet does. */
  Fl__V1__DriftStats ds;
  bool with_stats = false;
  int err = FL_OK;
  if (c->drift_every > 0 && (acc = fl__malloc(c->alloc, sizeof *acc)) != NULL) {
    err = fl__drift_train_stats(c, m, acc);
    if ((with_stats = err == FL_OK))
      fl__drift_msg(acc, &ds);
    if (err == FL_E_NOMEM)
      goto out_free;
  }
  uint64_t samples = 0;
  float loss = 0;
  err = c->trainer != NULL ? train_callback(c, m, &samples, &loss)
                           : train_builtin(c, m, anchor, &samples, &loss);
  if (err != FL_OK)
    goto out_free;
  const fl__task *t = &c->task;
  if (t->sa_threshold > 0) {
    /* Secure aggregation: the clipped delta waits for the masked phase (secagg.c). */
    float *d = NULL;
    err = fl__update_clipped(anchor, fl__model_params_const(m), fl__model_num_params(m),
                             t->clip_norm, c->alloc, &d);
    if (err == FL_E_NONFINITE)
      fl__client_err(c, "local training diverged (non-finite weights)");
    if (err == FL_OK) {
      c->sa_delta = d;
      c->sa_len = fl__model_num_params(m);
      c->result.sample_count = samples;
      c->result.loss = loss;
    }
    goto out_free;
  }
  fl__update_params p = {.device_id = c->device_id,
                         .round_id = t->round_id,
                         .model_id = t->model_id,
                         .base_version = t->base_version,
                         .sample_count = samples,
                         .loss = loss,
                         .clip_norm = t->clip_norm,
                         .noise_stddev = t->noise_stddev,
                         .topk_fraction = t->topk_fraction,
                         .encoding = t->encoding,
                         .train_stats = with_stats ? &ds : NULL};
  fl__upload_buf ub;
  float norm = 0;
  uint8_t content[FL_SHA256_LEN];
  /* Packed once into the buffer it is sent from; each attempt signs it in place. */
  err = fl__update_pack(m, anchor, fl__model_params_const(m), &p, c->alloc, &ub, &norm, content);
  if (err == FL_E_NONFINITE)
    fl__client_err(c, "local training diverged (non-finite weights)");
  if (err != FL_OK)
    goto out_free;
  err = fl__request_set_upload_buf(c, &ub, content);
  if (err != FL_OK)
    goto out_free;
  c->result.sample_count = samples;
  c->result.loss = loss;
  c->result.norm = norm;
out_free:
  fl__free(c->alloc, acc);
  fl__free(c->alloc, base);
  fl__model_free(own);
  return err;
}

fl_err fl_client_train(fl_client *c) {
  if (c == NULL)
    return FL_E_INVAL;
  if (c->phase != FL__PH_TRAIN || !fl__loaded_have(&c->base))
    return FL_E_STATE;
  int err = train_and_pack(c);
  if (err == FL_OK) {
    /* The trained weights are no longer the base; the upload is all that is needed. */
    fl__loaded_free(&c->base);
    c->attempts = 0;
    c->phase = FL__PH_UPLOAD;
    if (c->sa != NULL)
      err = fl__sa_after_train(c);
  }
  if (err != FL_OK)
    fl__round_finish(c, FL_ROUND_FAILED, err);
  atomic_store_explicit(&c->trained, 1, memory_order_release);
  if (c->multi != NULL)
    fl__multi_wakeup(c->multi);
  return err;
}
