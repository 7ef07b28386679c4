/* flctl tokens and whoami: admin bearer tokens, their roles and expiry. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "flctl.h"

static const flctl_col TOKEN_COLS[] = {{"token_id", "TOKEN", 0},
                                       {"name", "NAME", 30},
                                       {"role", "ROLE", 0},
                                       {"state", "STATE", 0},
                                       {"created_at", "CREATED", 0},
                                       {"expires_at", "EXPIRES", 0},
                                       {"last_used_at", "LAST_USED", 0},
                                       {NULL, NULL, 0}};

/* tokens create: the role as --role (or, as before, the one positional argument). The
 * coordinator bounds --expires-in (docs/API.md); here it only has to be a positive number. */
static int token_create(const flctl *f, const flctl_args *a) {
  long long ttl = 0;
  const char *role = flctl_flag(a, "role"), *e = flctl_flag(a, "expires-in");
  if (a->npos > 2 || (role != NULL && a->npos == 2) || (role == NULL && a->npos != 2))
    return flctl_usage_error(a);
  if (role == NULL)
    role = a->pos[1];
  if (strcmp(role, "admin") != 0 && strcmp(role, "operator") != 0 && strcmp(role, "viewer") != 0) {
    fprintf(stderr, "flctl: --role: '%s' is not admin, operator or viewer\n", role);
    return FLCTL_USAGE;
  }
  if (e && flctl_int("--expires-in", e, 1, INT64_MAX, &ttl))
    return FLCTL_USAGE;
  json_t *body = json_pack("{s:s, s:s}", "role", role, "name",
                           flctl_flag(a, "name") ? flctl_flag(a, "name") : "");
  if (e)
    json_object_set_new(body, "expires_in_s", json_integer((json_int_t)ttl));
  return flctl_show_call(f, "POST", "/admin/v1/tokens", body);
}

int flctl_cmd_tokens(const flctl *f, const flctl_args *a) {
  char path[96];
  long long id;
  const char *sub = a->npos > 0 ? a->pos[0] : "list";
  if (strcmp(sub, "list") == 0 && a->npos <= 1)
    return flctl_show_list(f, "/admin/v1/tokens", "tokens", TOKEN_COLS);
  if (strcmp(sub, "create") == 0)
    return token_create(f, a);
  if (strcmp(sub, "revoke") != 0 || a->npos != 2)
    return flctl_usage_error(a);
  if (flctl_id_at(a, 1, "TOKEN_ID", &id))
    return FLCTL_USAGE;
  snprintf(path, sizeof path, "/admin/v1/tokens/%lld/revoke", id);
  return flctl_show_call(f, "POST", path, NULL);
}

/* The token flctl runs with: its name, role and expiry (what a command will be allowed). */
int flctl_cmd_whoami(const flctl *f, const flctl_args *a) {
  if (a->npos != 0)
    return flctl_usage_error(a);
  return flctl_show_call(f, "GET", "/admin/v1/whoami", NULL);
}
