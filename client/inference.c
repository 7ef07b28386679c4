/*
 * Inference on the rolled-out model.
 *
 * The state file `rollout` names the active and the previous model by hash; the models live in
 * the cache. A swap writes the new pointer file atomically before the in-memory switch, so
 * after a power loss the device runs either the old or the new model, never a mix. Only the
 * active model is kept in memory; the previous one stays on disk for a rollback, and is what a
 * device falls back to when the active file no longer verifies.
 */
#include <stdio.h>
#include <string.h>

#include "client_internal.h"

#define ROLLOUT_MAGIC "fleetlearn-rollout 1"

static int write_pointer(fl_client *c, const uint8_t active[FL_SHA256_LEN],
                         const uint8_t *previous) {
  char path[FL__PATH_MAX];
  int err = fl__state_path(c, path, sizeof path, "rollout");
  if (err != FL_OK)
    return err;
  char a[2 * FL_SHA256_LEN + 1], p[2 * FL_SHA256_LEN + 1] = "-";
  fl__hex(active, FL_SHA256_LEN, a);
  if (previous != NULL)
    fl__hex(previous, FL_SHA256_LEN, p);
  char text[256];
  int n = snprintf(text, sizeof text, ROLLOUT_MAGIC "\nactive %s\nprevious %s\n", a, p);
  err = fl__write_file_atomic(path, text, (size_t)n, 0600);
  if (err != FL_OK)
    fl__client_err(c, "cannot write %s: %s", path, fl_strerror(err));
  return err;
}

int fl__inference_activate(fl_client *c, fl__loaded_model *m) {
  bool had = c->active.model != NULL;
  const uint8_t *prev = had ? c->active.sha256 : (c->has_previous ? c->previous_sha : NULL);
  /* The cache is written without fsync; the model a reboot must find is synced first. */
  int err = fl__cache_sync(c, m->sha256);
  if (err == FL_OK)
    err = write_pointer(c, m->sha256, prev);
  if (err != FL_OK)
    return err;
  if (had) {
    memcpy(c->previous_sha, c->active.sha256, FL_SHA256_LEN);
    c->has_previous = true;
  }
  fl__loaded_free(&c->active);
  c->active = *m;
  memset(m, 0, sizeof *m);
  fl__log(&c->log, FL_LOG_INFO, "inference model is now %llu v%llu",
          (unsigned long long)c->active.model_id, (unsigned long long)c->active.version);
  return FL_OK;
}

int fl__inference_activate_cached(fl_client *c, const uint8_t sha256[FL_SHA256_LEN]) {
  fl__loaded_model m = {0};
  int err = fl__cache_load(c, sha256, &m);
  if (err != FL_OK)
    return err;
  err = fl__inference_activate(c, &m);
  if (err != FL_OK)
    fl__loaded_free(&m);
  return err;
}

/* "active HEX" and "previous HEX|-" after the magic line. */
static int parse_pointer(const char *text, uint8_t active[FL_SHA256_LEN],
                         uint8_t previous[FL_SHA256_LEN], bool *has_prev) {
  char a[2 * FL_SHA256_LEN + 1], p[2 * FL_SHA256_LEN + 1];
  if (strncmp(text, ROLLOUT_MAGIC "\n", sizeof ROLLOUT_MAGIC) != 0)
    return FL_E_PARSE;
  if (sscanf(text + sizeof ROLLOUT_MAGIC, "active %64s\nprevious %64s", a, p) != 2)
    return FL_E_PARSE;
  if (strlen(a) != 2 * FL_SHA256_LEN || fl__unhex(a, active, FL_SHA256_LEN) != FL_OK)
    return FL_E_PARSE;
  *has_prev = strcmp(p, "-") != 0;
  if (*has_prev &&
      (strlen(p) != 2 * FL_SHA256_LEN || fl__unhex(p, previous, FL_SHA256_LEN) != FL_OK))
    return FL_E_PARSE;
  return FL_OK;
}

static int read_pointer(fl_client *c, uint8_t active[FL_SHA256_LEN],
                        uint8_t previous[FL_SHA256_LEN], bool *has_prev) {
  char path[FL__PATH_MAX], text[1025];
  int err = fl__state_read_text(c, "rollout", 1024, path, text, sizeof text);
  if (err != FL_OK)
    return err;
  err = parse_pointer(text, active, previous, has_prev);
  if (err != FL_OK)
    fl__client_err(c, "%s is malformed", path);
  return err;
}

/* At open: the active model, or the previous one when the active file does not verify (it
 * then becomes the active one, and the bad file is forgotten). Having no model is fine. */
int fl__inference_load(fl_client *c) {
  uint8_t active[FL_SHA256_LEN], prev[FL_SHA256_LEN];
  bool has_prev = false;
  int err = read_pointer(c, active, prev, &has_prev);
  if (err == FL_E_NOTFOUND || err == FL_E_PARSE)
    return FL_OK;
  if (err != FL_OK)
    return err;
  if (!c->have_coord_pub)
    return FL_OK; /* nothing can be verified before enrollment */
  err = fl__cache_load(c, active, &c->active);
  if (err == FL_E_NOMEM)
    return err;
  if (err == FL_OK) {
    c->has_previous = has_prev;
    memcpy(c->previous_sha, prev, FL_SHA256_LEN);
    return FL_OK;
  }
  if (!has_prev)
    return FL_OK;
  fl__log(&c->log, FL_LOG_WARN, "active model refused; falling back to the previous one");
  fl__loaded_model m = {0};
  err = fl__cache_load(c, prev, &m);
  if (err == FL_E_NOMEM)
    return err;
  if (err != FL_OK)
    return FL_OK;
  err = fl__inference_activate(c, &m);
  if (err != FL_OK)
    fl__loaded_free(&m);
  return err == FL_E_NOMEM ? err : FL_OK;
}

fl_err fl_client_model_info(const fl_client *c, fl_model_info *out) {
  if (c == NULL || out == NULL)
    return FL_E_INVAL;
  fl_model_info mi = {.size = sizeof mi};
  if (fl__copy_out(out, &mi, sizeof mi, sizeof mi) != FL_OK)
    return FL_E_INVAL; /* checked before FL_E_NOTFOUND: a bad size is always an error */
  if (c->active.model == NULL)
    return FL_E_NOTFOUND;
  mi.model_id = c->active.model_id;
  mi.version = c->active.version;
  mi.input_size = fl__model_input_size(c->active.model);
  mi.output_size = fl__model_output_size(c->active.model);
  mi.n_params = fl__model_num_params(c->active.model);
  memcpy(mi.sha256, c->active.sha256, FL_SHA256_LEN);
  return fl__copy_out(out, &mi, sizeof mi, sizeof mi);
}

fl_err fl_client_predict(fl_client *c, const float *x, size_t n, float *out) {
  if (c == NULL || (n > 0 && (x == NULL || out == NULL)))
    return FL_E_INVAL;
  if (c->active.model == NULL)
    return FL_E_NOTFOUND;
  if (n == 0)
    return FL_OK;
  int err = fl__model_forward(c->active.model, x, n, out);
  if (err == FL_OK)
    fl__drift_observe(c, x, out, n);
  return err;
}

fl_err fl_client_rollback(fl_client *c) {
  if (c == NULL)
    return FL_E_INVAL;
  if (!c->has_previous || c->active.model == NULL)
    return FL_E_NOTFOUND;
  if (c->phase != FL__PH_IDLE && c->phase != FL__PH_DONE)
    return FL_E_STATE;
  return fl__inference_activate_cached(c, c->previous_sha);
}
