/*
 * bench_gemm: the portable kernels of common/gemm_portable.c against OpenBLAS, single-threaded,
 * on the matrix products one training step of the built-in models runs at batch 10: the 2NN
 * (784-200-200-10; issue 14) and the sensor autoencoder (64-32-8-32-64). Forward is NT
 * (x * W^T), the weight gradient TN (dy^T * x), the input gradient NN (dy * W).
 *
 *   bench_gemm [seconds per measurement, default 0.2]
 *
 * Time is the thread's CPU time (CLOCK_THREAD_CPUTIME_ID), so other processes on the shared
 * machine do not count; each figure is the best of three measurements, portable and OpenBLAS
 * alternating. A measurement, never a pass/fail test.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tensor.h"

typedef struct gshape {
  const char *what;
  bool ta, tb;
  size_t m, n, k;
} gshape;

static const gshape SHAPES[] = {
    {"2nn fwd 1  10x784 . 784x200", false, true, 10, 200, 784},
    {"2nn fwd 2  10x200 . 200x200", false, true, 10, 200, 200},
    {"2nn fwd 3  10x200 . 200x10", false, true, 10, 10, 200},
    {"2nn dW 1   200x10 . 10x784", true, false, 200, 784, 10},
    {"2nn dW 2   200x10 . 10x200", true, false, 200, 200, 10},
    {"2nn dW 3   10x10 . 10x200", true, false, 10, 200, 10},
    {"2nn dX 3   10x10 . 10x200", false, false, 10, 200, 10},
    {"2nn dX 2   10x200 . 200x200", false, false, 10, 200, 200},
    {"2nn dX 1   10x200 . 200x784", false, false, 10, 784, 200},
    {"sensor fwd 10x64 . 64x32", false, true, 10, 32, 64},
    {"sensor dW  32x10 . 10x64", true, false, 32, 64, 10},
    {"sensor dX  10x32 . 32x64", false, false, 10, 64, 32},
};

static double thread_cpu_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

typedef void (*gemm_fn)(bool, bool, size_t, size_t, size_t, float, const float *, const float *,
                        float, float *);

/* Seconds per call of fn on s, calling it until `budget` seconds of CPU have passed. */
static double per_call(gemm_fn fn, const gshape *s, const float *a, const float *b, float *c,
                       double budget) {
  long calls = 0;
  double t0 = thread_cpu_s(), t = t0;
  while (t - t0 < budget) {
    for (int i = 0; i < 16; i++)
      fn(s->ta, s->tb, s->m, s->n, s->k, 1.0f, a, b, 1.0f, c);
    calls += 16;
    t = thread_cpu_s();
  }
  return (t - t0) / (double)calls;
}

int main(int argc, char **argv) {
  double budget = argc > 1 ? atof(argv[1]) : 0.2;
  if (budget <= 0.0) {
    fprintf(stderr, "usage: %s [seconds per measurement > 0]\n", argv[0]);
    return 2;
  }
  fl__tensor_set_threads(1);
  printf("backend of fl__gemm in this build: %s; best of 3 x %.2f s CPU per figure\n\n",
         fl__tensor_backend(), budget);
  printf(
      "| product (m x k . k x n)     | op | portable us | %-8s us | portable GFLOP/s | "
      "%-8s GFLOP/s | portable / %s |\n",
      fl__tensor_backend(), fl__tensor_backend(), fl__tensor_backend());
  printf("|---|---|---:|---:|---:|---:|---:|\n");
  double sum_p[2] = {0, 0}, sum_b[2] = {0, 0};
  for (size_t i = 0; i < sizeof SHAPES / sizeof SHAPES[0]; i++) {
    const gshape *s = &SHAPES[i];
    size_t na = s->m * s->k, nb = s->k * s->n, nc = s->m * s->n;
    float *a = malloc(na * sizeof *a), *b = malloc(nb * sizeof *b), *c = calloc(nc, sizeof *c);
    if (a == NULL || b == NULL || c == NULL)
      return 1;
    for (size_t j = 0; j < na; j++)
      a[j] = (float)((j * 7919) % 1000) / 1000.0f - 0.5f;
    for (size_t j = 0; j < nb; j++)
      b[j] = (float)((j * 104729) % 1000) / 1000.0f - 0.5f;
    double tp = 1e9, tb = 1e9;
    for (int r = 0; r < 3; r++) {
      double x = per_call(fl__gemm_portable, s, a, b, c, budget);
      double y = per_call(fl__gemm, s, a, b, c, budget);
      tp = x < tp ? x : tp;
      tb = y < tb ? y : tb;
    }
    double flop = 2.0 * (double)s->m * (double)s->n * (double)s->k;
    printf("| %-27s | %c%c | %.2f | %.2f | %.2f | %.2f | %.2f |\n", s->what, s->ta ? 'T' : 'N',
           s->tb ? 'T' : 'N', tp * 1e6, tb * 1e6, flop / tp * 1e-9, flop / tb * 1e-9, tp / tb);
    /* A step does not compute the first layer's input gradient (its input is the data). */
    int model = s->what[0] == 's';
    if (strstr(s->what, "dX 1") == NULL) {
      sum_p[model] += tp;
      sum_b[model] += tb;
    }
    free(a);
    free(b);
    free(c);
  }
  printf("\none 2NN step's products (without dX 1): portable %.1f us, %s %.1f us (%.2fx)\n",
         sum_p[0] * 1e6, fl__tensor_backend(), sum_b[0] * 1e6, sum_p[0] / sum_b[0]);
  printf("one sensor step's products: portable %.2f us, %s %.2f us (%.2fx)\n", sum_p[1] * 1e6,
         fl__tensor_backend(), sum_b[1] * 1e6, sum_p[1] / sum_b[1]);
  return 0;
}
