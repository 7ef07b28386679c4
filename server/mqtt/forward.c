/*
 * fl-mqtt-bridge's forwarding: one MQTT request becomes one HTTP request to the coordinator's
 * device API, and its answer one MQTT message on the device's response topic.
 *
 * The bridge checks only what the MQTT side needs (the topic names a device and a /v1/ path,
 * the response topic is that same device's, correlation data is present); everything the
 * coordinator checks (envelope, signature, timestamp, nonce, device state, sizes) it checks on
 * the bytes the device sent, because the bridge forwards the body and the X-FL-Auth value
 * unchanged and the coordinator's status, body and Retry-After come back unchanged. The reason
 * of an fl.v1.Error body is also copied into a user property for brokers' logs and rules; the
 * body stays the authority.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "bridge.h"
#include "fl/v1/fleetlearn.pb-c.h"

struct fl_job {
  fl_job *next;
  fl_bridge *b;
  CURL *easy;
  char *res_topic;
  void *corr;
  uint16_t corr_len;
  char *url;
  struct curl_slist *hdr;
  uint8_t *req;
  size_t req_len;
  uint8_t *body;
  size_t body_len, body_cap;
  bool toobig;
  long retry_after_s;
  bool done; /* the HTTP exchange is over; the answer waits for the broker connection */
  int status;
  char reason[64];
};

static size_t on_body(char *data, size_t size, size_t nmemb, void *ud) {
  fl_job *j = ud;
  size_t n = size * nmemb;
  if (n > j->b->o.max_answer - j->body_len) {
    j->toobig = true;
    return 0;
  }
  if (j->body_len + n > j->body_cap) {
    size_t cap = j->body_cap ? j->body_cap * 2 : 4096;
    while (cap < j->body_len + n)
      cap *= 2;
    uint8_t *p = realloc(j->body, cap);
    if (p == NULL)
      return 0;
    j->body = p;
    j->body_cap = cap;
  }
  memcpy(j->body + j->body_len, data, n);
  j->body_len += n;
  return n;
}

static size_t on_header(char *data, size_t size, size_t nmemb, void *ud) {
  fl_job *j = ud;
  size_t n = size * nmemb;
  static const char name[] = "retry-after:";
  if (n > sizeof name && strncasecmp(data, name, sizeof name - 1) == 0) {
    char tmp[32];
    size_t len = n - (sizeof name - 1) < sizeof tmp - 1 ? n - (sizeof name - 1) : sizeof tmp - 1;
    memcpy(tmp, data + sizeof name - 1, len);
    tmp[len] = '\0';
    j->retry_after_s = strtol(tmp, NULL, 10);
  }
  return n;
}

void fl__job_free(fl_job *j) {
  if (j == NULL)
    return;
  if (j->easy != NULL) {
    curl_multi_remove_handle(j->b->multi, j->easy);
    curl_easy_cleanup(j->easy);
  }
  curl_slist_free_all(j->hdr);
  free(j->res_topic);
  free(j->corr);
  free(j->url);
  free(j->req);
  free(j->body);
  free(j);
}

/* An fl.v1.Error body of the bridge's own making (the coordinator was not reached, or the
 * MQTT request cannot be an HTTP one). */
static void own_error(fl_job *j, int status, const char *reason, const char *msg) {
  Fl__V1__Error e = FL__V1__ERROR__INIT;
  e.reason = (char *)reason;
  e.message = (char *)msg;
  size_t n = fl__v1__error__get_packed_size(&e);
  free(j->body);
  j->body = malloc(n ? n : 1);
  j->body_len = j->body != NULL ? n : 0;
  if (j->body != NULL)
    fl__v1__error__pack(&e, j->body);
  j->status = status;
  snprintf(j->reason, sizeof j->reason, "%s", reason);
}

/* Publishes the answer; false when the broker connection is down (the job waits for it). */
static bool publish_answer(fl_job *j) {
  fl_bridge *b = j->b;
  if (!b->connected)
    return false;
  mosquitto_property *p = NULL;
  char st[16], ra[32];
  snprintf(st, sizeof st, "%d", j->status);
  int rc = mosquitto_property_add_binary(&p, MQTT_PROP_CORRELATION_DATA, j->corr, j->corr_len);
  if (rc == MOSQ_ERR_SUCCESS)
    rc = mosquitto_property_add_string_pair(&p, MQTT_PROP_USER_PROPERTY, "status", st);
  if (rc == MOSQ_ERR_SUCCESS && j->reason[0] != '\0')
    rc = mosquitto_property_add_string_pair(&p, MQTT_PROP_USER_PROPERTY, "reason", j->reason);
  if (rc == MOSQ_ERR_SUCCESS && j->retry_after_s > 0) {
    snprintf(ra, sizeof ra, "%ld", j->retry_after_s);
    rc = mosquitto_property_add_string_pair(&p, MQTT_PROP_USER_PROPERTY, "retry-after", ra);
  }
  if (rc == MOSQ_ERR_SUCCESS)
    rc = mosquitto_property_add_string(&p, MQTT_PROP_CONTENT_TYPE, "application/x-protobuf");
  if (rc == MOSQ_ERR_SUCCESS)
    rc = mosquitto_publish_v5(b->mosq, NULL, j->res_topic, (int)j->body_len, j->body, 1, false, p);
  if (rc == MOSQ_ERR_OVERSIZE_PACKET || rc == MOSQ_ERR_PAYLOAD_SIZE) {
    /* Larger than the broker takes: the device hears why instead of timing out. */
    own_error(j, 413, "too_large", "answer larger than the broker's packet limit");
    rc = mosquitto_publish_v5(b->mosq, NULL, j->res_topic, (int)j->body_len, j->body, 1, false, p);
  }
  mosquitto_property_free_all(&p);
  if (rc == MOSQ_ERR_NO_CONN || rc == MOSQ_ERR_CONN_LOST) {
    b->connected = false;
    return false;
  }
  if (rc != MOSQ_ERR_SUCCESS)
    fl__bridge_log("answer_failed", "topic=%s err=\"%s\"", j->res_topic, mosquitto_strerror(rc));
  else
    b->stats.answered++;
  return true;
}

/* <prefix>/<device>/req/v1/... -> the device's name (into dev) and the path. */
static const char *split_topic(const fl_bridge *b, const char *topic, char *dev, size_t cap) {
  size_t pl = strlen(b->o.prefix);
  if (strncmp(topic, b->o.prefix, pl) != 0 || topic[pl] != '/')
    return NULL;
  const char *d = topic + pl + 1, *slash = strchr(d, '/');
  if (slash == NULL || slash == d || (size_t)(slash - d) >= cap)
    return NULL;
  memcpy(dev, d, (size_t)(slash - d));
  dev[slash - d] = '\0';
  if (strncmp(slash, "/req/v1/", 8) != 0)
    return NULL;
  return slash + 4; /* "/v1/..." */
}

/* The user properties of a request: method (GET or POST), auth, if-none-match. */
static int request_props(fl_job *j, const mosquitto_property *props, char method[8]) {
  char *name = NULL, *value = NULL;
  bool skip = false;
  const mosquitto_property *q = props;
  int err = 0;
  method[0] = '\0';
  while ((q = mosquitto_property_read_string_pair(q, MQTT_PROP_USER_PROPERTY, &name, &value,
                                                  skip)) != NULL) {
    skip = true;
    const char *hname = strcmp(name, "auth") == 0            ? "X-FL-Auth"
                        : strcmp(name, "if-none-match") == 0 ? "If-None-Match"
                                                             : NULL;
    if (strcmp(name, "method") == 0 && strlen(value) < 8) {
      strcpy(method, value);
    } else if (hname != NULL && strpbrk(value, "\r\n") == NULL && strlen(value) < 16384) {
      size_t hl = strlen(hname), vl = strlen(value);
      char *h = malloc(hl + vl + 3);
      struct curl_slist *l = NULL;
      if (h != NULL) {
        memcpy(h, hname, hl);
        memcpy(h + hl, ": ", 2);
        memcpy(h + hl + 2, value, vl + 1);
        l = curl_slist_append(j->hdr, h);
      }
      free(h);
      if (l == NULL)
        err = -1;
      else
        j->hdr = l;
    }
    free(name);
    free(value);
    name = value = NULL;
  }
  return err;
}

static int start_http(fl_job *j, const char *method, const char *path) {
  fl_bridge *b = j->b;
  size_t n = strlen(b->o.coordinator) + strlen(path) + 1;
  j->url = malloc(n);
  j->easy = curl_easy_init();
  struct curl_slist *l = curl_slist_append(j->hdr, "Content-Type: application/x-protobuf");
  if (l != NULL)
    j->hdr = l;
  l = l != NULL ? curl_slist_append(j->hdr, "Expect:") : NULL;
  if (j->url == NULL || j->easy == NULL || l == NULL)
    return -1;
  j->hdr = l;
  snprintf(j->url, n, "%s%s", b->o.coordinator, path);
  CURL *e = j->easy;
  curl_easy_setopt(e, CURLOPT_URL, j->url);
  curl_easy_setopt(e, CURLOPT_PRIVATE, j);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, j->hdr);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, j);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, j);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, b->o.http_timeout_ms);
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_USERAGENT, "fl-mqtt-bridge");
  if (b->o.coordinator_ca != NULL)
    curl_easy_setopt(e, CURLOPT_CAINFO, b->o.coordinator_ca);
  if (strcmp(method, "GET") == 0) {
    curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
  } else {
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)j->req_len);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, j->req != NULL ? (char *)j->req : "");
  }
  return curl_multi_add_handle(b->multi, e) == CURLM_OK ? 0 : -1;
}

/* A request arrived. Anything that cannot be answered on the device's own response topic is
 * dropped (and counted); the rest is forwarded, or answered by the bridge when it cannot be. */
void fl__bridge_on_message(struct mosquitto *m, void *ud, const struct mosquitto_message *msg,
                           const mosquitto_property *props) {
  (void)m;
  fl_bridge *b = ud;
  char dev[129], own_res[512];
  const char *path = split_topic(b, msg->topic, dev, sizeof dev);
  char *rt = NULL;
  mosquitto_property_read_string(props, MQTT_PROP_RESPONSE_TOPIC, &rt, false);
  fl_job *j = calloc(1, sizeof *j);
  if (j == NULL) {
    free(rt);
    return;
  }
  j->b = b;
  j->res_topic = rt;
  mosquitto_property_read_binary(props, MQTT_PROP_CORRELATION_DATA, &j->corr, &j->corr_len, false);
  if (path != NULL)
    snprintf(own_res, sizeof own_res, "%s/%s/res", b->o.prefix, dev);
  /* The response topic must be the sender's: else a device could have the bridge, which may
   * write every device's topics, publish into another device's. */
  if (path == NULL || rt == NULL || strcmp(rt, own_res) != 0 || j->corr == NULL ||
      j->corr_len == 0 || j->corr_len > 64) {
    b->stats.dropped++;
    fl__bridge_log("request_dropped", "reason=%s",
                   path == NULL                             ? "topic"
                   : rt == NULL || strcmp(rt, own_res) != 0 ? "response_topic"
                                                            : "correlation_data");
    fl__job_free(j);
    return;
  }
  char method[8];
  int err = request_props(j, props, method);
  if (err == 0 && msg->payloadlen > 0) {
    j->req = malloc((size_t)msg->payloadlen);
    j->req_len = (size_t)msg->payloadlen;
    err = j->req != NULL ? 0 : -1;
    if (j->req != NULL)
      memcpy(j->req, msg->payload, j->req_len);
  }
  j->next = b->jobs;
  b->jobs = j;
  b->inflight++;
  b->stats.requests++;
  if (err == 0 && strcmp(method, "GET") != 0 && strcmp(method, "POST") != 0) {
    own_error(j, 405, "method_not_allowed", "method user property must be GET or POST");
    j->done = true;
    return;
  }
  if (err != 0 || start_http(j, method, path) != 0) {
    own_error(j, 503, "unavailable", "bridge out of memory");
    j->done = true;
  }
}

/* HTTP exchanges that finished: status, reason, then the answer. */
void fl__bridge_collect(fl_bridge *b) {
  CURLMsg *msg;
  int left = 0;
  while ((msg = curl_multi_info_read(b->multi, &left)) != NULL) {
    if (msg->msg != CURLMSG_DONE)
      continue;
    fl_job *j = NULL;
    curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&j);
    long status = 0;
    curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE, &status);
    j->done = true;
    if (j->toobig) {
      own_error(j, 413, "too_large", "answer larger than the bridge's --max-answer");
    } else if (msg->data.result != CURLE_OK || status == 0) {
      b->stats.http_errors++;
      fl__bridge_log("coordinator_unreachable", "err=\"%s\"", curl_easy_strerror(msg->data.result));
      own_error(j, 502, "unavailable", "coordinator unreachable from the bridge");
    } else {
      j->status = (int)status;
      if (status >= 400) {
        Fl__V1__Error *e = fl__v1__error__unpack(NULL, j->body_len, j->body);
        if (e != NULL && e->reason != NULL)
          snprintf(j->reason, sizeof j->reason, "%s", e->reason);
        if (e != NULL)
          fl__v1__error__free_unpacked(e, NULL);
      }
    }
  }
}

/* Publishes what is done, frees what is published. */
void fl__bridge_flush(fl_bridge *b) {
  fl_job **pp = &b->jobs;
  while (*pp != NULL) {
    fl_job *j = *pp;
    if (!j->done || !publish_answer(j)) {
      pp = &j->next;
      continue;
    }
    *pp = j->next;
    b->inflight--;
    fl__job_free(j);
  }
}

void fl__bridge_free_jobs(fl_bridge *b) {
  while (b->jobs != NULL) {
    fl_job *j = b->jobs;
    b->jobs = j->next;
    fl__job_free(j);
  }
  b->inflight = 0;
}
