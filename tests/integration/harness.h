/*
 * Integration test harness: a real fl-coordinator process against a real PostgreSQL database.
 *
 * Database: connects with libpq's PG* environment (as set by `pg_virtualenv`), creates a fresh
 * database per test (fl_h_db_create) and drops it at the end (fl_h_db_drop).
 * Coordinator: fl_h_coord_start forks and execs the binary named by FL_COORDINATOR_BIN on a
 * free loopback port with a fresh signing key and a known bootstrap admin token, and waits
 * for /readyz. The child dies with the test process (PR_SET_PDEATHSIG).
 * Admin calls: fl_h_admin (JSON, bearer token). Device calls: fl_h_device_* build signed
 * fl.v1.SignedRequest envelopes exactly as docs/API.md and docs/SIGNING.md describe, with
 * knobs to forge bad ones (stale timestamp, reused nonce, wrong key).
 *
 * Every function returns 0 on success and -1 on failure (after printing why on stderr), so
 * tests can wrap calls in cr_assert_eq(..., 0).
 *
 * The work is done by the shared test-support library (tests/support, the flsupport/ headers): the
 * coordinator launcher, the admin client, the device signer; this file keeps the names the
 * itest_*.c files use.
 */
#ifndef FL_H_HARNESS_H
#define FL_H_HARNESS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "crypto.h"
#include "fl/v1/fleetlearn.pb-c.h"
#include "flsupport/http.h"
#include "flsupport/signer.h"

/* ----- database ---------------------------------------------------------------------------- */

/* Creates a database with a unique name (written to name, 64 bytes). */
int fl_h_db_create(char name[64]);
void fl_h_db_drop(const char *name);
/* Runs a parameterless query in `db` and returns the first cell as an integer (NULL -> 0);
 * -1 on error. For before/after state checks in tests. */
int64_t fl_h_db_int(const char *db, const char *sql);
/* The same with the query from printf(fmt, ...) (ids only: never for outside text). */
int64_t fl_h_db_intf(const char *db, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ----- coordinator ------------------------------------------------------------------------- */

typedef struct fl_h_coord {
  pid_t pid;
  int port;
  char url[64]; /* http://127.0.0.1:<port> */
  char db[64];
  char dir[256]; /* temp directory with the signing key and the log */
  char admin_token[65];
  char replica[32];
  const char *extra[8]; /* extra command-line flags (NULL-terminated) */
} fl_h_coord;

/* Starts a coordinator on database `db`. `dir` may be NULL (a new temp dir is made) or the
 * directory of a previous run (same signing key: a restart). extra: NULL-terminated flags
 * (e.g. "--tick=50"), may be NULL. */
int fl_h_coord_start(fl_h_coord *c, const char *db, const char *dir, const char *const *extra);
/* Same as fl_h_coord_start with HTTPS: a fresh self-signed P-256 certificate for 127.0.0.1
 * (in a new temp dir) is given to --tls-cert/--tls-key, the URL becomes https:// and every
 * harness request verifies the server against that certificate. */
int fl_h_coord_start_tls(fl_h_coord *c, const char *db);
/* Sends sig (SIGTERM: graceful, SIGKILL: crash) and waits for the process. Returns its exit
 * status (or 128+signal). */
int fl_h_coord_stop(fl_h_coord *c, int sig);
/* Starts the same coordinator again (same port, database, key and flags). */
int fl_h_coord_restart(fl_h_coord *c);
/* Removes the temp directory (after stop). */
void fl_h_coord_cleanup(fl_h_coord *c);

/* ----- HTTP -------------------------------------------------------------------------------- */

/* status, data (NUL-terminated past len), len, etag. */
typedef fl_sup_resp fl_h_resp;
void fl_h_resp_free(fl_h_resp *r);

/* Admin request with the bootstrap token; body may be NULL. Returns the parsed JSON answer
 * (NULL if none) and the status in *status. */
json_t *fl_h_admin(const fl_h_coord *c, const char *method, const char *path, const char *body,
                   long *status);
/* Same, but returns the JSON only when the status is 200 (else prints it and returns NULL). */
json_t *fl_h_admin_ok(const fl_h_coord *c, const char *method, const char *path, const char *body);
/* One series of the coordinator's /metrics (the exact name with its labels, e.g.
 * "fl_db_pool_connections{state=\"in_use\"}"): its value, -1 when absent or unreachable. */
double fl_h_metric(const fl_h_coord *c, const char *series);

/* ----- devices ----------------------------------------------------------------------------- */

typedef struct fl_h_device {
  fl_key *key;
  uint64_t id;
  uint8_t coordinator_pub[FL_PUBKEY_LEN];
} fl_h_device;

/* Knobs to forge requests; zero-initialised means "honest" (flsupport/signer.h). */
typedef fl_sup_forge fl_h_forge;

/* A new key; then enrolls with the token (id and coordinator key filled in). Returns the HTTP
 * status of the enrollment (200 on success), -1 on a transport error. */
int fl_h_device_new(fl_h_device *d);
long fl_h_device_enroll(const fl_h_coord *c, fl_h_device *d, const char *token);
void fl_h_device_free(fl_h_device *d);

/* Signed POST of an inner message (already packed) / signed GET. -1 on transport errors,
 * else 0 with the response in *out. POST /v1/updates (docs/SIGNING.md): an UpdateUpload
 * without a signature is signed here over the envelope's device id, timestamp and nonce, one
 * that has a signature (fl_h_update_opts.corrupt_signature) is sent as it is, and the envelope
 * signature is empty. */
int fl_h_device_post(const fl_h_coord *c, const fl_h_device *d, const char *path,
                     const uint8_t *body, size_t len, const fl_h_forge *f, fl_h_resp *out);
int fl_h_device_get(const fl_h_coord *c, const fl_h_device *d, const char *path,
                    const fl_h_forge *f, fl_h_resp *out);
/* The reason of an fl.v1.Error response body ("" when it is not one); thread-local storage,
 * valid until the same thread's next call. */
const char *fl_h_error_reason(const fl_h_resp *r);

/* Check-in: *task receives the TrainTask (free with fl__v1__check_in_response__free_unpacked
 * of *resp) or NULL with the retry reason in resp->retry. */
int fl_h_checkin(const fl_h_coord *c, const fl_h_device *d, uint64_t model_id,
                 Fl__V1__CheckInResponse **resp);
/* The same, reporting the device's conditions (CheckInRequest.conditions). */
int fl_h_checkin_cond(const fl_h_coord *c, const fl_h_device *d, uint64_t model_id,
                      const char *const *conds, size_t n_conds, Fl__V1__CheckInResponse **resp);
/* Downloads and verifies a version (digest recomputed, signature checked with the
 * coordinator's key). Free with fl__v1__model_version__free_unpacked. */
int fl_h_download(const fl_h_coord *c, const fl_h_device *d, uint64_t model_id, uint64_t version,
                  Fl__V1__ModelVersion **out);
/* Flat float32 weights of a version (malloc'ed) and their count. */
int fl_h_weights(const Fl__V1__ModelVersion *mv, float **w, size_t *n);

/* Knobs for update bodies. */
typedef struct fl_h_update_opts {
  bool drop_last_tensor;  /* a shape error */
  bool corrupt_signature; /* carry a signature made for other freshness fields, with
                             one bit flipped (fl_h_device_post keeps it) */
  bool inject_nan;        /* first float32 value becomes NaN (encoders refuse NaN) */
  int encoding;           /* 0: float32; else an fl.v1.Encoding (codec encodes) */
  int clip_state;         /* UpdateUpload.clip_state (fl.v1.ClipState); 0: not sent */
  const Fl__V1__DriftStats *train_stats; /* UpdateUpload.train_stats; NULL: not sent */
} fl_h_update_opts;

/* Packs an UpdateUpload of the flat delta laid out like base's tensors, unsigned: its
 * signature covers the envelope's timestamp and nonce, so fl_h_device_post makes it. */
int fl_h_update_pack(const fl_h_device *d, const Fl__V1__ModelVersion *base, uint64_t round_id,
                     const float *delta, uint64_t samples, float loss, const fl_h_update_opts *o,
                     uint8_t **buf, size_t *len);

/* ----- scenario helpers -------------------------------------------------------------------- */

/* The spec used by the coordinator tests: input [6], dense 4, relu, dense 3, softmax CE
 * (43 parameters in 4 tensors). */
#define FL_H_SMALL_SPEC                                                                    \
  "{\"input_shape\":[6],\"layers\":[{\"type\":\"dense\",\"units\":4},{\"type\":\"relu\"}," \
  "{\"type\":\"dense\",\"units\":3}],\"loss\":\"softmax_ce\"}"

/* Creates a model named `name` with `spec_json` and seed 1, then a plan (JSON object text);
 * *model_id and *round_id receive the ids. */
int fl_h_model_and_plan(const fl_h_coord *c, const char *name, const char *spec_json,
                        const char *plan_json, uint64_t *model_id, uint64_t *round_id);
/* Creates n enrollment tokens and enrolls n new devices with them. */
int fl_h_enroll_devices(const fl_h_coord *c, fl_h_device *devs, int n);
/* The same with tokens carrying labels (a JSON object text, e.g. {"site":"a"}; NULL: none). */
int fl_h_enroll_labeled(const fl_h_coord *c, fl_h_device *devs, int n, const char *labels);
/* Polls /admin/v1/rounds/{id} until its state is `state` (timeout_ms); returns the round
 * JSON (caller decrefs) or NULL on timeout. */
json_t *fl_h_wait_round(const fl_h_coord *c, uint64_t round_id, const char *state, int timeout_ms);
/* Packs, signs and posts an update; -1 on transport/packing errors, else 0 with *out set. */
int fl_h_upload(const fl_h_coord *c, const fl_h_device *d, const Fl__V1__ModelVersion *base,
                uint64_t round_id, const float *delta, uint64_t samples, const fl_h_update_opts *o,
                fl_h_resp *out);

#endif
