/*
 * Cost of the robust aggregators (server/rounds/aggregator.c) at close: CPU seconds and the
 * scratch memory each rule allocates beyond its inputs, for n updates of P parameters (the
 * 2NN has 199,210), single core (OpenBLAS on one thread, as in the coordinator).
 *
 *   bench_robust [-n N[,N...]] [-p P] [--rules median,trimmed_mean,krum,multi_krum,bulyan]
 *                [-f F] [--trim BETA] [-m M]
 *
 * The inputs are in memory (fl__agg_source_rows) so that the table measures the rules, not a
 * decoder; the rules read them block by block either way. Scratch is counted by an allocator
 * hook (the peak of live bytes), which is what a close adds to the coordinator's memory.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cblas.h>

#include "fl/err.h"
#include "flsupport/proc.h"
#include "rng.h"
#include "rounds/aggregator.h"

/* Peak live bytes through the hooks: each block carries its size in a header. */
typedef struct peak {
  size_t live, max;
} peak;

static void *pk_malloc(void *ctx, size_t n) {
  peak *p = ctx;
  size_t *b = malloc(n + sizeof(size_t) * 2);
  if (b == NULL)
    return NULL;
  b[0] = n;
  p->live += n;
  p->max = p->live > p->max ? p->live : p->max;
  return b + 2;
}

static void pk_free(void *ctx, void *q) {
  peak *p = ctx;
  if (q == NULL)
    return;
  size_t *b = (size_t *)q - 2;
  p->live -= b[0];
  free(b);
}

static void *pk_realloc(void *ctx, void *q, size_t n) {
  void *r = pk_malloc(ctx, n);
  if (r != NULL && q != NULL) {
    size_t old = ((size_t *)q)[-2];
    memcpy(r, q, old < n ? old : n);
    pk_free(ctx, q);
  }
  return r;
}

int main(int argc, char **argv) {
  const char *ns = "100,1000", *rules = "median,trimmed_mean,krum,multi_krum,bulyan";
  size_t P = 199210;
  unsigned f = 0, m = 0;
  double trim = 0.1;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "-n") == 0 && i + 1 < argc)
      ns = argv[++i];
    else if (strcmp(argv[i], "-p") == 0 && i + 1 < argc)
      P = strtoul(argv[++i], NULL, 10);
    else if (strcmp(argv[i], "--rules") == 0 && i + 1 < argc)
      rules = argv[++i];
    else if (strcmp(argv[i], "-f") == 0 && i + 1 < argc)
      f = (unsigned)strtoul(argv[++i], NULL, 10);
    else if (strcmp(argv[i], "-m") == 0 && i + 1 < argc)
      m = (unsigned)strtoul(argv[++i], NULL, 10);
    else if (strcmp(argv[i], "--trim") == 0 && i + 1 < argc)
      trim = strtod(argv[++i], NULL);
    else {
      fprintf(stderr,
              "usage: bench_robust [-n N,...] [-p P] [--rules LIST] [-f F] [-m M]"
              " [--trim BETA]\n");
      return 2;
    }
  }
  /* Single core, as in the coordinator; thread CPU time then counts all of the work. */
  openblas_set_num_threads(1);
  printf("| rule | n | P | f | CPU s | wall s | scratch MiB | inputs MiB |\n");
  printf("|---|---:|---:|---:|---:|---:|---:|---:|\n");
  char nbuf[256];
  snprintf(nbuf, sizeof nbuf, "%s", ns);
  for (char *sn = strtok(nbuf, ","); sn != NULL; sn = strtok(NULL, ",")) {
    size_t n = strtoul(sn, NULL, 10);
    float *data = malloc(n * P * sizeof *data);
    const float **u = malloc(n * sizeof *u);
    float *out = malloc(P * sizeof *out);
    if (data == NULL || u == NULL || out == NULL) {
      fprintf(stderr, "bench_robust: out of memory for n=%zu\n", n);
      return 1;
    }
    fl_rng r;
    fl__rng_seed(&r, 1);
    for (size_t i = 0; i < n * P; i++)
      data[i] = (float)(0.01 * fl__rng_normal(&r));
    for (size_t i = 0; i < n; i++)
      u[i] = data + i * P;
    fl_agg_source src;
    fl__agg_source_rows(&src, u, n, P);
    /* f defaults to the largest Bulyan allows, about a quarter of n. */
    unsigned fz = f > 0 ? f : (unsigned)((n - 3) / 4);
    char rbuf[256];
    snprintf(rbuf, sizeof rbuf, "%s", rules);
    char *save = NULL;
    for (char *name = strtok_r(rbuf, ",", &save); name != NULL; name = strtok_r(NULL, ",", &save)) {
      int rule = fl__agg_rule(name);
      if (rule < 0) {
        fprintf(stderr, "bench_robust: unknown rule %s\n", name);
        return 2;
      }
      fl_agg_params p = {.rule = (fl_agg_rule)rule,
                         .trim_fraction = trim,
                         .byzantine = fz,
                         .krum_select = m > 0 ? m : (unsigned)(n - 2 * fz)};
      if (rule == FL_AGGR_MEDIAN || rule == FL_AGGR_TRIMMED_MEAN)
        p.byzantine = 0;
      peak pk = {0, 0};
      fl_allocator hooks = {pk_malloc, pk_realloc, pk_free, &pk};
      double c0 = fl_sup_thread_cpu_s(), w0 = fl_sup_mono_s();
      int err = fl__agg_run(&p, &src, out, &hooks);
      double c1 = fl_sup_thread_cpu_s(), w1 = fl_sup_mono_s();
      if (err != FL_OK) {
        fprintf(stderr, "bench_robust: %s n=%zu: %s\n", name, n, fl_strerror(err));
        return 1;
      }
      printf("| %s | %zu | %zu | %u | %.2f | %.2f | %.1f | %.0f |\n", name, n, P, p.byzantine,
             c1 - c0, w1 - w0, (double)pk.max / 1048576.0,
             (double)(n * P * sizeof(float)) / 1048576.0);
      fflush(stdout);
    }
    free(out);
    free(u);
    free(data);
  }
  return 0;
}
