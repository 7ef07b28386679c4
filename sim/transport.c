/*
 * The simulator's fault-injecting wrapper around a libflclient transport.
 *
 * An exchange goes IDLE -> WAITING (straggler delay, or the worker's cap on exchanges in
 * flight) -> INFLIGHT (the wrapped transport carries it) -> FINISHED (answer or failure
 * handed to the client) -> IDLE at end(). The request is borrowed only during begin(), so the
 * link keeps its own copy until the wrapped transport has taken it; with borrow_body the body
 * is the caller's until end() (transport.h), and only a rewritten upload is copied.
 */
#include "transport.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "crypto.h"
#include "fl/err.h"
#include "fl/v1/fleetlearn.pb-c.h"
#include "misbehave.h"
#include "rng.h"

typedef enum link_state { L_IDLE, L_WAITING, L_INFLIGHT, L_FINISHED } link_state;

struct sim_link {
  sim_net *net;
  fl_transport inner;
  bool inner_begun; /* inner.begin succeeded, inner.end not yet called */
  char *key_path;
  fl_key *key;
  sim_behaviour behaviour;
  double straggler_ms, net_fail, clip_norm;
  double sa_drop[4]; /* SIM_SA_* order */
  fl_rng rng;
  link_state st;
  bool uncounted; /* in flight outside the cap: a secure-aggregation message */
  void (*uploaded)(void *arg);
  void *uploaded_arg;
  int64_t start_at_ms;
  int lose_answer;
  /* the request, copied */
  char method[8];
  char *path, *auth, *if_none_match;
  const uint8_t *body;
  uint8_t *body_copy; /* body when the link owns it */
  size_t body_len;
  bool borrow_body;
  uint8_t *replay;
  size_t replay_len;
  char errbuf[96]; /* an injected failure; else the wrapped transport's detail */
};

const char *sim_behaviour_name(sim_behaviour b) {
  static const char *names[] = {
      "honest",     "poisoned",    "unclipped",           "bad signature",
      "replay",     "sign flip",   "scaled to the bound", "a little is enough",
      "label flip", "random noise"};
  return b < SIM_BEHAVIOUR_COUNT ? names[b] : "?";
}

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int64_t ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* splitmix64's finaliser: neighbouring inputs give unrelated outputs. */
static uint64_t mix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

uint64_t sim_device_seed(uint64_t run_seed, uint64_t device, sim_seed_stream stream) {
  return mix64(mix64(mix64(run_seed) ^ device) ^ (uint64_t)stream);
}

static void count_reason(sim_net_stats *s, const char *reason) {
  s->refused++;
  for (int i = 0; i < SIM_MAX_REASONS; i++) {
    if (s->reasons[i][0] == '\0')
      snprintf(s->reasons[i], sizeof(s->reasons[i]), "%s", reason);
    if (strcmp(s->reasons[i], reason) == 0) {
      s->reason_count[i]++;
      return;
    }
  }
}

void sim_net_count_refusal(sim_net_stats *s, int status, const uint8_t *body, size_t len) {
  Fl__V1__Error *e = body != NULL ? fl__v1__error__unpack(NULL, len, body) : NULL;
  char reason[32];
  if (e != NULL && e->reason != NULL && e->reason[0] != '\0')
    snprintf(reason, sizeof(reason), "%s", e->reason);
  else
    snprintf(reason, sizeof(reason), "http_%d", status);
  if (e != NULL)
    fl__v1__error__free_unpacked(e, NULL);
  count_reason(s, reason);
}

/* Rewrites this device's upload as its behaviour dictates (the key is loaded on first use). */
static int rewrite_upload(sim_link *l) {
  if (l->key == NULL && sim_misbehave_resigns(l->behaviour)) {
    int rc = fl__key_load_pem(&l->key, l->key_path);
    if (rc != FL_OK)
      return rc;
  }
  if (l->body_copy == NULL && l->body_len > 0) {
    l->body_copy = malloc(l->body_len);
    if (l->body_copy == NULL)
      return FL_E_NOMEM;
    memcpy(l->body_copy, l->body, l->body_len);
  }
  sim_replay rp = {l->replay, l->replay_len};
  int rc =
      sim_misbehave(l->behaviour, l->key, l->clip_norm, l->path, &l->body_copy, &l->body_len, &rp);
  l->body = l->body_copy;
  l->replay = rp.data;
  l->replay_len = rp.len;
  return rc;
}

static void clear_request(sim_link *l) {
  free(l->path);
  free(l->auth);
  free(l->if_none_match);
  free(l->body_copy);
  l->path = l->auth = l->if_none_match = NULL;
  l->body = l->body_copy = NULL;
  l->body_len = 0;
}

static int copy_str(char **to, const char *s) {
  *to = s != NULL ? strdup(s) : NULL;
  return s != NULL && *to == NULL ? FL_E_NOMEM : FL_OK;
}

static int copy_request(sim_link *l, const fl_http_request *req) {
  clear_request(l);
  if (strlen(req->method) >= sizeof(l->method))
    return FL_E_INVAL;
  snprintf(l->method, sizeof(l->method), "%s", req->method);
  int rc = copy_str(&l->path, req->path);
  if (rc == FL_OK)
    rc = copy_str(&l->auth, req->auth);
  if (rc == FL_OK)
    rc = copy_str(&l->if_none_match, req->if_none_match);
  l->body = req->body;
  l->body_len = req->body_len;
  if (rc == FL_OK && req->body_len > 0 && !l->borrow_body) {
    l->body_copy = malloc(req->body_len);
    if (l->body_copy == NULL)
      return FL_E_NOMEM;
    memcpy(l->body_copy, req->body, req->body_len);
    l->body = l->body_copy;
  }
  return rc;
}

/* Hands the copied request to the wrapped transport once its delay is over and the worker
 * has room: FL_E_AGAIN while it waits, FL_OK when it is in flight, else the failure. */
static int try_start(sim_link *l) {
  sim_net *n = l->net;
  /* A secure-aggregation message is small and its phase waits for it: never queued behind
   * other devices' check-ins, downloads and uploads (and a state poll is a long poll). */
  bool wait = strncmp(l->path, "/v1/secagg/", 11) == 0;
  if (now_ms() < l->start_at_ms || (!wait && n->max_inflight > 0 && n->inflight >= n->max_inflight))
    return FL_E_AGAIN;
  fl_http_request req = {.method = l->method,
                         .path = l->path,
                         .auth = l->auth,
                         .if_none_match = l->if_none_match,
                         .body = l->body,
                         .body_len = l->body_len};
  int rc = l->inner.begin(l->inner.ctx, &req);
  if (rc != FL_OK) {
    l->st = L_IDLE;
    return rc;
  }
  l->inner_begun = true;
  l->uncounted = wait;
  n->inflight += !wait;
  n->stats.requests++;
  n->stats.bytes_up += l->body_len;
  l->st = L_INFLIGHT;
  return FL_OK;
}

/* The secure-aggregation phase a request belongs to (SIM_SA_*), -1 for none. An upload is the
 * masked input only in a secure-aggregation round: the only rounds with a drop rate for it. */
static int sa_phase(const char *path) {
  static const char *const paths[4] = {"/v1/secagg/keys", "/v1/secagg/shares", "/v1/updates",
                                       "/v1/secagg/unmask"};
  for (int i = 0; i < 4; i++)
    if (strcmp(path, paths[i]) == 0)
      return i;
  return -1;
}

static fl_err tr_begin(void *ctx, const fl_http_request *req) {
  sim_link *l = ctx;
  l->errbuf[0] = '\0';
  int ph = sa_phase(req->path);
  if (ph >= 0 && l->sa_drop[ph] > 0 && fl__rng_uniform(&l->rng) < l->sa_drop[ph]) {
    static const char *const names[4] = {"keys", "shares", "masked input", "unmasking"};
    l->net->stats.sa_dropped++;
    snprintf(l->errbuf, sizeof(l->errbuf), "injected secure-aggregation dropout (%s)", names[ph]);
    return FL_E_IO;
  }
  double roll = fl__rng_uniform(&l->rng);
  if (roll < l->net_fail / 2) {
    l->net->stats.net_faults++;
    snprintf(l->errbuf, sizeof(l->errbuf), "injected connection failure");
    return FL_E_TRANSPORT;
  }
  l->lose_answer = roll < l->net_fail;
  int rc = copy_request(l, req);
  int upload = rc == FL_OK && strcmp(req->path, "/v1/updates") == 0;
  if (upload && l->behaviour != SIM_HONEST)
    rc = rewrite_upload(l);
  if (rc != FL_OK)
    return rc;
  l->start_at_ms = 0;
  if (upload && l->straggler_ms > 0) {
    /* Lognormal with median straggler_ms: a long tail, as slow devices have. */
    double d = l->straggler_ms * exp(0.75 * fl__rng_normal(&l->rng));
    l->start_at_ms = now_ms() + (int64_t)d;
  }
  l->st = L_WAITING;
  rc = try_start(l);
  return rc == FL_E_AGAIN ? FL_OK : rc;
}

/* The wrapped transport's answer, as the device is to see it. */
static int finish(sim_link *l, int rc, const fl_http_response *resp) {
  sim_net *n = l->net;
  n->inflight -= !l->uncounted;
  l->st = L_FINISHED;
  if (rc != FL_OK)
    return rc;
  n->stats.bytes_down += resp->body_len;
  if (resp->status >= 400)
    sim_net_count_refusal(&n->stats, resp->status, resp->body, resp->body_len);
  if (l->lose_answer) {
    /* The coordinator did the work; the device never hears of it. */
    n->stats.net_faults++;
    snprintf(l->errbuf, sizeof(l->errbuf), "injected loss of the answer");
    return FL_E_TRANSPORT;
  }
  if (resp->status == 200 && l->uploaded != NULL && strcmp(l->path, "/v1/updates") == 0)
    l->uploaded(l->uploaded_arg);
  return FL_OK;
}

static fl_err tr_poll(void *ctx, int timeout_ms, fl_http_response *resp) {
  sim_link *l = ctx;
  if (l->st == L_WAITING) {
    int rc = try_start(l);
    if (rc == FL_E_AGAIN && timeout_ms > 0) {
      /* Standing alone (not in an fl_multi) the caller expects the wait to happen here. */
      int64_t wait = l->start_at_ms - now_ms();
      sleep_ms(wait > 0 && wait < timeout_ms ? wait : wait > 0 ? timeout_ms : 1);
      rc = try_start(l);
    }
    if (rc != FL_OK)
      return rc;
  }
  if (l->st != L_INFLIGHT)
    return FL_E_STATE;
  int rc = l->inner.poll(l->inner.ctx, timeout_ms, resp);
  return rc == FL_E_AGAIN ? rc : finish(l, rc, resp);
}

static void tr_end(void *ctx) {
  sim_link *l = ctx;
  if (l->st == L_INFLIGHT)
    l->net->inflight -= !l->uncounted;
  if (l->inner_begun)
    l->inner.end(l->inner.ctx);
  l->inner_begun = false;
  l->st = L_IDLE;
  clear_request(l); /* an idle link holds no copy of an 800 KB upload */
}

static fl_err tr_attach(void *ctx, struct fl_multi *m) {
  sim_link *l = ctx;
  if (l->inner.version < 2 || l->inner.attach == NULL)
    return FL_OK;
  return l->inner.attach(l->inner.ctx, m);
}

/* The wrapped transport's socket while it carries the exchange (an MQTT device's connection). */
static int tr_pollfd(void *ctx, int *events) {
  sim_link *l = ctx;
  if (l->st != L_INFLIGHT || l->inner.version < 3 || l->inner.pollfd == NULL)
    return -1;
  return l->inner.pollfd(l->inner.ctx, events);
}

static void tr_destroy(void *ctx) {
  sim_link *l = ctx;
  if (l == NULL)
    return;
  tr_end(l);
  if (l->inner.destroy != NULL)
    l->inner.destroy(l->inner.ctx);
  clear_request(l);
  fl__key_free(l->key);
  free(l->key_path);
  free(l->replay);
  free(l);
}

static const char *tr_detail(void *ctx) {
  sim_link *l = ctx;
  if (l->errbuf[0] != '\0' || l->inner.detail == NULL)
    return l->errbuf;
  return l->inner.detail(l->inner.ctx);
}

int sim_link_transport(fl_transport *out, const sim_link_opts *o) {
  sim_link *l = calloc(1, sizeof(*l));
  if (l == NULL) {
    if (o->inner.destroy != NULL)
      o->inner.destroy(o->inner.ctx);
    return FL_E_NOMEM;
  }
  l->net = o->net;
  l->inner = o->inner;
  l->behaviour = o->behaviour;
  l->straggler_ms = o->straggler_ms;
  l->net_fail = o->net_fail;
  l->clip_norm = o->clip_norm;
  for (int i = 0; o->sa_drop != NULL && i < 4; i++)
    l->sa_drop[i] = o->sa_drop[i];
  l->borrow_body = o->borrow_body != 0;
  l->uploaded = o->uploaded;
  l->uploaded_arg = o->uploaded_arg;
  fl__rng_seed(&l->rng, o->seed);
  l->key_path = strdup(o->key_path ? o->key_path : "");
  if (l->key_path == NULL) {
    tr_destroy(l);
    return FL_E_NOMEM;
  }
  *out = (fl_transport){.version = FL_TRANSPORT_VERSION,
                        .ctx = l,
                        .begin = tr_begin,
                        .poll = tr_poll,
                        .end = tr_end,
                        .destroy = tr_destroy,
                        .detail = tr_detail,
                        .attach = tr_attach,
                        .pollfd = tr_pollfd};
  return FL_OK;
}
