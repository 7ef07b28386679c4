/*
 * Aggregators; see aggregator.h for the rules. Coordinate-wise rules walk the updates in
 * blocks of coordinates (a column of n values at a time, gathered from the n rows), and the
 * distance-based rules compute all pairwise squared distances once, from a Gram matrix built
 * block by block in double with dsyrk (||a||^2 + ||b||^2 - 2ab has no harmful cancellation in
 * double for float inputs). Selection uses quickselect, so a median costs O(n) per coordinate.
 */
#include "rounds/aggregator.h"

#include <cblas.h>
#include <float.h>
#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fl/err.h"
#include "mem.h"

#define BLOCK 256 /* coordinates per block: n * BLOCK doubles of scratch */

static const char *const NAMES[] = {"fedavg", "median",     "trimmed_mean",
                                    "krum",   "multi_krum", "bulyan"};
#define N_RULES (sizeof NAMES / sizeof NAMES[0])

int fl__agg_rule(const char *name) {
  for (size_t i = 0; name != NULL && i < N_RULES; i++)
    if (strcmp(name, NAMES[i]) == 0)
      return (int)i;
  return -1;
}

const char *fl__agg_rule_name(fl_agg_rule rule) {
  return (unsigned)rule < N_RULES ? NAMES[rule] : NULL;
}

fl_agg_kind fl__agg_kind(fl_agg_rule rule) {
  return rule == FL_AGGR_FEDAVG ? FL_AGG_STREAMING : FL_AGG_STORED;
}

size_t fl__agg_min_updates(const fl_agg_params *p) {
  size_t f = p->byzantine;
  switch (p->rule) {
    case FL_AGGR_KRUM:
      return 2 * f + 3;
    case FL_AGGR_MULTI_KRUM:
      return 2 * f + 3 > p->krum_select ? 2 * f + 3 : p->krum_select;
    case FL_AGGR_BULYAN:
      return 4 * f + 3;
    default:
      return 1;
  }
}

int fl__agg_check(const fl_agg_params *p, size_t min_n, size_t max_n, char *why, size_t why_len) {
  if ((unsigned)p->rule >= N_RULES) {
    snprintf(why, why_len, "unknown aggregator");
    return -1;
  }
  if (p->rule == FL_AGGR_TRIMMED_MEAN && !(p->trim_fraction >= 0.0 && p->trim_fraction < 0.5)) {
    snprintf(why, why_len, "trim_fraction must be in [0, 0.5)");
    return -1;
  }
  if (p->rule == FL_AGGR_MULTI_KRUM && p->krum_select < 1) {
    snprintf(why, why_len, "krum_select must be at least 1");
    return -1;
  }
  if (p->rule == FL_AGGR_MULTI_KRUM && p->krum_select > max_n) {
    snprintf(why, why_len, "krum_select (%u) exceeds participants (%zu)", p->krum_select, max_n);
    return -1;
  }
  size_t need = fl__agg_min_updates(p);
  if (min_n < need) {
    snprintf(why, why_len,
             "%s with byzantine=%u needs at least %zu updates per round;"
             " min_participants is %zu",
             NAMES[p->rule], p->byzantine, need, min_n);
    return -1;
  }
  return 0;
}

/* ---- selection ------------------------------------------------------------------------------ */

/* select_T(v, n, k) rearranges v[0..n) so that v[k] is the k-th smallest, everything before
 * it <= v[k] and everything after >= v[k]. Quickselect with a median-of-three pivot and
 * branch-free Lomuto partitions (the comparison feeds an index increment, not a jump: on
 * random data a branchy partition mispredicts half its comparisons). Each step splits off
 * the values below the pivot, then those equal to it, so duplicates cannot stall it.
 * Expected O(n). */
#define DEFINE_SELECT(name, T)                                                         \
  static size_t name##_split(T *v, size_t lo, size_t hi, T pivot, int le) {            \
    size_t i = lo;                                                                     \
    for (size_t j = lo; j < hi; j++) {                                                 \
      T x = v[j];                                                                      \
      v[j] = v[i];                                                                     \
      v[i] = x;                                                                        \
      i += le ? x <= pivot : x < pivot;                                                \
    }                                                                                  \
    return i;                                                                          \
  }                                                                                    \
  static void name(T *v, size_t n, size_t k) {                                         \
    size_t lo = 0, hi = n;                                                             \
    while (hi - lo > 1) {                                                              \
      T x = v[lo], y = v[lo + (hi - lo) / 2], z = v[hi - 1];                           \
      T pivot = x < y ? (y < z ? y : (x < z ? z : x)) : (x < z ? x : (y < z ? z : y)); \
      size_t lt = name##_split(v, lo, hi, pivot, 0);                                   \
      if (k < lt) {                                                                    \
        hi = lt;                                                                       \
        continue;                                                                      \
      }                                                                                \
      size_t le = name##_split(v, lt, hi, pivot, 1);                                   \
      if (k < le)                                                                      \
        return; /* v[lt..le) all equal the pivot */                                    \
      lo = le;                                                                         \
    }                                                                                  \
  }
DEFINE_SELECT(select_f, float)
DEFINE_SELECT(select_d, double)

/* Median of v[0..n), n >= 1; reorders v. */
static double median_f(float *v, size_t n) {
  size_t h = n / 2;
  select_f(v, n, h);
  if (n % 2 == 1)
    return v[h];
  float below = v[0]; /* the largest of v[0..h) is the other middle value */
  for (size_t i = 1; i < h; i++)
    below = v[i] > below ? v[i] : below;
  return 0.5 * ((double)below + (double)v[h]);
}

/* Places both the k1-th and the k2-th smallest (k1 <= k2 < n) as select_f places one: one
 * shared quickselect until the two ranks fall on different sides of a pivot, then one
 * select_f on each side. Cheaper than two select_f calls (the second of which would walk
 * n - k1 values again): for the cuts of a trimmed mean the first partitions are shared and
 * each side then selects among about half the values. */
static void select2_f(float *v, size_t n, size_t k1, size_t k2) {
  size_t lo = 0, hi = n;
  while (hi - lo > 1) {
    float x = v[lo], y = v[lo + (hi - lo) / 2], z = v[hi - 1];
    float pivot = x < y ? (y < z ? y : (x < z ? z : x)) : (x < z ? x : (y < z ? z : y));
    size_t lt = select_f_split(v, lo, hi, pivot, 0);
    if (k2 < lt) {
      hi = lt;
      continue;
    }
    size_t le = select_f_split(v, lt, hi, pivot, 1); /* v[lt..le) equal the pivot */
    if (k1 >= le) {
      lo = le;
      continue;
    }
    if (k1 < lt)
      select_f(v + lo, lt - lo, k1 - lo);
    if (k2 >= le)
      select_f(v + le, hi - le, k2 - le);
    return;
  }
}

/* Mean of v[0..n) without its t smallest and t largest values (n > 2t); reorders v. */
static double trimmed_f(float *v, size_t n, size_t t) {
  if (t > 0)
    select2_f(v, n, t, n - t - 1); /* v[0..t) the t smallest, v[n-t..n) the t largest */
  double s = 0.0;
  for (size_t i = t; i < n - t; i++)
    s += v[i];
  return s / (double)(n - 2 * t);
}

/* ---- sources ------------------------------------------------------------------------------- */

static int read_rows(void *ctx, size_t i, size_t off, size_t len, float *dst) {
  const float *const *rows = ctx;
  memcpy(dst, rows[i] + off, len * sizeof *dst);
  return FL_OK;
}

void fl__agg_source_rows(fl_agg_source *src, const float *const *rows, size_t n, size_t dim) {
  /* The callback context is the row table itself; the cast drops only the const of the
   * pointer array, which read_rows never writes. */
  *src = (fl_agg_source){.n = n, .dim = dim, .read = read_rows, .ctx = (void *)rows};
}

/* ---- coordinate-wise rules ------------------------------------------------------------------ */

/* For every coordinate, gathers the values of the updates listed in rows[0..m) into one
 * column and stores col(column) in out. A block of BLOCK coordinates is read per update, so
 * each update is read once, sequentially. */
typedef double (*col_fn)(float *v, size_t m, const void *arg);

static int per_coordinate(const fl_agg_source *src, const size_t *rows, size_t m, col_fn col,
                          const void *arg, float *out, const fl_allocator *a) {
  float *buf = fl__malloc(a, m * BLOCK * sizeof *buf);
  float *row = fl__malloc(a, BLOCK * sizeof *row);
  int err = FL_E_NOMEM;
  if (buf == NULL || row == NULL)
    goto out;
  err = FL_OK;
  for (size_t c0 = 0; c0 < src->dim && err == FL_OK; c0 += BLOCK) {
    size_t b = src->dim - c0 < BLOCK ? src->dim - c0 : BLOCK;
    for (size_t r = 0; r < m && err == FL_OK; r++) {
      err = src->read(src->ctx, rows[r], c0, b, row);
      for (size_t j = 0; err == FL_OK && j < b; j++)
        buf[j * m + r] = row[j];
    }
    for (size_t j = 0; err == FL_OK && j < b; j++)
      out[c0 + j] = (float)col(buf + j * m, m, arg);
  }
out:
  fl__free(a, row);
  fl__free(a, buf);
  return err;
}

static double col_median(float *v, size_t m, const void *arg) {
  (void)arg;
  return median_f(v, m);
}

static double col_trimmed(float *v, size_t m, const void *arg) {
  return trimmed_f(v, m, *(const size_t *)arg);
}

static int cmp_float(const void *x, const void *y) {
  float a = *(const float *)x, b = *(const float *)y;
  return (a > b) - (a < b);
}

/* Bulyan's second stage: the mean of the beta values closest to the median, a tie in
 * distance going to the smaller value. In sorted order they are a window, grown outwards from
 * the median one value at a time, each step taking the nearer of the two neighbours. (Picking
 * the window whose farther end is nearest the median is not the same: with equal reaches it
 * can leave out a value closer than its far end, e.g. the 0 in -2 -2 -1 -1 0 0 0 1.) */
static double col_closest(float *v, size_t m, const void *arg) {
  size_t beta = *(const size_t *)arg;
  qsort(v, m, sizeof *v, cmp_float);
  double med = m % 2 ? v[m / 2] : 0.5 * ((double)v[m / 2 - 1] + (double)v[m / 2]);
  size_t lo = 0, hi; /* the window is v[lo..hi): v[lo-1] < med <= v[hi] bound it */
  while (lo < m && v[lo] < med)
    lo++;
  hi = lo;
  double sum = 0.0;
  for (size_t k = 0; k < beta; k++) {
    if (lo > 0 && (hi == m || med - v[lo - 1] <= v[hi] - med))
      sum += v[--lo];
    else
      sum += v[hi++];
  }
  return sum / (double)beta;
}

/* ---- distance-based rules ------------------------------------------------------------------- */

/* d[i*n+j] = ||u_i - u_j||^2 for all pairs (n x n, symmetric, zero diagonal). */
static int pairwise(const fl_agg_source *src, double *d, const fl_allocator *a) {
  size_t n = src->n;
  double *x = fl__malloc(a, n * BLOCK * sizeof *x);
  float *row = fl__malloc(a, BLOCK * sizeof *row);
  int err = FL_E_NOMEM;
  if (x == NULL || row == NULL)
    goto out;
  err = FL_OK;
  memset(d, 0, n * n * sizeof *d);
  for (size_t c0 = 0; c0 < src->dim && err == FL_OK; c0 += BLOCK) {
    size_t b = src->dim - c0 < BLOCK ? src->dim - c0 : BLOCK;
    for (size_t i = 0; i < n && err == FL_OK; i++) {
      err = src->read(src->ctx, i, c0, b, row);
      for (size_t j = 0; err == FL_OK && j < b; j++)
        x[i * b + j] = row[j];
    }
    /* Gram matrix, upper triangle: d += X X^T. */
    if (err == FL_OK)
      cblas_dsyrk(CblasRowMajor, CblasUpper, CblasNoTrans, (blasint)n, (blasint)b, 1.0, x,
                  (blasint)b, 1.0, d, (blasint)n);
  }
  if (err != FL_OK)
    goto out;
  for (size_t i = 0; i < n; i++)
    for (size_t j = i + 1; j < n; j++) {
      double v = d[i * n + i] + d[j * n + j] - 2.0 * d[i * n + j];
      d[i * n + j] = v > 0.0 ? v : 0.0;
    }
  for (size_t i = 0; i < n; i++) {
    d[i * n + i] = 0.0;
    for (size_t j = 0; j < i; j++)
      d[i * n + j] = d[j * n + i];
  }
out:
  fl__free(a, row);
  fl__free(a, x);
  return err;
}

/* Krum scores among the updates listed in set[0..m): neighbours k = m - f - 2. tmp holds m
 * doubles. */
static void scores_among(const double *d, size_t n, const size_t *set, size_t m, uint32_t f,
                         double *score, double *tmp) {
  size_t k = m - f - 2;
  for (size_t a = 0; a < m; a++) {
    size_t i = set[a], t = 0;
    for (size_t b = 0; b < m; b++)
      if (b != a)
        tmp[t++] = d[i * n + set[b]];
    select_d(tmp, t, k - 1); /* tmp[0..k) are the k smallest */
    double s = 0.0;
    for (size_t q = 0; q < k; q++)
      s += tmp[q];
    score[a] = s;
  }
}

int fl__agg_krum_scores(const fl_agg_source *src, uint32_t f, double *score,
                        const fl_allocator *a) {
  size_t n = src->n;
  if (n < 2 * (size_t)f + 3)
    return FL_E_INVAL;
  double *d = fl__malloc(a, n * n * sizeof *d);
  double *tmp = fl__malloc(a, n * sizeof *tmp);
  size_t *set = fl__malloc(a, n * sizeof *set);
  int err = FL_E_NOMEM;
  if (d == NULL || tmp == NULL || set == NULL)
    goto out;
  err = pairwise(src, d, a);
  if (err != FL_OK)
    goto out;
  for (size_t i = 0; i < n; i++)
    set[i] = i;
  scores_among(d, n, set, n, f, score, tmp);
out:
  fl__free(a, set);
  fl__free(a, tmp);
  fl__free(a, d);
  return err;
}

/* The m rows chosen by the distance rule: krum (1 row), multi_krum (the m best scores) or
 * bulyan's repeated Krum (n - 2f rows). Writes row indices to rows, ascending score order. */
static int choose_rows(const fl_agg_params *p, const fl_agg_source *src, size_t *rows,
                       size_t *m_out, const fl_allocator *a) {
  size_t n = src->n;
  double *d = fl__malloc(a, n * n * sizeof *d);
  double *score = fl__malloc(a, n * sizeof *score), *tmp = fl__malloc(a, n * sizeof *tmp);
  size_t *left = fl__malloc(a, n * sizeof *left);
  int err = FL_E_NOMEM;
  if (d == NULL || score == NULL || tmp == NULL || left == NULL)
    goto out;
  err = pairwise(src, d, a);
  if (err != FL_OK)
    goto out;
  for (size_t i = 0; i < n; i++)
    left[i] = i;
  size_t m_left = n, want;
  if (p->rule == FL_AGGR_BULYAN)
    want = n - 2 * (size_t)p->byzantine;
  else
    want = p->rule == FL_AGGR_MULTI_KRUM ? p->krum_select : 1;
  bool repeat = p->rule == FL_AGGR_BULYAN;
  if (!repeat)
    scores_among(d, n, left, m_left, p->byzantine, score, tmp);
  for (size_t got = 0; got < want; got++) {
    /* Bulyan scores what remains each time; Krum and Multi-Krum score the full set once.
     * Repeated Krum needs m_left >= f + 3 neighbours-worth: n - 2f - got >= 2f + 3 holds while
     * got < n - 2f because n >= 4f + 3. */
    if (repeat)
      scores_among(d, n, left, m_left, p->byzantine, score, tmp);
    size_t best = 0;
    for (size_t q = 1; q < m_left; q++)
      if (score[q] < score[best] || (score[q] == score[best] && left[q] < left[best]))
        best = q;
    rows[got] = left[best];
    /* Remove best, keeping the remaining order (ties go to the lower index). */
    memmove(left + best, left + best + 1, (m_left - best - 1) * sizeof *left);
    memmove(score + best, score + best + 1, (m_left - best - 1) * sizeof *score);
    m_left--;
  }
  *m_out = want;
out:
  fl__free(a, left);
  fl__free(a, tmp);
  fl__free(a, score);
  fl__free(a, d);
  return err;
}

/* The mean of the listed rows, block by block (sums in double). */
static int mean_rows(const fl_agg_source *src, const size_t *rows, size_t m, float *out,
                     const fl_allocator *a) {
  double *acc = fl__malloc(a, BLOCK * sizeof *acc);
  float *row = fl__malloc(a, BLOCK * sizeof *row);
  int err = FL_E_NOMEM;
  if (acc == NULL || row == NULL)
    goto out;
  err = FL_OK;
  for (size_t c0 = 0; c0 < src->dim && err == FL_OK; c0 += BLOCK) {
    size_t b = src->dim - c0 < BLOCK ? src->dim - c0 : BLOCK;
    memset(acc, 0, b * sizeof *acc);
    for (size_t r = 0; r < m && err == FL_OK; r++) {
      err = src->read(src->ctx, rows[r], c0, b, row);
      for (size_t j = 0; err == FL_OK && j < b; j++)
        acc[j] += row[j];
    }
    for (size_t j = 0; j < b; j++)
      out[c0 + j] = (float)(acc[j] / (double)m);
  }
out:
  fl__free(a, row);
  fl__free(a, acc);
  return err;
}

int fl__agg_run(const fl_agg_params *p, const fl_agg_source *src, float *out,
                const fl_allocator *a) {
  if (p == NULL || src == NULL || src->read == NULL || out == NULL ||
      (unsigned)p->rule >= N_RULES || fl__agg_kind(p->rule) != FL_AGG_STORED || src->n == 0 ||
      src->n < fl__agg_min_updates(p))
    return FL_E_INVAL;
  if (p->rule == FL_AGGR_TRIMMED_MEAN && !(p->trim_fraction >= 0.0 && p->trim_fraction < 0.5))
    return FL_E_INVAL;
  if (p->rule == FL_AGGR_MULTI_KRUM && p->krum_select < 1)
    return FL_E_INVAL;
  size_t n = src->n, m = n;
  size_t *rows = fl__malloc(a, n * sizeof *rows);
  /* Results go to a scratch vector first so that out is untouched on error. */
  float *res = fl__malloc(a, src->dim * sizeof *res);
  int err = FL_E_NOMEM;
  if (rows == NULL || res == NULL)
    goto out;
  for (size_t i = 0; i < n; i++)
    rows[i] = i;
  switch (p->rule) {
    case FL_AGGR_MEDIAN:
      err = per_coordinate(src, rows, n, col_median, NULL, res, a);
      break;
    case FL_AGGR_TRIMMED_MEAN: {
      /* floor(beta n) of the decimal the plan wrote: 0.29 * 100 is 28.999999999999996 in
       * double, so allow a few ulps before flooring (trims 29, not 28). */
      size_t t = (size_t)floor(p->trim_fraction * (double)n * (1.0 + 4 * DBL_EPSILON));
      err = per_coordinate(src, rows, n, col_trimmed, &t, res, a);
      break;
    }
    case FL_AGGR_KRUM:
    case FL_AGGR_MULTI_KRUM:
      err = choose_rows(p, src, rows, &m, a);
      if (err == FL_OK)
        err = mean_rows(src, rows, m, res, a);
      break;
    case FL_AGGR_BULYAN: {
      err = choose_rows(p, src, rows, &m, a);
      size_t beta = m - 2 * (size_t)p->byzantine;
      if (err == FL_OK)
        err = per_coordinate(src, rows, m, col_closest, &beta, res, a);
      break;
    }
    default:
      err = FL_E_INVAL;
  }
  if (err == FL_OK)
    memcpy(out, res, src->dim * sizeof *out);
out:
  fl__free(a, res);
  fl__free(a, rows);
  return err;
}
