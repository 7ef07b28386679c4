/*
 * The MQTT side of itest_mqtt: a real Mosquitto broker configured by
 * deploy/mosquitto/gen-config.sh, fl-mqtt-bridge processes, and a raw MQTT 5 client for
 * the requests libflclient would never send (another device's topic, forged envelopes).
 */
#ifndef FL_ITEST_MQTT_ENV_H
#define FL_ITEST_MQTT_ENV_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define MQ_PASSWORD "device-secret" /* every test device's password (the ACL is per name) */
#define MQ_BRIDGE_PASSWORD "bridge-secret"

typedef struct mq_broker {
  char dir[128]; /* config, password file, ACL, logs */
  int port;
  pid_t pid;
  char url[64]; /* mqtt://127.0.0.1:<port> */
} mq_broker;

/* Writes the config for n_devices accounts "<prefix><i>" (%03d) and one bridge account, then
 * starts the broker and waits until it accepts connections. 0 or -1. */
int mq_broker_start(mq_broker *b, const char *prefix, int n_devices);
/* SIGKILL (a crash: nothing flushed) and start again on the same port and config. */
int mq_broker_restart(mq_broker *b);
void mq_broker_stop(mq_broker *b);

/* fl-mqtt-bridge number `index` against the coordinator; its log is <dir>/bridge<index>.log. */
pid_t mq_bridge_start(const mq_broker *b, const char *coordinator_url, int index);
/* SIGTERM and wait; the "requests=" count of its stop line, or -1. */
long mq_bridge_stop(const mq_broker *b, pid_t pid, int index);

/* One raw MQTT 5 exchange as account `user`: publishes body on <prefix>/<topic_user>/req<path>
 * with response topic <prefix>/<res_user>/res, and waits up to wait_ms for the answer on the
 * user's own response topic. *puback gets the PUBACK reason code; *status the answer's status
 * property (0: no answer) and *body and *len its payload (malloc'ed, may be NULL). 0, or -1 when
 * the connection fails. */
typedef struct mq_raw {
  const char *user, *topic_user, *res_user;
  const char *method, *path, *auth;
  const uint8_t *body;
  size_t len;
  int wait_ms;
} mq_raw;
int mq_raw_exchange(const mq_broker *b, const mq_raw *r, int *puback, int *status, char reason[64],
                    uint8_t **body, size_t *len);

/* Subscribes as `user` to `topic` and counts messages until mq_spy_stop (a thread). */
typedef struct mq_spy mq_spy;
mq_spy *mq_spy_start(const mq_broker *b, const char *user, const char *topic);
int mq_spy_stop(mq_spy *s); /* messages received, -1 on error */

#endif
