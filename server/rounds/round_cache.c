/*
 * The round cache (round_cache.h): a few entries under one mutex, replaced oldest first.
 */
#include "rounds/round_cache.h"

#include <pthread.h>
#include <stdlib.h>

#include "fl/err.h"
#include "server.h"

typedef struct round_entry {
  uint64_t round_id; /* 0: empty (round ids start at 1) */
  double at;
  fl_round_info info;
} round_entry;

struct fl_round_cache {
  pthread_mutex_t mu;
  round_entry rounds[FL_ROUND_CACHE_N];
};

int fl__round_cache_new(fl_round_cache **out) {
  fl_round_cache *c = calloc(1, sizeof *c);
  if (c == NULL)
    return FL_E_NOMEM;
  pthread_mutex_init(&c->mu, NULL);
  *out = c;
  return FL_OK;
}

void fl__round_cache_free(fl_round_cache *c) {
  if (c == NULL)
    return;
  pthread_mutex_destroy(&c->mu);
  free(c);
}

bool fl__round_cached(fl_round_cache *c, uint64_t round_id, fl_round_info *out) {
  bool hit = false;
  pthread_mutex_lock(&c->mu);
  for (int i = 0; i < FL_ROUND_CACHE_N && !hit; i++)
    if (c->rounds[i].round_id == round_id && round_id != 0) {
      *out = c->rounds[i].info;
      hit = true;
    }
  pthread_mutex_unlock(&c->mu);
  return hit;
}

void fl__round_store(fl_round_cache *c, uint64_t round_id, const fl_round_info *in) {
  double now = fl__mono_s();
  pthread_mutex_lock(&c->mu);
  /* The same round's entry, else the oldest one. */
  int k = 0;
  for (int i = 0; i < FL_ROUND_CACHE_N; i++) {
    if (c->rounds[i].round_id == round_id) {
      k = i;
      break;
    }
    if (c->rounds[i].at < c->rounds[k].at)
      k = i;
  }
  c->rounds[k] = (round_entry){.round_id = round_id, .at = now, .info = *in};
  pthread_mutex_unlock(&c->mu);
}
