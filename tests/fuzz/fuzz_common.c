/* fuzz_common.h */
#include "fuzz_common.h"

#include <sanitizer/allocator_interface.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static fl_key *g_key;
static uint8_t g_pub[FL_PUBKEY_LEN];

const fl_key *fz_key(void) {
  if (g_key == NULL) {
    if (fl__key_load_pem(&g_key, FL_FUZZ_KEY) != 0 || fl__key_public(g_key, g_pub) != 0) {
      fprintf(stderr, "fuzz: cannot load the test key %s\n", FL_FUZZ_KEY);
      abort();
    }
  }
  return g_key;
}

const uint8_t *fz_pub(void) {
  fz_key();
  return g_pub;
}

void fz_spec(fl_model_spec *spec) {
  memset(spec, 0, sizeof *spec);
  spec->input_ndim = 1;
  spec->input_shape[0] = 4;
  spec->n_layers = 1;
  spec->layers[0].type = FL_LAYER_DENSE;
  spec->layers[0].units = 3;
  spec->loss = FL_LOSS_SOFTMAX_CE;
}

uint8_t fz_u8(fz_cur *c) {
  if (c->left == 0)
    return 0;
  c->left--;
  return *c->p++;
}

uint32_t fz_u32(fz_cur *c) {
  uint32_t v = 0;
  for (int i = 0; i < 4; i++)
    v |= (uint32_t)fz_u8(c) << (8 * i);
  return v;
}

const uint8_t *fz_span(fz_cur *c, size_t max, size_t *len) {
  size_t n = fz_u32(c);
  if (n > max)
    n = max;
  if (n > c->left)
    n = c->left;
  const uint8_t *p = c->p;
  c->p += n;
  c->left -= n;
  *len = n;
  return p;
}

void fz_fail(const char *file, int line, const char *what) {
  fprintf(stderr, "%s:%d: invariant violated: %s\n", file, line, what);
  abort();
}

size_t fz_heap_bytes(void) {
  return __sanitizer_get_current_allocated_bytes();
}
