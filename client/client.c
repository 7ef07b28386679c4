/*
 * The client handle: options, construction and destruction, error detail, clocks.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
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

/* ---- versioned structs (docs/ABI.md) ------------------------------------------------------ */

#define FIELD_END(type, field) (offsetof(type, field) + sizeof(((type *)0)->field))

/* Bytes of fl_client_opts each version has; index = version. */
static const size_t OPTS_SIZE[] = {0, FIELD_END(fl_client_opts, follow_training_base),
                                   FIELD_END(fl_client_opts, max_response_bytes),
                                   FIELD_END(fl_client_opts, allow_insecure_http),
                                   FIELD_END(fl_client_opts, model_store)};
_Static_assert(sizeof OPTS_SIZE / sizeof OPTS_SIZE[0] == FL_CLIENT_OPTS_VERSION + 1,
               "one size per fl_client_opts version");

/* Reports a bad struct where a caller without a handle can see it: every layout of
 * fl_client_opts, including a version 0 one, has log_fn and log_ctx at the same place. */
void fl__opts_log(const fl_client_opts *o, const char *fmt, ...) {
  fl_logger lg = {.fn = o->log_fn, .ctx = o->log_ctx, .level = FL_LOG_ERROR};
  va_list ap;
  va_start(ap, fmt);
  fl__vlog(&lg, FL_LOG_ERROR, fmt, ap);
  va_end(ap);
}

/* `macro` names the version macro the caller should have used. */
static int check_version(const fl_client_opts *o, const char *what, const char *macro, int version,
                         int known) {
  if (version <= 0) {
    fl__opts_log(o, "%s.version is %d: set it to %s from fl/client.h", what, version, macro);
    return FL_E_INVAL;
  }
  if (version > known) {
    fl__opts_log(o,
                 "%s.version %d is newer than this libflclient %s knows (%d): upgrade the library",
                 what, version, fl_version_string(), known);
    return FL_E_UNSUPPORTED;
  }
  return FL_OK;
}

int fl__opts_read(const fl_client_opts *in, fl_client_opts *out) {
  int err = check_version(in, "fl_client_opts", "FL_CLIENT_OPTS_VERSION", in->version,
                          FL_CLIENT_OPTS_VERSION);
  if (err != FL_OK)
    return err;
  memset(out, 0, sizeof *out);
  memcpy(out, in, OPTS_SIZE[in->version]);
  return FL_OK;
}

int fl__transport_read(const fl_client_opts *o, const fl_transport *in, fl_transport *out) {
  int err =
      check_version(o, "fl_transport", "FL_TRANSPORT_VERSION", in->version, FL_TRANSPORT_VERSION);
  if (err != FL_OK)
    return err;
  if (in->begin == NULL || in->poll == NULL || in->end == NULL) {
    fl__opts_log(o, "fl_transport: begin, poll and end are required");
    return FL_E_INVAL;
  }
  /* A version 1 struct ends before attach, a version 2 one before pollfd: copying the whole
   * of ours would read past them. */
  memset(out, 0, sizeof *out);
  memcpy(out, in,
         in->version >= 3   ? sizeof *out
         : in->version >= 2 ? offsetof(fl_transport, pollfd)
                            : offsetof(fl_transport, attach));
  return FL_OK;
}

int fl__data_source_read(fl_client *c, const fl_data_source *in, fl_data_source *out) {
  if (in == NULL)
    return FL_E_INVAL;
  if (in->version <= 0 || in->version > FL_DATA_SOURCE_VERSION) {
    fl__client_err(c, "fl_data_source.version %d: %s", in->version,
                   in->version <= 0 ? "set it to FL_DATA_SOURCE_VERSION from fl/client.h"
                                    : "newer than this libflclient knows: upgrade the library");
    return in->version <= 0 ? FL_E_INVAL : FL_E_UNSUPPORTED;
  }
  if (in->next == NULL || in->x_dim == 0) {
    fl__client_err(c, "fl_data_source: next() and x_dim are required");
    return FL_E_INVAL;
  }
  *out = *in; /* version 1 is the whole struct */
  return FL_OK;
}

int fl__copy_out(void *dst, const void *src, size_t known, size_t min) {
  size_t want;
  memcpy(&want, dst, sizeof want);
  if (want < min || want > FL__OUT_SIZE_MAX)
    return FL_E_INVAL;
  size_t n = want < known ? want : known;
  memcpy((char *)dst + sizeof want, (const char *)src + sizeof want, n - sizeof want);
  if (want > known) /* a caller built against a newer header: its new fields read as 0 */
    memset((char *)dst + known, 0, want - known);
  return FL_OK;
}

/* ---- the handle ---------------------------------------------------------------------------- */

/* Copies the scalar options; strings are duplicated by the caller of this. */
static void apply_opts(fl_client *c, const fl_client_opts *o) {
  c->connect_timeout_ms = or_default(o->connect_timeout_ms, 10000);
  c->request_timeout_ms = or_default(o->request_timeout_ms, 60000);
  c->backoff_base_ms = or_default(o->backoff_base_ms, 500);
  c->backoff_max_ms = or_default(o->backoff_max_ms, 60000);
  c->max_retries = o->max_retries > 0 ? o->max_retries : 5;
  c->want_model_id = o->model_id;
  c->follow_base = o->follow_training_base != 0;
  c->max_response_bytes = o->max_response_bytes > 0 ? o->max_response_bytes : FL__RESPONSE_MAX;
  c->insecure_http = o->transport == NULL && o->server_url != NULL &&
                     strncasecmp(o->server_url, "http://", 7) == 0;
  c->store = o->model_store;
  c->log.fn = o->log_fn;
  c->log.ctx = o->log_ctx;
  c->log.level = o->log_level;
  if (o->coordinator_key != NULL) {
    memcpy(c->coord_pub, o->coordinator_key, FL_PUBKEY_LEN);
    c->have_coord_pub = true;
    c->coord_from_opts = true;
  }
}

/* The embedder's transport was checked by fl_client_new(); else the built-in one. */
static int setup_transport(fl_client *c, const fl_client_opts *o, const fl_transport *tr) {
  if (tr != NULL) {
    c->tr = *tr;
    return FL_OK;
  }
  int err = fl_transport_curl(&c->tr, o);
  if (err == FL_OK)
    fl__curl_transport_keep_body(&c->tr); /* the request's wire outlives each exchange */
  return err;
}

/* Reads the options by their version and checks what every handle needs. */
static int read_new_opts(const fl_client_opts *in, fl_client_opts *o, fl_transport *tr) {
  int err = fl__opts_read(in, o);
  if (err != FL_OK)
    return err;
  if (o->state_dir == NULL || (o->server_url == NULL && o->transport == NULL)) {
    fl__opts_log(o, "fl_client_opts: state_dir and one of server_url or transport are required");
    return FL_E_INVAL;
  }
  return o->transport != NULL ? fl__transport_read(o, o->transport, tr) : FL_OK;
}

fl_err fl_client_new(fl_client **out, const fl_client_opts *in) {
  if (out == NULL || in == NULL)
    return FL_E_INVAL;
  fl_client_opts o;
  fl_transport tr;
  const fl_client_opts *opts = &o;
  int err = read_new_opts(in, &o, &tr);
  if (err != FL_OK)
    return err;
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
  err = FL_E_NOMEM;
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
  err = setup_transport(c, opts, opts->transport != NULL ? &tr : NULL);
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
  if (c == NULL) /* void API: a NULL handle is a no-op, as for the other setters and _free */
    return;
  c->trainer = fn;
  c->trainer_ctx = ctx;
}
