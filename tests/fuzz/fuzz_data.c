/*
 * The data readers (common/data.c) on files written from the input, one harness per format:
 * FZ_IDX cuts the input into an images file and a labels file (or none), otherwise the input
 * is a CSV file after a first byte that picks the label column (-1 to 4). The readers take
 * paths, so the files live in a directory of this process's own, rewritten for every input.
 * A data set that loads has n > 0 rows of finite features and labels below n_classes.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "data.h"
#include "fuzz_common.h"

static char g_dir[64], g_a[96], g_b[96];

static void cleanup(void) {
  unlink(g_a);
  unlink(g_b);
  rmdir(g_dir);
}

static void write_file(const char *path, const uint8_t *p, size_t n) {
  FILE *f = fopen(path, "wb");
  if (f == NULL || fwrite(p, 1, n, f) != n || fclose(f) != 0)
    abort();
}

static void check_set(const fl_dataset *d, int labelled) {
  FZ_ASSERT(d->n > 0 && d->x_dim > 0);
  for (size_t i = 0; i < d->n * d->x_dim; i++)
    FZ_ASSERT(isfinite(d->x[i]));
  FZ_ASSERT((d->labels != NULL) == (labelled != 0));
  for (size_t i = 0; labelled && i < d->n; i++)
    FZ_ASSERT(d->labels[i] >= 0 && d->labels[i] < d->n_classes);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (g_dir[0] == '\0') {
    strcpy(g_dir, "/tmp/fl-fuzz-XXXXXX");
    if (mkdtemp(g_dir) == NULL)
      abort();
    snprintf(g_a, sizeof g_a, "%s/a", g_dir);
    snprintf(g_b, sizeof g_b, "%s/b", g_dir);
    atexit(cleanup);
  }
  fz_cur c = {data, size};
  fl_dataset d;
  memset(&d, 0, sizeof d);
  uint8_t sel = fz_u8(&c);
#ifdef FZ_IDX
  size_t n;
  const uint8_t *img = fz_span(&c, c.left, &n);
  write_file(g_a, img, n);
  int labelled = sel & 1;
  if (labelled)
    write_file(g_b, c.p, c.left);
  int err = fl__idx_load(&d, g_a, labelled ? g_b : NULL, NULL);
#else
  int labelled = sel % 6 != 0;
  write_file(g_a, c.p, c.left);
  int err = fl__csv_load(&d, g_a, (int)(sel % 6) - 1, NULL);
#endif
  if (err == FL_OK) {
    check_set(&d, labelled);
    fl__dataset_free(&d);
  }
  return 0;
}
