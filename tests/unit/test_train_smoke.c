/*
 * Centralised sanity check of the whole numerical core on real data: an MLP 784-100(relu)-10
 * trained for one epoch of plain minibatch SGD on the Fashion-MNIST training set must pass
 * 80% accuracy on the 10k test set (Xiao et al. 2017 report 87.1% for this model fully
 * trained). Skipped when the data set is not installed.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "data.h"
#include "model.h"
#include "rng.h"

#define FMNIST_DIR "/usr/share/datasets/fashion-mnist"
#define BATCH 32

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void load(fl_dataset *d, const char *images, const char *labels) {
  if (access(images, R_OK) != 0 || access(labels, R_OK) != 0)
    cr_skip_test("Fashion-MNIST is not installed in " FMNIST_DIR);
  cr_assert_eq(fl__idx_load(d, images, labels, NULL), FL_OK);
}

/* One pass over the training set in a seeded random order. */
static void train_epoch(fl_model *m, const fl_dataset *tr, const fl_sgd *opt, uint64_t seed) {
  uint32_t *order = malloc(tr->n * sizeof(uint32_t));
  float *x = malloc(BATCH * tr->x_dim * sizeof(float));
  int32_t y[BATCH];
  for (size_t i = 0; i < tr->n; i++)
    order[i] = (uint32_t)i;
  fl_rng r;
  fl__rng_seed(&r, seed);
  fl__rng_shuffle_u32(&r, order, tr->n);
  for (size_t off = 0; off < tr->n; off += BATCH) {
    size_t n = tr->n - off < BATCH ? tr->n - off : BATCH;
    for (size_t i = 0; i < n; i++) {
      memcpy(x + i * tr->x_dim, tr->x + (size_t)order[off + i] * tr->x_dim,
             tr->x_dim * sizeof(float));
      y[i] = tr->labels[order[off + i]];
    }
    fl_batch b = {.x = x, .labels = y, .n = n};
    cr_assert_eq(fl__model_sgd_step(m, &b, opt, NULL), FL_OK, "step at %zu", off);
  }
  free(x);
  free(order);
}

Test(train_smoke, mlp_one_epoch_fashion_mnist, .timeout = 300) {
  fl_dataset tr, te;
  load(&tr, FMNIST_DIR "/train-images-idx3-ubyte.gz", FMNIST_DIR "/train-labels-idx1-ubyte.gz");
  load(&te, FMNIST_DIR "/t10k-images-idx3-ubyte.gz", FMNIST_DIR "/t10k-labels-idx1-ubyte.gz");
  cr_assert_eq(tr.n, 60000);
  cr_assert_eq(te.n, 10000);

  fl_model_spec spec = {.input_ndim = 1, .input_shape = {784}, .loss = FL_LOSS_SOFTMAX_CE};
  spec.layers[spec.n_layers++] = (fl_layer_spec){.type = FL_LAYER_DENSE, .units = 100};
  spec.layers[spec.n_layers++] = (fl_layer_spec){.type = FL_LAYER_RELU};
  spec.layers[spec.n_layers++] = (fl_layer_spec){.type = FL_LAYER_DENSE, .units = 10};
  fl_model *m = NULL;
  cr_assert_eq(fl__model_new(&m, &spec, NULL), FL_OK);
  fl__model_init(m, 2017);

  fl_batch test = {.x = te.x, .labels = te.labels, .n = te.n};
  double loss0, acc0, loss, acc;
  cr_assert_eq(fl__model_evaluate(m, &test, &loss0, &acc0), FL_OK);
  double t0 = now();
  fl_sgd opt = {.lr = 0.1f};
  train_epoch(m, &tr, &opt, 7);
  double t1 = now();
  cr_assert_eq(fl__model_evaluate(m, &test, &loss, &acc), FL_OK);
  double t2 = now();
  printf(
      "train_smoke: MLP 784-100-10, 1 epoch, batch %d, lr 0.1: test accuracy %.2f%% "
      "(before %.2f%%), loss %.4f (before %.4f); training %.2f s, evaluation %.2f s\n",
      BATCH, 100.0 * acc, 100.0 * acc0, loss, loss0, t1 - t0, t2 - t1);
  cr_assert_gt(acc, 0.80, "test accuracy %.4f", acc);
  cr_assert_lt(loss, loss0);
  fl__model_free(m);
  fl__dataset_free(&tr);
  fl__dataset_free(&te);
}
