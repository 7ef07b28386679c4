/*
 * flctl commands: each maps its arguments onto one admin API call (docs/API.md, section 3
 * and 5) and prints the answer as a table (or JSON with --json). Every argument is checked
 * before anything is sent: a command with an unknown option, a malformed number or a missing
 * argument changes nothing and exits with FLCTL_USAGE.
 */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "flctl.h"

/* ----- the commands' forms ---------------------------------------------------------------------
 */

/* One form of a command: its options (space separated) and its usage line. */
typedef struct form {
  const char *noun;
  const char *sub; /* NULL: the noun takes no subcommand */
  const char *flags;
  const char *usage;
} form;

static const form FORMS[] = {
    {"models", "list", "", "models list"},
    {"models", "create", "spec seed", "models create NAME --spec JSON|@FILE [--seed N]"},
    {"versions", "list", "", "versions list MODEL_ID"},
    {"versions", "get", "", "versions get MODEL_ID VERSION"},
    {"plans", "create",
     "plan aggregator trim-fraction byzantine krum-select cohort-labels cohort-conditions "
     "eval-share eval-count eval-by",
     "plans create MODEL_ID [--plan JSON|@FILE] [--aggregator NAME] [--trim-fraction B]\n"
     "                  [--byzantine F] [--krum-select M] [--cohort-labels k=v,...]\n"
     "                  [--cohort-conditions c,...] [--eval-share S | --eval-count N]\n"
     "                  [--eval-by LABEL]"},
    {"plans", "get", "", "plans get PLAN_ID"},
    {"plans", "stop", "", "plans stop PLAN_ID"},
    {"rounds", "list", "model", "rounds list [--model MODEL_ID]"},
    {"rounds", "get", "", "rounds get ROUND_ID"},
    {"channels", "list", "model", "channels list [--model MODEL_ID]"},
    {"channels", "set", "", "channels set MODEL_ID NAME VERSION"},
    {"channels", "rollback", "", "channels rollback CHANNEL_ID"},
    {"rollouts", "list", "model", "rollouts list [--model MODEL_ID]"},
    {"rollouts", "get", "", "rollouts get ROLLOUT_ID"},
    {"rollouts", "create", "channel percent cohort gate",
     "rollouts create MODEL_ID VERSION [--channel NAME] [--percent P] [--cohort k=v,...]\n"
     "                  [--gate JSON|@FILE]"},
    {"rollouts", "raise", "", "rollouts raise ROLLOUT_ID PERCENT"},
    {"rollouts", "pause", "", "rollouts pause ROLLOUT_ID"},
    {"rollouts", "resume", "", "rollouts resume ROLLOUT_ID"},
    {"rollouts", "promote", "", "rollouts promote ROLLOUT_ID"},
    {"rollouts", "rollback", "", "rollouts rollback ROLLOUT_ID"},
    {"pins", "list", "", "pins list"},
    {"pins", "add", "device labels",
     "pins add MODEL_ID VERSION (--device DEVICE_ID | --labels k=v,...)"},
    {"pins", "remove", "", "pins remove PIN_ID"},
    {"fleet", NULL, "", "fleet MODEL_ID"},
    {"devices", "list", "", "devices list"},
    {"devices", "revoke", "", "devices revoke DEVICE_ID"},
    {"tokens", "list", "", "tokens list"},
    {"tokens", "create", "role name expires-in",
     "tokens create --role admin|operator|viewer [--name NAME] [--expires-in SECONDS]"},
    {"tokens", "revoke", "", "tokens revoke TOKEN_ID"},
    {"enrollment-tokens", "create", "count labels ttl",
     "enrollment-tokens create [--count N] [--labels k=v,...] [--ttl SECONDS]"},
    {"drift", NULL, "model", "drift [--model MODEL_ID]"},
    {"audit", NULL, "limit", "audit [--limit N]"},
    {"info", NULL, "", "info"},
    {"whoami", NULL, "", "whoami"},
    {NULL, NULL, NULL, NULL}};

void flctl_usage(FILE *out, const char *noun) {
  for (const form *m = FORMS; m->noun != NULL; m++)
    if (noun == NULL || strcmp(noun, m->noun) == 0)
      fprintf(out, "  %s%s\n", noun ? "flctl " : "", m->usage);
}

/* ----- arguments ----------------------------------------------------------------------------- */

#define MAX_ARGS 16

/* Positional arguments and "--name value" / "--name=value" options of one command. */
typedef struct args {
  const char *noun;
  const char *pos[MAX_ARGS];
  int npos;
  const char *name[MAX_ARGS], *val[MAX_ARGS];
  int nflag;
  bool help;
} args;

static int parse_args(int argc, char **argv, args *a) {
  for (int i = 0; i < argc; i++) {
    if (strncmp(argv[i], "--", 2) != 0) {
      if (a->npos == MAX_ARGS) {
        fprintf(stderr, "flctl: too many arguments\n");
        return -1;
      }
      a->pos[a->npos++] = argv[i];
      continue;
    }
    if (strcmp(argv[i], "--help") == 0) {
      a->help = true;
      continue;
    }
    if (a->nflag == MAX_ARGS) {
      fprintf(stderr, "flctl: too many options\n");
      return -1;
    }
    char *eq = strchr(argv[i], '=');
    a->name[a->nflag] = argv[i] + 2;
    if (eq != NULL) {
      *eq = '\0';
      a->val[a->nflag] = eq + 1;
    } else if (strcmp(argv[i], "--json") == 0) {
      a->val[a->nflag] = ""; /* takes no value; check_flags says where it belongs */
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

/* Whether `name` is a word of the space-separated list. */
static bool listed(const char *list, const char *name) {
  size_t n = strlen(name);
  for (const char *p = list; *p != '\0';) {
    size_t w = strcspn(p, " ");
    if (w == n && strncmp(p, name, n) == 0)
      return true;
    p += w;
    p += *p == ' ';
  }
  return false;
}

static int usage_error(const args *a) {
  fprintf(stderr, "flctl: usage:\n");
  flctl_usage(stderr, a->noun);
  fprintf(stderr, "(flctl help for all commands)\n");
  return FLCTL_USAGE;
}

/* Refuses an option the typed form does not take, or one given twice. */
static int check_flags(const form *m, const args *a) {
  for (int i = 0; i < a->nflag; i++) {
    const char *name = a->name[i];
    if (!listed(m->flags, name)) {
      bool global = listed("url token cacert json timeout", name);
      fprintf(stderr, "flctl: %s%s%s: unknown option --%s%s\nflctl: usage: flctl %s\n", m->noun,
              m->sub ? " " : "", m->sub ? m->sub : "", name,
              global ? " (global options go before the command)" : "", m->usage);
      return -1;
    }
    for (int k = 0; k < i; k++)
      if (strcmp(a->name[k], name) == 0) {
        fprintf(stderr, "flctl: --%s given twice\n", name);
        return -1;
      }
  }
  return 0;
}

int flctl_int(const char *what, const char *s, long long lo, long long hi, long long *out) {
  char *end;
  long long v = 0;
  bool ok = s != NULL && *s != '\0' && !isspace((unsigned char)*s);
  if (ok) {
    errno = 0;
    v = strtoll(s, &end, 10);
    ok = errno == 0 && *end == '\0' && v >= lo && v <= hi;
  }
  if (ok) {
    *out = v;
    return 0;
  }
  if (hi == INT64_MAX)
    fprintf(stderr, "flctl: %s: '%s' is not a %s integer\n", what, s ? s : "",
            lo > 0 ? "positive" : "non-negative");
  else
    fprintf(stderr, "flctl: %s: '%s' is not an integer in %lld..%lld\n", what, s ? s : "", lo, hi);
  return -1;
}

/* A positive id (1..INT64_MAX, the coordinator's ids) at positional argument i. */
static int id_at(const args *a, int i, const char *what, long long *out) {
  return flctl_int(what, a->pos[i], 1, INT64_MAX, out);
}

/* A percentage 0..100 (decimals allowed). */
static int percent_arg(const char *what, const char *s, double *out) {
  char *end;
  double v = 0;
  bool ok = *s != '\0' && !isspace((unsigned char)*s);
  if (ok) {
    errno = 0;
    v = strtod(s, &end);
    ok = errno == 0 && *end == '\0' && isfinite(v) && v >= 0 && v <= 100;
  }
  if (!ok) {
    fprintf(stderr, "flctl: %s: '%s' is not a percentage (a number in 0..100)\n", what, s);
    return -1;
  }
  *out = v;
  return 0;
}

/* "site=plant-3,hw=rev-b" as a JSON object of strings; NULL after a message when malformed. */
static json_t *labels_arg(const char *what, const char *s) {
  json_t *o = json_object();
  char *copy = strdup(s), *save = NULL;
  if (copy == NULL || *s == '\0') {
    json_decref(o);
    o = NULL;
  }
  for (char *kv = copy ? strtok_r(copy, ",", &save) : NULL; o && kv;
       kv = strtok_r(NULL, ",", &save)) {
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
  if (o == NULL)
    fprintf(stderr, "flctl: %s: '%s' is not key=value[,key=value...]\n", what, s);
  return o;
}

/* JSON text, or @FILE with JSON; NULL after a message naming the option. */
static json_t *json_arg(const char *what, const char *s) {
  json_error_t e;
  json_t *j = s[0] == '@' ? json_load_file(s + 1, 0, &e) : json_loads(s, 0, &e);
  if (j == NULL)
    fprintf(stderr, "flctl: %s: bad JSON (%s at line %d)\n", what, e.text, e.line);
  return j;
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

/* GET base, or base?model_id=N with --model; FLCTL_USAGE when --model is no id. */
static int filtered_list(const flctl *f, const args *a, const char *base, const char *key,
                         const flctl_col *cols) {
  char path[96];
  long long id = 0;
  const char *m = flag(a, "model");
  if (a->npos > 1)
    return usage_error(a);
  if (m != NULL && flctl_int("--model", m, 1, INT64_MAX, &id))
    return FLCTL_USAGE;
  if (m != NULL)
    snprintf(path, sizeof path, "%s?model_id=%lld", base, id);
  else
    snprintf(path, sizeof path, "%s", base);
  return show_list(f, path, key, cols);
}

/* ----- models, versions, plans, rounds ------------------------------------------------------- */

static const flctl_col MODEL_COLS[] = {
    {"model_id", "MODEL", 0},        {"name", "NAME", 30},         {"n_params", "PARAMS", 0},
    {"latest_version", "LATEST", 0}, {"created_at", "CREATED", 0}, {NULL, NULL, 0}};
static const flctl_col VERSION_COLS[] = {
    {"version", "VERSION", 0},    {"parent_version", "PARENT", 0},
    {"round_id", "ROUND", 0},     {"sha256", "SHA256", 16},
    {"epsilon", "EPSILON", 0},    {"metrics", "METRICS", 90},
    {"created_at", "CREATED", 0}, {NULL, NULL, 0}};
static const flctl_col ROUND_COLS[] = {
    {"round_id", "ROUND", 0},        {"model_id", "MODEL", 0},    {"base_version", "BASE", 0},
    {"state", "STATE", 0},           {"accepted", "ACCEPTED", 0}, {"target", "TARGET", 0},
    {"result_version", "RESULT", 0}, {"reason", "REASON", 40},    {NULL, NULL, 0}};

static int cmd_models(const flctl *f, const args *a) {
  const char *sub = a->npos > 0 ? a->pos[0] : "list";
  long long seed = 0;
  if (strcmp(sub, "list") == 0 && a->npos <= 1)
    return show_list(f, "/admin/v1/models", "models", MODEL_COLS);
  if (strcmp(sub, "create") != 0 || a->npos != 2 || flag(a, "spec") == NULL)
    return usage_error(a);
  if (flag(a, "seed") && flctl_int("--seed", flag(a, "seed"), 0, INT64_MAX, &seed))
    return FLCTL_USAGE;
  json_t *spec = json_arg("--spec", flag(a, "spec"));
  if (spec == NULL)
    return FLCTL_USAGE;
  json_t *body = json_pack("{s:s, s:o}", "name", a->pos[1], "spec", spec);
  if (flag(a, "seed"))
    json_object_set_new(body, "seed", json_integer((json_int_t)seed));
  return show_call(f, "POST", "/admin/v1/models", body);
}

static int cmd_versions(const flctl *f, const args *a) {
  char path[96];
  long long m, v;
  if (a->npos == 3 && strcmp(a->pos[0], "get") == 0)
    return id_at(a, 1, "MODEL_ID", &m) || id_at(a, 2, "VERSION", &v) ? FLCTL_USAGE
                                                                     : flctl_version_show(f, m, v);
  if (a->npos != 2 || strcmp(a->pos[0], "list") != 0)
    return usage_error(a);
  if (id_at(a, 1, "MODEL_ID", &m))
    return FLCTL_USAGE;
  snprintf(path, sizeof path, "/admin/v1/models/%lld/versions", m);
  json_t *j = flctl_call(f, "GET", path, NULL);
  if (j == NULL)
    return FLCTL_ERR;
  /* The privacy spent after each version's round (docs/PRIVACY.md) gets a column of its own;
   * "-" for versions of plans without central noise. --json prints the answer as it came. */
  json_t *rows = json_object_get(j, "versions"), *row;
  size_t i;
  json_array_foreach(rows, i, row) {
    json_t *pv = json_object_get(json_object_get(row, "metrics"), "privacy");
    json_t *e = json_object_get(pv, "epsilon");
    if (!f->json && json_is_number(e))
      json_object_set_new(row, "epsilon", json_real(json_number_value(e)));
  }
  flctl_table(f, j, rows, VERSION_COLS);
  json_decref(j);
  return FLCTL_OK;
}

/* plans get: the plan object, then its privacy spent in one line (docs/PRIVACY.md 2). */
static int plan_get(const flctl *f, long long id) {
  char path[96];
  snprintf(path, sizeof path, "/admin/v1/plans/%lld", id);
  json_t *j = flctl_call(f, "GET", path, NULL);
  if (j == NULL)
    return FLCTL_ERR;
  flctl_object(f, j);
  json_t *pv = json_object_get(j, "privacy");
  if (!f->json && json_is_object(pv)) {
    json_t *e = json_object_get(pv, "epsilon");
    char eps[32] = "inf";
    if (json_is_number(e))
      snprintf(eps, sizeof eps, "%.4g", json_number_value(e));
    printf("epsilon %s at delta %g after %lld rounds (sampling rate %.4g, noise multiplier %g)\n",
           eps, json_number_value(json_object_get(pv, "delta")),
           (long long)json_integer_value(json_object_get(pv, "rounds")),
           json_number_value(json_object_get(pv, "sampling_rate")),
           json_number_value(json_object_get(pv, "noise_multiplier")));
  } else if (!f->json) {
    printf("no central noise: no epsilon\n");
  }
  json_decref(j);
  return FLCTL_OK;
}

/* --aggregator and its parameters, over the fields of --plan (the coordinator checks them and
 * answers 400 bad_plan with why). -1 after printing why for a value that is not a number. */
static int robust_flags(const args *a, json_t *plan) {
  static const char *const nums[] = {"trim-fraction", "byzantine", "krum-select"};
  static const char *const keys[] = {"trim_fraction", "byzantine", "krum_select"};
  if (!json_is_object(plan)) {
    fprintf(stderr, "flctl: --plan must be a JSON object\n");
    return -1;
  }
  if (flag(a, "aggregator") != NULL)
    json_object_set_new(plan, "aggregator", json_string(flag(a, "aggregator")));
  for (int i = 0; i < 3; i++) {
    const char *v = flag(a, nums[i]);
    char *end;
    if (v == NULL)
      continue;
    double d = strtod(v, &end);
    if (*v == '\0' || *end != '\0' || !isfinite(d)) {
      fprintf(stderr, "flctl: --%s: not a number: %s\n", nums[i], v);
      return -1;
    }
    if (i > 0 && (d != floor(d) || fabs(d) > 1e15)) {
      fprintf(stderr, "flctl: --%s: not a whole number: %s\n", nums[i], v);
      return -1;
    }
    json_object_set_new(plan, keys[i], i == 0 ? json_real(d) : json_integer((json_int_t)d));
  }
  return 0;
}

static int cmd_plans(const flctl *f, const args *a) {
  char path[96];
  long long id;
  bool create = a->npos == 2 && strcmp(a->pos[0], "create") == 0;
  bool stop = a->npos == 2 && strcmp(a->pos[0], "stop") == 0;
  bool get = a->npos == 2 && strcmp(a->pos[0], "get") == 0;
  if (!create && !stop && !get)
    return usage_error(a);
  if (id_at(a, 1, create ? "MODEL_ID" : "PLAN_ID", &id))
    return FLCTL_USAGE;
  if (get)
    return plan_get(f, id);
  if (stop) {
    snprintf(path, sizeof path, "/admin/v1/plans/%lld/stop", id);
    return show_call(f, "POST", path, NULL);
  }
  json_t *plan = json_arg("--plan", flag(a, "plan") ? flag(a, "plan") : "{}");
  const char *cl = flag(a, "cohort-labels");
  json_t *labels = cl != NULL ? labels_arg("--cohort-labels", cl) : NULL;
  if (plan == NULL || robust_flags(a, plan) || (cl != NULL && labels == NULL) ||
      flctl_plan_cohort_eval(plan, labels, flag(a, "cohort-conditions"), flag(a, "eval-share"),
                             flag(a, "eval-count"), flag(a, "eval-by"))) {
    json_decref(plan);
    json_decref(labels);
    return FLCTL_USAGE;
  }
  json_decref(labels);
  snprintf(path, sizeof path, "/admin/v1/models/%lld/plans", id);
  return show_call(f, "POST", path, plan);
}

static int cmd_rounds(const flctl *f, const args *a) {
  char path[96];
  long long id;
  const char *sub = a->npos > 0 ? a->pos[0] : "list";
  if (strcmp(sub, "list") == 0)
    return filtered_list(f, a, "/admin/v1/rounds", "rounds", ROUND_COLS);
  if (strcmp(sub, "get") != 0 || a->npos != 2)
    return usage_error(a);
  if (id_at(a, 1, "ROUND_ID", &id))
    return FLCTL_USAGE;
  snprintf(path, sizeof path, "/admin/v1/rounds/%lld", id);
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
/* The channel's version next to what its devices run: "92% of stable runs v14 (channel: v14)". */
static const flctl_col FLEET_COLS[] = {{"channel", "CHANNEL", 0}, {"version", "VERSION", 0},
                                       {"running", "RUNNING", 0}, {"devices", "DEVICES", 0},
                                       {"percent", "SHARE", 0},   {NULL, NULL, 0}};

static int cmd_channels(const flctl *f, const args *a) {
  char path[96];
  long long model, version, id;
  const char *sub = a->npos > 0 ? a->pos[0] : "list";
  if (strcmp(sub, "list") == 0)
    return filtered_list(f, a, "/admin/v1/channels", "channels", CHANNEL_COLS);
  if (strcmp(sub, "set") == 0 && a->npos == 4) {
    if (id_at(a, 1, "MODEL_ID", &model) || id_at(a, 3, "VERSION", &version))
      return FLCTL_USAGE;
    return show_call(f, "POST", "/admin/v1/channels",
                     json_pack("{s:I, s:s, s:I}", "model_id", (json_int_t)model, "name", a->pos[2],
                               "version", (json_int_t)version));
  }
  if (strcmp(sub, "rollback") != 0 || a->npos != 2)
    return usage_error(a);
  if (id_at(a, 1, "CHANNEL_ID", &id))
    return FLCTL_USAGE;
  snprintf(path, sizeof path, "/admin/v1/channels/%lld/rollback", id);
  return show_call(f, "POST", path, NULL);
}

/* The body of POST /admin/v1/rollouts; NULL after a message when an argument is bad. */
static json_t *rollout_body(const args *a) {
  long long model, version;
  double pct = 0;
  const char *p = flag(a, "percent"), *cohort = flag(a, "cohort"), *gate = flag(a, "gate");
  if (id_at(a, 1, "MODEL_ID", &model) || id_at(a, 2, "VERSION", &version) ||
      (p != NULL && percent_arg("--percent", p, &pct)))
    return NULL;
  json_t *c = cohort ? labels_arg("--cohort", cohort) : NULL;
  json_t *g = gate ? json_arg("--gate", gate) : NULL;
  if ((cohort && c == NULL) || (gate && g == NULL)) {
    json_decref(c);
    json_decref(g);
    return NULL;
  }
  json_t *body =
      json_pack("{s:I, s:I, s:s}", "model_id", (json_int_t)model, "version", (json_int_t)version,
                "channel", flag(a, "channel") ? flag(a, "channel") : "stable");
  if (p != NULL)
    json_object_set_new(body, "percent", json_real(pct));
  if (c != NULL)
    json_object_set_new(body, "cohort", c);
  if (g != NULL)
    json_object_set_new(body, "gate", g);
  return body;
}

static int cmd_rollouts(const flctl *f, const args *a) {
  static const char *const ops[] = {"pause", "resume", "promote", "rollback", NULL};
  char path[96];
  const char *sub = a->npos > 0 ? a->pos[0] : "list";
  long long id;
  double pct;
  if (strcmp(sub, "list") == 0)
    return filtered_list(f, a, "/admin/v1/rollouts", "rollouts", ROLLOUT_COLS);
  if (strcmp(sub, "create") == 0 && a->npos == 3) {
    json_t *body = rollout_body(a);
    return body ? show_call(f, "POST", "/admin/v1/rollouts", body) : FLCTL_USAGE;
  }
  if (strcmp(sub, "raise") == 0 && a->npos == 3) {
    if (id_at(a, 1, "ROLLOUT_ID", &id) || percent_arg("PERCENT", a->pos[2], &pct))
      return FLCTL_USAGE;
    snprintf(path, sizeof path, "/admin/v1/rollouts/%lld/raise", id);
    return show_call(f, "POST", path, json_pack("{s:f}", "percent", pct));
  }
  bool known = strcmp(sub, "get") == 0;
  for (int i = 0; ops[i] != NULL; i++)
    known = known || strcmp(sub, ops[i]) == 0;
  if (!known || a->npos != 2)
    return usage_error(a);
  if (id_at(a, 1, "ROLLOUT_ID", &id))
    return FLCTL_USAGE;
  if (strcmp(sub, "get") == 0) {
    snprintf(path, sizeof path, "/admin/v1/rollouts/%lld", id);
    return show_call(f, "GET", path, NULL);
  }
  snprintf(path, sizeof path, "/admin/v1/rollouts/%lld/%s", id, sub);
  return show_call(f, "POST", path, NULL);
}

static int cmd_pins(const flctl *f, const args *a) {
  char path[96];
  long long model, version, id;
  const char *sub = a->npos > 0 ? a->pos[0] : "list";
  if (strcmp(sub, "list") == 0 && a->npos <= 1)
    return show_list(f, "/admin/v1/pins", "pins", PIN_COLS);
  if (strcmp(sub, "remove") == 0 && a->npos == 2) {
    if (id_at(a, 1, "PIN_ID", &id))
      return FLCTL_USAGE;
    snprintf(path, sizeof path, "/admin/v1/pins/%lld", id);
    return show_call(f, "DELETE", path, NULL);
  }
  const char *dev = flag(a, "device"), *labels = flag(a, "labels");
  if (strcmp(sub, "add") != 0 || a->npos != 3 || (dev == NULL) == (labels == NULL))
    return usage_error(a);
  if (id_at(a, 1, "MODEL_ID", &model) || id_at(a, 2, "VERSION", &version) ||
      (dev && flctl_int("--device", dev, 1, INT64_MAX, &id)))
    return FLCTL_USAGE;
  json_t *sel = dev ? json_integer((json_int_t)id) : labels_arg("--labels", labels);
  if (sel == NULL)
    return FLCTL_USAGE;
  json_t *body =
      json_pack("{s:I, s:I}", "model_id", (json_int_t)model, "version", (json_int_t)version);
  json_object_set_new(body, dev ? "device_id" : "labels", sel);
  return show_call(f, "POST", "/admin/v1/pins", body);
}

/* One row per (channel, running version), each with the channel's version; a channel that no
 * active device follows still gets a row, so that every channel's version is shown. */
static json_t *fleet_rows(const json_t *channels) {
  json_t *rows = json_array(), *ch, *run;
  size_t i, k;
  json_array_foreach((json_t *)channels, i, ch) {
    const json_t *runs = json_object_get(ch, "running");
    for (k = 0; k == 0 || k < json_array_size(runs); k++) {
      char pct[32] = "-";
      json_t *row = json_object();
      run = json_array_get(runs, k);
      json_object_set(row, "channel", json_object_get(ch, "channel"));
      json_object_set(row, "version", json_object_get(ch, "version"));
      if (run != NULL) {
        json_int_t v = json_integer_value(json_object_get(run, "version"));
        snprintf(pct, sizeof pct, "%.1f%%",
                 100.0 * json_number_value(json_object_get(run, "fraction")));
        json_object_set_new(row, "running", v == 0 ? json_string("none") : json_integer(v));
        json_object_set(row, "devices", json_object_get(run, "devices"));
      } else {
        json_object_set_new(row, "devices", json_integer(0));
      }
      json_object_set_new(row, "percent", json_string(pct));
      json_array_append_new(rows, row);
    }
  }
  return rows;
}

static int cmd_fleet(const flctl *f, const args *a) {
  char path[96];
  long long model;
  if (a->npos != 1)
    return usage_error(a);
  if (id_at(a, 0, "MODEL_ID", &model))
    return FLCTL_USAGE;
  snprintf(path, sizeof path, "/admin/v1/fleet?model_id=%lld", model);
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
  long long id;
  const char *sub = a->npos > 0 ? a->pos[0] : "list";
  if (strcmp(sub, "list") == 0 && a->npos <= 1)
    return show_list(f, "/admin/v1/devices", "devices", DEVICE_COLS);
  if (strcmp(sub, "revoke") != 0 || a->npos != 2)
    return usage_error(a);
  if (id_at(a, 1, "DEVICE_ID", &id))
    return FLCTL_USAGE;
  snprintf(path, sizeof path, "/admin/v1/devices/%lld/revoke", id);
  return show_call(f, "POST", path, NULL);
}

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
static int token_create(const flctl *f, const args *a) {
  long long ttl = 0;
  const char *role = flag(a, "role"), *e = flag(a, "expires-in");
  if (a->npos > 2 || (role != NULL && a->npos == 2) || (role == NULL && a->npos != 2))
    return usage_error(a);
  if (role == NULL)
    role = a->pos[1];
  if (strcmp(role, "admin") != 0 && strcmp(role, "operator") != 0 && strcmp(role, "viewer") != 0) {
    fprintf(stderr, "flctl: --role: '%s' is not admin, operator or viewer\n", role);
    return FLCTL_USAGE;
  }
  if (e && flctl_int("--expires-in", e, 1, INT64_MAX, &ttl))
    return FLCTL_USAGE;
  json_t *body =
      json_pack("{s:s, s:s}", "role", role, "name", flag(a, "name") ? flag(a, "name") : "");
  if (e)
    json_object_set_new(body, "expires_in_s", json_integer((json_int_t)ttl));
  return show_call(f, "POST", "/admin/v1/tokens", body);
}

static int cmd_tokens(const flctl *f, const args *a) {
  char path[96];
  long long id;
  const char *sub = a->npos > 0 ? a->pos[0] : "list";
  if (strcmp(sub, "list") == 0 && a->npos <= 1)
    return show_list(f, "/admin/v1/tokens", "tokens", TOKEN_COLS);
  if (strcmp(sub, "create") == 0)
    return token_create(f, a);
  if (strcmp(sub, "revoke") != 0 || a->npos != 2)
    return usage_error(a);
  if (id_at(a, 1, "TOKEN_ID", &id))
    return FLCTL_USAGE;
  snprintf(path, sizeof path, "/admin/v1/tokens/%lld/revoke", id);
  return show_call(f, "POST", path, NULL);
}

/* The body of POST /admin/v1/enrollment-tokens; NULL after a message when an option is bad. */
static json_t *enrollment_body(const args *a) {
  long long count = 0, ttl = 0;
  const char *c = flag(a, "count"), *t = flag(a, "ttl"), *l = flag(a, "labels");
  if ((c && flctl_int("--count", c, 1, INT64_MAX, &count)) ||
      (t && flctl_int("--ttl", t, 1, INT64_MAX, &ttl)))
    return NULL;
  json_t *labels = l ? labels_arg("--labels", l) : NULL;
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

static int cmd_enrollment_tokens(const flctl *f, const args *a) {
  if (a->npos != 1 || strcmp(a->pos[0], "create") != 0)
    return usage_error(a);
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

static int cmd_audit(const flctl *f, const args *a) {
  long long limit = 20;
  if (a->npos != 0)
    return usage_error(a);
  /* The coordinator answers its latest 1000 entries, newest first. */
  if (flag(a, "limit") && flctl_int("--limit", flag(a, "limit"), 1, 1000, &limit))
    return FLCTL_USAGE;
  json_t *j = flctl_call(f, "GET", "/admin/v1/audit", NULL);
  if (j == NULL)
    return FLCTL_ERR;
  json_t *entries = json_object_get(j, "entries");
  while (json_array_size(entries) > (size_t)limit)
    json_array_remove(entries, json_array_size(entries) - 1);
  flctl_table(f, j, entries, AUDIT_COLS);
  json_decref(j);
  return FLCTL_OK;
}

/* Drift events (docs/DRIFT.md), newest first; --json shows the cohorts' tests too. */
static const flctl_col DRIFT_COLS[] = {{"event_id", "EVENT", 0},
                                       {"model_id", "MODEL", 0},
                                       {"version", "VERSION", 0},
                                       {"cohort_label", "LABEL", 0},
                                       {"cohort", "COHORT", 20},
                                       {"psi", "PSI", 0},
                                       {"max_shift", "SHIFT", 0},
                                       {"features", "FEATURES", 40},
                                       {"detected_at", "DETECTED", 0},
                                       {"resolved_at", "RESOLVED", 0},
                                       {"retrain_plan_id", "RETRAIN", 0},
                                       {"retrain_note", "NOTE", 0},
                                       {NULL, NULL, 0}};

static int cmd_drift(const flctl *f, const args *a) {
  char path[96];
  long long id = 0;
  const char *m = flag(a, "model");
  if (a->npos != 0)
    return usage_error(a);
  if (m != NULL && flctl_int("--model", m, 1, INT64_MAX, &id))
    return FLCTL_USAGE;
  snprintf(path, sizeof path, "/admin/v1/drift?model_id=%lld", id);
  json_t *j = flctl_call(f, "GET", path, NULL);
  if (j == NULL)
    return FLCTL_ERR;
  flctl_table(f, j, json_object_get(json_object_get(j, "drift"), "events"), DRIFT_COLS);
  json_decref(j);
  return FLCTL_OK;
}

static int cmd_info(const flctl *f, const args *a) {
  if (a->npos != 0)
    return usage_error(a);
  return show_call(f, "GET", "/admin/v1/info", NULL);
}

/* The token flctl runs with: its name, role and expiry (what a command will be allowed). */
static int cmd_whoami(const flctl *f, const args *a) {
  if (a->npos != 0)
    return usage_error(a);
  return show_call(f, "GET", "/admin/v1/whoami", NULL);
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
                                   {"drift", cmd_drift},
                                   {"audit", cmd_audit},
                                   {"info", cmd_info},
                                   {"whoami", cmd_whoami},
                                   {NULL, NULL}};

/* The form the arguments name: the noun's only form, or the one of its subcommand (the first
 * positional, "list" when there is none). NULL for an unknown subcommand. */
static const form *typed_form(const args *a) {
  for (const form *m = FORMS; m->noun != NULL; m++) {
    if (strcmp(m->noun, a->noun) != 0)
      continue;
    if (m->sub == NULL || strcmp(m->sub, a->npos > 0 ? a->pos[0] : "list") == 0)
      return m;
  }
  return NULL;
}

int flctl_run(const flctl *f, int argc, char **argv) {
  args a;
  for (const command *c = COMMANDS; c->name != NULL; c++) {
    if (strcmp(argv[0], c->name) != 0)
      continue;
    memset(&a, 0, sizeof a);
    a.noun = c->name;
    if (parse_args(argc - 1, argv + 1, &a))
      return usage_error(&a);
    if (a.help) {
      flctl_usage(stdout, a.noun);
      return FLCTL_OK;
    }
    const form *m = typed_form(&a);
    if (m == NULL)
      return usage_error(&a);
    if (check_flags(m, &a))
      return FLCTL_USAGE;
    return c->fn(f, &a);
  }
  fprintf(stderr, "flctl: unknown command '%s' (flctl help)\n", argv[0]);
  return FLCTL_USAGE;
}
