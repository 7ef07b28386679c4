/*
 * fl-mqtt-bridge: MQTT 5 requests of devices to the coordinator's HTTP device API and back
 * (docs/MQTT.md). bridge.c: options, the broker connection, the event loop; forward.c: one
 * request's trip (checks, HTTP, the answer).
 */
#ifndef FL_MQTT_BRIDGE_H
#define FL_MQTT_BRIDGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <curl/curl.h>
#include <mosquitto.h>
#include <mqtt_protocol.h>

typedef struct fl_bridge_opts {
  const char *broker;      /* mqtt://host:port or mqtts://host:port */
  const char *username;    /* the bridge's broker account */
  const char *password;    /* from --password-file or FL_MQTT_BRIDGE_PASSWORD */
  const char *ca_file;     /* mqtts: the broker's CA */
  const char *client_id;   /* NULL: <username>-<pid> (each bridge needs its own) */
  const char *coordinator; /* http(s)://host:port of the device API */
  const char *coordinator_ca;
  const char *group;  /* shared subscription group: $share/<group>/... */
  const char *prefix; /* fl/v1/dev */
  unsigned max_inflight;
  size_t max_answer;
  long http_timeout_ms;
} fl_bridge_opts;

typedef struct fl_job fl_job;

typedef struct fl_bridge {
  fl_bridge_opts o;
  char host[256];
  int port;
  bool tls;
  struct mosquitto *mosq;
  CURLM *multi;
  bool connected; /* CONNACK seen and the subscription sent */
  fl_job *jobs;
  unsigned inflight;
  struct {
    uint64_t requests, answered, dropped, http_errors, connects;
  } stats;
} fl_bridge;

/* forward.c */
void fl__bridge_on_message(struct mosquitto *m, void *ud, const struct mosquitto_message *msg,
                           const mosquitto_property *props);
void fl__bridge_collect(fl_bridge *b);
void fl__bridge_flush(fl_bridge *b);
void fl__bridge_free_jobs(fl_bridge *b);
void fl__job_free(fl_job *j);

/* bridge.c: one logfmt line on stderr; values the bridge did not write itself are quoted by the
 * caller or come from fixed tables. */
void fl__bridge_log(const char *event, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
