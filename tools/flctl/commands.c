/*
 * flctl commands: each maps its arguments onto one admin API call (docs/API.md, section 3
 * and 5) and prints the answer as a table (or JSON with --json).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "flctl.h"

/* ----- arguments ----------------------------------------------------------------------------- */

#define MAX_ARGS 16

/* Positional arguments and "--name value" / "--name=value" flags of one command. */
typedef struct args {
  const char *pos[MAX_ARGS];
  int npos;
  const char *name[MAX_ARGS], *val[MAX_ARGS];
  int nflag;
} args;

static int parse_args(int argc, char **argv, args *a) {
  memset(a, 0, sizeof *a);
  for (int i = 0; i < argc; i++) {
    if (strncmp(argv[i], "--", 2) != 0) {
      if (a->npos == MAX_ARGS)
        return -1;
      a->pos[a->npos++] = argv[i];
      continue;
    }
    if (a->nflag == MAX_ARGS)
      return -1;
    char *eq = strchr(argv[i], '=');
    a->name[a->nflag] = argv[i] + 2;
    if (eq != NULL) {
      *eq = '\0';
      a->val[a->nflag] = eq + 1;
    } else if (i + 1 < argc) {
      a->val[a->nflag] = argv[++i];
    } else {
      fprintf(stderr, "flctl: %s needs a value\n", argv[i]);
      return -1;
    }
    a->nflag++;
  }
  return 0;
}

static const char *flag(const args *a, const char *name) {
  for (int i = 0; i < a->nflag; i++)
    if (strcmp(a->name[i], name) == 0)
      return a->val[i];
  return NULL;
}

/* A positive integer argument; 0 when it is not one. */
static unsigned long long id_arg(const char *s) {
  char *end;
  if (s == NULL || *s == '\0')
    return 0;
  unsigned long long v = strtoull(s, &end, 10);
  return *end == '\0' ? v : 0;
}

/* "site=plant-3,hw=rev-b" as a JSON object of strings; NULL when malformed. */
static json_t *labels_arg(const char *s) {
  json_t *o = json_object();
  char *copy = strdup(s), *save = NULL;
  for (char *kv = strtok_r(copy, ",", &save); o && kv; kv = strtok_r(NULL, ",", &save)) {
    char *eq = strchr(kv, '=');
    if (eq == NULL || eq == kv) {
      json_decref(o);
      o = NULL;
      break;
    }
    *eq = '\0';
    json_object_set_new(o, kv, json_string(eq + 1));
  }
  free(copy);
  return o;
}

/* JSON text, or @FILE with JSON. */
static json_t *json_arg(const char *s) {
  json_error_t e;
  json_t *j = s[0] == '@' ? json_load_file(s + 1, 0, &e) : json_loads(s, 0, &e);
  if (j == NULL)
    fprintf(stderr, "flctl: bad JSON (%s at line %d)\n", e.text, e.line);
  return j;
}

static int usage_error(const char *what) {
  fprintf(stderr, "flctl: usage: flctl %s (flctl help for all commands)\n", what);
  return FLCTL_USAGE;
}

/* ----- output helpers ------------------------------------------------------------------------ */

static int show_list(const flctl *f, const char *path, const char *key, const flctl_col *cols) {
  json_t *j = flctl_call(f, "GET", path, NULL);
  if (j == NULL)
    return FLCTL_ERR;
  flctl_table(f, j, json_object_get(j, key), cols);
  json_decref(j);
  return FLCTL_OK;
}

/* Calls and prints the answer object; body is stolen (may be NULL). */
static int show_call(const flctl *f, const char *method, const char *path, json_t *body) {
  json_t *j = flctl_call(f, method, path, body);
  json_decref(body);
  if (j == NULL)
    return FLCTL_ERR;
  flctl_object(f, j);
  json_decref(j);
  return FLCTL_OK;
}

/* "?model_id=N" from --model, or "". */
static void model_query(const args *a, char *q, size_t n) {
  const char *m = flag(a, "model");
  snprintf(q, n, m ? "?model_id=%llu" : "", m ? id_arg(m) : 0ULL);
}

/* ----- models, versions, plans, rounds ------------------------------------------------------- */

static const flctl_col MODEL_COLS[] = {
    {"model_id", "MODEL", 0},        {"name", "NAME", 30},         {"n_params", "PARAMS", 0},
    {"latest_version", "LATEST", 0}, {"created_at", "CREATED", 0}, {NULL, NULL, 0}};
static const flctl_col VERSION_COLS[] = {{"version", "VERSION", 0},
                                         {"parent_version", "PARENT", 0},
                                         {"round_id", "ROUND", 0},
                                         {"sha256", "SHA256", 16},
                                         {"metrics", "METRICS", 90},
                                         {"created_at", "CREATED", 0},
                                         {NULL, NULL, 0}};
static const flctl_col ROUND_COLS[] = {
    {"round_id", "ROUND", 0},        {"model_id", "MODEL", 0},    {"base_version", "BASE", 0},
    {"state", "STATE", 0},           {"accepted", "ACCEPTED", 0}, {"target", "TARGET", 0},
    {"result_version", "RESULT", 0}, {"reason", "REASON", 40},    {NULL, NULL, 0}};

static int cmd_models(const flctl *f, const args *a) {
  const char *sub = a->npos > 0 ? a->pos[0] : "list";
  if (strcmp(sub, "list") == 0)
    return show_list(f, "/admin/v1/models", "models", MODEL_COLS);
  if (strcmp(sub, "create") != 0 || a->npos != 2 || flag(a, "spec") == NULL)
    return usage_error("models create NAME --spec JSON|@FILE [--seed N]");
  json_t *spec = json_arg(flag(a, "spec"));
  if (spec == NULL)
    return FLCTL_USAGE;
  json_t *body = json_pack("{s:s, s:o}", "name", a->pos[1], "spec", spec);
  if (flag(a, "seed"))
    json_object_set_new(body, "seed", json_integer((json_int_t)id_arg(flag(a, "seed"))));
  return show_call(f, "POST", "/admin/v1/models", body);
}

static int cmd_versions(const flctl *f, const args *a) {
  char path[96];
  unsigned long long m = a->npos == 2 && strcmp(a->pos[0], "list") == 0 ? id_arg(a->pos[1]) : 0;
  if (m == 0)
    return usage_error("versions list MODEL_ID");
  snprintf(path, sizeof path, "/admin/v1/models/%llu/versions", m);
  return show_list(f, path, "versions", VERSION_COLS);
}

static int cmd_plans(const flctl *f, const args *a) {
  char path[96];
  unsigned long long id = a->npos == 2 ? id_arg(a->pos[1]) : 0;
  if (id != 0 && strcmp(a->pos[0], "create") == 0) {
    json_t *plan = json_arg(flag(a, "plan") ? flag(a, "plan") : "{}");
    if (plan == NULL)
      return FLCTL_USAGE;
    snprintf(path, sizeof path, "/admin/v1/models/%llu/plans", id);
    return show_call(f, "POST", path, plan);
  }
  if (id != 0 && strcmp(a->pos[0], "stop") == 0) {
    snprintf(path, sizeof path, "/admin/v1/plans/%llu/stop", id);
    return show_call(f, "POST", path, NULL);
  }
  return usage_error("plans create MODEL_ID [--plan JSON|@FILE] | plans stop PLAN_ID");
}

static int cmd_rounds(const flctl *f, const args *a) {
  char path[96], q[48];
  const char *sub = a->npos > 0 ? a->pos[0] : "list";
  if (strcmp(sub, "list") == 0) {
    model_query(a, q, sizeof q);
    snprintf(path, sizeof path, "/admin/v1/rounds%s", q);
    return show_list(f, path, "rounds", ROUND_COLS);
  }
  if (strcmp(sub, "get") != 0 || a->npos != 2 || id_arg(a->pos[1]) == 0)
    return usage_error("rounds list [--model ID] | rounds get ROUND_ID");
  snprintf(path, sizeof path, "/admin/v1/rounds/%llu", id_arg(a->pos[1]));
  return show_call(f, "GET", path, NULL);
}

/* ----- channels, rollouts, pins, fleet ------------------------------------------------------- */

static const flctl_col CHANNEL_COLS[] = {{"channel_id", "CHANNEL", 0},
                                         {"model_id", "MODEL", 0},
                                         {"name", "NAME", 0},
                                         {"version", "VERSION", 0},
                                         {"previous_version", "PREVIOUS", 0},
                                         {"rollout_id", "ROLLOUT", 0},
                                         {"updated_at", "UPDATED", 0},
                                         {NULL, NULL, 0}};
static const flctl_col ROLLOUT_COLS[] = {{"rollout_id", "ROLLOUT", 0},
                                         {"model_id", "MODEL", 0},
                                         {"channel", "CHANNEL", 0},
                                         {"version", "VERSION", 0},
                                         {"from_version", "FROM", 0},
                                         {"percent", "PERCENT", 0},
                                         {"cohort", "COHORT", 30},
                                         {"state", "STATE", 0},
                                         {"gate_state", "GATE", 0},
                                         {"reason", "REASON", 60},
                                         {NULL, NULL, 0}};
static const flctl_col PIN_COLS[] = {
    {"pin_id", "PIN", 0},     {"model_id", "MODEL", 0},  {"device_id", "DEVICE", 0},
    {"labels", "LABELS", 40}, {"version", "VERSION", 0}, {"created_at", "CREATED", 0},
    {NULL, NULL, 0}};
static const flctl_col FLEET_COLS[] = {{"channel", "CHANNEL", 0},         {"version", "RUNNING", 0},
                                       {"devices", "DEVICES", 0},         {"percent", "SHARE", 0},
                                       {"current", "CHANNEL_VERSION", 0}, {NULL, NULL, 0}};

static int cmd_channels(const flctl *f, const args *a) {
  char path[96], q[48];
  const char *sub = a->npos > 0 ? a->pos[0] : "list";
  if (strcmp(sub, "list") == 0) {
    model_query(a, q, sizeof q);
    snprintf(path, sizeof path, "/admin/v1/channels%s", q);
    return show_list(f, path, "channels", CHANNEL_COLS);
  }
  if (strcmp(sub, "set") == 0 && a->npos == 4 && id_arg(a->pos[1]) && id_arg(a->pos[3]))
    return show_call(f, "POST", "/admin/v1/channels",
                     json_pack("{s:I, s:s, s:I}", "model_id", (json_int_t)id_arg(a->pos[1]), "name",
                               a->pos[2], "version", (json_int_t)id_arg(a->pos[3])));
  if (strcmp(sub, "rollback") == 0 && a->npos == 2 && id_arg(a->pos[1])) {
    snprintf(path, sizeof path, "/admin/v1/channels/%llu/rollback", id_arg(a->pos[1]));
    return show_call(f, "POST", path, NULL);
  }
  return usage_error(
      "channels list [--model ID] | channels set MODEL_ID NAME VERSION |"
      " channels rollback CHANNEL_ID");
}

static int rollout_create(const flctl *f, const args *a) {
  json_t *body = json_pack("{s:I, s:I, s:s}", "model_id", (json_int_t)id_arg(a->pos[1]), "version",
                           (json_int_t)id_arg(a->pos[2]), "channel",
                           flag(a, "channel") ? flag(a, "channel") : "stable");
  if (flag(a, "percent"))
    json_object_set_new(body, "percent", json_real(atof(flag(a, "percent"))));
  if (flag(a, "cohort")) {
    json_t *c = labels_arg(flag(a, "cohort"));
    if (c == NULL) {
      json_decref(body);
      return usage_error("rollouts create ... --cohort key=value[,key=value...]");
    }
    json_object_set_new(body, "cohort", c);
  }
  if (flag(a, "gate")) {
    json_t *g = json_arg(flag(a, "gate"));
    if (g == NULL) {
      json_decref(body);
      return FLCTL_USAGE;
    }
    json_object_set_new(body, "gate", g);
  }
  return show_call(f, "POST", "/admin/v1/rollouts", body);
}

static int cmd_rollouts(const flctl *f, const args *a) {
  static const char *const ops[] = {"pause", "resume", "promote", "rollback", NULL};
  char path[96], q[48];
  const char *sub = a->npos > 0 ? a->pos[0] : "list";
  unsigned long long id = a->npos >= 2 ? id_arg(a->pos[1]) : 0;
  if (strcmp(sub, "list") == 0) {
    model_query(a, q, sizeof q);
    snprintf(path, sizeof path, "/admin/v1/rollouts%s", q);
    return show_list(f, path, "rollouts", ROLLOUT_COLS);
  }
  if (strcmp(sub, "create") == 0 && a->npos == 3 && id && id_arg(a->pos[2]))
    return rollout_create(f, a);
  if (strcmp(sub, "get") == 0 && a->npos == 2 && id) {
    snprintf(path, sizeof path, "/admin/v1/rollouts/%llu", id);
    return show_call(f, "GET", path, NULL);
  }
  if (strcmp(sub, "raise") == 0 && a->npos == 3 && id) {
    snprintf(path, sizeof path, "/admin/v1/rollouts/%llu/raise", id);
    return show_call(f, "POST", path, json_pack("{s:f}", "percent", atof(a->pos[2])));
  }
  for (int i = 0; ops[i] != NULL && a->npos == 2 && id; i++)
    if (strcmp(sub, ops[i]) == 0) {
      snprintf(path, sizeof path, "/admin/v1/rollouts/%llu/%s", id, ops[i]);
      return show_call(f, "POST", path, NULL);
    }
  return usage_error(
      "rollouts list [--model ID] | get ID | create MODEL_ID VERSION"
      " [--channel NAME] [--percent P] [--cohort k=v,...] [--gate JSON|@FILE] |"
      " raise ID PERCENT | pause ID | resume ID | promote ID | rollback ID");
}

static int cmd_pins(const flctl *f, const args *a) {
  char path[96];
  const char *sub = a->npos > 0 ? a->pos[0] : "list";
  if (strcmp(sub, "list") == 0)
    return show_list(f, "/admin/v1/pins", "pins", PIN_COLS);
  if (strcmp(sub, "remove") == 0 && a->npos == 2 && id_arg(a->pos[1])) {
    snprintf(path, sizeof path, "/admin/v1/pins/%llu", id_arg(a->pos[1]));
    return show_call(f, "DELETE", path, NULL);
  }
  const char *dev = flag(a, "device"), *labels = flag(a, "labels");
  if (strcmp(sub, "add") != 0 || a->npos != 3 || !id_arg(a->pos[1]) || !id_arg(a->pos[2]) ||
      (dev == NULL) == (labels == NULL))
    return usage_error(
        "pins list | pins add MODEL_ID VERSION (--device ID | --labels k=v,...)"
        " | pins remove PIN_ID");
  json_t *body = json_pack("{s:I, s:I}", "model_id", (json_int_t)id_arg(a->pos[1]), "version",
                           (json_int_t)id_arg(a->pos[2]));
  json_t *sel = dev ? json_integer((json_int_t)id_arg(dev)) : labels_arg(labels);
  if (sel == NULL) {
    json_decref(body);
    return usage_error("pins add ... --labels key=value[,key=value...]");
  }
  json_object_set_new(body, dev ? "device_id" : "labels", sel);
  return show_call(f, "POST", "/admin/v1/pins", body);
}

/* One row per (channel, running version): "92% of stable runs v14". */
static json_t *fleet_rows(const json_t *channels) {
  json_t *rows = json_array(), *ch, *run;
  size_t i, k;
  json_array_foreach((json_t *)channels, i, ch) {
    json_int_t current = json_integer_value(json_object_get(ch, "version"));
    json_array_foreach(json_object_get(ch, "running"), k, run) {
      char pct[32];
      json_int_t v = json_integer_value(json_object_get(run, "version"));
      snprintf(pct, sizeof pct, "%.1f%%",
               100.0 * json_number_value(json_object_get(run, "fraction")));
      json_array_append_new(
          rows, json_pack("{s:O, s:o, s:O, s:s, s:s}", "channel", json_object_get(ch, "channel"),
                          "version", v == 0 ? json_string("none") : json_integer(v), "devices",
                          json_object_get(run, "devices"), "percent", pct, "current",
                          v == current ? "yes" : ""));
    }
  }
  return rows;
}

static int cmd_fleet(const flctl *f, const args *a) {
  char path[96];
  if (a->npos != 1 || id_arg(a->pos[0]) == 0)
    return usage_error("fleet MODEL_ID");
  snprintf(path, sizeof path, "/admin/v1/fleet?model_id=%llu", id_arg(a->pos[0]));
  json_t *j = flctl_call(f, "GET", path, NULL);
  if (j == NULL)
    return FLCTL_ERR;
  json_t *rows = fleet_rows(json_object_get(j, "channels"));
  flctl_table(f, j, rows, FLEET_COLS);
  json_decref(rows);
  json_decref(j);
  return FLCTL_OK;
}

/* ----- devices, tokens, audit, info ---------------------------------------------------------- */

static const flctl_col DEVICE_COLS[] = {{"device_id", "DEVICE", 0},
                                        {"state", "STATE", 0},
                                        {"labels", "LABELS", 40},
                                        {"running_model_id", "MODEL", 0},
                                        {"running_version", "VERSION", 0},
                                        {"last_seen_at", "LAST_SEEN", 0},
                                        {NULL, NULL, 0}};
static const flctl_col AUDIT_COLS[] = {{"entry_id", "ENTRY", 0}, {"at", "AT", 0},
                                       {"actor", "ACTOR", 30},   {"action", "ACTION", 0},
                                       {"target", "TARGET", 0},  {"detail", "DETAIL", 70},
                                       {NULL, NULL, 0}};

static int cmd_devices(const flctl *f, const args *a) {
  char path[96];
  const char *sub = a->npos > 0 ? a->pos[0] : "list";
  if (strcmp(sub, "list") == 0)
    return show_list(f, "/admin/v1/devices", "devices", DEVICE_COLS);
  if (strcmp(sub, "revoke") != 0 || a->npos != 2 || id_arg(a->pos[1]) == 0)
    return usage_error("devices list | devices revoke DEVICE_ID");
  snprintf(path, sizeof path, "/admin/v1/devices/%llu/revoke", id_arg(a->pos[1]));
  return show_call(f, "POST", path, NULL);
}

static int cmd_tokens(const flctl *f, const args *a) {
  if (a->npos != 2 || strcmp(a->pos[0], "create") != 0)
    return usage_error("tokens create admin|operator|viewer [--name NAME]");
  return show_call(
      f, "POST", "/admin/v1/tokens",
      json_pack("{s:s, s:s}", "role", a->pos[1], "name", flag(a, "name") ? flag(a, "name") : ""));
}

static int cmd_enrollment_tokens(const flctl *f, const args *a) {
  if (a->npos != 1 || strcmp(a->pos[0], "create") != 0)
    return usage_error("enrollment-tokens create [--count N] [--labels k=v,...] [--ttl SECONDS]");
  json_t *body = json_object();
  if (flag(a, "count"))
    json_object_set_new(body, "count", json_integer((json_int_t)id_arg(flag(a, "count"))));
  if (flag(a, "ttl"))
    json_object_set_new(body, "ttl_s", json_integer((json_int_t)id_arg(flag(a, "ttl"))));
  if (flag(a, "labels")) {
    json_t *l = labels_arg(flag(a, "labels"));
    if (l == NULL) {
      json_decref(body);
      return usage_error("enrollment-tokens create --labels key=value[,key=value...]");
    }
    json_object_set_new(body, "labels", l);
  }
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

static int cmd_audit(const flctl *f, const args *a) {
  json_t *j = flctl_call(f, "GET", "/admin/v1/audit", NULL);
  if (j == NULL)
    return FLCTL_ERR;
  json_t *entries = json_object_get(j, "entries");
  unsigned long long limit = flag(a, "limit") ? id_arg(flag(a, "limit")) : 20;
  while (json_array_size(entries) > limit)
    json_array_remove(entries, json_array_size(entries) - 1);
  flctl_table(f, j, entries, AUDIT_COLS);
  json_decref(j);
  return FLCTL_OK;
}

static int cmd_info(const flctl *f, const args *a) {
  (void)a;
  return show_call(f, "GET", "/admin/v1/info", NULL);
}

/* ----- dispatch ------------------------------------------------------------------------------ */

typedef struct command {
  const char *name;
  int (*fn)(const flctl *f, const args *a);
} command;

static const command COMMANDS[] = {{"models", cmd_models},
                                   {"versions", cmd_versions},
                                   {"plans", cmd_plans},
                                   {"rounds", cmd_rounds},
                                   {"channels", cmd_channels},
                                   {"rollouts", cmd_rollouts},
                                   {"pins", cmd_pins},
                                   {"fleet", cmd_fleet},
                                   {"devices", cmd_devices},
                                   {"tokens", cmd_tokens},
                                   {"enrollment-tokens", cmd_enrollment_tokens},
                                   {"audit", cmd_audit},
                                   {"info", cmd_info},
                                   {NULL, NULL}};

int flctl_run(const flctl *f, int argc, char **argv) {
  args a;
  for (const command *c = COMMANDS; c->name != NULL; c++) {
    if (strcmp(argv[0], c->name) != 0)
      continue;
    if (parse_args(argc - 1, argv + 1, &a))
      return usage_error(c->name);
    return c->fn(f, &a);
  }
  fprintf(stderr, "flctl: unknown command '%s' (flctl help)\n", argv[0]);
  return FLCTL_USAGE;
}
