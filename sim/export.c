/*
 * The learning work of a run, written out for an independent implementation (export.h).
 */
#include "export.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fl/err.h"

static int fail(char *msg, size_t cap, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail(char *msg, size_t cap, int rc, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, cap, fmt, ap);
  va_end(ap);
  return rc;
}

/* The dense layers' sizes, input first, into dims[0..*n_dims): only dense layers with a ReLU
 * between each two and none after the last, the shape benches/fedavg_numpy.py implements. */
static int dense_dims(const fl_model_spec *s, uint32_t *dims, size_t *n_dims) {
  if (s->input_ndim != 1 || s->loss != FL_LOSS_SOFTMAX_CE)
    return FL_E_INVAL;
  size_t n = 0;
  dims[n++] = s->input_shape[0];
  for (uint32_t i = 0; i < s->n_layers; i++) {
    int want_dense = i % 2 == 0;
    if (s->layers[i].type != (want_dense ? FL_LAYER_DENSE : FL_LAYER_RELU))
      return FL_E_INVAL;
    if (want_dense)
      dims[n++] = s->layers[i].units;
  }
  if (s->n_layers % 2 == 0)
    return FL_E_INVAL; /* ends in a ReLU */
  *n_dims = n;
  return FL_OK;
}

/* What the export does not carry; the other side would silently learn something else. */
static const char *unexported(const sim_options *o) {
  if (strcmp(o->dataset, "fmnist") != 0)
    return "--dataset other than fmnist";
  if (o->momentum != 0 || o->weight_decay != 0 || o->prox_mu != 0)
    return "--momentum, --weight-decay or --prox-mu";
  if (strcmp(o->server_optimizer, "fedavg") != 0 || strcmp(o->aggregator, "fedavg") != 0)
    return "a server optimizer or aggregator other than fedavg";
  if (strcmp(o->encoding, "float32") != 0)
    return "an --encoding other than float32";
  if (o->dropout != 0 || o->net_fail != 0 || o->straggler_frac != 0 || o->bad_frac != 0 ||
      o->noise_multiplier != 0 || o->clip_quantile != 0 || o->participants != 0)
    return "faults, misbehaving devices, DP or a subset of participants";
  return NULL;
}

static int write_file(const char *dir, const char *name, const void *a, size_t a_len, const void *b,
                      size_t b_len, const void *c, size_t c_len) {
  char path[1024];
  snprintf(path, sizeof(path), "%s/%s", dir, name);
  FILE *f = fopen(path, "wb");
  if (f == NULL)
    return FL_E_IO;
  int ok = fwrite(a, 1, a_len, f) == a_len && (b_len == 0 || fwrite(b, 1, b_len, f) == b_len) &&
           (c_len == 0 || fwrite(c, 1, c_len, f) == c_len);
  ok = fclose(f) == 0 && ok;
  return ok ? FL_OK : FL_E_IO;
}

static int write_split(const char *dir, const sim_partition *p) {
  uint32_t head = (uint32_t)p->n_parties;
  size_t n_off = p->n_parties + 1;
  uint32_t *off = malloc(n_off * sizeof(uint32_t));
  if (off == NULL)
    return FL_E_NOMEM;
  for (size_t k = 0; k < n_off; k++)
    off[k] = (uint32_t)p->offsets[k];
  int rc = write_file(dir, "split.u32", &head, sizeof(head), off, n_off * sizeof(uint32_t),
                      p->index, p->offsets[p->n_parties] * sizeof(uint32_t));
  free(off);
  return rc;
}

int sim_export_learning(const char *dir, const sim_options *o, const fl_model_spec *spec,
                        const float *params, size_t n_params, const sim_partition *part, char *msg,
                        size_t cap) {
  uint32_t dims[FL_MAX_LAYERS + 1];
  size_t n_dims = 0;
  if (dense_dims(spec, dims, &n_dims) != FL_OK)
    return fail(msg, cap, FL_E_INVAL,
                "--export-learning takes dense layers with a ReLU between each two and softmax "
                "cross-entropy (--model 2nn, logreg or mlp)");
  const char *why = unexported(o);
  if (why != NULL)
    return fail(msg, cap, FL_E_INVAL, "--export-learning does not describe %s", why);
  if (mkdir(dir, 0755) != 0 && errno != EEXIST)
    return fail(msg, cap, FL_E_IO, "cannot create %s: %s", dir, strerror(errno));
  int rc = write_file(dir, "params.f32", params, n_params * sizeof(float), NULL, 0, NULL, 0);
  if (rc == FL_OK)
    rc = write_split(dir, part);
  char path[1024];
  snprintf(path, sizeof(path), "%s/learning.txt", dir);
  FILE *f = rc == FL_OK ? fopen(path, "w") : NULL;
  if (f != NULL) {
    fprintf(f, "dataset %s\ndata_dir %s\ndims", o->dataset, o->data_dir);
    for (size_t i = 0; i < n_dims; i++)
      fprintf(f, "%c%u", i ? ',' : ' ', dims[i]);
    fprintf(f,
            "\nn_params %zu\nepochs %u\nbatch %u\nlr %.17g\nclip_norm %.17g\nserver_lr %.17g\n"
            "rounds %d\ndevices %zu\nseed %llu\n",
            n_params, o->epochs, o->batch, o->lr, o->clip_norm, o->server_lr, o->rounds, o->devices,
            (unsigned long long)o->seed);
    rc = fclose(f) == 0 ? FL_OK : FL_E_IO;
  } else if (rc == FL_OK) {
    rc = FL_E_IO;
  }
  if (rc != FL_OK)
    return fail(msg, cap, rc, "cannot write the learning work to %s: %s", dir, fl_strerror(rc));
  return FL_OK;
}
