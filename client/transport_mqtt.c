/*
 * fl_transport_mqtt: the device API over MQTT 5 through a broker (docs/MQTT.md).
 *
 * One libmosquitto connection per transport (the broker's ACL is per device, so devices do
 * not share one). An exchange is one QoS 1 PUBLISH of the request body on
 * <prefix>/<user>/req<path> with the method, X-FL-Auth and If-None-Match as user properties,
 * the response topic <prefix>/<user>/res and 16 random bytes of correlation data; the answer
 * is the first message on the response topic that carries the same correlation data (a late
 * answer to an earlier attempt carries other bytes and is dropped). The connection is made
 * when an exchange needs it; the exchange waits for CONNACK and for the SUBACK of the response
 * topic before it publishes, so an answer can never race the subscription.
 *
 * The socket is driven without blocking inside poll() (poll(2), then libmosquitto's read, write
 * and keep-alive steps) and handed to a foreign loop by pollfd() (fl_multi waits on it beside
 * its libcurl transfers).
 */
#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "client_internal.h"

#ifndef FL_HAVE_MQTT
fl_err fl_transport_mqtt(fl_transport *out, const fl_client_opts *opts, const fl_mqtt_opts *mqtt) {
  (void)out;
  (void)mqtt;
  if (opts != NULL)
    fl__opts_log(opts, "fl_transport_mqtt: libflclient was built without MQTT (FL_WITH_MQTT)");
  return FL_E_UNSUPPORTED;
}
#else
#include <mosquitto.h>
#include <mqtt_protocol.h>
#include <pthread.h>

#define CORR_LEN 16

typedef enum mq_conn { MQ_DOWN, MQ_CONNECTING, MQ_SUBSCRIBING, MQ_UP } mq_conn;
typedef enum mq_ex { EX_NONE, EX_WAIT_CONN, EX_SENT, EX_ANSWERED, EX_FAILED } mq_ex;

typedef struct mqtt_tr {
  fl_allocator alloc_copy;
  const fl_allocator *alloc;
  struct mosquitto *mosq;
  char host[256];
  int port, keepalive;
  bool tls;
  char *req_topic_base; /* <prefix>/<user>/req */
  char *res_topic;      /* <prefix>/<user>/res */
  mq_conn conn;
  mq_ex ex;
  fl_err ex_err;
  int64_t ex_deadline_ms;
  long connect_timeout_ms, request_timeout_ms;
  uint8_t corr[CORR_LEN];
  /* the request, copied (begin's arguments are borrowed) */
  char method[8];
  char *topic;
  mosquitto_property *props;
  uint8_t *req_body;
  size_t req_len;
  /* the answer */
  int status;
  int64_t retry_after_ms;
  uint8_t *body;
  size_t body_len, body_max;
  char errbuf[160];
} mqtt_tr;

static pthread_once_t lib_once = PTHREAD_ONCE_INIT;
static int lib_rc = MOSQ_ERR_SUCCESS;
static void lib_init(void) {
  lib_rc = mosquitto_lib_init();
}

static void fail(mqtt_tr *t, fl_err err, const char *fmt, const char *arg) {
  snprintf(t->errbuf, sizeof t->errbuf, fmt, arg);
  if (t->ex == EX_WAIT_CONN || t->ex == EX_SENT) {
    t->ex = EX_FAILED;
    t->ex_err = err;
  }
}

/* The connection is gone: the next exchange connects again. */
static void drop(mqtt_tr *t, const char *why) {
  if (t->conn != MQ_DOWN)
    mosquitto_disconnect(t->mosq);
  t->conn = MQ_DOWN;
  fail(t, FL_E_TRANSPORT, "mqtt: %s", why);
}

static void on_connect(struct mosquitto *m, void *ud, int rc, int flags,
                       const mosquitto_property *p) {
  (void)flags;
  (void)p;
  mqtt_tr *t = ud;
  if (rc != 0) {
    t->conn = MQ_DOWN;
    fail(t, FL_E_TRANSPORT, "mqtt: broker refused the connection: %s", mosquitto_reason_string(rc));
    return;
  }
  int s = mosquitto_subscribe_v5(m, NULL, t->res_topic, 1, 0, NULL);
  if (s != MOSQ_ERR_SUCCESS) {
    drop(t, mosquitto_strerror(s));
    return;
  }
  t->conn = MQ_SUBSCRIBING;
}

static void on_subscribe(struct mosquitto *m, void *ud, int mid, int n, const int *granted,
                         const mosquitto_property *p) {
  (void)m;
  (void)mid;
  (void)p;
  mqtt_tr *t = ud;
  if (n < 1 || granted[0] > 2) { /* 0x80 and above: refused, e.g. not authorized by the ACL */
    drop(t, "the broker refused the subscription to the response topic (ACL?)");
    return;
  }
  t->conn = MQ_UP;
}

static void on_disconnect(struct mosquitto *m, void *ud, int rc, const mosquitto_property *p) {
  (void)m;
  (void)p;
  mqtt_tr *t = ud;
  t->conn = MQ_DOWN;
  fail(t, FL_E_TRANSPORT, "mqtt: disconnected from the broker (%s)",
       rc == 0 ? "by request" : mosquitto_reason_string(rc));
}

/* A refused PUBLISH (QoS 1: the PUBACK's reason code) fails the exchange at once. */
static void on_publish(struct mosquitto *m, void *ud, int mid, int rc,
                       const mosquitto_property *p) {
  (void)m;
  (void)mid;
  (void)p;
  mqtt_tr *t = ud;
  if (t->ex != EX_SENT)
    return;
  if (rc >= 0x80)
    fail(t, FL_E_TRANSPORT, "mqtt: the broker refused the request: %s",
         mosquitto_reason_string(rc));
  else if (rc == MQTT_RC_NO_MATCHING_SUBSCRIBERS) /* no bridge (yet): retry, don't wait */
    fail(t, FL_E_TRANSPORT, "mqtt: %s", "no bridge subscribed to the request topics");
}

/* The status and Retry-After of an answer, from its user properties. */
static void read_answer_props(mqtt_tr *t, const mosquitto_property *p) {
  char *name = NULL, *value = NULL;
  bool skip = false;
  const mosquitto_property *q = p;
  while ((q = mosquitto_property_read_string_pair(q, MQTT_PROP_USER_PROPERTY, &name, &value,
                                                  skip)) != NULL) {
    skip = true;
    long v = strtol(value, NULL, 10);
    if (strcmp(name, "status") == 0 && v >= 100 && v <= 599)
      t->status = (int)v;
    else if (strcmp(name, "retry-after") == 0 && v > 0 && v < 86400)
      t->retry_after_ms = (int64_t)v * 1000;
    free(name);
    free(value);
    name = value = NULL;
  }
}

static void on_message(struct mosquitto *m, void *ud, const struct mosquitto_message *msg,
                       const mosquitto_property *p) {
  (void)m;
  mqtt_tr *t = ud;
  if (t->ex != EX_SENT || strcmp(msg->topic, t->res_topic) != 0)
    return;
  void *corr = NULL;
  uint16_t corr_len = 0;
  mosquitto_property_read_binary(p, MQTT_PROP_CORRELATION_DATA, &corr, &corr_len, false);
  bool ours = corr != NULL && corr_len == CORR_LEN && memcmp(corr, t->corr, CORR_LEN) == 0;
  free(corr);
  if (!ours)
    return; /* an answer to an earlier attempt */
  size_t n = msg->payloadlen > 0 ? (size_t)msg->payloadlen : 0;
  if (n > t->body_max) {
    snprintf(t->errbuf, sizeof t->errbuf, "answer larger than max_response_bytes (%zu)",
             t->body_max);
    t->ex = EX_FAILED;
    t->ex_err = FL_E_TOOBIG;
    return;
  }
  t->status = 0;
  t->retry_after_ms = 0;
  read_answer_props(t, p);
  uint8_t *b = fl__malloc(t->alloc, n ? n : 1);
  if (b == NULL) {
    t->ex = EX_FAILED;
    t->ex_err = FL_E_NOMEM;
    return;
  }
  memcpy(b, msg->payload, n);
  fl__free(t->alloc, t->body);
  t->body = b;
  t->body_len = n;
  if (t->status == 0) {
    snprintf(t->errbuf, sizeof t->errbuf, "mqtt: answer without a status property");
    t->ex = EX_FAILED;
    t->ex_err = FL_E_TRANSPORT;
    return;
  }
  t->ex = EX_ANSWERED;
}

/* One pass of the connection: waits up to timeout_ms for the socket, then reads, writes and
 * keeps it alive. poll() rather than mosquitto_loop(), whose select() cannot take a descriptor
 * above FD_SETSIZE (1024): a gateway process with a thousand devices has more. */
static int drive(mqtt_tr *t, int timeout_ms) {
  int fd = mosquitto_socket(t->mosq);
  if (fd < 0)
    return MOSQ_ERR_NO_CONN;
  struct pollfd p = {.fd = fd, .events = POLLIN | (mosquitto_want_write(t->mosq) ? POLLOUT : 0)};
  int n = poll(&p, 1, timeout_ms);
  if (n < 0 && errno != EINTR)
    return MOSQ_ERR_ERRNO;
  int rc = MOSQ_ERR_SUCCESS;
  if (n > 0 && (p.revents & (POLLIN | POLLHUP | POLLERR)) != 0)
    rc = mosquitto_loop_read(t->mosq, 1);
  if (rc == MOSQ_ERR_SUCCESS && mosquitto_want_write(t->mosq))
    rc = mosquitto_loop_write(t->mosq, 1);
  if (rc == MOSQ_ERR_SUCCESS)
    rc = mosquitto_loop_misc(t->mosq);
  return rc;
}

static int start_connect(mqtt_tr *t) {
  /* No session kept at the broker: an exchange that a broker restart interrupts is retried by
   * the client (freshly signed), so nothing needs to be queued for a device that is away. */
  int rc = mosquitto_connect_bind_v5(t->mosq, t->host, t->port, t->keepalive, NULL, NULL);
  if (rc != MOSQ_ERR_SUCCESS) {
    fail(t, FL_E_TRANSPORT, "mqtt: cannot connect to the broker: %s",
         rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc));
    return FL_E_TRANSPORT;
  }
  t->conn = MQ_CONNECTING;
  return FL_OK;
}

static int publish_request(mqtt_tr *t) {
  int rc = mosquitto_publish_v5(t->mosq, NULL, t->topic, (int)t->req_len, t->req_body, 1, false,
                                t->props);
  if (rc == MOSQ_ERR_SUCCESS) {
    t->ex = EX_SENT;
    return FL_OK;
  }
  if (rc == MOSQ_ERR_NOMEM) {
    t->ex = EX_FAILED;
    t->ex_err = FL_E_NOMEM;
    return FL_E_NOMEM;
  }
  if (rc == MOSQ_ERR_OVERSIZE_PACKET || rc == MOSQ_ERR_PAYLOAD_SIZE) {
    snprintf(t->errbuf, sizeof t->errbuf, "mqtt: request larger than the broker accepts");
    t->ex = EX_FAILED;
    t->ex_err = FL_E_TOOBIG;
    return FL_E_TOOBIG;
  }
  drop(t, mosquitto_strerror(rc));
  return FL_E_TRANSPORT;
}

static void free_request(mqtt_tr *t) {
  mosquitto_property_free_all(&t->props);
  fl__free(t->alloc, t->topic);
  fl__free(t->alloc, t->req_body);
  t->topic = NULL;
  t->req_body = NULL;
  t->req_len = 0;
}

static void tr_end(void *ctx) {
  mqtt_tr *t = ctx;
  free_request(t);
  t->ex = EX_NONE;
}

static int add_prop(mosquitto_property **p, const char *name, const char *value) {
  int rc = mosquitto_property_add_string_pair(p, MQTT_PROP_USER_PROPERTY, name, value);
  return rc == MOSQ_ERR_SUCCESS ? FL_OK : rc == MOSQ_ERR_NOMEM ? FL_E_NOMEM : FL_E_INVAL;
}

static int copy_request(mqtt_tr *t, const fl_http_request *req) {
  if (strlen(req->method) >= sizeof t->method || req->path[0] != '/')
    return FL_E_INVAL;
  snprintf(t->method, sizeof t->method, "%s", req->method);
  size_t n = strlen(t->req_topic_base) + strlen(req->path) + 1;
  t->topic = fl__malloc(t->alloc, n);
  if (t->topic == NULL)
    return FL_E_NOMEM;
  snprintf(t->topic, n, "%s%s", t->req_topic_base, req->path);
  if (req->body_len > 0) {
    t->req_body = fl__malloc(t->alloc, req->body_len);
    if (t->req_body == NULL)
      return FL_E_NOMEM;
    memcpy(t->req_body, req->body, req->body_len);
    t->req_len = req->body_len;
  }
  int err = fl__random_bytes(t->corr, CORR_LEN);
  if (err != FL_OK)
    return err;
  mosquitto_property **p = &t->props;
  int rc = mosquitto_property_add_string(p, MQTT_PROP_RESPONSE_TOPIC, t->res_topic);
  if (rc == MOSQ_ERR_SUCCESS)
    rc = mosquitto_property_add_binary(p, MQTT_PROP_CORRELATION_DATA, t->corr, CORR_LEN);
  if (rc != MOSQ_ERR_SUCCESS)
    return FL_E_NOMEM;
  err = add_prop(p, "method", t->method);
  if (err == FL_OK && req->auth != NULL)
    err = add_prop(p, "auth", req->auth);
  if (err == FL_OK && req->if_none_match != NULL)
    err = add_prop(p, "if-none-match", req->if_none_match);
  return err;
}

static fl_err tr_begin(void *ctx, const fl_http_request *req) {
  mqtt_tr *t = ctx;
  tr_end(t);
  t->errbuf[0] = '\0';
  t->status = 0;
  t->body_len = 0;
  int err = copy_request(t, req);
  if (err != FL_OK)
    goto out_end;
  t->ex_deadline_ms = fl__client_now_ms() + t->request_timeout_ms;
  /* Nothing drove the connection since the last exchange: read what came meanwhile (a
   * broker that closed an idle connection after its keep-alive), so that a dead connection is
   * replaced now instead of failing this exchange. */
  if (t->conn != MQ_DOWN && drive(t, 0) != MOSQ_ERR_SUCCESS) {
    mosquitto_disconnect(t->mosq);
    t->conn = MQ_DOWN;
  }
  t->ex = EX_WAIT_CONN;
  if (t->conn == MQ_DOWN) {
    t->ex_deadline_ms += t->connect_timeout_ms;
    err = start_connect(t);
    if (err != FL_OK)
      goto out_end;
  }
  if (t->conn == MQ_UP && publish_request(t) != FL_OK) {
    err = t->ex_err;
    goto out_end;
  }
  return FL_OK;
out_end:
  tr_end(t);
  return err;
}

static fl_err tr_poll(void *ctx, int timeout_ms, fl_http_response *resp) {
  mqtt_tr *t = ctx;
  if (t->ex == EX_NONE)
    return FL_E_STATE;
  if (t->ex == EX_WAIT_CONN || t->ex == EX_SENT) {
    int rc = drive(t, timeout_ms > 0 ? timeout_ms : 0);
    if (rc != MOSQ_ERR_SUCCESS && t->conn != MQ_DOWN)
      drop(t, rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc));
    if (rc != MOSQ_ERR_SUCCESS)
      fail(t, FL_E_TRANSPORT, "mqtt: %s",
           rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc));
    if (t->ex == EX_WAIT_CONN && t->conn == MQ_UP)
      publish_request(t);
  }
  if ((t->ex == EX_WAIT_CONN || t->ex == EX_SENT) && fl__client_now_ms() > t->ex_deadline_ms) {
    snprintf(t->errbuf, sizeof t->errbuf, "mqtt: no answer within the request timeout");
    t->ex = EX_FAILED;
    t->ex_err = FL_E_TIMEOUT;
  }
  if (t->ex == EX_FAILED) {
    t->ex = EX_NONE;
    return t->ex_err;
  }
  if (t->ex != EX_ANSWERED)
    return FL_E_AGAIN;
  t->ex = EX_NONE;
  resp->status = t->status;
  resp->body = t->body;
  resp->body_len = t->body_len;
  if (resp->size >= offsetof(fl_http_response, retry_after_ms) + sizeof(int64_t))
    resp->retry_after_ms = t->retry_after_ms;
  return FL_OK;
}

static int tr_pollfd(void *ctx, int *events) {
  mqtt_tr *t = ctx;
  int fd = mosquitto_socket(t->mosq);
  if (fd < 0 || (t->ex != EX_WAIT_CONN && t->ex != EX_SENT))
    return -1;
  *events = FL_POLL_IN | (mosquitto_want_write(t->mosq) ? FL_POLL_OUT : 0);
  return fd;
}

static fl_err tr_attach(void *ctx, struct fl_multi *m) {
  (void)ctx;
  (void)m; /* nothing to move: fl_multi waits on pollfd() */
  return FL_OK;
}

static const char *tr_detail(void *ctx) {
  mqtt_tr *t = ctx;
  return t->errbuf;
}

static void tr_destroy(void *ctx) {
  mqtt_tr *t = ctx;
  if (t == NULL)
    return;
  tr_end(t);
  if (t->mosq != NULL) {
    if (t->conn != MQ_DOWN)
      mosquitto_disconnect(t->mosq);
    mosquitto_destroy(t->mosq);
  }
  fl__free(t->alloc, t->body);
  fl__free(t->alloc, t->req_topic_base);
  fl__free(t->alloc, t->res_topic);
  fl_allocator copy = t->alloc_copy;
  fl__free(t->alloc != NULL ? &copy : NULL, t);
}

/* Topic names carry the username as one level: no wildcard, separator or control byte. */
static bool valid_name(const char *s) {
  if (s == NULL || *s == '\0' || strlen(s) > 128)
    return false;
  for (; *s; s++)
    if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
          *s == '.' || *s == '_' || *s == '-'))
      return false;
  return true;
}

/* mqtt://host[:port] or mqtts://host[:port]; IPv6 literals in brackets. */
static int parse_url(mqtt_tr *t, const fl_client_opts *o, const char *url) {
  const char *rest;
  if (strncasecmp(url, "mqtts://", 8) == 0) {
    t->tls = true;
    rest = url + 8;
  } else if (strncasecmp(url, "mqtt://", 7) == 0) {
    rest = url + 7;
    if (!o->allow_insecure_http) {
      fl__opts_log(o,
                   "fl_transport_mqtt: %s is plain mqtt, without broker authentication: use "
                   "mqtts:// (allow_insecure_http opts in, e.g. for a broker on loopback)",
                   url);
      return FL_E_INVAL;
    }
  } else {
    fl__opts_log(o, "fl_transport_mqtt: broker_url %s does not start with mqtts://", url);
    return FL_E_INVAL;
  }
  t->port = t->tls ? 8883 : 1883;
  const char *end = rest + strcspn(rest, "/");
  const char *hs = rest, *he, *port = NULL;
  if (*rest == '[') {
    const char *rb = memchr(rest, ']', (size_t)(end - rest));
    if (rb == NULL || (rb + 1 < end && rb[1] != ':'))
      goto bad;
    hs = rest + 1;
    he = rb;
    port = rb + 1 < end ? rb + 2 : NULL;
  } else {
    const char *c = memchr(rest, ':', (size_t)(end - rest));
    he = c != NULL ? c : end;
    port = c != NULL ? c + 1 : NULL;
  }
  size_t hl = (size_t)(he - hs);
  if (hl == 0 || hl >= sizeof t->host)
    goto bad;
  memcpy(t->host, hs, hl);
  t->host[hl] = '\0';
  if (port != NULL) {
    char *e;
    long p = strtol(port, &e, 10);
    if (p <= 0 || p > 65535 || e != end)
      goto bad;
    t->port = (int)p;
  }
  return FL_OK;
bad:
  fl__opts_log(o, "fl_transport_mqtt: cannot parse broker_url %s", url);
  return FL_E_INVAL;
}

static int make_topics(mqtt_tr *t, const fl_mqtt_opts *mo) {
  const char *prefix = mo->topic_prefix != NULL ? mo->topic_prefix : "fl/v1/dev";
  size_t n = strlen(prefix) + strlen(mo->username) + 8;
  t->req_topic_base = fl__malloc(t->alloc, n);
  t->res_topic = fl__malloc(t->alloc, n);
  if (t->req_topic_base == NULL || t->res_topic == NULL)
    return FL_E_NOMEM;
  snprintf(t->req_topic_base, n, "%s/%s/req", prefix, mo->username);
  snprintf(t->res_topic, n, "%s/%s/res", prefix, mo->username);
  return FL_OK;
}

static int setup_mosq(mqtt_tr *t, const fl_client_opts *o, const fl_mqtt_opts *mo) {
  const char *id = mo->client_id != NULL ? mo->client_id : mo->username;
  t->mosq = mosquitto_new(id, true, t);
  if (t->mosq == NULL)
    return errno == EINVAL ? FL_E_INVAL : FL_E_NOMEM;
  mosquitto_int_option(t->mosq, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V5);
  mosquitto_int_option(t->mosq, MOSQ_OPT_TCP_NODELAY, 1);
  if (mosquitto_username_pw_set(t->mosq, mo->username, mo->password) != MOSQ_ERR_SUCCESS)
    return FL_E_NOMEM;
  if (t->tls) {
    const char *ca = mo->ca_file != NULL ? mo->ca_file : o->ca_file;
    int rc = ca != NULL ? mosquitto_tls_set(t->mosq, ca, NULL, NULL, NULL, NULL)
                        : mosquitto_int_option(t->mosq, MOSQ_OPT_TLS_USE_OS_CERTS, 1);
    if (rc != MOSQ_ERR_SUCCESS) {
      fl__opts_log(o, "fl_transport_mqtt: TLS set-up failed: %s", mosquitto_strerror(rc));
      return FL_E_INVAL;
    }
  }
  mosquitto_connect_v5_callback_set(t->mosq, on_connect);
  mosquitto_subscribe_v5_callback_set(t->mosq, on_subscribe);
  mosquitto_disconnect_v5_callback_set(t->mosq, on_disconnect);
  mosquitto_publish_v5_callback_set(t->mosq, on_publish);
  mosquitto_message_v5_callback_set(t->mosq, on_message);
  return FL_OK;
}

static int check_mqtt_opts(const fl_client_opts *o, const fl_mqtt_opts *mo) {
  if (mo->version <= 0 || mo->version > FL_MQTT_OPTS_VERSION) {
    fl__opts_log(o, "fl_mqtt_opts.version %d: %s", mo->version,
                 mo->version <= 0 ? "set it to FL_MQTT_OPTS_VERSION from fl/client.h"
                                  : "newer than this libflclient knows: upgrade the library");
    return mo->version <= 0 ? FL_E_INVAL : FL_E_UNSUPPORTED;
  }
  if (mo->keepalive_s != 0 && (mo->keepalive_s < 5 || mo->keepalive_s > 65535)) {
    fl__opts_log(o, "fl_transport_mqtt: keepalive_s %d: 0 (60) or 5 to 65535", mo->keepalive_s);
    return FL_E_INVAL;
  }
  if (mo->broker_url == NULL || !valid_name(mo->username)) {
    fl__opts_log(o,
                 "fl_transport_mqtt: broker_url and a username of letters, digits, '.', '_' "
                 "and '-' are required");
    return FL_E_INVAL;
  }
  return FL_OK;
}

fl_err fl_transport_mqtt(fl_transport *out, const fl_client_opts *in, const fl_mqtt_opts *mo) {
  if (out == NULL || in == NULL || mo == NULL)
    return FL_E_INVAL;
  fl_client_opts opts;
  const fl_client_opts *o = &opts;
  int err = fl__opts_read(in, &opts);
  if (err == FL_OK)
    err = check_mqtt_opts(o, mo);
  if (err != FL_OK)
    return err;
  pthread_once(&lib_once, lib_init);
  if (lib_rc != MOSQ_ERR_SUCCESS)
    return FL_E_TRANSPORT;
  const fl_allocator *a = o->allocator;
  mqtt_tr *t = fl__calloc(a, 1, sizeof *t);
  if (t == NULL)
    return FL_E_NOMEM;
  if (a != NULL) {
    t->alloc_copy = *a;
    t->alloc = &t->alloc_copy;
  }
  t->body_max = o->max_response_bytes > 0 ? o->max_response_bytes : FL__RESPONSE_MAX;
  t->connect_timeout_ms = o->connect_timeout_ms > 0 ? o->connect_timeout_ms : 10000;
  t->request_timeout_ms = o->request_timeout_ms > 0 ? o->request_timeout_ms : 60000;
  t->keepalive = mo->keepalive_s > 0 ? mo->keepalive_s : 60;
  err = parse_url(t, o, mo->broker_url);
  if (err == FL_OK)
    err = make_topics(t, mo);
  if (err == FL_OK)
    err = setup_mosq(t, o, mo);
  if (err != FL_OK) {
    tr_destroy(t);
    return err;
  }
  *out = (fl_transport){.version = FL_TRANSPORT_VERSION,
                        .ctx = t,
                        .begin = tr_begin,
                        .poll = tr_poll,
                        .end = tr_end,
                        .destroy = tr_destroy,
                        .detail = tr_detail,
                        .attach = tr_attach,
                        .pollfd = tr_pollfd};
  return FL_OK;
}
#endif
