/*
 * Shared by the itest_hostile_*.c programs (hostile input against the coordinator, docs/API.md
 * 1.2: "a refusal changes no state"): one coordinator per test on a fresh database, raw HTTP on
 * one keep-alive connection, signed envelopes with every field under the caller's control, the
 * database state before and after, and the small fleet the attacks are aimed at.
 *
 * The randomness is seeded; the seed is printed and FL_HOSTILE_SEED=<n> replays a run.
 */
#ifndef FL_ITEST_HOSTILE_COMMON_H
#define FL_ITEST_HOSTILE_COMMON_H

#include <curl/curl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "harness.h"

/* The coordinator's --max-body in these tests. */
#define MAX_BODY 65536

extern char hx_db[64];
extern fl_h_coord hx_coord;
extern CURL *hx_curl;
extern uint64_t hx_seed, hx_rs;

/* Criterion .init / .fini: a fresh database, a coordinator with --max-body=MAX_BODY, a curl
 * handle and the seed (FL_HOSTILE_SEED, else the time). */
void hx_setup(void);
void hx_teardown(void);
int64_t hx_wall_ms(void);

/* ----- seeded randomness (xorshift64*) ---------------------------------------------------- */

uint64_t hx_rnd(void);
uint64_t hx_below(uint64_t n); /* 0..n-1; 0 when n is 0 */
void hx_rnd_fill(uint8_t *p, size_t n);

/* ----- raw HTTP on one keep-alive connection ---------------------------------------------- */

/* One request; body_len > MAX_BODY with `chunked` streams that many bytes without a length.
 * Returns 0 with *out set, -1 on a transport error. */
int hx_raw(const char *method, const char *path, struct curl_slist *hdrs, const void *body,
           size_t len, bool chunked, fl_h_resp *out);

/* ----- signed envelopes with every field under the caller's control ----------------------- */

typedef struct env_spec {
  const fl_key *key; /* signs the request digest (uploads: the upload digest) */
  uint64_t device_id;
  int64_t timestamp_ms;
  size_t nonce_len;        /* 16 for an honest request */
  const char *sign_method; /* method and path in the digest (may differ from the request) */
  const char *sign_path;
  int sig_len; /* 64 for an honest signature */
  bool flip_sig;
} env_spec;

env_spec hx_honest_env(const fl_h_device *d, const char *method, const char *path);
/* The fl.v1.SignedRequest around body as e says (an upload carries its signature in the
 * UpdateUpload, docs/SIGNING.md); malloc'ed. */
uint8_t *hx_pack_env(const env_spec *e, const uint8_t *body, size_t len, size_t *out_len);
/* Sends an envelope: as the body of a POST, or base64 in X-FL-Auth for a GET. */
int hx_send_env(const char *method, const char *path, const uint8_t *env, size_t n, fl_h_resp *out);
int hx_signed_req(const env_spec *e, const char *method, const char *path, const uint8_t *body,
                  size_t len, fl_h_resp *out);

/* ----- state before and after ------------------------------------------------------------- */

/* How many counts hx_snapshot takes (rounds, acceptances, devices, versions...: STATE_SQL). */
#define N_STATE 15
void hx_snapshot(int64_t out[N_STATE]);
/* Every count as it was (cr_expect: each difference is reported). */
void hx_assert_unchanged(const int64_t before[N_STATE]);
/* The coordinator is alive and /healthz answers 200; the end of its log if it died. */
void hx_assert_alive(void);

/* ----- the fleet under attack ------------------------------------------------------------- */

typedef struct scene {
  uint64_t model_id, round_id;
  fl_h_device dev[3]; /* 0: assigned to the open round, 1: revoked, 2: enrolled, idle */
  Fl__V1__ModelVersion *base;
} scene;

/* A model with an open round (50 participants, clip norm 5) and three devices: 0 assigned
 * and holding the base version, 1 revoked, 2 enrolled and idle. */
void hx_scene_build(scene *s);
void hx_scene_free(scene *s);

/* An UpdateUpload whose tensors, shapes and buffers the mutators may replace; every buffer is
 * owned here and freed by hx_upd_free. */
#define UPD_MAX_T 8
typedef struct upd {
  Fl__V1__UpdateUpload u;
  Fl__V1__Tensor t[UPD_MAX_T];
  Fl__V1__Tensor *tp[UPD_MAX_T];
  uint32_t shape[UPD_MAX_T][8];
  uint8_t *data[UPD_MAX_T], *idx[UPD_MAX_T];
  uint64_t count0[UPD_MAX_T]; /* the model's counts: buffer sizes never follow a mutated one */
} upd;

/* An update of zeros for s's open round with sample_count 0 (always refused). */
void hx_upd_init(upd *x, const scene *s);
void hx_upd_free(upd *x);
/* Replaces the buffer in *slot (owned by the upd) with a new one of len bytes. */
uint8_t *hx_upd_buf(uint8_t **slot, size_t len);
/* Packed without its signature: an upload is signed over its envelope's timestamp and nonce,
 * which hx_pack_env chooses (docs/SIGNING.md). */
uint8_t *hx_pack_update(upd *x, size_t *len);
uint8_t *hx_checkin_body(uint64_t model_id, uint64_t running_version, uint64_t running_model_id,
                         size_t *len);

/* ----- one answer ------------------------------------------------------------------------- */

/* The status of an answer, its fl.v1.Error reason in why; frees the answer. */
long hx_status_reason(int rc, fl_h_resp *r, char *why, size_t n);

#define EXPECT_REFUSAL(rc, r, status, reason)                                                  \
  do {                                                                                         \
    char why_[64];                                                                             \
    long st_ = hx_status_reason((rc), (r), why_, sizeof why_);                                 \
    cr_expect(st_ == (status) && strcmp(why_, (reason)) == 0, "%s:%d: got %ld %s, want %d %s", \
              __FILE__, __LINE__, st_, why_, (status), (reason));                              \
  } while (0)

#endif
