/*
 * Data set readers. Both go through zlib's gz* functions, which read gzip'd and plain files
 * alike, so a caller never has to say which it has. Sizes are checked against fixed bounds
 * before anything is allocated, and every error path frees what it allocated: a malformed file
 * costs nothing but the error code.
 */
#include "data.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "fl/err.h"
#include "mem.h"

#define FL_IDX_TYPE_UBYTE 0x08
#define FL_IDX_MAX_DIMS 4
#define IO_PIECE 8192

void fl__dataset_free(fl_dataset *d) {
  if (!d)
    return;
  fl__free(d->alloc, d->x);
  fl__free(d->alloc, d->labels);
  memset(d, 0, sizeof *d);
}

static int open_gz(const char *path, gzFile *out) {
  if (!path)
    return FL_E_INVAL;
  errno = 0;
  gzFile f = gzopen(path, "rb");
  if (!f)
    return errno == ENOENT ? FL_E_NOTFOUND : FL_E_IO;
  gzbuffer(f, 1u << 17); /* larger reads: inflating 26 MB goes faster */
  *out = f;
  return FL_OK;
}

/* Reads exactly n bytes: FL_E_PARSE when the file ends early (truncated), FL_E_IO when zlib
 * or the system reports an error. */
static int read_exact(gzFile f, void *buf, size_t n) {
  unsigned char *p = buf;
  while (n > 0) {
    unsigned piece = n > (1u << 30) ? (1u << 30) : (unsigned)n;
    int got = gzread(f, p, piece);
    if (got < 0)
      return FL_E_IO;
    if (got == 0)
      return gzeof(f) ? FL_E_PARSE : FL_E_IO;
    p += got;
    n -= (size_t)got;
  }
  return FL_OK;
}

/* A well-formed file ends right after its data; anything more means it is not what the
 * header says. */
static int expect_eof(gzFile f) {
  unsigned char c;
  int got = gzread(f, &c, 1);
  if (got < 0)
    return FL_E_IO;
  return got == 0 ? FL_OK : FL_E_PARSE;
}

/* ---- IDX ------------------------------------------------------------------------------- */

/* Header: two zero bytes, the element type, the number of dimensions, then each dimension as
 * a big-endian uint32. Only unsigned bytes are read: that is what (Fashion-)MNIST uses. */
static int idx_header(gzFile f, uint32_t *dims, uint32_t *ndim) {
  unsigned char magic[4];
  int rc = read_exact(f, magic, 4);
  if (rc != FL_OK)
    return rc;
  if (magic[0] != 0 || magic[1] != 0 || magic[3] == 0 || magic[3] > FL_IDX_MAX_DIMS)
    return FL_E_PARSE;
  if (magic[2] != FL_IDX_TYPE_UBYTE)
    return FL_E_UNSUPPORTED;
  *ndim = magic[3];
  for (uint32_t i = 0; i < *ndim; i++) {
    unsigned char b[4];
    rc = read_exact(f, b, 4);
    if (rc != FL_OK)
      return rc;
    dims[i] = (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
    if (dims[i] == 0)
      return FL_E_PARSE;
  }
  return FL_OK;
}

/* Makes room for `need` elements of `size` bytes in *buf (capacity *cap), doubling up to
 * `total`. The header's dimensions are only a claim: memory follows the data actually read,
 * so a 16-byte header that promises a gigabyte costs nothing until the bytes arrive (gzip
 * files give no size to check the claim against up front). */
static int grow(const fl_allocator *a, void **buf, size_t *cap, size_t need, size_t total,
                size_t size) {
  if (need <= *cap)
    return FL_OK;
  size_t n = *cap < IO_PIECE ? IO_PIECE : *cap;
  while (n < need)
    n *= 2;
  if (n > total)
    n = total;
  void *p = fl__realloc(a, *buf, n * size);
  if (p == NULL)
    return FL_E_NOMEM;
  *buf = p;
  *cap = n;
  return FL_OK;
}

/* Opens an IDX file and reads its header; the file is closed again on an error. */
static int idx_open(const char *path, gzFile *f, uint32_t *dims, uint32_t *ndim) {
  int rc = open_gz(path, f);
  if (rc != FL_OK)
    return rc;
  rc = idx_header(*f, dims, ndim);
  if (rc != FL_OK)
    gzclose(*f);
  return rc;
}

static int idx_images(const char *path, fl_dataset *d, const fl_allocator *a) {
  gzFile f;
  uint32_t dims[FL_IDX_MAX_DIMS], ndim;
  int rc = idx_open(path, &f, dims, &ndim);
  if (rc != FL_OK)
    return rc;
  rc = FL_E_PARSE;
  if (ndim < 2)
    goto out_close;
  rc = FL_E_TOOBIG;
  uint64_t x_dim = 1;
  for (uint32_t i = 1; i < ndim; i++) {
    x_dim *= dims[i]; /* both factors <= 2^32 before the check: no overflow */
    if (x_dim > FL_DATA_MAX_FEATURES)
      goto out_close;
  }
  if (dims[0] > FL_DATA_MAX_EXAMPLES || dims[0] * x_dim > FL_DATA_MAX_VALUES)
    goto out_close;
  size_t count = (size_t)(dims[0] * x_dim), cap = 0;
  unsigned char buf[IO_PIECE];
  for (size_t off = 0; off < count;) {
    size_t k = count - off < IO_PIECE ? count - off : IO_PIECE;
    rc = read_exact(f, buf, k);
    if (rc != FL_OK)
      goto out_close;
    rc = grow(a, (void **)&d->x, &cap, off + k, count, sizeof(float));
    if (rc != FL_OK)
      goto out_close;
    for (size_t i = 0; i < k; i++)
      d->x[off + i] = (float)buf[i] / 255.0f;
    off += k;
  }
  rc = expect_eof(f);
  d->n = dims[0];
  d->x_dim = (size_t)x_dim;
out_close:
  gzclose(f);
  return rc;
}

static int idx_labels(const char *path, fl_dataset *d, const fl_allocator *a) {
  gzFile f;
  uint32_t dims[FL_IDX_MAX_DIMS], ndim;
  int rc = idx_open(path, &f, dims, &ndim);
  if (rc != FL_OK)
    return rc;
  rc = FL_E_SHAPE;
  if (ndim != 1 || dims[0] != d->n)
    goto out_close;
  unsigned char buf[IO_PIECE];
  int32_t max = -1;
  size_t cap = 0;
  for (size_t off = 0; off < d->n;) {
    size_t k = d->n - off < IO_PIECE ? d->n - off : IO_PIECE;
    rc = read_exact(f, buf, k);
    if (rc != FL_OK)
      goto out_close;
    rc = grow(a, (void **)&d->labels, &cap, off + k, d->n, sizeof(int32_t));
    if (rc != FL_OK)
      goto out_close;
    for (size_t i = 0; i < k; i++) {
      d->labels[off + i] = buf[i];
      if (buf[i] > max)
        max = buf[i];
    }
    off += k;
  }
  rc = expect_eof(f);
  d->n_classes = max + 1;
out_close:
  gzclose(f);
  return rc;
}

int fl__idx_load(fl_dataset *out, const char *images_path, const char *labels_path,
                 const fl_allocator *a) {
  if (!out || !images_path)
    return FL_E_INVAL;
  fl_dataset d = {.alloc = a};
  int rc = idx_images(images_path, &d, a);
  if (rc == FL_OK && labels_path)
    rc = idx_labels(labels_path, &d, a);
  if (rc != FL_OK) {
    fl__dataset_free(&d);
    return rc;
  }
  *out = d;
  return FL_OK;
}

/* ---- CSV ------------------------------------------------------------------------------- */

/* Reads the whole (decompressed) file into one NUL-terminated buffer. */
static int slurp(const char *path, const fl_allocator *a, char **out, size_t *len) {
  gzFile f;
  int rc = open_gz(path, &f);
  if (rc != FL_OK)
    return rc;
  size_t cap = 1u << 16, n = 0;
  char *buf = fl__malloc(a, cap);
  rc = FL_E_NOMEM;
  if (!buf)
    goto out_close;
  for (;;) {
    if (cap - n < 2) {
      rc = FL_E_TOOBIG;
      if (cap >= FL_DATA_MAX_FILE)
        goto out_free;
      rc = FL_E_NOMEM;
      char *bigger = fl__realloc(a, buf, cap * 2);
      if (!bigger)
        goto out_free;
      buf = bigger;
      cap *= 2;
    }
    size_t want = cap - n - 1;
    int got = gzread(f, buf + n, want > INT_MAX ? INT_MAX : (unsigned)want);
    rc = FL_E_IO;
    if (got < 0)
      goto out_free;
    if (got == 0)
      break;
    n += (size_t)got;
  }
  buf[n] = '\0';
  *out = buf;
  *len = n;
  gzclose(f);
  return FL_OK;

out_free:
  fl__free(a, buf);
out_close:
  gzclose(f);
  return rc;
}

static char *trim(char *s) {
  while (*s == ' ' || *s == '\t')
    s++;
  char *e = s + strlen(s);
  while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r'))
    *--e = '\0';
  if (e - s >= 2 && s[0] == '"' && e[-1] == '"') {
    e[-1] = '\0';
    s++;
  }
  return s;
}

static bool parse_float(char *field, float *v) {
  char *s = trim(field), *end;
  if (*s == '\0')
    return false;
  float f = strtof(s, &end);
  if (*end != '\0' || !isfinite(f))
    return false;
  *v = f;
  return true;
}

static bool parse_label(char *field, int32_t *v) {
  char *s = trim(field), *end;
  if (*s < '0' || *s > '9')
    return false;
  errno = 0;
  long l = strtol(s, &end, 10);
  if (*end != '\0' || errno == ERANGE || l > FL_DATA_MAX_LABEL)
    return false;
  *v = (int32_t)l;
  return true;
}

/* Splits a line in place at commas; returns the number of fields, at most `max` of them
 * stored (the count goes on, so a long row is still recognised as such). */
static size_t split(char *line, char **fields, size_t max) {
  size_t n = 0;
  for (char *p = line;;) {
    if (n < max)
      fields[n] = p;
    n++;
    char *c = strchr(p, ',');
    if (!c)
      break;
    *c = '\0';
    p = c + 1;
  }
  return n;
}

/* Next line of the buffer, NUL-terminated in place; NULL at the end. */
static char *next_line(char **cursor) {
  char *s = *cursor;
  if (*s == '\0')
    return NULL;
  char *nl = strchr(s, '\n');
  if (nl) {
    *nl = '\0';
    *cursor = nl + 1;
  } else {
    *cursor = s + strlen(s);
  }
  return s;
}

static bool blank(const char *s) {
  return s[strspn(s, " \t\r")] == '\0';
}

static size_t count_fields(const char *line) {
  size_t n = 1;
  for (; *line; line++)
    n += *line == ',';
  return n;
}

typedef struct csv_parse {
  int label_col;
  size_t ncols, rows;
  char **fields; /* ncols pointers */
  fl_dataset *d;
} csv_parse;

/* Parses one data row into row `p->rows` of the dataset. */
static int csv_row(csv_parse *p, char *line) {
  if (split(line, p->fields, p->ncols) != p->ncols)
    return FL_E_PARSE;
  float *x = p->d->x + p->rows * p->d->x_dim;
  for (size_t c = 0, j = 0; c < p->ncols; c++) {
    if ((int)c == p->label_col) {
      int32_t *lab = &p->d->labels[p->rows];
      if (!parse_label(p->fields[c], lab))
        return FL_E_PARSE;
      if (*lab >= p->d->n_classes)
        p->d->n_classes = *lab + 1;
    } else if (!parse_float(p->fields[c], &x[j++])) {
      return FL_E_PARSE;
    }
  }
  p->rows++;
  return FL_OK;
}

/* A first line is a header when some field is not a number; it is parsed on a copy so that
 * a data line can still be split afterwards. */
static bool is_header(const char *line, char **fields, size_t ncols, const fl_allocator *a,
                      int *rc) {
  size_t len = strlen(line);
  char *copy = fl__malloc(a, len + 1);
  if (!copy) {
    *rc = FL_E_NOMEM;
    return false;
  }
  memcpy(copy, line, len + 1);
  split(copy, fields, ncols);
  bool header = false;
  for (size_t c = 0; c < ncols && !header; c++) {
    float v;
    header = !parse_float(fields[c], &v);
  }
  fl__free(a, copy);
  *rc = FL_OK;
  return header;
}

static int csv_alloc(csv_parse *p, size_t max_rows, const fl_allocator *a) {
  fl_dataset *d = p->d;
  d->x_dim = p->ncols - (p->label_col >= 0);
  if (d->x_dim == 0)
    return FL_E_INVAL;
  if (d->x_dim > FL_DATA_MAX_FEATURES || (uint64_t)max_rows * d->x_dim > FL_DATA_MAX_VALUES)
    return FL_E_TOOBIG;
  p->fields = fl__malloc(a, p->ncols * sizeof(char *));
  d->x = fl__malloc(a, max_rows * d->x_dim * sizeof(float));
  if (p->label_col >= 0)
    d->labels = fl__malloc(a, max_rows * sizeof(int32_t));
  if (!p->fields || !d->x || (p->label_col >= 0 && !d->labels))
    return FL_E_NOMEM;
  return FL_OK;
}

static int csv_parse_text(char *text, size_t len, int label_col, fl_dataset *d,
                          const fl_allocator *a) {
  csv_parse p = {.label_col = label_col, .d = d};
  char *cursor = text;
  char *line = next_line(&cursor);
  while (line && blank(line))
    line = next_line(&cursor);
  int rc = FL_E_PARSE;
  if (!line)
    goto out;
  p.ncols = count_fields(line);
  rc = FL_E_INVAL;
  if (label_col >= (long)p.ncols)
    goto out;
  size_t max_rows = 1; /* lines left, this one included: an upper bound on the rows */
  for (const char *c = cursor; c < text + len; c++)
    max_rows += *c == '\n';
  max_rows += cursor < text + len;
  rc = csv_alloc(&p, max_rows, a);
  if (rc != FL_OK)
    goto out;
  bool header = is_header(line, p.fields, p.ncols, a, &rc);
  if (rc != FL_OK)
    goto out;
  if (!header) {
    rc = csv_row(&p, line);
    if (rc != FL_OK)
      goto out;
  }
  for (line = next_line(&cursor); line; line = next_line(&cursor)) {
    if (blank(line))
      continue;
    rc = csv_row(&p, line);
    if (rc != FL_OK)
      goto out;
  }
  rc = p.rows > 0 ? FL_OK : FL_E_PARSE;
  d->n = p.rows;
out:
  fl__free(a, p.fields);
  return rc;
}

int fl__csv_load(fl_dataset *out, const char *path, int label_col, const fl_allocator *a) {
  if (!out || !path || label_col < -1)
    return FL_E_INVAL;
  char *text;
  size_t len;
  int rc = slurp(path, a, &text, &len);
  if (rc != FL_OK)
    return rc;
  fl_dataset d = {.alloc = a};
  rc = csv_parse_text(text, len, label_col, &d, a);
  fl__free(a, text);
  if (rc != FL_OK) {
    fl__dataset_free(&d);
    return rc;
  }
  *out = d;
  return FL_OK;
}
