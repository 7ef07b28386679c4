/*
 * What never changes about a round (model, base version, plan), cached per replica for
 * check-ins and uploads (round_cache.c); the round's state is read with every request. Only
 * rounds that exist are cached; the least recently stored of FL_ROUND_CACHE_N entries makes
 * room.
 */
#ifndef FL__ROUND_CACHE_H
#define FL__ROUND_CACHE_H

#include <stdbool.h>
#include <stdint.h>

#include "rounds/plan.h"

typedef struct fl_round_cache fl_round_cache;

#define FL_ROUND_CACHE_N 8
typedef struct fl_round_info {
  uint64_t model_id, base_version;
  fl_plan plan;
} fl_round_info;

int fl__round_cache_new(fl_round_cache **out);
void fl__round_cache_free(fl_round_cache *c); /* NULL: no-op */
bool fl__round_cached(fl_round_cache *c, uint64_t round_id, fl_round_info *out);
void fl__round_store(fl_round_cache *c, uint64_t round_id, const fl_round_info *in);

#endif
