/*
 * Model layouts, specs in JSON and version storage. Specs are immutable, so the layout cache
 * only grows (one entry per model, a few hundred bytes each). Packed versions are cached in a
 * small round-robin table because a round's devices all download the same base version; an
 * entry is a refcounted fl_packed that downloads send as it is (no copy per request), so the
 * mutex covers a lookup and an increment, never a copy of the 800 KB.
 */
#include "registry/models.h"

#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "crypto.h"
#include "digest.h"
#include "fl/v1/fleetlearn.pb-c.h"

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
               "weights are stored as little-endian float32 by memcpy");

#define VCACHE 8

struct fl_packed {
  atomic_uint refs; /* the cache's reference and one per response that sends it */
  uint64_t model_id, version;
  size_t len;
  uint8_t sha[FL_SHA256_LEN];
  uint8_t *buf;
};

typedef struct vcache_entry {
  fl_packed *pk; /* NULL: empty */
} vcache_entry;

struct fl_models {
  pthread_mutex_t mu;
  fl_model_info **items;
  size_t n, cap;
  vcache_entry vc[VCACHE];
  size_t vc_next;
};

int fl__models_new(fl_models **out) {
  fl_models *m = calloc(1, sizeof *m);
  if (m == NULL)
    return FL_E_NOMEM;
  pthread_mutex_init(&m->mu, NULL);
  *out = m;
  return FL_OK;
}

void fl__models_free(fl_models *m) {
  if (m == NULL)
    return;
  for (size_t i = 0; i < m->n; i++) {
    free(m->items[i]->tensors);
    free(m->items[i]);
  }
  for (size_t i = 0; i < VCACHE; i++)
    fl__packed_release(m->vc[i].pk);
  free(m->items);
  pthread_mutex_destroy(&m->mu);
  free(m);
}

/* Builds the layout of a spec by instantiating the model once. */
static int layout(const fl_model_spec *spec, uint64_t id, fl_model_info **out) {
  fl_model *mdl = NULL;
  int err = fl__model_new(&mdl, spec, NULL);
  if (err)
    return err;
  fl_model_info *mi = calloc(1, sizeof *mi);
  size_t nt = fl__model_num_tensors(mdl);
  if (mi == NULL || (mi->tensors = calloc(nt ? nt : 1, sizeof *mi->tensors)) == NULL) {
    free(mi);
    fl__model_free(mdl);
    return FL_E_NOMEM;
  }
  mi->model_id = id;
  mi->spec = *spec;
  mi->n_params = fl__model_num_params(mdl);
  mi->n_tensors = nt;
  for (size_t i = 0; i < nt; i++)
    fl__model_tensor_info(mdl, i, &mi->tensors[i]);
  fl__model_free(mdl);
  *out = mi;
  return FL_OK;
}

static const fl_model_info *cache_find(fl_models *m, uint64_t id) {
  for (size_t i = 0; i < m->n; i++)
    if (m->items[i]->model_id == id)
      return m->items[i];
  return NULL;
}

static int load_spec(PGconn *c, uint64_t id, fl_model_spec *spec) {
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, id);
  PGresult *r = fl__pg_exec(c, "SELECT spec FROM models WHERE model_id = $1", &p, true, NULL);
  if (r == NULL)
    return FL_E_DB;
  int err = FL_E_NOTFOUND;
  if (PQntuples(r) == 1) {
    Fl__V1__ModelSpec *ps = fl__v1__model_spec__unpack(
        NULL, (size_t)PQgetlength(r, 0, 0), (const uint8_t *)PQgetvalue(r, 0, 0));
    err = ps ? fl__spec_from_proto(spec, ps) : FL_E_PARSE;
    fl__v1__model_spec__free_unpacked(ps, NULL);
  }
  PQclear(r);
  return err;
}

int fl__models_get(fl_srv *s, PGconn *c, uint64_t model_id, const fl_model_info **out) {
  fl_models *m = s->models;
  fl_model_spec spec;
  fl_model_info *mi = NULL;
  pthread_mutex_lock(&m->mu);
  const fl_model_info *hit = cache_find(m, model_id);
  pthread_mutex_unlock(&m->mu);
  if (hit != NULL) {
    *out = hit;
    return FL_OK;
  }
  int err = load_spec(c, model_id, &spec);
  if (err == FL_OK)
    err = layout(&spec, model_id, &mi);
  if (err)
    return err;
  pthread_mutex_lock(&m->mu);
  hit = cache_find(m, model_id); /* another thread may have loaded it meanwhile */
  if (hit == NULL && m->n == m->cap) {
    size_t cap = m->cap ? m->cap * 2 : 16;
    fl_model_info **items = realloc(m->items, cap * sizeof *items);
    if (items == NULL) {
      err = FL_E_NOMEM;
      goto out_unlock;
    }
    m->items = items;
    m->cap = cap;
  }
  if (hit == NULL) {
    m->items[m->n++] = mi;
    hit = mi;
    mi = NULL;
  }
  *out = hit;
out_unlock:
  pthread_mutex_unlock(&m->mu);
  if (mi != NULL) {
    free(mi->tensors);
    free(mi);
  }
  return err;
}

/* ----- spec JSON ------------------------------------------------------------------------- */

static const char *const LAYER_NAMES[] = {NULL,   "dense",   "conv2d", "maxpool2d",
                                          "flatten", "relu", "sigmoid", "tanh"};

static int u32_field(const json_t *o, const char *k, uint32_t *out) {
  const json_t *v = json_object_get(o, k);
  if (v == NULL)
    return 0;
  if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 1 << 24)
    return -1;
  *out = (uint32_t)json_integer_value(v);
  return 0;
}

static int layer_from_json(fl_layer_spec *l, const json_t *o, char msg[160]) {
  const char *t = json_string_value(json_object_get(o, "type"));
  memset(l, 0, sizeof *l);
  for (int i = 1; i <= 7 && t != NULL; i++)
    if (strcmp(t, LAYER_NAMES[i]) == 0)
      l->type = i;
  if (l->type == 0) {
    snprintf(msg, 160, "layer type must be one of dense, conv2d, maxpool2d, flatten, relu,"
                       " sigmoid, tanh");
    return -1;
  }
  if (u32_field(o, "units", &l->units) || u32_field(o, "out_channels", &l->out_channels) ||
      u32_field(o, "kernel", &l->kernel) || u32_field(o, "stride", &l->stride) ||
      u32_field(o, "padding", &l->padding)) {
    snprintf(msg, 160, "layer sizes must be non-negative integers");
    return -1;
  }
  return 0;
}

int fl__spec_from_json(fl_model_spec *spec, const json_t *j, char msg[160]) {
  const json_t *in = json_object_get(j, "input_shape"), *layers = json_object_get(j, "layers");
  const char *loss = json_string_value(json_object_get(j, "loss"));
  memset(spec, 0, sizeof *spec);
  if (!json_is_array(in) || (json_array_size(in) != 1 && json_array_size(in) != 3) ||
      !json_is_array(layers) || json_array_size(layers) == 0 ||
      json_array_size(layers) > FL_MAX_LAYERS) {
    snprintf(msg, 160, "spec needs input_shape ([features] or [C,H,W]) and 1 to %d layers",
             FL_MAX_LAYERS);
    return -1;
  }
  spec->input_ndim = (uint32_t)json_array_size(in);
  for (size_t i = 0; i < spec->input_ndim; i++) {
    json_int_t v = json_integer_value(json_array_get(in, i));
    if (v <= 0 || v > 1 << 24) {
      snprintf(msg, 160, "input_shape entries must be positive integers");
      return -1;
    }
    spec->input_shape[i] = (uint32_t)v;
  }
  spec->n_layers = (uint32_t)json_array_size(layers);
  for (size_t i = 0; i < spec->n_layers; i++)
    if (layer_from_json(&spec->layers[i], json_array_get(layers, i), msg))
      return -1;
  spec->loss = loss == NULL ? 0 : strcmp(loss, "softmax_ce") == 0 ? FL_LOSS_SOFTMAX_CE
                              : strcmp(loss, "mse") == 0         ? FL_LOSS_MSE
                                                                 : 0;
  if (spec->loss == 0) {
    snprintf(msg, 160, "loss must be softmax_ce or mse");
    return -1;
  }
  if (fl__spec_validate(spec) != FL_OK) {
    snprintf(msg, 160, "layer shapes do not fit together");
    return -1;
  }
  return 0;
}

/* ----- versions ---------------------------------------------------------------------------- */

int fl__version_insert(fl_srv *s, PGconn *c, const fl_model_info *mi, uint64_t version,
                       uint64_t parent, uint64_t round_id, const float *w, json_t *metrics,
                       uint8_t sha_out[FL_SHA256_LEN]) {
  uint8_t sha[FL_SHA256_LEN], sig[FL_SIG_LEN];
  fl_pgp p;
  int err = fl__model_digest(mi->model_id, version, parent, &mi->spec, w, mi->n_params, sha);
  if (err == FL_OK)
    err = fl__sign(s->key, sha, sizeof sha, sig);
  if (err)
    return err;
  char *mj = metrics ? json_dumps(metrics, JSON_COMPACT) : NULL;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, mi->model_id);
  fl__pgp_u64(&p, version);
  fl__pgp_u64(&p, parent);
  fl__pgp_u64(&p, round_id);
  fl__pgp_bin(&p, w, mi->n_params * sizeof(float));
  fl__pgp_bin(&p, sha, sizeof sha);
  fl__pgp_bin(&p, sig, sizeof sig);
  fl__pgp_text(&p, mj ? mj : "{}");
  PGresult *r = fl__pg_exec(c,
                            "INSERT INTO versions (model_id, version, parent_version, round_id,"
                            " weights, sha256, signature, metrics)"
                            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb)",
                            &p, false, NULL);
  free(mj);
  if (r == NULL)
    return FL_E_DB;
  PQclear(r);
  if (sha_out)
    memcpy(sha_out, sha, sizeof sha);
  return FL_OK;
}

int fl__model_create(fl_srv *s, PGconn *c, const char *name, const json_t *spec_json,
                     const fl_model_spec *spec, uint64_t seed, uint64_t *model_id) {
  fl_spec_proto_storage st;
  fl_model *mdl = NULL;
  fl_model_info *mi = NULL;
  fl_pgp p;
  char state[6];
  int err = fl__model_new(&mdl, spec, NULL);
  if (err)
    return err;
  fl__model_init(mdl, seed);
  fl__spec_to_proto(&st, spec);
  size_t n = fl__v1__model_spec__get_packed_size(&st.spec);
  uint8_t *packed = malloc(n ? n : 1);
  char *sj = json_dumps(spec_json, JSON_COMPACT);
  err = FL_E_NOMEM;
  if (packed == NULL || sj == NULL)
    goto out;
  fl__v1__model_spec__pack(&st.spec, packed);
  fl__pgp_init(&p);
  fl__pgp_text(&p, name);
  fl__pgp_bin(&p, packed, n);
  fl__pgp_text(&p, sj);
  fl__pgp_u64(&p, fl__model_num_params(mdl));
  fl__pgp_i64(&p, (int64_t)seed);
  PGresult *r = fl__pg_exec(c,
                            "INSERT INTO models (name, spec, spec_json, n_params, seed)"
                            " VALUES ($1, $2, $3::jsonb, $4, $5) RETURNING model_id",
                            &p, false, state);
  err = r ? FL_OK : strcmp(state, "23505") == 0 ? FL_E_STATE : FL_E_DB;
  if (err)
    goto out;
  *model_id = fl__pg_u64(r, 0, 0);
  PQclear(r);
  err = layout(spec, *model_id, &mi);
  if (err == FL_OK)
    err = fl__version_insert(s, c, mi, 1, 0, 0, fl__model_params_const(mdl), NULL, NULL);
out:
  if (mi != NULL) {
    free(mi->tensors);
    free(mi);
  }
  free(sj);
  free(packed);
  fl__model_free(mdl);
  return err;
}

int fl__version_weights(PGconn *c, const fl_model_info *mi, uint64_t version, float **w) {
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, mi->model_id);
  fl__pgp_u64(&p, version);
  PGresult *r = fl__pg_exec(c, "SELECT weights FROM versions WHERE model_id = $1 AND version = $2",
                            &p, true, NULL);
  if (r == NULL)
    return FL_E_DB;
  int err = FL_E_NOTFOUND;
  if (PQntuples(r) == 1 && (size_t)PQgetlength(r, 0, 0) == mi->n_params * sizeof(float)) {
    *w = malloc(mi->n_params * sizeof(float) + 1);
    err = *w ? FL_OK : FL_E_NOMEM;
    if (*w)
      memcpy(*w, PQgetvalue(r, 0, 0), mi->n_params * sizeof(float));
  }
  PQclear(r);
  return err;
}

int fl__version_sha(PGconn *c, uint64_t model_id, uint64_t version, uint8_t sha[FL_SHA256_LEN]) {
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, model_id);
  fl__pgp_u64(&p, version);
  PGresult *r = fl__pg_exec_prep(c, "fl_version_sha",
                                 "SELECT sha256 FROM versions WHERE model_id = $1 AND version = $2",
                                 &p, true, NULL);
  if (r == NULL)
    return FL_E_DB;
  int err = FL_E_NOTFOUND;
  if (PQntuples(r) == 1 && PQgetlength(r, 0, 0) == FL_SHA256_LEN) {
    memcpy(sha, PQgetvalue(r, 0, 0), FL_SHA256_LEN);
    err = FL_OK;
  }
  PQclear(r);
  return err;
}

/* ----- packed versions for download -------------------------------------------------------- */

typedef struct version_row {
  uint64_t parent, round_id;
  const uint8_t *weights, *sha, *sig;
  size_t sig_len;
  json_t *metrics;
  int64_t created_ms;
} version_row;

/* Packs a ModelVersion whose tensors point straight into the row's weights. */
static int pack_version(const fl_model_info *mi, uint64_t version, const version_row *row,
                        uint8_t **buf, size_t *len) {
  Fl__V1__ModelVersion mv = FL__V1__MODEL_VERSION__INIT;
  fl_spec_proto_storage st;
  size_t nm = json_object_size(row->metrics);
  Fl__V1__Tensor *ts = calloc(mi->n_tensors + 1, sizeof *ts);
  Fl__V1__Tensor **tp = calloc(mi->n_tensors + 1, sizeof *tp);
  Fl__V1__Metric *ms = calloc(nm + 1, sizeof *ms);
  Fl__V1__Metric **mp = calloc(nm + 1, sizeof *mp);
  uint32_t (*shapes)[4] = calloc(mi->n_tensors + 1, sizeof *shapes);
  int err = FL_E_NOMEM;
  if (!ts || !tp || !ms || !mp || !shapes)
    goto out;
  for (size_t i = 0; i < mi->n_tensors; i++) {
    const fl_tensor_info *ti = &mi->tensors[i];
    fl__v1__tensor__init(&ts[i]);
    memcpy(shapes[i], ti->shape, sizeof shapes[i]);
    ts[i].n_shape = ti->ndim;
    ts[i].shape = shapes[i];
    ts[i].encoding = FL__V1__ENCODING__ENCODING_FLOAT32;
    ts[i].count = ti->count;
    ts[i].data.data = (uint8_t *)(uintptr_t)(row->weights + ti->offset * sizeof(float));
    ts[i].data.len = ti->count * sizeof(float);
    tp[i] = &ts[i];
  }
  const char *key;
  json_t *val;
  size_t k = 0;
  json_object_foreach(row->metrics, key, val) {
    fl__v1__metric__init(&ms[k]);
    ms[k].name = (char *)key;
    ms[k].value = json_number_value(val);
    mp[k] = &ms[k];
    k++;
  }
  fl__spec_to_proto(&st, &mi->spec);
  mv.model_id = mi->model_id;
  mv.version = version;
  mv.parent_version = row->parent;
  mv.spec = &st.spec;
  mv.n_weights = mi->n_tensors;
  mv.weights = tp;
  mv.sha256 = (ProtobufCBinaryData){FL_SHA256_LEN, (uint8_t *)(uintptr_t)row->sha};
  mv.signature = (ProtobufCBinaryData){row->sig_len, (uint8_t *)(uintptr_t)row->sig};
  mv.n_metrics = k;
  mv.metrics = mp;
  mv.round_id = row->round_id;
  mv.created_at_ms = row->created_ms;
  *len = fl__v1__model_version__get_packed_size(&mv);
  *buf = malloc(*len ? *len : 1);
  if (*buf != NULL) {
    fl__v1__model_version__pack(&mv, *buf);
    err = FL_OK;
  }
out:
  free(shapes);
  free(mp);
  free(ms);
  free(tp);
  free(ts);
  return err;
}

static int load_packed(PGconn *c, const fl_model_info *mi, uint64_t version, uint8_t **buf,
                       size_t *len, uint8_t sha[FL_SHA256_LEN]) {
  fl_pgp p;
  version_row row;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, mi->model_id);
  fl__pgp_u64(&p, version);
  PGresult *r = fl__pg_exec_prep(c, "fl_version_packed",
                                 "SELECT parent_version, round_id, weights, sha256, signature,"
                                 " metrics::text,"
                                 " (extract(epoch FROM created_at) * 1000)::bigint"
                                 " FROM versions WHERE model_id = $1 AND version = $2",
                                 &p, true, NULL);
  if (r == NULL)
    return FL_E_DB;
  int err = FL_E_NOTFOUND;
  if (PQntuples(r) != 1 || (size_t)PQgetlength(r, 0, 2) != mi->n_params * sizeof(float) ||
      PQgetlength(r, 0, 3) != FL_SHA256_LEN)
    goto out;
  row.parent = (uint64_t)fl__pg_bin_i64(r, 0, 0);
  row.round_id = (uint64_t)fl__pg_bin_i64(r, 0, 1);
  row.weights = (const uint8_t *)PQgetvalue(r, 0, 2);
  row.sha = (const uint8_t *)PQgetvalue(r, 0, 3);
  row.sig = (const uint8_t *)PQgetvalue(r, 0, 4);
  row.sig_len = (size_t)PQgetlength(r, 0, 4);
  row.metrics = json_loadb(PQgetvalue(r, 0, 5), (size_t)PQgetlength(r, 0, 5), 0, NULL);
  row.created_ms = fl__pg_bin_i64(r, 0, 6);
  err = pack_version(mi, version, &row, buf, len);
  memcpy(sha, row.sha, FL_SHA256_LEN);
  json_decref(row.metrics);
out:
  PQclear(r);
  return err;
}

void fl__packed_release(void *pk) {
  fl_packed *p = pk;
  if (p != NULL && atomic_fetch_sub(&p->refs, 1) == 1) {
    free(p->buf);
    free(p);
  }
}

const uint8_t *fl__packed_data(const fl_packed *p, size_t *len, uint8_t sha[FL_SHA256_LEN]) {
  *len = p->len;
  if (sha != NULL)
    memcpy(sha, p->sha, FL_SHA256_LEN);
  return p->buf;
}

/* The cached entry with a reference taken, NULL when not cached. */
static fl_packed *vcache_get(fl_models *m, uint64_t model_id, uint64_t version) {
  fl_packed *pk = NULL;
  pthread_mutex_lock(&m->mu);
  for (size_t i = 0; i < VCACHE && pk == NULL; i++) {
    fl_packed *e = m->vc[i].pk;
    if (e != NULL && e->model_id == model_id && e->version == version) {
      atomic_fetch_add(&e->refs, 1);
      pk = e;
    }
  }
  pthread_mutex_unlock(&m->mu);
  return pk;
}

int fl__version_acquire(fl_srv *s, PGconn *c, uint64_t model_id, uint64_t version,
                        fl_packed **out) {
  fl_models *m = s->models;
  const fl_model_info *mi;
  fl_packed *pk = vcache_get(m, model_id, version);
  if (pk != NULL) {
    *out = pk;
    return FL_OK;
  }
  pk = calloc(1, sizeof *pk);
  if (pk == NULL)
    return FL_E_NOMEM;
  int err = fl__models_get(s, c, model_id, &mi);
  if (err == FL_OK)
    err = load_packed(c, mi, version, &pk->buf, &pk->len, pk->sha);
  if (err) {
    free(pk);
    return err;
  }
  pk->model_id = model_id;
  pk->version = version;
  atomic_init(&pk->refs, 2); /* the cache's and the caller's */
  pthread_mutex_lock(&m->mu);
  /* Two requests may have loaded the same version at once: the later one replaces nothing,
   * it only hands out its own copy (released with its last response). */
  bool dup = false;
  for (size_t i = 0; i < VCACHE && !dup; i++)
    dup =
        m->vc[i].pk != NULL && m->vc[i].pk->model_id == model_id && m->vc[i].pk->version == version;
  fl_packed *old = NULL;
  if (dup) {
    atomic_store(&pk->refs, 1);
  } else {
    vcache_entry *e = &m->vc[m->vc_next++ % VCACHE];
    old = e->pk;
    e->pk = pk;
  }
  pthread_mutex_unlock(&m->mu);
  fl__packed_release(old);
  *out = pk;
  return FL_OK;
}

int fl__version_sha_cached(fl_srv *s, PGconn *c, uint64_t model_id, uint64_t version,
                           uint8_t sha[FL_SHA256_LEN]) {
  fl_packed *pk = vcache_get(s->models, model_id, version);
  if (pk == NULL)
    return fl__version_sha(c, model_id, version, sha);
  memcpy(sha, pk->sha, FL_SHA256_LEN);
  fl__packed_release(pk);
  return FL_OK;
}
