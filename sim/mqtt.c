/*
 * fl-sim's MQTT set-up (mqtt.h): account names from --broker and the bridge process.
 */
#include "mqtt.h"

#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "fl/err.h"
#include "flsupport/proc.h"

int sim_mqtt_parse(const char *broker, sim_mqtt_broker *out, char *msg, size_t cap) {
  memset(out, 0, sizeof *out);
  const char *se = broker != NULL ? strstr(broker, "://") : NULL;
  if (se == NULL ||
      (strncasecmp(broker, "mqtt://", 7) != 0 && strncasecmp(broker, "mqtts://", 8) != 0)) {
    snprintf(msg, cap, "--broker must be mqtt://PREFIX:PASSWORD@host:port (or mqtts://)");
    return FL_E_INVAL;
  }
  const char *acct = se + 3, *at = strchr(acct, '@');
  if (at == NULL || at == acct) {
    snprintf(msg, cap, "--broker needs the devices' account prefix: mqtt://PREFIX@host:port");
    return FL_E_INVAL;
  }
  const char *colon = memchr(acct, ':', (size_t)(at - acct));
  size_t pl = (size_t)((colon != NULL ? colon : at) - acct);
  size_t wl = colon != NULL ? (size_t)(at - colon - 1) : 0;
  const char *env = getenv("FL_SIM_MQTT_PASSWORD");
  if (pl >= sizeof out->prefix - 8 || wl >= sizeof out->password ||
      strlen(broker) - (size_t)(at + 1 - acct) >= sizeof out->url ||
      (colon == NULL && env != NULL && strlen(env) >= sizeof out->password)) {
    snprintf(msg, cap, "--broker: account prefix, password or URL too long");
    return FL_E_INVAL;
  }
  memcpy(out->prefix, acct, pl);
  if (colon != NULL)
    memcpy(out->password, colon + 1, wl);
  else if (env != NULL)
    snprintf(out->password, sizeof out->password, "%s", env);
  snprintf(out->url, sizeof out->url, "%.*s%s", (int)(acct - broker), broker, at + 1);
  return FL_OK;
}

int sim_mqtt_bridge_start(const char *bin, const sim_mqtt_broker *b, const char *coord_url,
                          const char *work_dir, pid_t *pid) {
  char log[512];
  snprintf(log, sizeof log, "%s/bridge.log", work_dir);
  char *argv[] = {(char *)bin,   "--broker",      (char *)b->url,  "--username",      "fl-bridge",
                  "--client-id", "fl-sim-bridge", "--coordinator", (char *)coord_url, NULL};
  fl_sup_spawn_opts so = {.log_path = log};
  if (fl_sup_spawn(pid, argv, &so) != FL_OK)
    return FL_E_IO;
  for (int t = 0; t < 10000; t += 50) {
    FILE *f = fopen(log, "r");
    char line[512];
    bool up = false;
    while (f != NULL && fgets(line, sizeof line, f) != NULL)
      up = up || strstr(line, "event=broker_connected") != NULL;
    if (f != NULL)
      fclose(f);
    if (up) {
      printf("fl-mqtt-bridge connected (log %s)\n", log);
      return FL_OK;
    }
    if (!fl_sup_alive(*pid))
      break;
    fl_sup_sleep_ms(50);
  }
  fprintf(stderr, "fl-sim: fl-mqtt-bridge did not connect to %s (see %s)\n", b->url, log);
  sim_mqtt_bridge_stop(*pid);
  return FL_E_IO;
}

void sim_mqtt_bridge_stop(pid_t pid) {
  if (pid > 0)
    fl_sup_terminate(pid, SIGTERM, 5000);
}
