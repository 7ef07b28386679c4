/*
 * Aggregation throughput of the coordinator's own fold (fl__tensor_fold, which
 * server/aggregate.c calls for every tensor of every accepted update), against
 *  - the memory bandwidth measured in the same run: a STREAM-like read of the same N*P*4 bytes
 *    from the same pool of updates (target: fold >= 70% of it);
 *  - Flower's aggregation algorithm in numpy (benches/flower_aggregate.py) on the same data,
 *    run as a child process on a file this program writes (target: fold >= 8x faster);
 * and the per-update decode cost of each encoding on the server's path (check, norm, fold).
 *
 * The N updates cycle through a pool of distinct updates whose size is at least 512 MiB (16x
 * the 32 MiB L3 of the reference machine) or all N when that is smaller, so every pass reads
 * from DRAM; the bandwidth read walks the same pool in the same order. OpenBLAS runs on one
 * thread, as in the coordinator.
 *
 *   bench_aggregate [-n N] [-p P] [-r REPS] [--pool-mib MIB] [--flower CMD | --no-flower]
 *                   [--decode-only | --no-decode]
 *
 * --flower CMD: the command that runs flower_aggregate.py; the data file path and the
 * repetition count are appended (default: python3 from Debian with OPENBLAS_CORETYPE and
 * OPENBLAS_L2_SIZE unset for that command alone).
 */
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "codec.h"
#include "fl/err.h"
#include "flsupport/proc.h"
#include "flsupport/rng.h"
#include "tensor.h"

#ifndef FL_BENCH_SRC_DIR
#define FL_BENCH_SRC_DIR "benches"
#endif

typedef struct timing {
  double wall, cpu;
} timing;

/* Deterministic data (splitmix64, flsupport/rng.h): the same pool for every run. */
typedef struct pool {
  size_t n, p; /* n distinct updates of p parameters */
  float *x;    /* n * p */
  Fl__V1__Tensor *t;
} pool;

static int pool_new(pool *pl, size_t n, size_t p) {
  uint64_t seed = 42;
  pl->n = n;
  pl->p = p;
  pl->x = aligned_alloc(64, ((n * p * sizeof(float)) + 63) & ~(size_t)63);
  pl->t = calloc(n, sizeof *pl->t);
  if (pl->x == NULL || pl->t == NULL)
    return -1;
  for (size_t i = 0; i < n * p; i++)
    pl->x[i] = 0.01f * fl_sup_splitmix_unit(&seed);
  for (size_t i = 0; i < n; i++) {
    fl__v1__tensor__init(&pl->t[i]);
    pl->t[i].encoding = FL__V1__ENCODING__ENCODING_FLOAT32;
    pl->t[i].count = p;
    pl->t[i].data.data = (uint8_t *)(pl->x + i * p);
    pl->t[i].data.len = p * sizeof(float);
  }
  return 0;
}

static void pool_free(pool *pl) {
  free(pl->x);
  free(pl->t);
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double weight_of(size_t i) { /* sample counts 50..600, as devices report them */
  return (double)(50 + (i * 7919) % 551);
}

/* The coordinator's fold: acc += w_i * delta_i for N updates, then / total (as at close). */
static timing run_fold(const pool *pl, size_t n, float *acc) {
  double total = 0;
  memset(acc, 0, pl->p * sizeof *acc);
  double t0 = fl_sup_mono_s(), c0 = fl_sup_thread_cpu_s();
  for (size_t i = 0; i < n; i++) {
    double w = weight_of(i);
    fl__tensor_fold(&pl->t[i % pl->n], (float)w, acc);
    total += w;
  }
  fl__scal(pl->p, (float)(1.0 / total), acc);
  return (timing){fl_sup_mono_s() - t0, fl_sup_thread_cpu_s() - c0};
}

/* Not the coordinator's code: what folding two updates per pass over the accumulator would
 * give (acc += w1*x1 + w2*x2 halves the accumulator's read/write traffic). */
static timing run_fold_pairs(const pool *pl, size_t n, float *acc) {
  size_t p = pl->p;
  memset(acc, 0, p * sizeof *acc);
  double t0 = fl_sup_mono_s(), c0 = fl_sup_thread_cpu_s();
  size_t i = 0;
  for (; i + 2 <= n; i += 2) {
    const float *a = pl->x + (i % pl->n) * p, *b = pl->x + ((i + 1) % pl->n) * p;
    float wa = (float)weight_of(i), wb = (float)weight_of(i + 1);
    for (size_t j = 0; j < p; j++)
      acc[j] += wa * a[j] + wb * b[j];
  }
  if (i < n)
    fl__tensor_fold(&pl->t[i % pl->n], (float)weight_of(i), acc);
  return (timing){fl_sup_mono_s() - t0, fl_sup_thread_cpu_s() - c0};
}

/* STREAM-like read of the same bytes in the same order: 32 independent float lanes, so the
 * loop vectorises without reassociation and is bound by memory, not by add latency. */
static timing run_read(const pool *pl, size_t n, double *sink) {
  float lanes[32] = {0};
  size_t p = pl->p & ~(size_t)31;
  double t0 = fl_sup_mono_s(), c0 = fl_sup_thread_cpu_s();
  for (size_t i = 0; i < n; i++) {
    const float *x = pl->x + (i % pl->n) * pl->p;
    for (size_t j = 0; j < p; j += 32)
      for (int k = 0; k < 32; k++)
        lanes[k] += x[j + k];
    for (size_t j = p; j < pl->p; j++)
      lanes[0] += x[j];
  }
  timing t = {fl_sup_mono_s() - t0, fl_sup_thread_cpu_s() - c0};
  double s = 0;
  for (int k = 0; k < 32; k++)
    s += lanes[k];
  *sink += s;
  return t;
}

/* Writes the pool, the sample counts and the C result for flower_aggregate.py. */
static int write_data(const char *path, const pool *pl, size_t n, const float *result) {
  FILE *f = fopen(path, "wb");
  if (f == NULL)
    return -1;
  uint64_t hdr[4] = {0x464c4147475231ULL /* "1RGGALF" */, n, pl->p, pl->n};
  int rc = fwrite(hdr, sizeof hdr, 1, f) == 1 ? 0 : -1;
  for (size_t i = 0; rc == 0 && i < n; i++) {
    int64_t w = (int64_t)weight_of(i);
    rc = fwrite(&w, sizeof w, 1, f) == 1 ? 0 : -1;
  }
  if (rc == 0 && fwrite(pl->x, sizeof(float), pl->n * pl->p, f) != pl->n * pl->p)
    rc = -1;
  if (rc == 0 && fwrite(result, sizeof(float), pl->p, f) != pl->p)
    rc = -1;
  if (fclose(f) != 0)
    rc = -1;
  return rc;
}

/* Runs the numpy script; returns its best time, or -1. */
static timing run_flower(const char *cmd, const char *path, int reps, double *maxdiff) {
  char line[512], full[2048];
  timing best = {-1, -1};
  snprintf(full, sizeof full, "%s %s %d", cmd, path, reps);
  FILE *f = popen(full, "r");
  if (f == NULL)
    return best;
  while (fgets(line, sizeof line, f) != NULL) {
    double v;
    if (sscanf(line, "best_seconds=%lf", &v) == 1)
      best.wall = v;
    else if (sscanf(line, "best_cpu_seconds=%lf", &v) == 1)
      best.cpu = v;
    else if (sscanf(line, "max_abs_diff=%lf", &v) == 1)
      *maxdiff = v;
  }
  if (pclose(f) != 0)
    best.wall = -1;
  return best;
}

static void aggregation(size_t n, size_t p, int reps, size_t pool_mib, const char *flower) {
  size_t pool_n = (pool_mib << 20) / (p * sizeof(float));
  if (pool_n < 32)
    pool_n = 32;
  if (pool_n > n)
    pool_n = n;
  pool pl;
  float *acc = aligned_alloc(64, ((p * sizeof(float)) + 63) & ~(size_t)63);
  if (acc == NULL || pool_new(&pl, pool_n, p)) {
    fprintf(stderr, "bench_aggregate: out of memory\n");
    exit(1);
  }
  double bytes = (double)n * (double)p * sizeof(float), sink = 0;
  timing bf = {INFINITY, INFINITY}, br = {INFINITY, INFINITY}, b2 = {INFINITY, INFINITY};
  double *paired = calloc((size_t)reps, sizeof *paired);
  run_read(&pl, pool_n, &sink); /* touch every page once */
  for (int r = 0; r < reps; r++) {
    timing tf = run_fold(&pl, n, acc);
    timing tr = run_read(&pl, n, &sink);
    timing t2 = run_fold_pairs(&pl, n, acc);
    b2 = (timing){fmin(b2.wall, t2.wall), fmin(b2.cpu, t2.cpu)};
    bf = (timing){fmin(bf.wall, tf.wall), fmin(bf.cpu, tf.cpu)};
    br = (timing){fmin(br.wall, tr.wall), fmin(br.cpu, tr.cpu)};
    paired[r] = tr.wall / tf.wall;
  }
  qsort(paired, (size_t)reps, sizeof *paired, cmp_double);
  double paired_median = paired[reps / 2];
  free(paired);
  printf(
      "\n## aggregation: N=%zu updates x P=%zu float32 parameters (%.0f MB read per pass;"
      " pool of %zu distinct updates = %.0f MB, cycled; best of %d; wall time, thread CPU"
      " time in brackets)\n",
      n, p, bytes / 1e6, pool_n, (double)pool_n * p * 4 / 1e6, reps);
  printf("| figure | value | target | ratio |\n|---|---|---|---|\n");
  printf("| fold (fl__tensor_fold, 1 thread) | %.1f ms (%.1f), %.2f GB/s, %.0f updates/s | | |\n",
         bf.wall * 1e3, bf.cpu * 1e3, bytes / bf.wall / 1e9, (double)n / bf.wall);
  printf("| STREAM-like read of the same bytes | %.1f ms (%.1f), %.2f GB/s | | |\n", br.wall * 1e3,
         br.cpu * 1e3, bytes / br.wall / 1e9);
  printf("| fold / memory bandwidth (best times) | %.0f%% (%.0f%%) | >= 70%% | %.2f of target |\n",
         100.0 * br.wall / bf.wall, 100.0 * br.cpu / bf.cpu, (br.wall / bf.wall) / 0.70);
  printf(
      "| fold / memory bandwidth (median of the %d back-to-back pairs) | %.0f%% | >= 70%% |"
      " %.2f of target |\n",
      reps, 100.0 * paired_median, paired_median / 0.70);
  printf(
      "| experiment, not the coordinator's code: two updates per pass | %.1f ms (%.1f),"
      " %.0f%% (%.0f%%) of bandwidth | | |\n",
      b2.wall * 1e3, b2.cpu * 1e3, 100.0 * br.wall / b2.wall, 100.0 * br.cpu / b2.cpu);
  if (flower != NULL) {
    char dir[256], path[300];
    double maxdiff = -1;
    timing tp = {-1, -1};
    if (fl_sup_mkdtemp(dir, sizeof dir, "bench_aggregate_") == FL_OK) {
      snprintf(path, sizeof path, "%s/updates.bin", dir);
      run_fold(&pl, n, acc);
      if (write_data(path, &pl, n, acc) == 0)
        tp = run_flower(flower, path, reps < 3 ? reps : 3, &maxdiff);
      fl_sup_rmtree(dir);
    }
    if (tp.wall > 0) {
      printf(
          "| Flower aggregate() in numpy, same data | %.1f ms (%.1f), %.0f updates/s"
          " (max |difference| to ours %.2g) | | |\n",
          tp.wall * 1e3, tp.cpu * 1e3, (double)n / tp.wall, maxdiff);
      printf("| fold speed / Flower's | %.1fx (%.1fx) | >= 8x | %.2f of target |\n",
             tp.wall / bf.wall, tp.cpu / bf.cpu, (tp.wall / bf.wall) / 8.0);
    } else {
      printf("| Flower aggregate() in numpy | failed to run: %s | | |\n", flower);
    }
  }
  if (sink == 12345.678)
    printf("(sink)\n");
  pool_free(&pl);
  free(acc);
}

/* ---- decode cost per encoding ------------------------------------------------------------- */

static void decode_costs(size_t p, int reps) {
  enum { COPIES = 8, ITERS = 200 };
  static const char *const names[] = {"", "float32", "float16", "int8", "top-k 10%"};
  float *x = malloc(p * sizeof *x), *acc = calloc(p, sizeof *acc), *out = malloc(p * sizeof *out);
  uint64_t seed = 7;
  if (x == NULL || acc == NULL || out == NULL)
    exit(1);
  printf(
      "\n## decode cost per encoding: one update of P=%zu parameters, the coordinator's"
      " per-update path (in cache, as after receipt; best of %d x %d updates)\n",
      p, reps, ITERS);
  printf(
      "| encoding | wire bytes | check | norm | fold | check+norm+fold | Mparam/s |"
      " decode to floats |\n|---|---|---|---|---|---|---|---|\n");
  for (int e = 1; e <= 4; e++) {
    Fl__V1__Tensor t[COPIES];
    for (int c = 0; c < COPIES; c++) {
      for (size_t i = 0; i < p; i++)
        x[i] = 0.01f * fl_sup_splitmix_unit(&seed);
      fl__v1__tensor__init(&t[c]);
      if (fl__tensor_encode(&t[c], x, p, NULL, 0, e, 0.1f, NULL) != FL_OK)
        exit(1);
    }
    double best[4] = {INFINITY, INFINITY, INFINITY, INFINITY};
    volatile double sq = 0;
    for (int r = 0; r < reps; r++) {
      double t0 = fl_sup_mono_s();
      for (int i = 0; i < ITERS; i++)
        if (fl__tensor_check(&t[i % COPIES], p) != FL_OK)
          exit(1);
      double t1 = fl_sup_mono_s();
      for (int i = 0; i < ITERS; i++)
        sq += fl__tensor_sqnorm(&t[i % COPIES]);
      double t2 = fl_sup_mono_s();
      for (int i = 0; i < ITERS; i++)
        fl__tensor_fold(&t[i % COPIES], 3.0f, acc);
      double t3 = fl_sup_mono_s();
      for (int i = 0; i < ITERS; i++)
        fl__tensor_decode(&t[i % COPIES], out, p);
      double t4 = fl_sup_mono_s();
      best[0] = fmin(best[0], (t1 - t0) / ITERS);
      best[1] = fmin(best[1], (t2 - t1) / ITERS);
      best[2] = fmin(best[2], (t3 - t2) / ITERS);
      best[3] = fmin(best[3], (t4 - t3) / ITERS);
    }
    double path = best[0] + best[1] + best[2];
    printf("| %s | %zu | %.1f us | %.1f us | %.1f us | %.1f us | %.0f | %.1f us |\n", names[e],
           t[0].data.len + t[0].indices.len, best[0] * 1e6, best[1] * 1e6, best[2] * 1e6,
           path * 1e6, (double)p / path / 1e6, best[3] * 1e6);
    for (int c = 0; c < COPIES; c++)
      fl__tensor_release(&t[c], NULL);
  }
  free(x);
  free(acc);
  free(out);
}

int main(int argc, char **argv) {
  size_t n = 1000, p = 100000, pool_mib = 512;
  int reps = 9;
  bool do_agg = true, do_decode = true;
  char flower_default[1024];
  snprintf(flower_default, sizeof flower_default,
           "env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE /usr/bin/python3 %s/flower_aggregate.py",
           FL_BENCH_SRC_DIR);
  const char *flower = flower_default;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (strcmp(a, "-n") == 0 && v)
      n = strtoull(argv[++i], NULL, 10);
    else if (strcmp(a, "-p") == 0 && v)
      p = strtoull(argv[++i], NULL, 10);
    else if (strcmp(a, "-r") == 0 && v)
      reps = atoi(argv[++i]);
    else if (strcmp(a, "--pool-mib") == 0 && v)
      pool_mib = strtoull(argv[++i], NULL, 10);
    else if (strcmp(a, "--flower") == 0 && v)
      flower = argv[++i];
    else if (strcmp(a, "--no-flower") == 0)
      flower = NULL;
    else if (strcmp(a, "--decode-only") == 0)
      do_agg = false;
    else if (strcmp(a, "--no-decode") == 0)
      do_decode = false;
    else {
      fprintf(stderr,
              "usage: bench_aggregate [-n N] [-p P] [-r REPS] [--pool-mib MIB]"
              " [--flower CMD | --no-flower] [--decode-only | --no-decode]\n");
      return 2;
    }
  }
  if (n == 0 || p == 0 || reps < 1) {
    fprintf(stderr, "bench_aggregate: N, P and REPS must be positive\n");
    return 2;
  }
  fl__tensor_set_threads(1);
  if (do_agg)
    aggregation(n, p, reps, pool_mib, flower);
  if (do_decode)
    decode_costs(p, reps);
  return 0;
}
