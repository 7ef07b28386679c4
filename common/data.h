/*
 * Data sets in memory and the readers for IDX (MNIST / Fashion-MNIST, optionally gzip'd) and
 * CSV with a label column.
 */
#ifndef FL__DATA_H
#define FL__DATA_H

#include <stddef.h>
#include <stdint.h>

#include "fl/alloc.h"

/* Bounds checked before allocating (FL_E_TOOBIG beyond them). */
#define FL_DATA_MAX_EXAMPLES ((uint64_t)1 << 26)
#define FL_DATA_MAX_FEATURES ((uint64_t)1 << 24)
#define FL_DATA_MAX_VALUES ((uint64_t)1 << 28) /* n * x_dim: 1 GB of floats */
#define FL_DATA_MAX_FILE ((uint64_t)1 << 30)   /* CSV text, after decompression */
#define FL_DATA_MAX_LABEL 65535

typedef struct fl_dataset {
  size_t n;          /* examples */
  size_t x_dim;      /* floats per example */
  float *x;          /* n * x_dim */
  int32_t *labels;   /* n, or NULL */
  int32_t n_classes; /* 1 + max label, 0 without labels */
  const fl_allocator *alloc;
} fl_dataset;

void fl__dataset_free(fl_dataset *d); /* frees the arrays, leaves d zeroed */

/* Images as floats scaled to [0,1], labels as ints. Both files may be .gz or raw; images must
 * be unsigned bytes with at least 2 dimensions (n, then the example's shape, flattened into
 * x_dim), labels unsigned bytes with 1 dimension of the same n. `labels_path` may be NULL (no
 * labels). Errors: FL_E_NOTFOUND / FL_E_IO opening or reading, FL_E_PARSE for a bad magic,
 * zero dimensions, a truncated file or trailing bytes, FL_E_UNSUPPORTED for other element
 * types, FL_E_SHAPE when the counts differ, FL_E_TOOBIG, FL_E_NOMEM. On error *out is
 * untouched and nothing is leaked. */
int fl__idx_load(fl_dataset *out, const char *images_path, const char *labels_path,
                 const fl_allocator *a);

/* CSV with a header line or not (detected); `label_col` is the 0-based column holding an
 * integer label, or -1 for none (all columns are features). The file may be gzip'd.
 * The header is the first non-blank line when any of its fields is not a number. Fields are
 * separated by commas, may be surrounded by blanks and double quotes; features must be finite
 * numbers (C locale, as strtof reads them), labels integers in [0, FL_DATA_MAX_LABEL]. Blank
 * lines are skipped; CRLF line ends are accepted. FL_E_PARSE for a row with another number of
 * fields than the first, a bad number, or no data rows; FL_E_INVAL for label_col < -1 or
 * beyond the columns, or a file with only the label column. On error *out is untouched and
 * nothing is leaked. */
int fl__csv_load(fl_dataset *out, const char *path, int label_col, const fl_allocator *a);

#endif
