/*
 * libflclient: the device side of fleetlearn.
 *
 * A gateway links this library to enroll with a coordinator, take part in federated training
 * rounds on data that never leaves the device, and run the model the coordinator rolls out.
 *
 * Conventions
 * - Every function that can fail returns an fl_err (0 = FL_OK); fl_strerror() names it and
 *   fl_client_errmsg() gives the detail of the last failure on that handle. Callbacks the
 *   embedder supplies (transport, data source, trainer) return an fl_err the same way.
 *   Functions that cannot fail return their value (a count, a flag as 0/1, a time).
 * - Constructors set *out only on success. Free functions accept NULL.
 * - Structs and ABI (docs/ABI.md): a struct the caller passes in starts with `int version`,
 *   set to the FL_..._VERSION macro of the header it was built with; the library reads only
 *   the fields that version has, so a program built against an older header keeps working
 *   with a newer library. A zero or negative version is FL_E_INVAL; a version newer than the
 *   library knows is FL_E_UNSUPPORTED (upgrade the library). A struct the library fills for
 *   the caller starts with `size_t size`, set by the caller to sizeof the struct: the library
 *   writes at most that many bytes (fields beyond it are left out; bytes beyond the fields it
 *   knows are zeroed), and a size below the first published layout (or above 4096) is
 *   FL_E_INVAL, with nothing written. Structs the library hands to a callback start with
 *   `size_t size` set by the library: a field lies beyond it when the library is older than
 *   the header the callback was built with. Fields are only ever appended.
 * - Ownership: the caller owns every struct and string it passes in; the library copies what
 *   it keeps (options, the transport table, the allocator) unless a comment says "borrowed".
 *   Pointers the library returns (messages, version strings, response bodies) stay owned by
 *   the library; how long they are valid is said at each function.
 * - Nothing blocks forever: every network exchange is bounded by the timeouts in the options,
 *   retries are bounded by a count and by the round's deadline.
 * - The library never aborts on out-of-memory: it returns FL_E_NOMEM and the handle stays
 *   usable (the step that failed may be called again).
 * - Threads: libflclient itself starts none. One fl_client is used by one thread at a time
 *   (any thread, but not two at once); different handles are independent. An fl_multi and the
 *   clients added to it are used by one thread at a time, except fl_client_train(), which may
 *   run on another thread for a client whose last step returned FL_STEP_NEED_TRAIN. Callbacks
 *   (log, transport, data source, trainer, allocator) run on the thread that made the call
 *   they serve; the allocator and the log function of a client also run on the thread
 *   running fl_client_train(), so they must be thread-safe when training runs elsewhere.
 *   fl_version(), fl_version_string(), fl_strerror() and fl_err_name() may be called from any
 *   thread at any time.
 * - Process-wide state: each built-in transport and each fl_multi calls curl_global_init()
 *   when created and curl_global_cleanup() when freed (libcurl counts them). Before libcurl
 *   7.84 these are not thread-safe: then call curl_global_init() yourself before starting
 *   threads that create clients.
 *
 * Memory outside the allocator hooks
 * The fl_allocator in the options receives every allocation libflclient makes itself (handle,
 * request and response buffers, models, data sets). Three libraries it uses allocate on their
 * own with malloc() or mmap(), which the hooks do not see: libcurl (handles, connections, TLS
 * sessions, header lists), OpenSSL (key, digest and signature contexts, TLS) and OpenBLAS (its
 * work buffers, mapped at its first use). libcurl's out-of-memory failures come back as
 * FL_E_NOMEM, OpenSSL's as FL_E_CRYPTO or FL_E_NOMEM; OpenBLAS has no way to report one. A
 * device that must bound all memory budgets for them separately.
 *
 * Threads started by OpenBLAS
 * OpenBLAS, which the built-in training and inference use for matrix products, may start a
 * pool of worker threads (one per core) at its first use, and they stay until the process
 * exits. To keep a gateway single-threaded, set OPENBLAS_NUM_THREADS=1 in the environment
 * before the process starts, or call openblas_set_num_threads(1) (from <cblas.h>) before the
 * first fl_client_train() or fl_client_predict(). An embedder-supplied trainer does not use
 * OpenBLAS, but fl_client_predict() and federated evaluation still do.
 *
 * Lean builds (docs/PORTING.md)
 * A library built with FL_WITH_BLAS=OFF runs its matrix products on portable C kernels on the
 * calling thread: no OpenBLAS, no worker threads. One built with FL_WITH_CURL=OFF has no
 * built-in transport: fl_transport_curl() still exists but returns FL_E_UNSUPPORTED (the
 * reason goes to log_fn), so fl_client_new() needs opts->transport; fl_multi then has no
 * shared connection pool and sleeps in poll() between steps. The curl_global_init() notes
 * above do not apply to such a build. FL_LEAN=ON turns both off.
 */
#ifndef FL_CLIENT_H
#define FL_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "fl/alloc.h"
#include "fl/err.h"
#include "fl/version.h"

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__) || defined(__clang__)
#define FL_API __attribute__((visibility("default")))
#else
#define FL_API
#endif

/* The library's version: FL_VERSION_HEX, FL_VERSION_STRING and the parts in fl/version.h,
 * generated from the CMake project version. A program built against version X.Y runs with any
 * library X.Z, Z >= Y (for X = 0: only 0.Y.*, see docs/ABI.md); compare fl_version() against
 * FL_VERSION_HEX at start-up to check. fl_version_string() is a static string. */
FL_API unsigned fl_version(void);
FL_API const char *fl_version_string(void);

/* ------------------------------------------------------------------------------------------ */
/* Transport: how requests reach the coordinator                                              */

/* One HTTP-like exchange, built by the library. Everything is borrowed for the duration of
 * begin(); a transport that needs it later copies it. */
typedef struct fl_http_request {
  size_t size;               /* set by the library: sizeof as it knows the struct */
  const char *method;        /* "GET" or "POST" */
  const char *path;          /* "/v1/checkin"; the transport adds its base URL */
  const char *auth;          /* value of the X-FL-Auth header, or NULL */
  const char *if_none_match; /* value of If-None-Match, or NULL */
  const uint8_t *body;       /* application/x-protobuf, may be NULL when body_len is 0 */
  size_t body_len;
} fl_http_request;

/* Zeroed by the library before each poll(), with size set: the transport fills in the fields
 * that lie within size (all of these, for a transport of version 1). */
typedef struct fl_http_response {
  size_t size;         /* set by the library */
  int status;          /* HTTP status (200, 304, 4xx, 5xx) */
  const uint8_t *body; /* owned by the transport, valid until the next begin() or end() */
  size_t body_len;
  int64_t retry_after_ms; /* from a Retry-After header as a delay, 0 if none */
} fl_http_response;

/* A transport carries one request at a time for one client. An embedder can supply its own
 * (MQTT, a serial link); a synchronous one may do all the work in begin() and report the
 * result at the first poll().
 * - begin:   starts an exchange. FL_OK, or an error (FL_E_NOMEM, FL_E_TRANSPORT) after which
 *            nothing is in flight.
 * - poll:    makes progress for at most timeout_ms (0: do not wait). FL_E_AGAIN while the
 *            exchange is in flight; FL_OK with *resp filled when an HTTP status arrived;
 *            FL_E_TRANSPORT / FL_E_TIMEOUT / FL_E_NOMEM / FL_E_TOOBIG when it failed
 *            (nothing in flight). The client retries FL_E_TRANSPORT and FL_E_TIMEOUT (with
 *            backoff, within max_retries); any other error ends the exchange.
 * - end:     releases the exchange (aborts it if still in flight). Always called after begin.
 * - destroy: frees the transport; called by fl_client_free(). May be NULL.
 * - detail:  optional (may be NULL): text describing the last failure, for error messages;
 *            owned by the transport, valid until its next call.
 * - attach:  version 2, optional (may be NULL): called by fl_multi_add() with the multi and by
 *            fl_multi_remove() with NULL, never while an exchange is in flight. The built-in
 *            transport moves its transfers onto the multi's shared libcurl handle (one
 *            connection pool, one poll); a wrapper forwards the call to the transport it wraps
 *            so that the wrapped one shares them too. FL_OK or an error that fails the add.
 * - pollfd:  version 3, optional (may be NULL): the socket the exchange in flight waits on,
 *            for an event loop that is not libcurl's (a transport with its own connection, such
 *            as fl_transport_mqtt). Returns the descriptor and sets *events to FL_POLL_IN,
 *            FL_POLL_OUT or both, or returns -1 when there is none to wait on (then the loop
 *            calls poll() again within the time it would wait anyway). fl_multi_perform() waits
 *            on these sockets beside its libcurl transfers and steps the client when one is
 *            ready; an embedder with its own loop calls it on its copy of the table while a
 *            step returned FL_STEP_WAIT_IO, then steps the client when the socket is ready.
 * The table is copied (read by its version: 1 ends before attach, 2 before pollfd) by
 * fl_client_new(); when that succeeds, ctx belongs to the client, which calls destroy(ctx)
 * when it is freed; when it fails, the transport stays the caller's. The callbacks are called
 * on the thread driving the client, never two at once. */
#define FL_TRANSPORT_VERSION 3
#define FL_POLL_IN 1
#define FL_POLL_OUT 2

struct fl_multi;
typedef struct fl_transport {
  int version; /* FL_TRANSPORT_VERSION (1: without attach, 2: without pollfd) */
  void *ctx;
  fl_err (*begin)(void *ctx, const fl_http_request *req);
  fl_err (*poll)(void *ctx, int timeout_ms, fl_http_response *resp);
  void (*end)(void *ctx);
  void (*destroy)(void *ctx);
  const char *(*detail)(void *ctx);
  fl_err (*attach)(void *ctx, struct fl_multi *m);
  /* --- version 3 --- */
  int (*pollfd)(void *ctx, int *events);
} fl_transport;

/* ------------------------------------------------------------------------------------------ */
/* Sharing verified models between the clients of one process                                 */

/* An fl_model_store holds model versions that a client of this process has downloaded and
 * verified, by their sha256, as one immutable, reference-counted copy each: a gateway that runs
 * several devices (or a simulator running thousands) downloads, hashes and keeps a version once
 * instead of once per device. Opt-in: pass it as fl_client_opts.model_store.
 * - What is shared: the version's content, whose digest the library recomputed from that
 *   content when it was added (after the adding client also checked the coordinator's
 *   signature with its own pinned key). A client that takes a version from the store still
 *   checks, with its own pinned coordinator key, the coordinator's signature on that digest and
 *   that it is the hash its task or rollout names: a version signed by another coordinator is
 *   refused (and downloaded) as if the store did not have it.
 * - Only training bases are taken from the store; a client trains on its own copy of the
 *   weights, made when fl_client_train() starts. Versions no client holds are kept (at most a
 *   few, the most recently used) for the clients still to come, and freed with the store.
 * - Ownership: created by the embedder, borrowed by every client whose options name it; free
 *   it after every such client is freed. The allocator is copied (its ctx borrowed) and is used
 *   for the store's copies; it must be thread-safe when the clients run on several threads.
 * - Threads: any number of clients on any threads may use one store at once (it locks
 *   internally); fl_model_store_free() must not run concurrently with them.
 * On error *out is untouched. NULL is a no-op for the free function. */
typedef struct fl_model_store fl_model_store;
FL_API fl_err fl_model_store_new(fl_model_store **out, const fl_allocator *allocator);
FL_API void fl_model_store_free(fl_model_store *s);

/* ------------------------------------------------------------------------------------------ */
/* Options and the handle                                                                     */

/* 1: up to follow_training_base; 2: max_response_bytes; 3: allow_insecure_http;
 * 4: model_store. */
#define FL_CLIENT_OPTS_VERSION 4

/* The built-in libcurl transport (keep-alive, TLS, timeouts and the response limit from opts,
 * which is read by its version like fl_client_new() reads it), for embedders who wrap it
 * (logging, fault injection) and pass the wrapper as opts->transport. It is a version 3
 * transport without pollfd (fl_multi drives it through libcurl): a wrapper that forwards
 * attach() keeps the shared pool of an fl_multi, and one that forwards pollfd() lets fl_multi
 * wait on the socket of a wrapped fl_transport_mqtt. On error
 * *out is untouched. The caller owns the result until it hands it to fl_client_new(); its
 * destroy() frees it. A library built without libcurl returns FL_E_UNSUPPORTED ("Lean builds"
 * above). */
struct fl_client_opts;
FL_API fl_err fl_transport_curl(fl_transport *out, const struct fl_client_opts *opts);

/* MQTT 5 through a broker (docs/MQTT.md): each exchange is published QoS 1 on
 * <topic_prefix>/<username>/req<path> with a response topic (<topic_prefix>/<username>/res)
 * and fresh correlation data; fl-mqtt-bridge forwards it to the coordinator's device API and
 * publishes the answer back, the status and Retry-After in user properties, the body byte for
 * byte. The request and answer bytes are exactly those of HTTP (same envelopes, signatures and
 * reason codes), so every check the coordinator makes is unchanged. Zero-initialise and set
 * version = FL_MQTT_OPTS_VERSION; read once by fl_transport_mqtt(). */
#define FL_MQTT_OPTS_VERSION 1

typedef struct fl_mqtt_opts {
  int version; /* FL_MQTT_OPTS_VERSION */
  /* "mqtts://broker.example:8883" (TLS, the broker's certificate checked against ca_file or
   * the client options' ca_file, else the system store) or "mqtt://host:1883" (plain, only
   * with allow_insecure_http in the client options: for a broker on loopback). Required. */
  const char *broker_url;
  /* The device's broker account, required: the broker's ACL gives it the topics
   * <topic_prefix>/<username>/# and nothing else, so it is also the device's topic name.
   * Letters, digits, '.', '_' and '-' only (no MQTT wildcard or level separator). */
  const char *username;
  const char *password;     /* NULL: none */
  const char *client_id;    /* NULL: the username (a second connection with it replaces one) */
  const char *ca_file;      /* mqtts: PEM bundle; NULL: the client options' ca_file */
  const char *topic_prefix; /* NULL: "fl/v1/dev" (the bridge's --prefix must match) */
  int keepalive_s;          /* 0: 60; else 5 to 65535 seconds */
} fl_mqtt_opts;

/* The MQTT transport (a version 3 transport: pollfd gives its socket to fl_multi or a foreign
 * loop). Timeouts, the response limit and allow_insecure_http come from opts, read like
 * fl_client_new() reads them. One broker connection per transport, made at the first exchange
 * and again after it drops (a dropped connection fails the exchange in flight with
 * FL_E_TRANSPORT, which the client retries: freshly signed, and an upload's retry is
 * acknowledged as the same update by its content digest). FL_E_UNSUPPORTED when libflclient
 * was built without MQTT (FL_WITH_MQTT=OFF). On error *out is untouched; the caller owns the
 * result until it hands it to fl_client_new(). Process-wide state: the first call runs
 * mosquitto_lib_init() (thread-safe, once); it is never undone. */
FL_API fl_err fl_transport_mqtt(fl_transport *out, const struct fl_client_opts *opts,
                                const fl_mqtt_opts *mqtt);

/* Zero-initialise, set version = FL_CLIENT_OPTS_VERSION, then what you need. Fields only grow
 * at the end; a zero means "the default" given in the comment. Read once by fl_client_new():
 * the struct and its strings may be freed when it returns. */
typedef struct fl_client_opts {
  int version; /* FL_CLIENT_OPTS_VERSION */
  /* "https://coord.example:8443" (required unless transport). The built-in transport speaks
   * https only (FL_E_INVAL otherwise, the reason sent to log_fn): see allow_insecure_http. */
  const char *server_url;
  const char *state_dir;     /* created 0700 if missing (required) */
  const char *ca_file;       /* PEM bundle for TLS; NULL: system store */
  const char *pinned_pubkey; /* curl syntax "sha256//base64..." for the server's TLS key */
  /* Raw 32-byte Ed25519 key of the coordinator, when provisioned in firmware. It must match
   * the one the coordinator announces at enrollment; NULL: pinned from the enrollment answer,
   * which is then only as trustworthy as the channel it came over: enrollment needs TLS
   * (https:// with the coordinator's certificate checked) or a provisioned key. */
  const uint8_t *coordinator_key;
  long connect_timeout_ms;       /* 10000 */
  long request_timeout_ms;       /* 60000: whole exchange, including the model download */
  int max_retries;               /* 5: attempts after the first on transient failures */
  long backoff_base_ms;          /* 500: first backoff; doubles each attempt, full jitter */
  long backoff_max_ms;           /* 60000 */
  const fl_allocator *allocator; /* copied (ctx borrowed); NULL: malloc/realloc/free */
  fl_log_fn log_fn;              /* NULL: silent; log_ctx is borrowed */
  void *log_ctx;
  fl_log_level log_level; /* lines above this are dropped (default FL_LOG_ERROR = 0) */
  /* copied; NULL: the built-in libcurl transport (FL_E_UNSUPPORTED without libcurl) */
  const fl_transport *transport;
  uint64_t model_id; /* model to train and run; 0: whatever the coordinator gives */
  /* 1: while the coordinator assigns no rollout, serve for inference each newer base version
   * a training task hands out (verified like any model). 0: only rollout assignments. */
  int follow_training_base;
  /* --- version 2 --- */
  /* Largest answer body accepted, in bytes (bounds the memory a model download takes);
   * a larger answer fails the exchange with FL_E_TOOBIG, not retried. 0: 1 GiB. */
  size_t max_response_bytes;
  /* --- version 3 --- */
  /* 1: the built-in transport also accepts an http:// server_url. Plain HTTP has no server
   * authentication: whoever is on the path at enrollment can answer with their own
   * coordinator key, which the device then pins, and so choose every model it accepts and
   * every task it trains. For tests against a coordinator on loopback, or a device that is
   * provisioned with coordinator_key (then a forged enrollment answer is refused, and models
   * and tasks are verified against the provisioned key). 0: https:// only. */
  int allow_insecure_http;
  /* --- version 4 --- */
  /* Borrowed: a store shared with other clients of the process (see fl_model_store above); it
   * must outlive this handle. NULL: the client keeps its own models only. */
  fl_model_store *model_store;
} fl_client_opts;

typedef struct fl_client fl_client;

/* Opens the state directory (creating it), removes temp files a power loss left behind, loads
 * the device key, identity and the active model if present. On error *out is untouched and
 * nothing remains but the state directory itself (which may have been created); an
 * embedder's transport is not destroyed (it stays the caller's). Options of a bad version,
 * or missing required fields, are FL_E_INVAL / FL_E_UNSUPPORTED, with the reason sent to
 * opts->log_fn at FL_LOG_ERROR (there is no handle to ask yet). The directory is locked
 * against a second handle (FL_E_STATE when already in use). */
FL_API fl_err fl_client_new(fl_client **out, const fl_client_opts *opts);

/* Frees the handle and everything it owns, including the transport (destroy is called). Aborts
 * a request in flight. The client must not be in an fl_multi. */
FL_API void fl_client_free(fl_client *c);

/* Detail of the last failure on this handle ("" if none). Owned by the handle, valid until
 * the next call on it. */
FL_API const char *fl_client_errmsg(const fl_client *c);

/* ------------------------------------------------------------------------------------------ */
/* Enrollment                                                                                 */

/* Passed as an array: this struct never grows (a new field would come with a new type). */
typedef struct fl_label {
  const char *key;
  const char *value;
} fl_label;

/* Makes sure the device has a key (generates an Ed25519 key in state_dir/device.key, 0600,
 * written atomically, or reuses the one there) and enrolls with a one-time token. Blocks for
 * at most about (max_retries + 1) * request_timeout_ms. The device id and the coordinator's
 * public key are stored in state_dir/identity (atomic). Already enrolled: FL_OK, no request.
 * On failure the key stays (it is reused by the next attempt) and no identity is written.
 * FL_E_STATE during a round or while the client is in an fl_multi (enroll before adding). */
FL_API fl_err fl_client_enroll(fl_client *c, const char *token, const fl_label *labels,
                               size_t n_labels, const char *firmware);

/* 1 when the state directory holds an identity, else 0. */
FL_API int fl_client_is_enrolled(const fl_client *c);
FL_API uint64_t fl_client_device_id(const fl_client *c); /* 0 before enrollment */

/* ------------------------------------------------------------------------------------------ */
/* Training data                                                                              */

/* Batches from wherever the device keeps its data. reset() starts an epoch (seed: shuffle if
 * you can, reproducibly; may be NULL); next() fills up to `max` examples into x (max * x_dim
 * floats) and sets *n (0 = end of epoch). `labels` is a buffer of max ints for a classifier and
 * NULL otherwise; `targets` is NULL for a classifier and for an autoencoder (output size equals
 * input size: the inputs are the targets), else a buffer of max * output_size floats to fill.
 * Return FL_OK or an error, which aborts the training. The callbacks run on the thread
 * calling fl_client_train() (training) or fl_client_step() (evaluation). */
#define FL_DATA_SOURCE_VERSION 1

typedef struct fl_data_source {
  int version; /* FL_DATA_SOURCE_VERSION */
  void *ctx;
  size_t x_dim;      /* floats per example: must equal the model's input size */
  size_t n_examples; /* examples per epoch, used as the update's weight */
  fl_err (*reset)(void *ctx, uint64_t seed);
  fl_err (*next)(void *ctx, float *x, int32_t *labels, float *targets, size_t max, size_t *n);
} fl_data_source;

/* Exactly one of these is in effect; each replaces the previous one. Data loaded from files is
 * owned by the handle; fl_client_set_data_memory borrows x and labels (they must outlive the
 * handle or the next set_data call). The source struct is copied (read by its version) and
 * its ctx borrowed the same way. On error the previous data stays in effect. */
FL_API fl_err fl_client_set_data_source(fl_client *c, const fl_data_source *src);
/* CSV of floats; label_col is the 0-based label column, -1 for none (autoencoder). */
FL_API fl_err fl_client_set_data_csv(fl_client *c, const char *path, int label_col);
/* IDX files (MNIST format, optionally .gz); pixels scaled to [0, 1]. */
FL_API fl_err fl_client_set_data_idx(fl_client *c, const char *images, const char *labels);
FL_API fl_err fl_client_set_data_memory(fl_client *c, const float *x, const int32_t *labels,
                                        size_t n, size_t x_dim);

/* The round's task as the trainer callback sees it (built by the library, valid during the
 * call). */
typedef struct fl_train_task {
  size_t size; /* set by the library: fields beyond it are missing (an older library) */
  uint64_t round_id, model_id, base_version, seed;
  uint32_t local_epochs, batch_size;
  float learning_rate, momentum, weight_decay, prox_mu;
  size_t n_params, input_size, output_size;
} fl_train_task;

/* Embedder-supplied training: `weights` holds the base weights (n_params floats, the flat
 * layout of docs/API.md) and receives the locally trained ones. Set *sample_count (> 0) and
 * *loss. A non-zero return aborts the round's upload with that error. NULL: built-in training.
 * Called on the thread running fl_client_train(); ctx is borrowed (it must outlive the handle
 * or the next set_trainer call), task and weights are valid during the call only. A NULL handle
 * is ignored. */
typedef fl_err (*fl_trainer_fn)(void *ctx, const fl_train_task *task, float *weights,
                                uint64_t *sample_count, float *loss);
FL_API void fl_client_set_trainer(fl_client *c, fl_trainer_fn fn, void *ctx);

/* ------------------------------------------------------------------------------------------ */
/* Federated evaluation on hold-out data                                                     */

/* Before a rollout is promoted, an evaluation gate asks a sample of devices to judge the
 * candidate version on data they did not train on. When a check-in carries such a task and
 * hold-out data is set, the client downloads the candidate, verifies it (digest and the
 * coordinator's signature, as for any model), evaluates it on the hold-out examples inside the
 * step that received it, and reports to the coordinator: "loss" (mean over examples), for a
 * classifier "accuracy" (fraction in [0, 1]), and with an anomaly threshold set "anomaly_rate"
 * (fraction of examples whose mean squared reconstruction error exceeds it), with the number
 * of examples as the report's weight. Without hold-out data such tasks are ignored. The
 * evaluated model is never used for inference or training.
 *
 * Exactly one hold-out set is in effect; each call replaces the previous one and on error the
 * previous one stays. The source's ctx is borrowed (it must outlive the handle or the next
 * call), fl_client_set_holdout_memory borrows x and labels the same way, and data loaded from
 * a CSV file is owned by the handle. The hold-out data is never used for training. */
FL_API fl_err fl_client_set_holdout_source(fl_client *c, const fl_data_source *src);
FL_API fl_err fl_client_set_holdout_memory(fl_client *c, const float *x, const int32_t *labels,
                                           size_t n, size_t x_dim);
FL_API fl_err fl_client_set_holdout_csv(fl_client *c, const char *path, int label_col);
/* Mean squared reconstruction error above which an example counts as an anomaly in
 * "anomaly_rate" (models whose output has the input's size, e.g. autoencoders). 0: off.
 * When the hold-out data was set with labels (memory or CSV; label != 0: a true anomaly), the
 * report also has "precision" (true alarms / alarms, when there is an alarm) and "recall"
 * (true alarms / anomalies, when there is an anomaly). */
FL_API fl_err fl_client_set_anomaly_threshold(fl_client *c, float threshold);

/* A plan's evaluation policy also sends each version it produces to a sample of its cohort as
 * the same kind of task (docs/API.md, "Federated evaluation"): handled the same way, reported
 * with the same metrics; fl_round_result.eval_version names it too. */

/* Drift statistics (docs/DRIFT.md): with every_n_checkins > 0 the handle summarizes what the
 * active model scores in service (per-feature mean and variance, a histogram of the score:
 * the predicted class, or log10 of an autoencoder's reconstruction error; the anomaly count
 * with an anomaly threshold set) and every every_n_checkins-th check-in sends the window since
 * the last report, which then starts again; uploads carry the same statistics of the local
 * training data. 0 (the default): off. Features are summarized for models of up to 256
 * inputs, the score for classifiers of up to 64 classes. */
FL_API fl_err fl_client_set_service_stats(fl_client *c, uint32_t every_n_checkins);

/* Records n served examples (x: n * input_size floats) in the window, with the outputs the
 * embedder already computed (out: n * output_size floats), or, out NULL, running the active
 * model. fl_client_predict() records its examples itself. FL_E_NOTFOUND without a model,
 * FL_E_STATE while drift statistics are off. Examples with a non-finite feature are skipped. */
FL_API fl_err fl_client_observe(fl_client *c, const float *x, size_t n, const float *out);

/* ------------------------------------------------------------------------------------------ */
/* Device conditions                                                                           */

/* The conditions the device is in now, e.g. "charging", "unmetered", "idle": sent with every
 * later check-in (replacing the previous set; n = 0 clears it). A plan's training cohort may
 * require some: a device without them is told to wait ("not_eligible") instead of training.
 * At most 16 conditions of 1-63 printable ASCII characters (no quotes, backslashes or
 * spaces), copied; FL_E_INVAL otherwise, and the previous set stays. Since 0.3. */
FL_API fl_err fl_client_set_conditions(fl_client *c, const char *const *conds, size_t n);

/* ------------------------------------------------------------------------------------------ */
/* Rounds, as steps                                                                           */

typedef enum fl_step {
  FL_STEP_IDLE = 0,       /* no round in progress: call fl_client_round_begin() */
  FL_STEP_WAIT_IO = 1,    /* a request is in flight: call fl_client_step() again */
  FL_STEP_WAIT_TIME = 2,  /* backing off: call again at fl_client_wake_at_ms() */
  FL_STEP_NEED_TRAIN = 3, /* call fl_client_train() (any thread), then step again */
  FL_STEP_DONE = 4        /* round over: see fl_client_round_result() */
} fl_step;

typedef enum fl_round_outcome {
  FL_ROUND_NONE = 0,
  FL_ROUND_UPLOADED = 1,     /* the update was acknowledged (durably) by the coordinator */
  FL_ROUND_NOT_SELECTED = 2, /* no task this time: come back at retry_at_ms */
  FL_ROUND_FAILED = 3        /* err says why; retry_at_ms when the coordinator gave one */
} fl_round_outcome;

/* Filled by the library: set size = sizeof(fl_round_result) first. */
typedef struct fl_round_result {
  size_t size;
  fl_round_outcome outcome;
  fl_err err; /* FL_OK unless FL_ROUND_FAILED */
  uint64_t round_id, model_id, base_version;
  uint64_t sample_count;
  float loss, norm;         /* mean local loss; L2 norm of the delta as sent */
  size_t upload_bytes;      /* size of the signed request body on the wire */
  int duplicate;            /* the coordinator had already acknowledged this update */
  int64_t retry_at_ms;      /* Unix ms at which to check in next (0: whenever you like) */
  uint64_t running_version; /* inference model version after this check-in (0: none) */
  fl_err rollout_err;       /* FL_OK, or why an assigned inference version was refused (the
                             * previous one stays active); does not fail the round */
  uint64_t eval_version;    /* version evaluated for an evaluation gate this check-in (0: none) */
  fl_err eval_err;          /* FL_OK, or why that evaluation was not reported; does not fail
                             * the round */
} fl_round_result;

/* What a check-in may ask is checked before anything is fetched or allocated for it: the task
 * must carry the coordinator's signature for this device, verified with the pinned coordinator
 * key (else the round fails with FL_E_BADSIG); more than 1000 local epochs is FL_E_TOOBIG; a
 * batch size above 65536 is trained (and shown to the trainer callback) as 65536; a retry
 * window or retry hint more than a day away is taken as one day (docs/API.md 1.4). */

/* Starts a round: the next step checks in. FL_E_STATE if a round is in progress,
 * FL_E_NOT_ENROLLED before enrollment. Nothing is sent yet. */
FL_API fl_err fl_client_round_begin(fl_client *c);

/* Advances the round without blocking longer than timeout_ms (0: never wait) and tells what
 * the caller should do next in *step. A check-in that assigns a new inference version fetches,
 * verifies and activates it on the way. Returns FL_OK, or the error that ended the round
 * (then *step is FL_STEP_DONE and the result says FL_ROUND_FAILED). Transient failures are
 * retried inside the step machine and are not returned. */
FL_API fl_err fl_client_step(fl_client *c, int timeout_ms, fl_step *step);

/* Unix time in ms at which the client wants its next step (WAIT_TIME), else 0. */
FL_API int64_t fl_client_wake_at_ms(const fl_client *c);

/* Trains on the base model after FL_STEP_NEED_TRAIN. CPU only, no I/O; may run on a worker
 * thread while no other call uses this handle. On error the round ends as failed (the next
 * step returns the error). */
FL_API fl_err fl_client_train(fl_client *c);

/* Result of the last finished round (meaningful after FL_STEP_DONE until the next
 * round_begin), copied into *out within out->size. FL_E_INVAL when out->size is too small. */
FL_API fl_err fl_client_round_result(const fl_client *c, fl_round_result *out);

/* Abandons a round in progress (aborting a request in flight); the client becomes IDLE. */
FL_API void fl_client_round_cancel(fl_client *c);

/* A whole round, blocking: check in, fetch, train, upload, with retries. Sleeps through
 * backoffs. Returns FL_OK when the round ended as UPLOADED or NOT_SELECTED (see *result, which
 * may be NULL and otherwise needs its size set), else the error. */
FL_API fl_err fl_client_run_round(fl_client *c, fl_round_result *result);

/* ------------------------------------------------------------------------------------------ */
/* Many clients, one thread: fl_multi drives the state machines of many clients over one    */
/* libcurl multi handle (shared connection pool).                                            */

typedef struct fl_multi fl_multi;

/* The allocator is copied (its ctx borrowed). One thread uses the multi and its clients. */
FL_API fl_err fl_multi_new(fl_multi **out, const fl_allocator *allocator);
/* Removes nothing: remove (or free) clients first. NULL is a no-op. */
FL_API void fl_multi_free(fl_multi *m);
/* Adds an idle client (FL_E_STATE if a request is in flight). Clients with an embedder
 * transport are stepped too, with timeout 0, and the sockets their pollfd() names (version 3) are
 * waited on with the libcurl transfers. The client stays owned by the caller. */
FL_API fl_err fl_multi_add(fl_multi *m, fl_client *c);
FL_API fl_err fl_multi_remove(fl_multi *m, fl_client *c);

/* Waits up to timeout_ms for network activity or a client's wake time, then advances every
 * client with a round in progress. Clients whose state changed to NEED_TRAIN or DONE are queued
 * for fl_multi_next(). Returns FL_OK or FL_E_TRANSPORT/FL_E_NOMEM from the multi itself. */
FL_API fl_err fl_multi_perform(fl_multi *m, int timeout_ms);

/* Pops the next client needing attention: 1 with *c, *step and *err set, 0 when none. The
 * client stays in the multi and owned by the caller. */
FL_API int fl_multi_next(fl_multi *m, fl_client **c, fl_step *step, fl_err *err);

/* Number of clients with a round in progress. */
FL_API size_t fl_multi_active(const fl_multi *m);

/* ------------------------------------------------------------------------------------------ */
/* Inference on the rolled-out model                                                          */

/* Filled by the library: set size = sizeof(fl_model_info) first. */
typedef struct fl_model_info {
  size_t size;
  uint64_t model_id, version;
  size_t input_size, output_size, n_params;
  uint8_t sha256[32];
} fl_model_info;

/* The model used for predictions, FL_E_NOTFOUND when there is none yet, FL_E_INVAL when
 * out->size is too small. */
FL_API fl_err fl_client_model_info(const fl_client *c, fl_model_info *out);

/* Runs the active model on n examples: x holds n * input_size floats, out receives
 * n * output_size floats (logits for a classifier, the reconstruction for an autoencoder).
 * FL_E_NOTFOUND without a model; the handle is unchanged by a failure. */
FL_API fl_err fl_client_predict(fl_client *c, const float *x, size_t n, float *out);

/* Switches back to the previously active model (persisted); FL_E_NOTFOUND if there is none.
 * The model rolled back from becomes the previous one. */
FL_API fl_err fl_client_rollback(fl_client *c);

#ifdef __cplusplus
}
#endif
#endif /* FL_CLIENT_H */
