/* flctl devices and enrollment-tokens: the enrolled fleet, revocation, enrolment tokens. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "flctl.h"

static const flctl_col DEVICE_COLS[] = {{"device_id", "DEVICE", 0},
                                        {"state", "STATE", 0},
                                        {"labels", "LABELS", 40},
                                        {"running_model_id", "MODEL", 0},
                                        {"running_version", "VERSION", 0},
                                        {"last_seen_at", "LAST_SEEN", 0},
                                        {NULL, NULL, 0}};

int flctl_cmd_devices(const flctl *f, const flctl_args *a) {
  char path[96];
  long long id;
  const char *sub = a->npos > 0 ? a->pos[0] : "list";
  if (strcmp(sub, "list") == 0 && a->npos <= 1)
    return flctl_show_list(f, "/admin/v1/devices", "devices", DEVICE_COLS);
  if (strcmp(sub, "revoke") != 0 || a->npos != 2)
    return flctl_usage_error(a);
  if (flctl_id_at(a, 1, "DEVICE_ID", &id))
    return FLCTL_USAGE;
  snprintf(path, sizeof path, "/admin/v1/devices/%lld/revoke", id);
  return flctl_show_call(f, "POST", path, NULL);
}

/* The body of POST /admin/v1/enrollment-tokens; NULL after a message when an option is bad. */
static json_t *enrollment_body(const flctl_args *a) {
  long long count = 0, ttl = 0;
  const char *c = flctl_flag(a, "count"), *t = flctl_flag(a, "ttl"), *l = flctl_flag(a, "labels");
  if ((c && flctl_int("--count", c, 1, INT64_MAX, &count)) ||
      (t && flctl_int("--ttl", t, 1, INT64_MAX, &ttl)))
    return NULL;
  json_t *labels = l ? flctl_labels("--labels", l) : NULL;
  if (l && labels == NULL)
    return NULL;
  json_t *body = json_object();
  if (c)
    json_object_set_new(body, "count", json_integer((json_int_t)count));
  if (t)
    json_object_set_new(body, "ttl_s", json_integer((json_int_t)ttl));
  if (labels)
    json_object_set_new(body, "labels", labels);
  return body;
}

int flctl_cmd_enrollment_tokens(const flctl *f, const flctl_args *a) {
  if (a->npos != 1 || strcmp(a->pos[0], "create") != 0)
    return flctl_usage_error(a);
  json_t *body = enrollment_body(a);
  if (body == NULL)
    return FLCTL_USAGE;
  json_t *j = flctl_call(f, "POST", "/admin/v1/enrollment-tokens", body);
  json_decref(body);
  if (j == NULL)
    return FLCTL_ERR;
  if (f->json) {
    flctl_object(f, j);
  } else {
    size_t i;
    json_t *t;
    json_array_foreach(json_object_get(j, "tokens"), i, t) printf("%s\n", json_string_value(t));
  }
  json_decref(j);
  return FLCTL_OK;
}
