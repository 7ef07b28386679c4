/*
 * The client handle: options, construction and destruction, error detail, clocks.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "client_internal.h"

#define FL__STR2(x) #x
#define FL__STR(x) FL__STR2(x)

unsigned fl_version(void) {
  return FL_VERSION_HEX;
}

const char *fl_version_string(void) {
  return FL__STR(FL_VERSION_MAJOR) "." FL__STR(FL_VERSION_MINOR) "." FL__STR(FL_VERSION_PATCH);
}

void fl__client_err(fl_client *c, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(c->errmsg, sizeof c->errmsg, fmt, ap);
  va_end(ap);
  fl__log(&c->log, FL_LOG_WARN, "%s", c->errmsg);
}

const char *fl_client_errmsg(const fl_client *c) {
  return c != NULL ? c->errmsg : "";
}

int64_t fl__client_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t fl__client_time_ms(const fl_client *c) {
  return fl__add_sat(fl__client_now_ms(), c->clock_offset_ms);
}

static long or_default(long v, long d) {
  return v > 0 ? v : d;
}

/* Copies the scalar options; strings are duplicated by the caller of this. */
static void apply_opts(fl_client *c, const fl_client_opts *o) {
  c->connect_timeout_ms = or_default(o->connect_timeout_ms, 10000);
  c->request_timeout_ms = or_default(o->request_timeout_ms, 60000);
  c->backoff_base_ms = or_default(o->backoff_base_ms, 500);
  c->backoff_max_ms = or_default(o->backoff_max_ms, 60000);
  c->max_retries = o->max_retries > 0 ? o->max_retries : 5;
  c->want_model_id = o->model_id;
  c->follow_base = o->follow_training_base != 0;
  c->log.fn = o->log_fn;
  c->log.ctx = o->log_ctx;
  c->log.level = o->log_level;
  if (o->coordinator_key != NULL) {
    memcpy(c->coord_pub, o->coordinator_key, FL_PUBKEY_LEN);
    c->have_coord_pub = true;
    c->coord_from_opts = true;
  }
}

static int setup_transport(fl_client *c, const fl_client_opts *o) {
  if (o->transport != NULL) {
    if (o->transport->begin == NULL || o->transport->poll == NULL || o->transport->end == NULL)
      return FL_E_INVAL;
    /* A version 1 struct ends before attach: copying the whole of ours would read past it. */
    memset(&c->tr, 0, sizeof c->tr);
    memcpy(&c->tr, o->transport,
           o->transport->version >= 2 ? sizeof c->tr : offsetof(fl_transport, attach));
    return FL_OK;
  }
  return fl_transport_curl(&c->tr, o);
}

int fl_client_new(fl_client **out, const fl_client_opts *opts) {
  if (out == NULL || opts == NULL || opts->version < 1 || opts->state_dir == NULL ||
      (opts->server_url == NULL && opts->transport == NULL))
    return FL_E_INVAL;
  const fl_allocator *a = opts->allocator;
  fl_client *c = fl__calloc(a, 1, sizeof *c);
  if (c == NULL)
    return FL_E_NOMEM;
  if (a != NULL) {
    c->alloc_copy = *a;
    c->alloc = &c->alloc_copy;
  }
  c->lock_fd = -1;
  apply_opts(c, opts);
  int err = FL_E_NOMEM;
  c->state_dir = fl__strdup(c->alloc, opts->state_dir);
  if (c->state_dir == NULL)
    goto out_free;
  err = fl__state_open(c);
  if (err != FL_OK)
    goto out_free;
  err = fl__state_load_key(c, false);
  if (err != FL_OK && err != FL_E_NOTFOUND)
    goto out_close;
  err = fl__state_load_identity(c);
  if (err != FL_OK && err != FL_E_NOTFOUND)
    goto out_close;
  err = fl__inference_load(c);
  if (err != FL_OK)
    goto out_close;
  err = setup_transport(c, opts);
  if (err != FL_OK)
    goto out_close;
  c->errmsg[0] = '\0';
  *out = c;
  return FL_OK;

out_close:
  fl__loaded_free(&c->active);
  fl__key_free(c->key);
  fl__state_close(c);
out_free:
  fl__free(c->alloc, c->state_dir);
  fl__free(a, c);
  return err;
}

void fl_client_free(fl_client *c) {
  if (c == NULL)
    return;
  fl__multi_forget(c);
  fl__round_reset(c);
  if (c->tr.destroy != NULL)
    c->tr.destroy(c->tr.ctx);
  fl__loaded_free(&c->active);
  fl__mem_source_free(&c->data.mem);
  fl__mem_source_free(&c->hold.mem);
  fl__key_free(c->key);
  fl__state_close(c);
  const fl_allocator *a = c->alloc != NULL ? &c->alloc_copy : NULL;
  fl_allocator copy;
  if (a != NULL) {
    /* The handle holds the allocator; keep a copy to free the handle itself with it. */
    copy = c->alloc_copy;
    a = &copy;
  }
  fl__free(a, c->state_dir);
  fl__free(a, c);
}

int fl_client_is_enrolled(const fl_client *c) {
  return c != NULL && c->device_id != 0 && c->key != NULL;
}

uint64_t fl_client_device_id(const fl_client *c) {
  return c != NULL ? c->device_id : 0;
}

void fl_client_set_trainer(fl_client *c, fl_trainer_fn fn, void *ctx) {
  c->trainer = fn;
  c->trainer_ctx = ctx;
}
