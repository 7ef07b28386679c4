/*
 * IID, Dirichlet label-skew and shard partitions of a data set over simulated devices.
 * The recipes follow the papers whose results ARCHITECTURE.md section 6 reproduces, so that
 * "Dir(0.5)" or "2 shards per client" mean here what they mean there.
 */
#include "partition.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fl/err.h"

void sim_partition_free(sim_partition *p) {
  if (p == NULL)
    return;
  free(p->offsets);
  free(p->index);
  memset(p, 0, sizeof(*p));
}

/* The pool as an owned array (identity when pool is NULL). */
static uint32_t *pool_copy(size_t n_pool, const uint32_t *pool) {
  uint32_t *v = malloc((n_pool ? n_pool : 1) * sizeof(*v));
  if (v == NULL)
    return NULL;
  for (size_t i = 0; i < n_pool; i++)
    v[i] = pool ? pool[i] : (uint32_t)i;
  return v;
}

int sim_subsample(uint32_t **out, size_t n, size_t k, fl_rng *r) {
  if (k > n || n > UINT32_MAX)
    return FL_E_INVAL;
  uint32_t *all = pool_copy(n, NULL);
  if (all == NULL)
    return FL_E_NOMEM;
  /* A partial Fisher-Yates shuffle: the first k slots are a uniform random k-subset. */
  for (size_t i = 0; i < k; i++) {
    size_t j = i + (size_t)fl__rng_below(r, n - i);
    uint32_t t = all[i];
    all[i] = all[j];
    all[j] = t;
  }
  *out = all;
  return FL_OK;
}

int sim_partition_iid(sim_partition *out, size_t n_pool, const uint32_t *pool, size_t n_parties,
                      fl_rng *r) {
  if (n_parties == 0 || n_pool > UINT32_MAX)
    return FL_E_INVAL;
  uint32_t *idx = pool_copy(n_pool, pool);
  size_t *off = malloc((n_parties + 1) * sizeof(*off));
  if (idx == NULL || off == NULL) {
    free(idx);
    free(off);
    return FL_E_NOMEM;
  }
  fl__rng_shuffle_u32(r, idx, n_pool);
  for (size_t p = 0; p <= n_parties; p++)
    off[p] = p * n_pool / n_parties;
  out->n_parties = n_parties;
  out->offsets = off;
  out->index = idx;
  return FL_OK;
}

/* Pool examples grouped by class: byclass[cls_off[c] .. cls_off[c+1]) have label c. */
static int group_by_class(const int32_t *labels, int32_t n_classes, size_t n_pool,
                          const uint32_t *pool, uint32_t **byclass, size_t **cls_off) {
  size_t *off = calloc((size_t)n_classes + 1, sizeof(*off));
  uint32_t *v = malloc((n_pool ? n_pool : 1) * sizeof(*v));
  if (off == NULL || v == NULL)
    goto fail;
  for (size_t i = 0; i < n_pool; i++) {
    uint32_t e = pool ? pool[i] : (uint32_t)i;
    if (labels[e] < 0 || labels[e] >= n_classes) {
      free(off);
      free(v);
      return FL_E_INVAL;
    }
    off[labels[e] + 1]++;
  }
  for (int32_t c = 0; c < n_classes; c++)
    off[c + 1] += off[c];
  size_t *fill = malloc(((size_t)n_classes + 1) * sizeof(*fill));
  if (fill == NULL)
    goto fail;
  memcpy(fill, off, ((size_t)n_classes + 1) * sizeof(*fill));
  for (size_t i = 0; i < n_pool; i++) {
    uint32_t e = pool ? pool[i] : (uint32_t)i;
    v[fill[labels[e]]++] = e;
  }
  free(fill);
  *byclass = v;
  *cls_off = off;
  return FL_OK;
fail:
  free(off);
  free(v);
  return FL_E_NOMEM;
}

/* One Dirichlet draw of class proportions over the parties, masked as NIID-Bench does, turned
 * into counts that add up to n_class. `held` is the running size of each party. */
static void dirichlet_counts(size_t n_parties, double alpha, size_t n_class, size_t fair,
                             const size_t *held, double *prop, size_t *counts, fl_rng *r) {
  /* When the remainder of n/parties leaves every party at its fair share, nobody is masked. */
  size_t open = 0;
  for (size_t p = 0; p < n_parties; p++)
    open += held[p] < fair;
  if (open == 0)
    fair = SIZE_MAX;
  double sum = 0;
  for (size_t p = 0; p < n_parties; p++) {
    prop[p] = held[p] < fair ? fl__rng_gamma(r, alpha) : 0.0;
    sum += prop[p];
  }
  if (!(sum > 0)) {
    /* Every unmasked gamma draw underflowed (tiny alpha): the class goes to one party, the
     * limit the Dirichlet tends to as alpha -> 0. */
    size_t p;
    do {
      p = (size_t)fl__rng_below(r, n_parties);
    } while (held[p] >= fair);
    memset(prop, 0, n_parties * sizeof(*prop));
    prop[p] = sum = 1.0;
  }
  double cum = 0;
  size_t prev = 0;
  for (size_t p = 0; p < n_parties; p++) {
    cum += prop[p] / sum;
    size_t cut = p + 1 == n_parties ? n_class : (size_t)(cum * (double)n_class);
    if (cut > n_class)
      cut = n_class;
    if (cut < prev)
      cut = prev;
    counts[p] = cut - prev;
    prev = cut;
  }
}

/* Repeats whole draws until the smallest party has min_size examples; counts[c*P + p]. */
static int dirichlet_draw(size_t *counts, const size_t *cls_off, int32_t n_classes, size_t n_pool,
                          size_t n_parties, double alpha, size_t min_size, int max_attempts,
                          fl_rng *r) {
  size_t *held = malloc(n_parties * sizeof(*held));
  double *prop = malloc(n_parties * sizeof(*prop));
  int rc = FL_E_NOMEM;
  if (held == NULL || prop == NULL)
    goto out;
  size_t fair = n_pool / n_parties;
  rc = FL_E_STATE;
  for (int attempt = 0; attempt < max_attempts; attempt++) {
    memset(held, 0, n_parties * sizeof(*held));
    for (int32_t c = 0; c < n_classes; c++) {
      size_t *cc = counts + (size_t)c * n_parties;
      dirichlet_counts(n_parties, alpha, cls_off[c + 1] - cls_off[c], fair, held, prop, cc, r);
      for (size_t p = 0; p < n_parties; p++)
        held[p] += cc[p];
    }
    size_t smallest = SIZE_MAX;
    for (size_t p = 0; p < n_parties; p++)
      smallest = held[p] < smallest ? held[p] : smallest;
    if (smallest >= min_size) {
      rc = FL_OK;
      break;
    }
  }
out:
  free(held);
  free(prop);
  return rc;
}

int sim_partition_dirichlet(sim_partition *out, const int32_t *labels, int32_t n_classes,
                            size_t n_pool, const uint32_t *pool, size_t n_parties, double alpha,
                            size_t min_size, int max_attempts, fl_rng *r) {
  if (n_parties == 0 || n_classes <= 0 || !(alpha > 0) || n_pool > UINT32_MAX ||
      min_size * n_parties > n_pool)
    return FL_E_INVAL;
  uint32_t *byclass = NULL, *idx = NULL;
  size_t *cls_off = NULL, *counts = NULL, *off = NULL, *taken = NULL;
  int rc = group_by_class(labels, n_classes, n_pool, pool, &byclass, &cls_off);
  if (rc != FL_OK)
    return rc;
  rc = FL_E_NOMEM;
  counts = malloc((size_t)n_classes * n_parties * sizeof(*counts));
  off = malloc((n_parties + 1) * sizeof(*off));
  taken = calloc((size_t)n_classes, sizeof(*taken));
  idx = malloc((n_pool ? n_pool : 1) * sizeof(*idx));
  if (counts == NULL || off == NULL || taken == NULL || idx == NULL)
    goto out;
  rc = dirichlet_draw(counts, cls_off, n_classes, n_pool, n_parties, alpha, min_size, max_attempts,
                      r);
  if (rc != FL_OK)
    goto out;
  /* Each class in random order, then party p takes its count of class c off the front. */
  for (int32_t c = 0; c < n_classes; c++)
    fl__rng_shuffle_u32(r, byclass + cls_off[c], cls_off[c + 1] - cls_off[c]);
  size_t k = 0;
  for (size_t p = 0; p < n_parties; p++) {
    off[p] = k;
    for (int32_t c = 0; c < n_classes; c++) {
      size_t cnt = counts[(size_t)c * n_parties + p];
      memcpy(idx + k, byclass + cls_off[c] + taken[c], cnt * sizeof(*idx));
      taken[c] += cnt;
      k += cnt;
    }
    fl__rng_shuffle_u32(r, idx + off[p], k - off[p]);
  }
  off[n_parties] = k;
  out->n_parties = n_parties;
  out->offsets = off;
  out->index = idx;
  off = NULL;
  idx = NULL;
out:
  free(byclass);
  free(cls_off);
  free(counts);
  free(off);
  free(taken);
  free(idx);
  return rc;
}

int sim_partition_shards(sim_partition *out, const int32_t *labels, size_t n_pool,
                         const uint32_t *pool, size_t n_parties, size_t shards_per_party,
                         fl_rng *r) {
  if (n_parties == 0 || shards_per_party == 0 || n_pool > UINT32_MAX)
    return FL_E_INVAL;
  size_t n_shards = n_parties * shards_per_party;
  size_t shard = n_pool / n_shards;
  if (shard == 0 || n_shards > UINT32_MAX)
    return FL_E_INVAL;
  int32_t n_classes = 0;
  for (size_t i = 0; i < n_pool; i++) {
    int32_t y = labels[pool ? pool[i] : i];
    n_classes = y + 1 > n_classes ? y + 1 : n_classes;
  }
  uint32_t *sorted = NULL, *order = NULL, *idx = NULL;
  size_t *cls_off = NULL, *off = NULL;
  int rc = group_by_class(labels, n_classes, n_pool, pool, &sorted, &cls_off);
  if (rc != FL_OK)
    return rc;
  rc = FL_E_NOMEM;
  order = malloc(n_shards * sizeof(*order));
  idx = malloc(n_shards * shard * sizeof(*idx));
  off = malloc((n_parties + 1) * sizeof(*off));
  if (order == NULL || idx == NULL || off == NULL)
    goto out;
  for (size_t s = 0; s < n_shards; s++)
    order[s] = (uint32_t)s;
  fl__rng_shuffle_u32(r, order, n_shards);
  for (size_t p = 0; p <= n_parties; p++)
    off[p] = p * shards_per_party * shard;
  for (size_t s = 0; s < n_shards; s++)
    memcpy(idx + s * shard, sorted + (size_t)order[s] * shard, shard * sizeof(*idx));
  out->n_parties = n_parties;
  out->offsets = off;
  out->index = idx;
  off = NULL;
  idx = NULL;
  rc = FL_OK;
out:
  free(sorted);
  free(cls_off);
  free(order);
  free(idx);
  free(off);
  return rc;
}

/* Which classes each party holds: party p's first class is p mod n_classes, the others drawn
 * uniformly, a class already held drawn again (NIID-Bench's quantity-based label imbalance).
 * held[p * k ..] lists p's classes; holders[c] counts the parties holding class c. */
static void label_sets(size_t n_parties, int32_t n_classes, size_t k, uint32_t *held,
                       size_t *holders, fl_rng *r) {
  for (size_t p = 0; p < n_parties; p++) {
    uint32_t *h = held + p * k;
    h[0] = (uint32_t)(p % (size_t)n_classes);
    for (size_t j = 1; j < k;) {
      uint32_t c = (uint32_t)fl__rng_below(r, (uint64_t)n_classes);
      size_t i = 0;
      while (i < j && h[i] != c)
        i++;
      if (i == j)
        h[j++] = c;
    }
    for (size_t j = 0; j < k; j++)
      holders[h[j]]++;
  }
}

int sim_partition_labels(sim_partition *out, const int32_t *labels, int32_t n_classes,
                         size_t n_pool, const uint32_t *pool, size_t n_parties, size_t k,
                         fl_rng *r) {
  if (n_parties == 0 || n_classes < 1 || k == 0 || k > (size_t)n_classes || n_pool > UINT32_MAX)
    return FL_E_INVAL;
  uint32_t *byclass = NULL, *held = NULL, *idx = NULL;
  size_t *cls_off = NULL, *holders = NULL, *next = NULL, *off = NULL;
  int rc = group_by_class(labels, n_classes, n_pool, pool, &byclass, &cls_off);
  if (rc != FL_OK)
    return rc;
  rc = FL_E_NOMEM;
  held = malloc(n_parties * k * sizeof(*held));
  holders = calloc((size_t)n_classes, sizeof(*holders));
  next = calloc((size_t)n_classes, sizeof(*next));
  off = malloc((n_parties + 1) * sizeof(*off));
  idx = malloc((n_pool ? n_pool : 1) * sizeof(*idx));
  if (held == NULL || holders == NULL || next == NULL || off == NULL || idx == NULL)
    goto out;
  label_sets(n_parties, n_classes, k, held, holders, r);
  /* Exactly k classes each: every holder of a class must get at least one of its examples. */
  rc = FL_E_STATE;
  for (int32_t c = 0; c < n_classes; c++)
    if (cls_off[c + 1] - cls_off[c] < holders[c])
      goto out;
  for (int32_t c = 0; c < n_classes; c++)
    fl__rng_shuffle_u32(r, byclass + cls_off[c], cls_off[c + 1] - cls_off[c]);
  /* Class c's examples are cut into holders[c] runs whose sizes differ by at most one (the
   * longer ones first, as numpy's array_split does), dealt to its holders in party order. */
  size_t n = 0;
  for (size_t p = 0; p < n_parties; p++) {
    off[p] = n;
    for (size_t c = 0; c < (size_t)n_classes; c++) {
      const uint32_t *h = held + p * k;
      size_t j = 0;
      while (j < k && h[j] != c)
        j++;
      if (j == k)
        continue;
      size_t total = cls_off[c + 1] - cls_off[c], q = total / holders[c],
             extra = total % holders[c];
      size_t piece = next[c], len = q + (piece < extra ? 1 : 0);
      size_t start = piece * q + (piece < extra ? piece : extra);
      memcpy(idx + n, byclass + cls_off[c] + start, len * sizeof(*idx));
      n += len;
      next[c]++;
    }
  }
  off[n_parties] = n;
  out->n_parties = n_parties;
  out->offsets = off;
  out->index = idx;
  off = NULL;
  idx = NULL;
  rc = FL_OK;
out:
  free(byclass);
  free(cls_off);
  free(held);
  free(holders);
  free(next);
  free(off);
  free(idx);
  return rc;
}

int sim_partition_scheme_parse(sim_partition_scheme *out, const char *s) {
  sim_partition_scheme sc = {0};
  char *end = NULL;
  if (strcmp(s, "iid") == 0) {
    sc.kind = SIM_PART_IID;
  } else if (strncmp(s, "dirichlet:", 10) == 0) {
    sc.kind = SIM_PART_DIRICHLET;
    errno = 0;
    sc.alpha = strtod(s + 10, &end);
    if (errno != 0 || end == s + 10 || *end != '\0' || !(sc.alpha > 0) || !isfinite(sc.alpha))
      return FL_E_INVAL;
  } else if (strncmp(s, "shards:", 7) == 0) {
    sc.kind = SIM_PART_SHARDS;
    errno = 0;
    long k = strtol(s + 7, &end, 10);
    if (errno != 0 || end == s + 7 || *end != '\0' || k <= 0 || k > 1000)
      return FL_E_INVAL;
    sc.shards = (size_t)k;
  } else if (strncmp(s, "labels:", 7) == 0) {
    sc.kind = SIM_PART_LABELS;
    errno = 0;
    long k = strtol(s + 7, &end, 10);
    if (errno != 0 || end == s + 7 || *end != '\0' || k <= 0 || k > 1000)
      return FL_E_INVAL;
    sc.labels = (size_t)k;
  } else {
    return FL_E_INVAL;
  }
  *out = sc;
  return FL_OK;
}

int sim_partition_apply(sim_partition *out, const sim_partition_scheme *s, const int32_t *labels,
                        int32_t n_classes, size_t n_pool, const uint32_t *pool, size_t n_parties,
                        size_t min_size, fl_rng *r) {
  switch (s->kind) {
    case SIM_PART_IID:
      return sim_partition_iid(out, n_pool, pool, n_parties, r);
    case SIM_PART_DIRICHLET:
      return sim_partition_dirichlet(out, labels, n_classes, n_pool, pool, n_parties, s->alpha,
                                     min_size, 100, r);
    case SIM_PART_SHARDS:
      return sim_partition_shards(out, labels, n_pool, pool, n_parties, s->shards, r);
    case SIM_PART_LABELS:
      return sim_partition_labels(out, labels, n_classes, n_pool, pool, n_parties, s->labels, r);
  }
  return FL_E_INVAL;
}
