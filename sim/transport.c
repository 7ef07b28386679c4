/*
 * The simulator's fault-injecting transport on a shared libcurl multi handle.
 */
#include "transport.h"

#include <curl/curl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "crypto.h"
#include "digest.h"
#include "fl/err.h"
#include "fl/v1/fleetlearn.pb-c.h"
#include "misbehave.h"

typedef enum link_state { L_IDLE, L_DELAYED, L_INFLIGHT, L_DONE, L_FAILED } link_state;

struct sim_link {
  sim_net *net;
  CURL *easy;
  char base[256];
  char *key_path;
  fl_key *key;
  sim_behaviour behaviour;
  double straggler_ms;
  link_state st;
  int64_t start_at_ms;
  int lose_answer;
  int fail_err;
  struct curl_slist *headers;
  uint8_t *body;
  size_t body_len;
  uint8_t *resp;
  size_t resp_len, resp_cap;
  long status;
  int64_t retry_after_ms;
  uint8_t *replay;
  size_t replay_len;
  char errbuf[CURL_ERROR_SIZE];
};

const char *sim_behaviour_name(sim_behaviour b) {
  static const char *names[] = {"honest", "poisoned", "unclipped", "bad signature", "replay"};
  return b < SIM_BEHAVIOUR_COUNT ? names[b] : "?";
}

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int sim_net_init(sim_net *n, uint64_t seed) {
  memset(n, 0, sizeof(*n));
  n->multi = curl_multi_init();
  if (n->multi == NULL)
    return FL_E_NOMEM;
  /* A bounded pool per thread: transfers beyond it queue inside libcurl instead of each
   * holding a coordinator connection thread. */
  curl_multi_setopt(n->multi, CURLMOPT_MAX_HOST_CONNECTIONS, 32L);
  fl__rng_seed(&n->rng, seed);
  return FL_OK;
}

void sim_net_cleanup(sim_net *n) {
  if (n->multi)
    curl_multi_cleanup(n->multi);
  n->multi = NULL;
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

/* The coordinator's refusal reason, from its fl.v1.Error body. */
static void note_refusal(sim_net *n, const sim_link *l) {
  Fl__V1__Error *e = fl__v1__error__unpack(NULL, l->resp_len, l->resp);
  char reason[32];
  if (e != NULL && e->reason != NULL && e->reason[0] != '\0')
    snprintf(reason, sizeof(reason), "%s", e->reason);
  else
    snprintf(reason, sizeof(reason), "http_%ld", l->status);
  if (e != NULL)
    fl__v1__error__free_unpacked(e, NULL);
  count_reason(&n->stats, reason);
}

static void finish(sim_net *n, sim_link *l, CURLcode cc) {
  curl_multi_remove_handle(n->multi, l->easy);
  curl_off_t up = 0, down = 0;
  long req_hdr = 0, resp_hdr = 0;
  curl_easy_getinfo(l->easy, CURLINFO_SIZE_UPLOAD_T, &up);
  curl_easy_getinfo(l->easy, CURLINFO_SIZE_DOWNLOAD_T, &down);
  curl_easy_getinfo(l->easy, CURLINFO_REQUEST_SIZE, &req_hdr);
  curl_easy_getinfo(l->easy, CURLINFO_HEADER_SIZE, &resp_hdr);
  n->stats.bytes_up += (uint64_t)up + (uint64_t)req_hdr;
  n->stats.bytes_down += (uint64_t)down + (uint64_t)resp_hdr;
  n->stats.requests++;
  if (cc != CURLE_OK) {
    l->st = L_FAILED;
    l->fail_err = cc == CURLE_OPERATION_TIMEDOUT ? FL_E_TIMEOUT : FL_E_TRANSPORT;
    return;
  }
  curl_easy_getinfo(l->easy, CURLINFO_RESPONSE_CODE, &l->status);
  if (l->status >= 400)
    note_refusal(n, l);
  if (l->lose_answer) {
    /* The coordinator did the work; the device never hears of it. */
    n->stats.net_faults++;
    l->st = L_FAILED;
    l->fail_err = FL_E_TRANSPORT;
    return;
  }
  l->st = L_DONE;
}

void sim_net_run(sim_net *n, int timeout_ms) {
  int running = 0;
  curl_multi_perform(n->multi, &running);
  if (timeout_ms > 0) {
    curl_multi_poll(n->multi, NULL, 0, timeout_ms, NULL);
    curl_multi_perform(n->multi, &running);
  }
  CURLMsg *msg;
  int left;
  while ((msg = curl_multi_info_read(n->multi, &left)) != NULL) {
    if (msg->msg != CURLMSG_DONE)
      continue;
    sim_link *l = NULL;
    curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&l);
    if (l != NULL)
      finish(n, l, msg->data.result);
  }
}

static size_t on_body(char *p, size_t size, size_t nmemb, void *ctx) {
  sim_link *l = ctx;
  size_t add = size * nmemb;
  if (l->resp_len + add > l->resp_cap) {
    size_t cap = (l->resp_len + add) * 2;
    uint8_t *q = realloc(l->resp, cap);
    if (q == NULL)
      return 0;
    l->resp = q;
    l->resp_cap = cap;
  }
  memcpy(l->resp + l->resp_len, p, add);
  l->resp_len += add;
  return add;
}

static size_t on_header(char *p, size_t size, size_t nmemb, void *ctx) {
  sim_link *l = ctx;
  size_t len = size * nmemb;
  if (len > 12 && strncasecmp(p, "Retry-After:", 12) == 0)
    l->retry_after_ms = (int64_t)(atof(p + 12) * 1000.0);
  return len;
}

/* Rewrites this device's upload as its behaviour dictates (the key is loaded on first use). */
static int rewrite_upload(sim_link *l, const char *path) {
  if (l->key == NULL && (l->behaviour == SIM_POISON || l->behaviour == SIM_UNCLIPPED)) {
    int rc = fl__key_load_pem(&l->key, l->key_path);
    if (rc != FL_OK)
      return rc;
  }
  sim_replay rp = {l->replay, l->replay_len};
  int rc = sim_misbehave(l->behaviour, l->key, l->net->clip_norm, path, &l->body, &l->body_len,
                         &rp);
  l->replay = rp.data;
  l->replay_len = rp.len;
  return rc;
}

static int set_request(sim_link *l, const fl_http_request *req) {
  char url[512], hdr[8192];
  snprintf(url, sizeof(url), "%s%s", l->base, req->path);
  curl_easy_reset(l->easy);
  curl_slist_free_all(l->headers);
  l->headers = curl_slist_append(NULL, "Content-Type: application/x-protobuf");
  l->headers = curl_slist_append(l->headers, "Expect:");
  if (req->auth) {
    if (strlen(req->auth) + 16 > sizeof(hdr))
      return FL_E_TOOBIG;
    snprintf(hdr, sizeof(hdr), "X-FL-Auth: %s", req->auth);
    l->headers = curl_slist_append(l->headers, hdr);
  }
  if (req->if_none_match) {
    snprintf(hdr, sizeof(hdr), "If-None-Match: %s", req->if_none_match);
    l->headers = curl_slist_append(l->headers, hdr);
  }
  if (l->headers == NULL)
    return FL_E_NOMEM;
  CURL *e = l->easy;
  curl_easy_setopt(e, CURLOPT_URL, url);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, l->headers);
  curl_easy_setopt(e, CURLOPT_PRIVATE, (char *)l);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, l);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, l);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 120000L);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, l->errbuf);
  if (strcmp(req->method, "POST") == 0) {
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, l->body ? (char *)l->body : "");
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)l->body_len);
  }
  return FL_OK;
}

static fl_err tr_begin(void *ctx, const fl_http_request *req) {
  sim_link *l = ctx;
  sim_net *n = l->net;
  double roll = fl__rng_uniform(&n->rng);
  if (roll < n->net_fail / 2) {
    n->stats.net_faults++;
    snprintf(l->errbuf, sizeof(l->errbuf), "injected connection failure");
    return FL_E_TRANSPORT;
  }
  l->lose_answer = roll < n->net_fail;
  free(l->body);
  l->body = NULL;
  l->body_len = 0;
  if (req->body_len > 0) {
    l->body = malloc(req->body_len);
    if (l->body == NULL)
      return FL_E_NOMEM;
    memcpy(l->body, req->body, req->body_len);
    l->body_len = req->body_len;
  }
  int upload = strcmp(req->path, "/v1/updates") == 0;
  if (upload && l->behaviour != SIM_HONEST) {
    int rc = rewrite_upload(l, req->path);
    if (rc != FL_OK)
      return rc;
  }
  l->resp_len = 0;
  l->status = 0;
  l->retry_after_ms = 0;
  l->errbuf[0] = '\0';
  int rc = set_request(l, req);
  if (rc != FL_OK)
    return rc;
  if (upload && l->straggler_ms > 0) {
    /* Lognormal with median straggler_ms: a long tail, as slow devices have. */
    double d = l->straggler_ms * exp(0.75 * fl__rng_normal(&n->rng));
    l->start_at_ms = now_ms() + (int64_t)d;
    l->st = L_DELAYED;
    return FL_OK;
  }
  if (curl_multi_add_handle(n->multi, l->easy) != CURLM_OK)
    return FL_E_TRANSPORT;
  l->st = L_INFLIGHT;
  return FL_OK;
}

static fl_err tr_poll(void *ctx, int timeout_ms, fl_http_response *resp) {
  sim_link *l = ctx;
  if (l->st == L_DELAYED) {
    int64_t wait = l->start_at_ms - now_ms();
    if (wait > 0 && timeout_ms > 0) {
      int64_t ms = wait < timeout_ms ? wait : timeout_ms;
      struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
      nanosleep(&ts, NULL);
      wait -= ms;
    }
    if (wait > 0)
      return FL_E_AGAIN;
    if (curl_multi_add_handle(l->net->multi, l->easy) != CURLM_OK) {
      l->st = L_IDLE;
      return FL_E_TRANSPORT;
    }
    l->st = L_INFLIGHT;
  }
  if (l->st == L_INFLIGHT)
    sim_net_run(l->net, timeout_ms);
  if (l->st == L_FAILED) {
    l->st = L_IDLE;
    return l->fail_err;
  }
  if (l->st != L_DONE)
    return FL_E_AGAIN;
  resp->status = (int)l->status;
  resp->body = l->resp;
  resp->body_len = l->resp_len;
  resp->retry_after_ms = l->retry_after_ms;
  return FL_OK;
}

static void tr_end(void *ctx) {
  sim_link *l = ctx;
  if (l->st == L_INFLIGHT)
    curl_multi_remove_handle(l->net->multi, l->easy);
  l->st = L_IDLE;
}

static void tr_destroy(void *ctx) {
  sim_link *l = ctx;
  if (l == NULL)
    return;
  tr_end(l);
  if (l->easy)
    curl_easy_cleanup(l->easy);
  curl_slist_free_all(l->headers);
  fl__key_free(l->key);
  free(l->key_path);
  free(l->body);
  free(l->resp);
  free(l->replay);
  free(l);
}

static const char *tr_detail(void *ctx) {
  return ((sim_link *)ctx)->errbuf;
}

int sim_link_transport(fl_transport *out, const sim_link_opts *o) {
  sim_link *l = calloc(1, sizeof(*l));
  if (l == NULL)
    return FL_E_NOMEM;
  l->net = o->net;
  l->behaviour = o->behaviour;
  l->straggler_ms = o->straggler_ms;
  snprintf(l->base, sizeof(l->base), "%s", o->base_url);
  l->key_path = strdup(o->key_path ? o->key_path : "");
  l->easy = curl_easy_init();
  if (l->easy == NULL || l->key_path == NULL) {
    tr_destroy(l);
    return FL_E_NOMEM;
  }
  *out = (fl_transport){.version = FL_TRANSPORT_VERSION,
                        .ctx = l,
                        .begin = tr_begin,
                        .poll = tr_poll,
                        .end = tr_end,
                        .destroy = tr_destroy,
                        .detail = tr_detail};
  return FL_OK;
}
