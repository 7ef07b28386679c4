/*
 * Unpacking an upload without copying its parameters (auth/inplace.h).
 *
 * protobuf-c copies every bytes field it unpacks. An 800 KB upload was copied twice that way
 * (SignedRequest.body out of the request body, then each Tensor.data out of that), about a
 * fifth of the coordinator's memmove per device round. Here the large fields are cut out of
 * the wire bytes first (the rest, a few hundred bytes, is copied into a small buffer that
 * protobuf-c unpacks as usual), and the unpacked message is then pointed at the original
 * bytes. Anything the splitter does not understand is left to protobuf-c unchanged (the caller
 * falls back to the copying unpack), so what is accepted and refused stays protobuf-c's.
 */
#include "auth/inplace.h"

#include <stdlib.h>
#include <string.h>

#include "mem.h"

enum { WT_VARINT = 0, WT_I64 = 1, WT_LEN = 2, WT_I32 = 5 };
enum { SR_BODY = 4, UU_DELTA = 6, T_DATA = 4, T_INDICES = 6 };

static int varint(const uint8_t **p, const uint8_t *end, uint64_t *v) {
  uint64_t x = 0;
  for (unsigned shift = 0; shift < 64 && *p < end; shift += 7) {
    uint8_t b = *(*p)++;
    x |= (uint64_t)(b & 0x7f) << shift;
    if ((b & 0x80) == 0) {
      *v = x;
      return 0;
    }
  }
  return -1;
}

static size_t put_varint(uint8_t *o, uint64_t v) {
  size_t n = 0;
  do {
    o[n++] = (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
    v >>= 7;
  } while (v != 0);
  return n;
}

/* One field at *p: its number, wire type, and for WT_LEN its payload. Advances *p past it. */
typedef struct field {
  const uint8_t *start;
  uint32_t num, wt;
  const uint8_t *data;
  size_t len;
} field;

static int next_field(const uint8_t **p, const uint8_t *end, field *f) {
  uint64_t key, n;
  *f = (field){.start = *p}; /* data and len stay NULL/0 unless the field is length-delimited */
  if (varint(p, end, &key) || key >> 3 == 0 || key >> 3 > UINT32_MAX)
    return -1;
  f->num = (uint32_t)(key >> 3);
  f->wt = (uint32_t)(key & 7);
  switch (f->wt) {
    case WT_VARINT:
      return varint(p, end, &n);
    case WT_I64:
    case WT_I32: {
      size_t w = f->wt == WT_I64 ? 8 : 4;
      if ((size_t)(end - *p) < w)
        return -1;
      *p += w;
      return 0;
    }
    case WT_LEN:
      if (varint(p, end, &n) || n > (uint64_t)(end - *p))
        return -1;
      f->data = *p;
      f->len = (size_t)n;
      *p += n;
      return 0;
    default:
      return -1; /* groups and reserved types: protobuf-c's to judge */
  }
}

/* Copies the fields of [in, in + len) to out (NULL: only counts), except the WT_LEN fields
 * numbered a or b, whose last occurrences land in *ga / *gb. The copied length, or -1. */
static ptrdiff_t split(const uint8_t *in, size_t len, uint32_t a, uint32_t b, uint8_t *out,
                       ProtobufCBinaryData *ga, ProtobufCBinaryData *gb) {
  const uint8_t *p = in, *end = in + len;
  size_t o = 0;
  field f;
  while (p < end) {
    if (next_field(&p, end, &f))
      return -1;
    if (f.wt == WT_LEN && (f.num == a || f.num == b)) {
      ProtobufCBinaryData *g = f.num == a ? ga : gb;
      g->data = f.len > 0 ? (uint8_t *)(uintptr_t)f.data : NULL; /* as protobuf-c leaves it */
      g->len = f.len;
      continue;
    }
    if (out != NULL)
      memcpy(out + o, f.start, (size_t)(p - f.start));
    o += (size_t)(p - f.start);
  }
  return (ptrdiff_t)o;
}

/* The envelope's own unpack, on the bytes without its body (auth.c's budget rule). */
static void *budget_unpack(const ProtobufCMessageDescriptor *d, const uint8_t *b, size_t n,
                           size_t wire) {
  ProtobufCAllocator pa;
  fl_pb_budget pb;
  fl__protobuf_budget(&pa, &pb, NULL, wire);
  return protobuf_c_message_unpack(d, &pa, n, b);
}

Fl__V1__SignedRequest *fl__inplace_envelope(const uint8_t *body, size_t len) {
  ProtobufCBinaryData got = {0, NULL}, none = {0, NULL};
  ptrdiff_t n = split(body, len, SR_BODY, SR_BODY, NULL, &got, &none);
  if (n < 0)
    return NULL;
  uint8_t *small = malloc(n > 0 ? (size_t)n : 1);
  if (small == NULL)
    return NULL;
  split(body, len, SR_BODY, SR_BODY, small, &got, &none);
  Fl__V1__SignedRequest *sr =
      budget_unpack(&fl__v1__signed_request__descriptor, small, (size_t)n, len);
  free(small);
  if (sr != NULL)
    sr->body = got;
  return sr;
}

void fl__inplace_envelope_free(Fl__V1__SignedRequest *sr) {
  if (sr == NULL)
    return;
  sr->body = (ProtobufCBinaryData){0, NULL};
  fl__v1__signed_request__free_unpacked(sr, NULL);
}

/* Up to this many tensors are kept in place; an upload with more is unpacked by copying. */
#define MAX_TENSORS 64

/* The UpdateUpload's bytes with every delta Tensor's data and indices cut out, into out
 * (NULL: only counts); the cut fields in d[] and x[] in order of the tensors. Length or -1. */
static ptrdiff_t split_upload(const uint8_t *in, size_t len, uint8_t *out, ProtobufCBinaryData *d,
                              ProtobufCBinaryData *x, size_t *n_tensors) {
  const uint8_t *p = in, *end = in + len;
  size_t o = 0, k = 0;
  field f;
  while (p < end) {
    if (next_field(&p, end, &f))
      return -1;
    if (f.wt != WT_LEN || f.num != UU_DELTA) {
      if (out != NULL)
        memcpy(out + o, f.start, (size_t)(p - f.start));
      o += (size_t)(p - f.start);
      continue;
    }
    if (k == MAX_TENSORS)
      return -1;
    d[k] = x[k] = (ProtobufCBinaryData){0, NULL};
    ptrdiff_t t = split(f.data, f.len, T_DATA, T_INDICES, NULL, &d[k], &x[k]);
    if (t < 0)
      return -1;
    uint8_t hdr[16];
    size_t h = put_varint(hdr, (uint64_t)UU_DELTA << 3 | WT_LEN);
    h += put_varint(hdr + h, (uint64_t)t);
    if (out != NULL) {
      memcpy(out + o, hdr, h);
      split(f.data, f.len, T_DATA, T_INDICES, out + o + h, &d[k], &x[k]);
    }
    o += h + (size_t)t;
    k++;
  }
  *n_tensors = k;
  return (ptrdiff_t)o;
}

Fl__V1__UpdateUpload *fl__inplace_upload(const uint8_t *body, size_t len) {
  ProtobufCBinaryData d[MAX_TENSORS], x[MAX_TENSORS];
  size_t k = 0;
  ptrdiff_t n = split_upload(body, len, NULL, d, x, &k);
  if (n < 0)
    return NULL;
  uint8_t *small = malloc(n > 0 ? (size_t)n : 1);
  if (small == NULL)
    return NULL;
  split_upload(body, len, small, d, x, &k);
  Fl__V1__UpdateUpload *u =
      budget_unpack(&fl__v1__update_upload__descriptor, small, (size_t)n, len);
  free(small);
  if (u == NULL)
    return NULL;
  if (u->n_delta != k) { /* cannot happen: every delta field is one tensor */
    fl__v1__update_upload__free_unpacked(u, NULL);
    return NULL;
  }
  for (size_t i = 0; i < k; i++) {
    u->delta[i]->data = d[i];
    u->delta[i]->indices = x[i];
  }
  return u;
}

void fl__inplace_upload_free(Fl__V1__UpdateUpload *u) {
  if (u == NULL)
    return;
  for (size_t i = 0; i < u->n_delta; i++) {
    u->delta[i]->data = (ProtobufCBinaryData){0, NULL};
    u->delta[i]->indices = (ProtobufCBinaryData){0, NULL};
  }
  fl__v1__update_upload__free_unpacked(u, NULL);
}
