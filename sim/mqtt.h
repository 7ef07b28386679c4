/*
 * fl-sim over MQTT (--transport mqtt, docs/MQTT.md): the devices' broker accounts from
 * --broker, and the fl-mqtt-bridge fl-sim starts against its coordinator (--bridge-bin).
 */
#ifndef SIM_MQTT_H
#define SIM_MQTT_H

#include <stddef.h>
#include <sys/types.h>

/* --broker mqtt[s]://PREFIX:PASSWORD@host[:port] split: the broker URL without the account,
 * the name prefix (device k logs in as PREFIX followed by k in five digits) and the password
 * (FL_SIM_MQTT_PASSWORD when the URL has none). FL_OK or FL_E_INVAL with why in msg. */
typedef struct sim_mqtt_broker {
  char url[256];
  char prefix[64];
  char password[128];
} sim_mqtt_broker;
int sim_mqtt_parse(const char *broker, sim_mqtt_broker *out, char *msg, size_t cap);

/* Starts bin against the coordinator at coord_url and the broker (account fl-bridge, password
 * in FL_MQTT_BRIDGE_PASSWORD), its log in work_dir/bridge.log; waits until it has subscribed.
 * FL_OK with *pid, or FL_E_IO. */
int sim_mqtt_bridge_start(const char *bin, const sim_mqtt_broker *b, const char *coord_url,
                          const char *work_dir, pid_t *pid);
void sim_mqtt_bridge_stop(pid_t pid);

#endif
