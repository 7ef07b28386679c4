/*
 * libflclient internals shared between the files of client/. Not installed.
 *
 * Files: client.c (handle, options), state.c (state directory, key, identity, atomic files,
 * recovery), model_cache.c (verification and the cache by hash), request.c (signed envelopes,
 * response classification), transport_curl.c, enroll.c, round.c (step machine), train.c
 * (data sources, local training), update.c (delta, clip, noise, encode, sign), inference.c,
 * multi.c.
 */
#ifndef FL__CLIENT_INTERNAL_H
#define FL__CLIENT_INTERNAL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "crypto.h"
#include "data.h"
#include "fl/client.h"
#include "fl/v1/fleetlearn.pb-c.h"
#include "mem.h"
#include "model.h"

#define FL__ERRMSG_MAX 256
#define FL__PATH_MAX 4096
/* Default (and the curl transport's hard) limit on an answer body. */
#define FL__RESPONSE_MAX ((size_t)1 << 30)
/* Largest size an output struct may claim: beyond it the size field is taken for garbage. */
#define FL__OUT_SIZE_MAX ((size_t)4096)
/* Bounds on what a check-in answer may ask of the device (fl/client.h, docs/API.md 1.4): a task
 * with more local epochs is refused (the coordinator's plans allow at most this many), a
 * larger batch is trained as batches of this size (the buffers it needs are the only thing a
 * batch size changes on the device), and no wait the coordinator names (retry window, retry
 * hint) is longer than a day. */
#define FL__TASK_MAX_EPOCHS 1000u
#define FL__TASK_MAX_BATCH 65536u
#define FL__WAIT_MAX_MS INT64_C(86400000)

/* The buffer an upload is sent from: the unsigned UpdateUpload at body (len bytes) inside one
 * allocation with FL__UPLOAD_HEAD bytes before it, where each attempt writes its envelope's
 * fields, and FL__UPLOAD_TAIL after it, where it writes the signature field: the delta is
 * packed once and never copied inside the library again (request.c). */
#define FL__UPLOAD_HEAD 64 /* device_id, timestamp, nonce, body's key and length: <= 51 */
#define FL__UPLOAD_TAIL 66 /* UpdateUpload.signature: key, length, 64 bytes */
typedef struct fl__upload_buf {
  uint8_t *alloc;
  uint8_t *body;
  size_t len;
} fl__upload_buf;

struct fl__store_entry;

/* A model version that passed verification: the fl_model built from it (owned), or a reference
 * to the shared copy in an fl_model_store (ref; model is NULL then). */
typedef struct fl__loaded_model {
  fl_model *model;
  struct fl__store_entry *ref;
  uint64_t model_id, version, parent_version;
  uint8_t sha256[FL_SHA256_LEN];
  uint8_t sig[FL_SIG_LEN]; /* the coordinator's signature over sha256 */
  size_t sig_len;
} fl__loaded_model;

static inline bool fl__loaded_have(const fl__loaded_model *m) {
  return m->model != NULL || m->ref != NULL;
}

typedef enum fl__phase {
  FL__PH_IDLE = 0,
  FL__PH_CHECKIN,
  FL__PH_FETCH_ROLLOUT,
  FL__PH_FETCH_BASE,
  FL__PH_TRAIN,
  FL__PH_UPLOAD,
  FL__PH_DONE,
  FL__PH_FETCH_EVAL,  /* downloading a version an evaluation gate asked for */
  FL__PH_EVAL_REPORT, /* posting its evaluation report */
  /* Secure aggregation (secagg.c, docs/SECAGG.md): advertising the round's keys, polling the
   * round's state for the next phase, sending the sealed shares, the unmasking shares. */
  FL__PH_SA_KEYS,
  FL__PH_SA_POLL,
  FL__PH_SA_SHARES,
  FL__PH_SA_UNMASK
} fl__phase;

typedef enum fl__io { FL__IO_IDLE = 0, FL__IO_INFLIGHT, FL__IO_BACKOFF } fl__io;

/* The training task of the current round, copied out of the check-in answer. */
typedef struct fl__task {
  uint64_t round_id, model_id, base_version, seed;
  uint8_t base_sha256[FL_SHA256_LEN];
  uint32_t local_epochs, batch_size;
  float learning_rate, momentum, weight_decay, prox_mu;
  float clip_norm, noise_stddev, topk_fraction;
  int encoding;
  int64_t deadline_ms;
  uint32_t sa_threshold, sa_neighbors; /* secure aggregation; 0: a plain round */
} fl__task;

/* The model the check-in assigned for inference. */
typedef struct fl__rollout {
  uint64_t model_id, version;
  uint8_t sha256[FL_SHA256_LEN];
} fl__rollout;

/* The evaluation task of the last check-in (evaluate.c). */
typedef struct fl__evaltask {
  uint64_t model_id, version, gate_id, campaign_id; /* one of gate_id, campaign_id is set */
  uint8_t sha256[FL_SHA256_LEN];
} fl__evaltask;

/* Built-in data: a data set owned by the handle (CSV/IDX) or borrowed arrays, served in a
 * seeded shuffled order. */
typedef struct fl__mem_source {
  fl_dataset owned; /* n == 0 when borrowing */
  const float *x;
  const int32_t *labels;
  size_t n, x_dim;
  uint32_t *order;
  size_t pos;
  const fl_allocator *alloc;
} fl__mem_source;

/* Where examples come from: the embedder's callbacks, or the built-in source over memory. */
typedef struct fl__data_slot {
  fl_data_source src;
  fl__mem_source mem; /* behind src when the built-in sources are used */
  bool have;
} fl__data_slot;

/* Drift statistics (drift.c, docs/DRIFT.md): Welford's running mean and sum of squared
 * deviations per feature, a histogram of the model's score and the anomaly count, over the
 * examples of one window. */
#define FL__DRIFT_MAX_FEATURES 256
#define FL__DRIFT_MAX_BINS 64
typedef struct fl__drift_acc {
  uint64_t model_id, version, count, anomalies;
  uint32_t n_feat, n_bins; /* n_feat 0: the model has more inputs than FL__DRIFT_MAX_FEATURES */
  double mean[FL__DRIFT_MAX_FEATURES], m2[FL__DRIFT_MAX_FEATURES];
  uint64_t hist[FL__DRIFT_MAX_BINS];
  double lo, hi;
} fl__drift_acc;

struct fl_multi;

#define FL__CONDITIONS_MAX 16
#define FL__CONDITION_LEN 64

/* The check-in's conditions field (conditions.c): pointers into c->conds, valid while the
 * conditions are not changed. */
size_t fl__conditions_view(const fl_client *c, char *out[FL__CONDITIONS_MAX]);

struct fl_client {
  fl_allocator alloc_copy;
  const fl_allocator *alloc; /* &alloc_copy, or NULL for the C library */
  fl_logger log;
  char errmsg[FL__ERRMSG_MAX];

  char *state_dir;
  int lock_fd;
  long connect_timeout_ms, request_timeout_ms, backoff_base_ms, backoff_max_ms;
  int max_retries;
  uint64_t want_model_id;
  bool follow_base;
  size_t max_response_bytes;

  fl_transport tr;
  bool tr_busy;          /* begin() called, end() not yet */
  fl_model_store *store; /* borrowed, may be NULL */

  fl_key *key;
  uint64_t device_id; /* 0: not enrolled */
  uint8_t coord_pub[FL_PUBKEY_LEN];
  bool have_coord_pub;
  bool coord_from_opts;
  bool insecure_http;      /* the built-in transport on an http:// URL (allow_insecure_http) */
  int64_t clock_offset_ms; /* server time - local time, learned at check-in */

  fl__data_slot data; /* training data */
  fl_trainer_fn trainer;
  void *trainer_ctx;

  fl__data_slot hold; /* hold-out data for federated evaluation (evaluate.c) */
  /* conditions reported at check-in (conditions.c), NUL-terminated copies */
  char conds[FL__CONDITIONS_MAX][FL__CONDITION_LEN];
  size_t n_conds;
  float anomaly_threshold;

  /* drift statistics (drift.c): the service window and its report cadence (0: off) */
  uint32_t drift_every, drift_checkins;
  bool drift_sent; /* the check-in in flight carries the window */
  fl__drift_acc drift;

  /* round state */
  fl__phase phase;
  fl__io io;
  int attempts;
  int64_t wake_at_ms;
  int64_t inflight_deadline_ms; /* guards against a transport that never answers */
  char req_method[8];
  char req_path[128];
  char req_etag[2 * FL_SHA256_LEN + 3];
  uint8_t *req_body; /* inner message, re-wrapped and re-signed at every attempt */
  size_t req_body_len;
  uint8_t *req_alloc; /* an upload's fl__upload_buf allocation, req_body inside it; else NULL */
  bool req_upload;    /* req_body is an unsigned UpdateUpload */
  uint8_t req_content[FL_SHA256_LEN]; /* its content digest, signed per attempt */
  uint8_t *wire;                      /* signed envelope of the attempt in flight */
  size_t wire_len;
  bool wire_in_req; /* wire points into req_alloc (an upload): not freed on its own */
  char *auth;       /* X-FL-Auth of the attempt in flight */
  fl__task task;
  bool have_task;
  /* Secure aggregation's round state (secagg_dev.h), its clipped delta once trained, and the
   * SecAggPhase a poll waits for. In memory only, wiped when the round ends. */
  struct fl_sa_dev *sa;
  float *sa_delta;
  size_t sa_len;
  int sa_wait;
  fl__rollout rollout;
  bool want_rollout;
  bool rollout_assigned; /* the last check-in named an inference version */
  fl__evaltask eval;
  bool want_eval;
  fl__loaded_model base;
  fl_round_result result;

  /* inference: the active model in memory, the previous one only on disk (by hash) */
  fl__loaded_model active;
  bool has_previous;
  uint8_t previous_sha[FL_SHA256_LEN];

  /* fl_multi membership */
  struct fl_multi *multi;
  struct fl_client *multi_next; /* list of the multi's clients */
  bool lent;                    /* handed out for training; not stepped until trained */
  bool queued;                  /* an event for it waits in the multi's queue */
  unsigned round_gen;           /* incremented by fl_client_round_begin() */
  unsigned multi_done_gen;      /* round_gen whose DONE the multi has reported */
  _Atomic int trained;          /* set by fl_client_train() when it returns */
};

/* client.c */
/* Versioned structs (docs/ABI.md). fl__opts_read copies the fields in->version has into a
 * zeroed *out; a bad version is FL_E_INVAL (<= 0) or FL_E_UNSUPPORTED (newer), logged through
 * the options' log_fn. fl__transport_read and fl__data_source_read check the version and the
 * required callbacks the same way. */
int fl__opts_read(const fl_client_opts *in, fl_client_opts *out);
/* Logs at FL_LOG_ERROR through the options' log_fn: errors found before there is a handle. */
void fl__opts_log(const fl_client_opts *o, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
int fl__transport_read(const fl_client_opts *o, const fl_transport *in, fl_transport *out);
int fl__data_source_read(fl_client *c, const fl_data_source *in, fl_data_source *out);
/* Copies an output struct whose first field is `size_t size`, set by the caller in dst: at most
 * that many bytes of src (of `known` bytes), zeroes dst's bytes beyond `known`, leaves dst's
 * size as it is. FL_E_INVAL if dst's size is below `min` (the first published layout) or
 * above FL__OUT_SIZE_MAX. */
int fl__copy_out(void *dst, const void *src, size_t known, size_t min);
void fl__client_err(fl_client *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int64_t fl__client_now_ms(void);                /* CLOCK_REALTIME */
int64_t fl__client_time_ms(const fl_client *c); /* corrected by the server's clock */

/* a + b and a - b clamped to the int64 range. Times from the coordinator (server_time_ms,
 * retry windows, deadlines, hints) are whatever it sends, unsigned, and signed overflow is
 * undefined behaviour. */
static inline int64_t fl__add_sat(int64_t a, int64_t b) {
  int64_t r;
  if (__builtin_add_overflow(a, b, &r))
    return b > 0 ? INT64_MAX : INT64_MIN;
  return r;
}

static inline int64_t fl__sub_sat(int64_t a, int64_t b) {
  int64_t r;
  if (__builtin_sub_overflow(a, b, &r))
    return b < 0 ? INT64_MAX : INT64_MIN;
  return r;
}

/* state.c */
int fl__state_open(fl_client *c); /* mkdir, lock, recover temp files */
void fl__state_close(fl_client *c);
int fl__state_recover(const char *dir); /* removes leftover temp files in dir and dir/models */
int fl__state_load_key(fl_client *c, bool create);
int fl__state_load_identity(fl_client *c);
int fl__state_save_identity(fl_client *c, uint64_t device_id, const uint8_t pub[FL_PUBKEY_LEN]);
int fl__state_path(const fl_client *c, char *out, size_t out_len, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
int fl__read_file(const fl_allocator *a, const char *path, size_t max, uint8_t **out,
                  size_t *out_len);
/* Writes path atomically (temp file, rename) without fsync: for files verified when loaded
 * (the model cache), where a file torn by a power loss is detected and fetched again. */
int fl__write_file_fast(const char *path, const void *data, size_t len, unsigned mode);
/* fsync of the file and of its directory: makes a fl__write_file_fast file durable. */
int fl__file_sync(const char *path);
/* Reads the state file `name` (at most `max` bytes) as text into text[cap], cut to fit and
 * NUL-terminated; path[] gets its path for the caller's messages. */
int fl__state_read_text(fl_client *c, const char *name, size_t max, char path[FL__PATH_MAX],
                        char *text, size_t cap);

/* model_cache.c */
/* Parses ModelVersion bytes, checks spec and weights, recomputes the model digest and checks
 * it against the sha256 field and expect_sha (when not NULL), then the coordinator's signature.
 * On success *out owns a new model; on error *out is untouched and `why` says what failed. */
int fl__model_verify(const uint8_t *buf, size_t len, const uint8_t coord_pub[FL_PUBKEY_LEN],
                     const uint8_t *expect_sha, const fl_allocator *a, fl__loaded_model *out,
                     char *why, size_t why_len);
void fl__loaded_free(fl__loaded_model *m); /* also drops a store reference */
/* The weights of a loaded version (its own model's or the shared copy's), read-only. */
const float *fl__loaded_params(const fl__loaded_model *m);
const fl_model *fl__loaded_layout(const fl__loaded_model *m);
/* A private, trainable model with the version's weights (allocated with the client's
 * allocator): m->model itself is handed over when it is owned (m->model becomes NULL), else a
 * copy of the shared one is built. */
int fl__loaded_take_model(fl_client *c, fl__loaded_model *m, fl_model **out);
/* With a store: puts the verified version (model built, buf its ModelVersion bytes) into it
 * and turns *m into a reference to the shared copy. Without one, or on failure to allocate,
 * *m stays as it is (FL_OK: the store is only an optimisation). */
void fl__store_adopt(fl_client *c, fl__loaded_model *m, const uint8_t *buf, size_t len);
/* The training base: from the store (a reference, after checking its signature with this
 * client's key), else from the disk cache (then adopted into the store). */
int fl__cache_load_base(fl_client *c, const uint8_t sha[FL_SHA256_LEN], fl__loaded_model *out);
/* Loads and verifies state_dir/models/<hex>.pb; FL_E_NOTFOUND when absent. A file that does
 * not verify (torn by a power loss, damaged) is removed, so that the next download writes it
 * again. */
int fl__cache_load(fl_client *c, const uint8_t sha[FL_SHA256_LEN], fl__loaded_model *out);
/* Writes a verified version once: nothing is done when its file exists (the name is its
 * content's hash, and loading verifies it). Not synced: see state.c. */
int fl__cache_store(fl_client *c, const uint8_t sha[FL_SHA256_LEN], const uint8_t *buf, size_t len);
/* Makes the cached file of that version durable (before an inference pointer names it). */
int fl__cache_sync(fl_client *c, const uint8_t sha[FL_SHA256_LEN]);
/* Removes cached versions other than the active, previous and current base ones. */
void fl__cache_prune(fl_client *c);

/* request.c */
/* Wraps c->req_body in a fresh signed envelope (new nonce and timestamp) into c->wire (POST)
 * or c->auth (GET). */
int fl__request_sign(fl_client *c);
/* Maps a non-200 answer to an error and tells whether retrying may help; *retry_after_ms gets
 * the coordinator's retry hint (delay in ms, 0 if none). The detail goes to c->errmsg. */
int fl__response_error(fl_client *c, const fl_http_response *r, bool *transient,
                       int64_t *retry_after_ms);
void fl__request_clear(fl_client *c);
/* A 200 answer being decoded: protobuf-c allocates within the handle's allocator and a budget
 * set by the answer's size. */
typedef struct fl__answer_arena {
  ProtobufCAllocator pa;
  fl_pb_budget budget;
} fl__answer_arena;
/* Decodes the answer's body as a `desc` message, allocated from `ar`; NULL on malformed input or
 * out of memory (protobuf-c does not tell them apart), the client's message naming `what`.
 * Free the message with its own free_unpacked and &ar->pa. */
ProtobufCMessage *fl__answer_unpack(fl_client *c, fl__answer_arena *ar,
                                    const ProtobufCMessageDescriptor *desc,
                                    const fl_http_response *resp, const char *what);
/* Advances the current exchange (c->req_*) with retries and backoff. FL_OK: *resp holds a 200
 * or 304 answer, valid until fl__exchange_end(). FL_E_AGAIN: not yet, *step says whether I/O
 * or a backoff is pending. Anything else: the exchange failed for good (nothing in flight).
 * deadline_ms (Unix ms, 0 = none) stops retries that could not finish in time. */
int fl__exchange_step(fl_client *c, int timeout_ms, int64_t deadline_ms, fl_http_response *resp,
                      fl_step *step);
void fl__exchange_end(fl_client *c);
int fl__request_set(fl_client *c, const char *method, const char *path, const uint8_t *body,
                    size_t len); /* copies body */
/* POST /v1/updates of an unsigned UpdateUpload packed by fl__update_pack, whose buffer the
 * request takes over (no copy): every attempt signs the update over its own timestamp and
 * nonce in place and sends an empty envelope signature. */
int fl__request_set_upload_buf(fl_client *c, fl__upload_buf *ub,
                               const uint8_t content[FL_SHA256_LEN]);

/* transport_curl.c */
int fl__curl_transport_new(fl_transport *out, const char *server_url, const fl_client_opts *o);
/* Called by fl_multi when the shared multi reports the transfer finished. */
void fl__curl_transport_finished(void *ctx, int curlcode);
/* The caller of tr's begin() keeps req->body valid until it calls end() or begin() again, so
 * the built-in transport sends the body from there instead of copying it. The public contract
 * (client.h) lends the request only during begin(); libflclient itself keeps the longer
 * promise (request.c: the wire buffer is signed, rewritten or freed only between exchanges),
 * and so may a wrapper that forwards libflclient's request (fl-sim's link). false, and nothing
 * changes, when tr is not the built-in libcurl transport. */
bool fl__curl_transport_keep_body(const fl_transport *tr);

/* round.c */
void fl__round_finish(fl_client *c, fl_round_outcome outcome, int err);
void fl__round_reset(fl_client *c);

/* drift.c. Examples scored by model m (outputs `out`) go into acc. */
void fl__drift_reset(fl__drift_acc *acc, const fl_model *m, uint64_t model_id, uint64_t version);
void fl__drift_add(fl__drift_acc *acc, const fl_model *m, float threshold, const float *x,
                   const float *out, size_t n);
/* The accumulator as a message; mean/m2/hist point into acc. */
void fl__drift_msg(const fl__drift_acc *acc, Fl__V1__DriftStats *msg);
/* The served examples of fl_client_predict (no-op when drift statistics are off). */
void fl__drift_observe(fl_client *c, const float *x, const float *out, size_t n);
/* The training data scored by the trained model m, into acc (FL_E_NOTFOUND: nothing to do). */
int fl__drift_train_stats(fl_client *c, fl_model *m, fl__drift_acc *acc);
/* The window for the check-in being packed, NULL when it is not due. */
const fl__drift_acc *fl__drift_due(fl_client *c);
/* After the check-in's answer: a window that was sent starts again. */
void fl__drift_checkin_done(fl_client *c, bool ok);

/* train.c */
void fl__mem_source_free(fl__mem_source *s);
/* Serves borrowed arrays (and, when owned is not NULL, a data set it takes over) through *src.
 * On error nothing changes (owned stays with the caller). */
int fl__mem_source_install(fl__mem_source *s, fl_data_source *src, const fl_allocator *a,
                           fl_dataset *owned, const float *x, const int32_t *labels, size_t n,
                           size_t x_dim);
/* Setting the training or the hold-out data, the public setters' shared part. On error the
 * slot is unchanged; a data set the slot was to own (`owned`, the one a file was loaded into)
 * is freed. */
int fl__slot_set_source(fl_client *c, fl__data_slot *d, const fl_data_source *src);
int fl__slot_set_memory(fl__data_slot *d, const fl_allocator *a, fl_dataset *owned, const float *x,
                        const int32_t *labels, size_t n, size_t x_dim);
int fl__slot_set_csv(fl_client *c, fl__data_slot *d, const char *path, int label_col);

/* evaluate.c */
/* The check-in named an evaluation task: remembers it when hold-out data is set. */
void fl__eval_note(fl_client *c, const Fl__V1__EvalTask *t);
/* Evaluates the verified model on the hold-out data and queues the EvalReport as the next
 * request (POST /v1/evaluations). */
int fl__eval_run(fl_client *c, fl__loaded_model *m);

/* update.c */
typedef struct fl__update_params {
  uint64_t device_id, round_id, model_id, base_version, sample_count;
  float loss, clip_norm, noise_stddev, topk_fraction;
  int encoding;
  const Fl__V1__DriftStats *train_stats; /* NULL: not sent */
} fl__update_params;
int fl__update_pack(const fl_model *layout, const float *base, const float *local,
                    const fl__update_params *p, const fl_allocator *a, fl__upload_buf *out,
                    float *norm, uint8_t content[FL_SHA256_LEN]);
/* Secure aggregation: the clipped delta = local - base (n floats) into *delta (allocated with
 * a), FL_E_NONFINITE when training diverged; and the UpdateUpload of a masked input (len
 * uint32 LE words at y), packed like fl__update_pack's. */
int fl__update_clipped(const float *base, const float *local, size_t n, float clip_norm,
                       const fl_allocator *a, float **delta);
int fl__update_pack_masked(const fl__update_params *p, const uint8_t *y, size_t len,
                           const fl_allocator *a, fl__upload_buf *out,
                           uint8_t content[FL_SHA256_LEN]);
/* secagg.c: the round's secure-aggregation steps (round.c and train.c call them). */
int fl__sa_begin(fl_client *c);                                /* advertise the keys */
int fl__sa_after_train(fl_client *c);                          /* wait for the masked phase */
int fl__sa_on_answer(fl_client *c, const fl_http_response *r); /* the SA_* phases' answers */
int fl__sa_after_upload(fl_client *c);                         /* wait for unmasking */
void fl__sa_end(fl_client *c);                                 /* wipe and free */
/* Writes the signature field of one attempt (FL__UPLOAD_TAIL bytes) at tail. */
int fl__update_sign_in_place(const uint8_t content[FL_SHA256_LEN], int64_t timestamp_ms,
                             const uint8_t *nonce, size_t nonce_len, const fl_key *key,
                             uint8_t *tail);
/* Builds the serialized UpdateUpload for delta = local - base (n floats each, in the layout
 * of `layout`), without its signature. *out is allocated with `a`; *norm is the norm as sent;
 * content receives the update's content digest (docs/SIGNING.md), from which each attempt is
 * signed by fl__update_sign. */
int fl__update_build(const fl_model *layout, const float *base, const float *local,
                     const fl__update_params *p, const fl_allocator *a, uint8_t **out,
                     size_t *out_len, float *norm, uint8_t content[FL_SHA256_LEN]);
/* The body of one upload attempt: the unsigned UpdateUpload `body` with its signature over the
 * upload digest of content, timestamp_ms and nonce (the attempt's envelope fields). *out is
 * allocated with `a`. */
int fl__update_sign(const uint8_t content[FL_SHA256_LEN], int64_t timestamp_ms,
                    const uint8_t *nonce, size_t nonce_len, const fl_key *key, const uint8_t *body,
                    size_t body_len, const fl_allocator *a, uint8_t **out, size_t *out_len);

/* inference.c */
/* Makes `m` the active model: writes the rollout pointer file atomically, then keeps the old
 * active one as previous. Takes ownership of *m on success (m is zeroed). */
int fl__inference_activate(fl_client *c, fl__loaded_model *m);
/* The same for the cached model with that hash; on error the active model stays. */
int fl__inference_activate_cached(fl_client *c, const uint8_t sha256[FL_SHA256_LEN]);
int fl__inference_load(fl_client *c); /* at open: active, else previous */

/* multi.c */
void fl__multi_forget(fl_client *c);
void *fl__multi_curlm(struct fl_multi *m); /* the shared CURLM, for the built-in transport */
void fl__multi_wakeup(struct fl_multi *m); /* thread-safe: a lent client finished training */

#endif /* FL__CLIENT_INTERNAL_H */
