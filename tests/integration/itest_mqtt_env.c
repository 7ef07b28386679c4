/*
 * Broker, bridges and a raw MQTT 5 client for itest_mqtt (itest_mqtt_env.h). The processes are
 * started through tests/support (PR_SET_PDEATHSIG: none outlives the test).
 */
#include "itest_mqtt_env.h"

#include <mosquitto.h>
#include <mqtt_protocol.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "flsupport/http.h"
#include "flsupport/proc.h"
#include "flsupport/signer.h"

static int wait_port(int port, int ms) {
  for (int t = 0; t < ms; t += 50) {
    int fd = fl_sup_tcp_connect(port);
    if (fd >= 0) {
      close(fd);
      return 0;
    }
    fl_sup_sleep_ms(50);
  }
  return -1;
}

static int spawn_broker(mq_broker *b) {
  char conf[192], log[192];
  snprintf(conf, sizeof conf, "%s/cfg/mosquitto.conf", b->dir);
  snprintf(log, sizeof log, "%s/broker.log", b->dir);
  char *argv[] = {"mosquitto", "-c", conf, NULL};
  fl_sup_spawn_opts so = {.log_path = log};
  if (fl_sup_spawn(&b->pid, argv, &so) != 0)
    return -1;
  if (wait_port(b->port, 10000) != 0) {
    fprintf(stderr, "mosquitto did not listen on %d (see %s)\n", b->port, log);
    return -1;
  }
  return 0;
}

int mq_broker_start(mq_broker *b, const char *prefix, int n_devices) {
  memset(b, 0, sizeof *b);
  if (fl_sup_mkdtemp(b->dir, sizeof b->dir, "fl-itest-mqtt-") != 0)
    return -1;
  b->port = fl_sup_free_port();
  snprintf(b->url, sizeof b->url, "mqtt://127.0.0.1:%d", b->port);
  char accounts[192];
  snprintf(accounts, sizeof accounts, "%s/accounts", b->dir);
  FILE *f = fopen(accounts, "w");
  if (f == NULL)
    return -1;
  fprintf(f, "bridge fl-bridge %s\n", MQ_BRIDGE_PASSWORD);
  for (int i = 0; i < n_devices; i++)
    fprintf(f, "device %s%03d %s\n", prefix, i, MQ_PASSWORD);
  fclose(f);
  char cmd[768];
  snprintf(cmd, sizeof cmd,
           "bash '%s' '%s/cfg' --port %d --bind 127.0.0.1 < '%s' > '%s/gen.log' 2>&1",
           FL_MOSQUITTO_GEN, b->dir, b->port, accounts, b->dir);
  char *argv[] = {"sh", "-c", cmd, NULL};
  if (fl_sup_run(argv, NULL) != 0) {
    fprintf(stderr, "gen-config.sh failed (see %s/gen.log)\n", b->dir);
    return -1;
  }
  return spawn_broker(b);
}

int mq_broker_restart(mq_broker *b) {
  fl_sup_terminate(b->pid, SIGKILL, 5000);
  b->pid = 0;
  return spawn_broker(b);
}

void mq_broker_stop(mq_broker *b) {
  if (b->pid > 0)
    fl_sup_terminate(b->pid, SIGTERM, 5000);
  b->pid = 0;
  if (getenv("FL_KEEP") == NULL && b->dir[0] != '\0')
    fl_sup_rmtree(b->dir);
}

pid_t mq_bridge_start(const mq_broker *b, const char *coordinator_url, int index) {
  char log[192], id[32];
  snprintf(log, sizeof log, "%s/bridge%d.log", b->dir, index);
  snprintf(id, sizeof id, "fl-bridge-%d", index);
  char *argv[] = {FL_BRIDGE_BIN,
                  "--broker",
                  (char *)b->url,
                  "--username",
                  "fl-bridge",
                  "--client-id",
                  id,
                  "--coordinator",
                  (char *)coordinator_url,
                  "--http-timeout-ms",
                  "20000",
                  NULL};
  char *env[] = {"FL_MQTT_BRIDGE_PASSWORD=" MQ_BRIDGE_PASSWORD, NULL};
  fl_sup_spawn_opts so = {.log_path = log, .env = env};
  pid_t pid = 0;
  if (fl_sup_spawn(&pid, argv, &so) != 0)
    return -1;
  /* Subscribed once its log says so: a request sent before would find no subscriber. */
  for (int t = 0; t < 10000; t += 50) {
    FILE *f = fopen(log, "r");
    char line[512];
    bool up = false;
    while (f != NULL && fgets(line, sizeof line, f) != NULL)
      up = up || strstr(line, "event=broker_connected") != NULL;
    if (f != NULL)
      fclose(f);
    if (up)
      return pid;
    fl_sup_sleep_ms(50);
  }
  fprintf(stderr, "fl-mqtt-bridge %d did not connect (see %s)\n", index, log);
  return -1;
}

long mq_bridge_stop(const mq_broker *b, pid_t pid, int index) {
  if (pid <= 0)
    return -1;
  kill(pid, SIGCONT); /* a test that failed while the bridge was stopped */
  int st = fl_sup_terminate(pid, SIGTERM, 5000);
  char log[192], line[512];
  snprintf(log, sizeof log, "%s/bridge%d.log", b->dir, index);
  FILE *f = fopen(log, "r");
  long n = -1;
  while (f != NULL && fgets(line, sizeof line, f) != NULL) {
    const char *p = strstr(line, "event=stop requests=");
    if (p != NULL)
      n = strtol(p + strlen("event=stop requests="), NULL, 10);
  }
  if (f != NULL)
    fclose(f);
  return st == 0 ? n : -1;
}

/* ---- a raw MQTT 5 client ---------------------------------------------------------------- */

typedef struct raw_state {
  bool connected, subscribed, published, answered;
  int connack, puback, status;
  char reason[64];
  uint8_t *body;
  size_t len;
} raw_state;

static void raw_connect(struct mosquitto *m, void *ud, int rc, int fl,
                        const mosquitto_property *p) {
  (void)m;
  (void)fl;
  (void)p;
  raw_state *s = ud;
  s->connack = rc;
  s->connected = rc == 0;
}

static void raw_subscribe(struct mosquitto *m, void *ud, int mid, int n, const int *g,
                          const mosquitto_property *p) {
  (void)m;
  (void)mid;
  (void)n;
  (void)g;
  (void)p;
  ((raw_state *)ud)->subscribed = true;
}

static void raw_publish(struct mosquitto *m, void *ud, int mid, int rc,
                        const mosquitto_property *p) {
  (void)m;
  (void)mid;
  (void)p;
  raw_state *s = ud;
  s->puback = rc;
  s->published = true;
}

static void raw_message(struct mosquitto *m, void *ud, const struct mosquitto_message *msg,
                        const mosquitto_property *p) {
  (void)m;
  raw_state *s = ud;
  char *name = NULL, *value = NULL;
  bool skip = false;
  const mosquitto_property *q = p;
  while ((q = mosquitto_property_read_string_pair(q, MQTT_PROP_USER_PROPERTY, &name, &value,
                                                  skip)) != NULL) {
    skip = true;
    if (strcmp(name, "status") == 0)
      s->status = atoi(value);
    else if (strcmp(name, "reason") == 0)
      snprintf(s->reason, sizeof s->reason, "%s", value);
    free(name);
    free(value);
    name = value = NULL;
  }
  free(s->body);
  s->body = malloc(msg->payloadlen > 0 ? (size_t)msg->payloadlen : 1);
  if (s->body != NULL && msg->payloadlen > 0)
    memcpy(s->body, msg->payload, (size_t)msg->payloadlen);
  s->len = s->body != NULL ? (size_t)msg->payloadlen : 0;
  s->answered = true;
}

static struct mosquitto *raw_open(const mq_broker *b, const char *user, raw_state *s) {
  mosquitto_lib_init();
  struct mosquitto *m = mosquitto_new(NULL, true, s);
  if (m == NULL)
    return NULL;
  mosquitto_int_option(m, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V5);
  mosquitto_username_pw_set(m, user, MQ_PASSWORD);
  mosquitto_connect_v5_callback_set(m, raw_connect);
  mosquitto_subscribe_v5_callback_set(m, raw_subscribe);
  mosquitto_publish_v5_callback_set(m, raw_publish);
  mosquitto_message_v5_callback_set(m, raw_message);
  if (mosquitto_connect_bind_v5(m, "127.0.0.1", b->port, 30, NULL, NULL) != MOSQ_ERR_SUCCESS) {
    mosquitto_destroy(m);
    return NULL;
  }
  return m;
}

/* Runs the loop until *flag or wait_ms. */
static void raw_wait(struct mosquitto *m, const bool *flag, int wait_ms) {
  double end = fl_sup_mono_s() + wait_ms / 1000.0;
  while (!*flag && fl_sup_mono_s() < end)
    if (mosquitto_loop(m, 50, 1) != MOSQ_ERR_SUCCESS)
      break;
}

int mq_raw_exchange(const mq_broker *b, const mq_raw *r, int *puback, int *status, char reason[64],
                    uint8_t **body, size_t *len) {
  raw_state s = {0};
  struct mosquitto *m = raw_open(b, r->user, &s);
  if (m == NULL)
    return -1;
  int rc = -1;
  raw_wait(m, &s.connected, 5000);
  if (!s.connected)
    goto out;
  char sub[128], topic[256], rt[128];
  snprintf(sub, sizeof sub, "fl/v1/dev/%s/res", r->user);
  snprintf(topic, sizeof topic, "fl/v1/dev/%s/req%s", r->topic_user, r->path);
  snprintf(rt, sizeof rt, "fl/v1/dev/%s/res", r->res_user);
  mosquitto_subscribe_v5(m, NULL, sub, 1, 0, NULL);
  raw_wait(m, &s.subscribed, 5000);
  mosquitto_property *p = NULL;
  static const uint8_t corr[4] = {1, 2, 3, 4};
  mosquitto_property_add_string(&p, MQTT_PROP_RESPONSE_TOPIC, rt);
  mosquitto_property_add_binary(&p, MQTT_PROP_CORRELATION_DATA, corr, sizeof corr);
  mosquitto_property_add_string_pair(&p, MQTT_PROP_USER_PROPERTY, "method", r->method);
  if (r->auth != NULL)
    mosquitto_property_add_string_pair(&p, MQTT_PROP_USER_PROPERTY, "auth", r->auth);
  mosquitto_publish_v5(m, NULL, topic, (int)r->len, r->body, 1, false, p);
  mosquitto_property_free_all(&p);
  raw_wait(m, &s.published, 5000);
  raw_wait(m, &s.answered, r->wait_ms);
  *puback = s.published ? s.puback : -1;
  *status = s.answered ? s.status : 0;
  if (reason != NULL)
    snprintf(reason, 64, "%s", s.reason);
  if (body != NULL) {
    *body = s.body;
    *len = s.len;
    s.body = NULL;
  }
  rc = 0;
out:
  free(s.body);
  mosquitto_disconnect(m);
  mosquitto_destroy(m);
  return rc;
}

struct mq_spy {
  struct mosquitto *m;
  raw_state s;
  int count;
};

static void spy_message(struct mosquitto *m, void *ud, const struct mosquitto_message *msg,
                        const mosquitto_property *p) {
  (void)m;
  (void)msg;
  (void)p;
  mq_spy *s = (mq_spy *)((char *)ud - offsetof(mq_spy, s));
  __atomic_add_fetch(&s->count, 1, __ATOMIC_SEQ_CST);
}

mq_spy *mq_spy_start(const mq_broker *b, const char *user, const char *topic) {
  mq_spy *s = calloc(1, sizeof *s);
  if (s == NULL)
    return NULL;
  s->m = raw_open(b, user, &s->s);
  if (s->m == NULL) {
    free(s);
    return NULL;
  }
  mosquitto_message_v5_callback_set(s->m, spy_message);
  raw_wait(s->m, &s->s.connected, 5000);
  mosquitto_subscribe_v5(s->m, NULL, topic, 1, 0, NULL);
  raw_wait(s->m, &s->s.subscribed, 5000);
  if (!s->s.subscribed || mosquitto_loop_start(s->m) != MOSQ_ERR_SUCCESS) {
    mosquitto_destroy(s->m);
    free(s);
    return NULL;
  }
  return s;
}

int mq_spy_stop(mq_spy *s) {
  if (s == NULL)
    return -1;
  mosquitto_disconnect(s->m);
  mosquitto_loop_stop(s->m, false);
  int n = __atomic_load_n(&s->count, __ATOMIC_SEQ_CST);
  mosquitto_destroy(s->m);
  free(s);
  return n;
}
