/*
 * Data readers on small files written by the tests (raw and gzip'd), malformed variants of
 * them, allocation failures, and the real Fashion-MNIST test set when it is installed.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "data.h"
#include "fl/err.h"
#include "test_alloc.h"

#define FMNIST_DIR "/usr/share/datasets/fashion-mnist"

static char dir[64];

static void make_dir(void) {
  /* mkdtemp replaces the six trailing 'X' of its template. */
  size_t n = (size_t)snprintf(dir, sizeof dir, "/tmp/fl_test_data_");
  memset(dir + n, 'X', 6);
  dir[n + 6] = '\0';
  cr_assert_not_null(mkdtemp(dir));
}

static void remove_dir(void) {
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  cr_assert_eq(system(cmd), 0);
}

TestSuite(idx, .init = make_dir, .fini = remove_dir);
TestSuite(csv, .init = make_dir, .fini = remove_dir);

/* Writes bytes to dir/name, gzip'd when `gz`; returns the path (static storage per slot). */
static const char *put(int slot, const char *name, const void *bytes, size_t n, bool gz) {
  static char paths[4][128];
  snprintf(paths[slot], sizeof paths[slot], "%s/%s", dir, name);
  if (gz) {
    gzFile f = gzopen(paths[slot], "wb");
    cr_assert_not_null(f);
    cr_assert_eq(gzwrite(f, bytes, (unsigned)n), (int)n);
    cr_assert_eq(gzclose(f), Z_OK);
  } else {
    FILE *f = fopen(paths[slot], "wb");
    cr_assert_not_null(f);
    cr_assert_eq(fwrite(bytes, 1, n, f), n);
    cr_assert_eq(fclose(f), 0);
  }
  return paths[slot];
}

/* An IDX header followed by `payload` bytes of value i*7 mod 256. */
static size_t idx_bytes(unsigned char *buf, unsigned char type, const uint32_t *dims, int ndim,
                        size_t payload) {
  size_t n = 0;
  buf[n++] = 0;
  buf[n++] = 0;
  buf[n++] = type;
  buf[n++] = (unsigned char)ndim;
  for (int i = 0; i < ndim; i++) {
    buf[n++] = (unsigned char)(dims[i] >> 24);
    buf[n++] = (unsigned char)(dims[i] >> 16);
    buf[n++] = (unsigned char)(dims[i] >> 8);
    buf[n++] = (unsigned char)dims[i];
  }
  for (size_t i = 0; i < payload; i++)
    buf[n++] = (unsigned char)(i * 7);
  return n;
}

static void check_small(const fl_dataset *d) {
  cr_assert_eq(d->n, 3);
  cr_assert_eq(d->x_dim, 6);
  for (size_t i = 0; i < 18; i++)
    cr_assert_float_eq(d->x[i], (float)((i * 7) & 255) / 255.0f, 1e-7f);
  for (size_t i = 0; i < 3; i++)
    cr_assert_eq(d->labels[i], (int32_t)((i * 7) & 255));
  cr_assert_eq(d->n_classes, 15);
}

Test(idx, raw_and_gzip_files) {
  unsigned char img[64], lab[32];
  const uint32_t idims[3] = {3, 2, 3}, ldims[1] = {3};
  size_t ni = idx_bytes(img, 0x08, idims, 3, 18), nl = idx_bytes(lab, 0x08, ldims, 1, 3);
  for (int gz = 0; gz < 2; gz++) {
    const char *ip = put(0, "img", img, ni, gz), *lp = put(1, "lab", lab, nl, gz);
    fl_dataset d;
    cr_assert_eq(fl__idx_load(&d, ip, lp, NULL), FL_OK, "gz %d", gz);
    check_small(&d);
    fl__dataset_free(&d);
    cr_assert_null(d.x);
    cr_assert_eq(d.n, 0);
  }
  /* Without labels. */
  fl_dataset d;
  cr_assert_eq(fl__idx_load(&d, put(0, "img", img, ni, false), NULL, NULL), FL_OK);
  cr_assert_null(d.labels);
  cr_assert_eq(d.n_classes, 0);
  fl__dataset_free(&d);
  fl__dataset_free(NULL);
}

Test(idx, malformed_files_are_refused) {
  unsigned char img[64], lab[32], bad[64];
  const uint32_t idims[3] = {3, 2, 3}, ldims[1] = {3};
  size_t ni = idx_bytes(img, 0x08, idims, 3, 18), nl = idx_bytes(lab, 0x08, ldims, 1, 3);
  const char *good_img = put(2, "good_img", img, ni, false);
  const char *good_lab = put(3, "good_lab", lab, nl, false);
  fl_dataset d = {.n = 12345};
  const fl_dataset untouched = d;
#define REFUSE(code, ip, lp)                                                 \
  do {                                                                       \
    cr_assert_eq(fl__idx_load(&d, ip, lp, NULL), code, "line %d", __LINE__); \
    cr_assert_eq(memcmp(&d, &untouched, sizeof d), 0);                       \
  } while (0)
  memcpy(bad, img, ni);
  bad[1] = 1; /* magic */
  REFUSE(FL_E_PARSE, put(0, "i", bad, ni, false), good_lab);
  memcpy(bad, img, ni);
  bad[2] = 0x0D; /* float elements */
  REFUSE(FL_E_UNSUPPORTED, put(0, "i", bad, ni, false), good_lab);
  memcpy(bad, img, ni);
  bad[3] = 0; /* no dimensions */
  REFUSE(FL_E_PARSE, put(0, "i", bad, ni, false), good_lab);
  REFUSE(FL_E_PARSE, put(0, "i", img, ni - 1, false), good_lab); /* truncated data */
  REFUSE(FL_E_PARSE, put(0, "i", img, 9, true), good_lab);       /* truncated header */
  memcpy(bad, img, ni);
  bad[ni] = 0;
  REFUSE(FL_E_PARSE, put(0, "i", bad, ni + 1, false), good_lab); /* trailing byte */
  REFUSE(FL_E_PARSE, put(0, "i", lab, nl, false), NULL);         /* images with 1 dim */
  const uint32_t zero[3] = {3, 0, 3}, huge[3] = {1u << 27, 1, 1}, wide[3] = {1, 1u << 13, 1u << 12};
  REFUSE(FL_E_PARSE, put(0, "i", bad, idx_bytes(bad, 8, zero, 3, 0), false), NULL);
  REFUSE(FL_E_TOOBIG, put(0, "i", bad, idx_bytes(bad, 8, huge, 3, 0), false), NULL);
  REFUSE(FL_E_TOOBIG, put(0, "i", bad, idx_bytes(bad, 8, wide, 3, 0), false), NULL);
  const uint32_t four[1] = {4}, two[2] = {3, 1};
  REFUSE(FL_E_SHAPE, good_img, put(1, "l", bad, idx_bytes(bad, 8, four, 1, 4), false));
  REFUSE(FL_E_SHAPE, good_img, put(1, "l", bad, idx_bytes(bad, 8, two, 2, 3), false));
  REFUSE(FL_E_PARSE, good_img, put(1, "l", lab, nl - 1, false));
  char missing[160];
  snprintf(missing, sizeof missing, "%s/missing", dir);
  REFUSE(FL_E_NOTFOUND, missing, good_lab);
  REFUSE(FL_E_NOTFOUND, good_img, missing);
  REFUSE(FL_E_INVAL, NULL, good_lab);
#undef REFUSE
}

/* ---- allocation failures ---------------------------------------------------------------- */

/* Fails each allocation of a load in turn; returns how many allocations a full load takes. */
static long fail_each(int (*load)(fl_dataset *, const fl_allocator *, const void *),
                      const void *arg) {
  for (long k = 0;; k++) {
    test_alloc c = {.fail_at = k};
    fl_allocator a = test_alloc_hooks(&c);
    fl_dataset d = {0};
    int rc = load(&d, &a, arg);
    if (rc == FL_OK) {
      fl__dataset_free(&d);
      cr_assert_eq(c.live, 0);
      return k;
    }
    cr_assert_eq(rc, FL_E_NOMEM, "allocation %ld: %s", k, fl_strerror(rc));
    cr_assert_eq(c.live, 0, "allocation %ld leaked", k);
    cr_assert_null(d.x);
  }
}

/* Largest single request seen by a counting allocator: with realloc growth this is the
 * largest buffer the loader held. */
static size_t biggest_request;
static void *count_malloc(void *ctx, size_t n) {
  (void)ctx;
  biggest_request = n > biggest_request ? n : biggest_request;
  return malloc(n);
}
static void *count_realloc(void *ctx, void *p, size_t n) {
  (void)ctx;
  biggest_request = n > biggest_request ? n : biggest_request;
  return realloc(p, n);
}
static void count_free(void *ctx, void *p) {
  (void)ctx;
  free(p);
}

/* A header that promises 60000 x 28 x 28 images (188 MB of floats) followed by 100 bytes:
 * refused as truncated, and memory follows the bytes read, not the claim (raw and gzip).
 * (A label file's count must equal the images' before anything is read.) */
Test(idx, header_claims_do_not_allocate) {
  static unsigned char img[256];
  const uint32_t idims[3] = {60000, 28, 28};
  size_t ni = idx_bytes(img, 0x08, idims, 3, 100);
  const fl_allocator counting = {count_malloc, count_realloc, count_free, NULL};
  for (int gz = 0; gz < 2; gz++) {
    fl_dataset d;
    biggest_request = 0;
    cr_assert_eq(fl__idx_load(&d, put(0, "i", img, ni, gz), NULL, &counting), FL_E_PARSE);
    cr_assert_leq(biggest_request, 64 * 1024, "gz %d: %zu bytes for 100 bytes of data", gz,
                  biggest_request);
  }
}

static int load_idx(fl_dataset *d, const fl_allocator *a, const void *arg) {
  const char *const *p = arg;
  return fl__idx_load(d, p[0], p[1], a);
}

static int load_csv(fl_dataset *d, const fl_allocator *a, const void *arg) {
  return fl__csv_load(d, arg, 0, a);
}

Test(idx, allocation_failures_leak_nothing) {
  unsigned char img[64], lab[32];
  const uint32_t idims[3] = {3, 2, 3}, ldims[1] = {3};
  const char *paths[2] = {put(0, "img", img, idx_bytes(img, 8, idims, 3, 18), true),
                          put(1, "lab", lab, idx_bytes(lab, 8, ldims, 1, 3), true)};
  cr_assert_geq(fail_each(load_idx, paths), 2);
}

/* ---- CSV -------------------------------------------------------------------------------- */

static int csv(fl_dataset *d, const char *text, int label_col, bool gz) {
  return fl__csv_load(d, put(0, "data.csv", text, strlen(text), gz), label_col, NULL);
}

Test(csv, header_detected_or_not) {
  const char *with = "label,a,b\n1,0.5,-2\n0,3,4e-1\n";
  const char *without = "1,0.5,-2\n0,3,4e-1\n";
  for (int gz = 0; gz < 2; gz++) {
    for (int h = 0; h < 2; h++) {
      fl_dataset d;
      cr_assert_eq(csv(&d, h ? with : without, 0, gz), FL_OK, "gz %d header %d", gz, h);
      cr_assert_eq(d.n, 2);
      cr_assert_eq(d.x_dim, 2);
      const float want[4] = {0.5f, -2.0f, 3.0f, 0.4f};
      for (int i = 0; i < 4; i++)
        cr_assert_float_eq(d.x[i], want[i], 1e-7f);
      cr_assert_eq(d.labels[0], 1);
      cr_assert_eq(d.labels[1], 0);
      cr_assert_eq(d.n_classes, 2);
      fl__dataset_free(&d);
    }
  }
}

Test(csv, label_column_anywhere_or_none) {
  const char *text = "1,2,3\n4,5,6\n";
  for (int col = -1; col < 3; col++) {
    fl_dataset d;
    cr_assert_eq(csv(&d, text, col, false), FL_OK);
    cr_assert_eq(d.n, 2);
    cr_assert_eq(d.x_dim, col < 0 ? 3u : 2u);
    size_t j = 0;
    for (int r = 0; r < 2; r++) {
      for (int c = 0; c < 3; c++) {
        if (c == col)
          cr_assert_eq(d.labels[r], 1 + 3 * r + c);
        else
          cr_assert_eq(d.x[j++], (float)(1 + 3 * r + c));
      }
    }
    if (col < 0) {
      cr_assert_null(d.labels);
      cr_assert_eq(d.n_classes, 0);
    } else {
      cr_assert_eq(d.n_classes, 5 + col);
    }
    fl__dataset_free(&d);
  }
}

Test(csv, crlf_blank_lines_quotes_and_spaces) {
  const char *text = "\r\n\"y\", \"x1\" ,x2\r\n\r\n 2 ,\"1.5\", -3 \r\n\n\t\n7,0,1e3";
  fl_dataset d;
  cr_assert_eq(csv(&d, text, 0, false), FL_OK);
  cr_assert_eq(d.n, 2);
  cr_assert_eq(d.x_dim, 2);
  cr_assert_eq(d.x[0], 1.5f);
  cr_assert_eq(d.x[1], -3.0f);
  cr_assert_eq(d.x[2], 0.0f);
  cr_assert_eq(d.x[3], 1000.0f);
  cr_assert_eq(d.labels[0], 2);
  cr_assert_eq(d.labels[1], 7);
  cr_assert_eq(d.n_classes, 8);
  fl__dataset_free(&d);
}

Test(csv, bad_files_are_refused) {
  const struct {
    const char *text;
    int label_col, want;
  } cases[] = {
      {"", 0, FL_E_PARSE},               /* empty */
      {"\n \n", 0, FL_E_PARSE},          /* blank only */
      {"a,b\n", 0, FL_E_PARSE},          /* header only */
      {"1,2\n3\n", 0, FL_E_PARSE},       /* short row */
      {"1,2\n3,4,5\n", 0, FL_E_PARSE},   /* long row */
      {"a,b\n1,2,\n", 0, FL_E_PARSE},    /* trailing comma: one more (empty) field */
      {"1,2\n3,x\n", 0, FL_E_PARSE},     /* bad number */
      {"1,2\n3,\n", 0, FL_E_PARSE},      /* empty field */
      {"1,2\n3,nan\n", 0, FL_E_PARSE},   /* not finite */
      {"1,2\n3,1e99\n", 0, FL_E_PARSE},  /* overflows float */
      {"1,2\n-1,4\n", 0, FL_E_PARSE},    /* negative label */
      {"1,2\n1.5,4\n", 0, FL_E_PARSE},   /* fractional label */
      {"1,2\n70000,4\n", 0, FL_E_PARSE}, /* label too large */
      {"1,2\n3,4\n", 2, FL_E_INVAL},     /* label column beyond the row */
      {"1\n2\n", 0, FL_E_INVAL},         /* nothing but labels */
      {"1,2\n3,4\n", -2, FL_E_INVAL},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    fl_dataset d = {.n = 99};
    cr_assert_eq(csv(&d, cases[i].text, cases[i].label_col, false), cases[i].want, "case %zu: %s",
                 i, cases[i].text);
    cr_assert_eq(d.n, 99);
    cr_assert_null(d.x);
  }
  fl_dataset d;
  char missing[160];
  snprintf(missing, sizeof missing, "%s/missing.csv", dir);
  cr_assert_eq(fl__csv_load(&d, missing, 0, NULL), FL_E_NOTFOUND);
}

/* Every allocation fails in turn, also one in the middle of parsing a bad row. */
Test(csv, allocation_failures_leak_nothing) {
  char big[8192];
  size_t n = 0;
  n += (size_t)snprintf(big + n, sizeof big - n, "label,f0,f1,f2\n");
  for (int r = 0; r < 300; r++)
    n += (size_t)snprintf(big + n, sizeof big - n, "%d,%d.5,%d,-%d\n", r % 4, r, r * 2, r);
  const char *p = put(0, "big.csv", big, n, true);
  cr_assert_geq(fail_each(load_csv, p), 3);
  fl_dataset d;
  cr_assert_eq(fl__csv_load(&d, p, 0, NULL), FL_OK);
  cr_assert_eq(d.n, 300);
  cr_assert_eq(d.x[299 * 3 + 1], 598.0f);
  cr_assert_eq(d.n_classes, 4);
  fl__dataset_free(&d);
}

/* ---- the real data set ------------------------------------------------------------------- */

Test(fmnist, test_set_loads, .timeout = 120) {
  const char *ip = FMNIST_DIR "/t10k-images-idx3-ubyte.gz";
  const char *lp = FMNIST_DIR "/t10k-labels-idx1-ubyte.gz";
  if (access(ip, R_OK) != 0 || access(lp, R_OK) != 0)
    cr_skip_test("Fashion-MNIST is not installed in " FMNIST_DIR);
  fl_dataset d;
  cr_assert_eq(fl__idx_load(&d, ip, lp, NULL), FL_OK);
  cr_assert_eq(d.n, 10000);
  cr_assert_eq(d.x_dim, 784);
  cr_assert_eq(d.n_classes, 10);
  size_t per_class[10] = {0};
  for (size_t i = 0; i < d.n; i++)
    per_class[d.labels[i]]++;
  for (int c = 0; c < 10; c++)
    cr_assert_eq(per_class[c], 1000, "class %d", c); /* the test set is balanced */
  double sum = 0.0;
  float lo = 1.0f, hi = 0.0f;
  for (size_t i = 0; i < d.n * d.x_dim; i++) {
    sum += d.x[i];
    lo = d.x[i] < lo ? d.x[i] : lo;
    hi = d.x[i] > hi ? d.x[i] : hi;
  }
  cr_assert_eq(lo, 0.0f);
  cr_assert_eq(hi, 1.0f);
  double mean = sum / (double)(d.n * d.x_dim); /* about 0.286 for Fashion-MNIST */
  cr_assert(mean > 0.27 && mean < 0.30, "mean pixel %g", mean);
  fl__dataset_free(&d);
}
