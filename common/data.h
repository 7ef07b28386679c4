/*
 * Data sets in memory and the readers for IDX (MNIST / Fashion-MNIST, optionally gzip'd) and
 * CSV with a label column.
 */
#ifndef FL__DATA_H
#define FL__DATA_H

#include <stddef.h>
#include <stdint.h>

#include "fl/alloc.h"

typedef struct fl_dataset {
  size_t n;          /* examples */
  size_t x_dim;      /* floats per example */
  float *x;          /* n * x_dim */
  int32_t *labels;   /* n, or NULL */
  int32_t n_classes; /* 1 + max label, 0 without labels */
  const fl_allocator *alloc;
} fl_dataset;

void fl__dataset_free(fl_dataset *d); /* frees the arrays, leaves d zeroed */

/* Images as floats scaled to [0,1], labels as ints. Both files may be .gz or raw. */
int fl__idx_load(fl_dataset *out, const char *images_path, const char *labels_path,
                 const fl_allocator *a);

/* CSV with a header line or not (detected); `label_col` is the 0-based column holding an
 * integer label, or -1 for none (all columns are features). */
int fl__csv_load(fl_dataset *out, const char *path, int label_col, const fl_allocator *a);

#endif
