/*
 * The learning work alone: one SGD step (forward, loss, backward, update) of the models the
 * benchmarks train, on one thread, with no client, network or data set around it. The CNN is
 * NIID-Bench's simple CNN at its batch of 64 (benches/niid.sh: momentum 0.9, weight decay
 * 1e-5); the 2NN is README's quick-start model at batch 10 with its plain SGD (no momentum,
 * no weight decay: fl-sim's defaults, which take model.c's fused step). Random inputs: the work
 * does not depend on the values. Prints the median and best of several repetitions of `steps`
 * steps, per step, CPU time of the process over the same loop, and the last step's loss.
 *
 * benches/train_ab.sh runs this program built against two trees (before and after a change to
 * the kernels) alternately in one run, which is how RESULTS.md compares them.
 *
 * Usage: bench_train [cnn|2nn|all] [reps]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fl/err.h"
#include "model.h"
#include "tensor.h"

static double mono_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double cpu_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static fl_layer_spec layer(int type, uint32_t units, uint32_t kernel) {
  fl_layer_spec l = {.type = type, .units = units, .kernel = kernel};
  if (type == FL_LAYER_CONV2D) {
    l.out_channels = units;
    l.units = 0;
  }
  return l;
}

/* conv2d:6:5,relu,maxpool2d:2,conv2d:16:5,relu,maxpool2d:2,flatten,dense:120,relu,dense:84,
 * relu,dense:10 on 1x28x28 (sim/model_specs.c's "cnn"). */
static void cnn_spec(fl_model_spec *s) {
  memset(s, 0, sizeof *s);
  const fl_layer_spec l[] = {
      layer(FL_LAYER_CONV2D, 6, 5),  layer(FL_LAYER_RELU, 0, 0),    layer(FL_LAYER_MAXPOOL2D, 0, 2),
      layer(FL_LAYER_CONV2D, 16, 5), layer(FL_LAYER_RELU, 0, 0),    layer(FL_LAYER_MAXPOOL2D, 0, 2),
      layer(FL_LAYER_FLATTEN, 0, 0), layer(FL_LAYER_DENSE, 120, 0), layer(FL_LAYER_RELU, 0, 0),
      layer(FL_LAYER_DENSE, 84, 0),  layer(FL_LAYER_RELU, 0, 0),    layer(FL_LAYER_DENSE, 10, 0)};
  s->input_ndim = 3;
  s->input_shape[0] = 1;
  s->input_shape[1] = 28;
  s->input_shape[2] = 28;
  s->n_layers = sizeof l / sizeof l[0];
  memcpy(s->layers, l, sizeof l);
  s->loss = FL_LOSS_SOFTMAX_CE;
}

static void nn2_spec(fl_model_spec *s) {
  memset(s, 0, sizeof *s);
  const fl_layer_spec l[] = {layer(FL_LAYER_DENSE, 200, 0), layer(FL_LAYER_RELU, 0, 0),
                             layer(FL_LAYER_DENSE, 200, 0), layer(FL_LAYER_RELU, 0, 0),
                             layer(FL_LAYER_DENSE, 10, 0)};
  s->input_ndim = 1;
  s->input_shape[0] = 784;
  s->n_layers = sizeof l / sizeof l[0];
  memcpy(s->layers, l, sizeof l);
  s->loss = FL_LOSS_SOFTMAX_CE;
}

/* With FL_BENCH_GRAD_DIR set, writes the gradient of the first batch at the initial weights
 * to DIR/NAME.grad (raw floats): train_ab.sh compares two builds' files element by element. */
static int dump_grad(fl_model *m, const char *name, const float *x, const int32_t *y,
                     size_t batch) {
  const char *dir = getenv("FL_BENCH_GRAD_DIR");
  if (dir == NULL)
    return FL_OK;
  fl_batch b = {.x = x, .labels = y, .n = batch};
  int rc = fl__model_loss_grad(m, &b, NULL);
  if (rc != FL_OK)
    return rc;
  char path[4096];
  snprintf(path, sizeof path, "%s/%s.grad", dir, name);
  FILE *f = fopen(path, "wb");
  size_t np = fl__model_num_params(m);
  if (f == NULL || fwrite(fl__model_grads(m), sizeof(float), np, f) != np) {
    if (f)
      fclose(f);
    return FL_E_IO;
  }
  return fclose(f) == 0 ? FL_OK : FL_E_IO;
}

/* reps repetitions of `steps` SGD steps over a pool of random batches; prints ms per step. */
static int run(const char *name, const fl_model_spec *spec, size_t batch, int steps, int reps,
               float momentum) {
  enum { POOL = 8 };
  fl_model *m = NULL;
  int rc = fl__model_new(&m, spec, NULL);
  if (rc != FL_OK) {
    fprintf(stderr, "%s: %s\n", name, fl_strerror(rc));
    return 1;
  }
  fl__model_init(m, 1);
  size_t in = fl__model_input_size(m), np = fl__model_num_params(m);
  float *x = malloc(POOL * batch * in * sizeof(float));
  int32_t *y = malloc(POOL * batch * sizeof(int32_t));
  float *vel = calloc(np, sizeof(float));
  double *t = malloc((size_t)reps * sizeof(double));
  if (!x || !y || !vel || !t) {
    rc = FL_E_NOMEM;
    goto cleanup;
  }
  srand(7);
  for (size_t i = 0; i < POOL * batch * in; i++)
    x[i] = (float)rand() / (float)RAND_MAX;
  for (size_t i = 0; i < POOL * batch; i++)
    y[i] = rand() % 10;
  fl_sgd opt = {.lr = 0.01f,
                .momentum = momentum,
                .weight_decay = momentum > 0.0f ? 1e-5f : 0.0f,
                .velocity = vel};
  rc = dump_grad(m, name, x, y, batch);
  double cpu0 = cpu_s(), loss = 0.0;
  for (int r = 0; r < reps && rc == FL_OK; r++) {
    double t0 = mono_s();
    for (int s = 0; s < steps && rc == FL_OK; s++) {
      fl_batch b = {.x = x + (size_t)(s % POOL) * batch * in,
                    .labels = y + (size_t)(s % POOL) * batch,
                    .n = batch};
      rc = fl__model_sgd_step(m, &b, &opt, &loss);
    }
    t[r] = (mono_s() - t0) / steps;
  }
  double cpu = (cpu_s() - cpu0) / ((double)reps * steps);
  if (rc != FL_OK) {
    fprintf(stderr, "%s: %s\n", name, fl_strerror(rc));
    goto cleanup;
  }
  qsort(t, (size_t)reps, sizeof *t, cmp_double);
  /* The last step's loss: the same across builds when their arithmetic is the same (every
   * repetition goes on training the same seeded model on the same batches). */
  printf(
      "%-4s batch %3zu: median %8.3f ms/step, best %8.3f ms/step, CPU %8.3f ms/step (%d x %d "
      "steps), last loss %.9g\n",
      name, batch, t[reps / 2] * 1e3, t[0] * 1e3, cpu * 1e3, reps, steps, loss);
cleanup:
  free(t);
  free(vel);
  free(y);
  free(x);
  fl__model_free(m);
  return rc == FL_OK ? 0 : 1;
}

int main(int argc, char **argv) {
  const char *which = argc > 1 ? argv[1] : "all";
  int reps = argc > 2 ? atoi(argv[2]) : 7;
  if (reps < 1)
    reps = 1;
  fl__tensor_set_threads(1); /* fl-sim trains one device per thread */
  fl_model_spec s;
  int bad = 0;
  if (strcmp(which, "cnn") == 0 || strcmp(which, "all") == 0) {
    cnn_spec(&s);
    bad |= run("cnn", &s, 64, 20, reps, 0.9f);
  }
  if (strcmp(which, "2nn") == 0 || strcmp(which, "all") == 0) {
    nn2_spec(&s);
    bad |= run("2nn", &s, 10, 200, reps, 0.0f);
  }
  return bad;
}
