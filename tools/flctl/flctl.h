/*
 * flctl internals: one admin API call (output.c), readable tables or JSON (output.c), the
 * command table and its dispatch (commands.c, called by main.c), the argument helpers
 * (args.c) and the commands, one file per noun.
 */
#ifndef FLCTL_H
#define FLCTL_H

#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>

typedef struct flctl {
  const char *url;         /* "http://127.0.0.1:8080", trailing slashes removed by main.c */
  const char *token;       /* bearer token */
  const char *cacert;      /* PEM CA bundle that verifies https:// (NULL: the system's) */
  const char *cacert_from; /* where cacert came from, for messages */
  bool json;               /* --json: print the coordinator's JSON instead of tables */
  long timeout_s;
} flctl;

/* Exit codes. */
enum { FLCTL_OK = 0, FLCTL_ERR = 1, FLCTL_USAGE = 2 };

/* One request; body may be NULL (borrowed). Returns the parsed answer of a 200 (caller
 * decrefs), else NULL after printing the coordinator's error (or the transport's) on stderr. */
json_t *flctl_call(const flctl *f, const char *method, const char *path, const json_t *body);

/* A column of a table: a key of each row object, a header, and a width limit (0: none). */
typedef struct flctl_col {
  const char *key;
  const char *header;
  int max;
} flctl_col;

/* Prints rows (an array of objects) as an aligned table, or the JSON with --json. */
void flctl_table(const flctl *f, const json_t *answer, const json_t *rows, const flctl_col *cols);
/* Prints one object as "key  value" lines, or the JSON with --json. */
void flctl_object(const flctl *f, const json_t *obj);
/* Text of a JSON value for a table cell: strings as they are, null as "-", numbers in %g,
 * objects as k=v lists, arrays compact. Malloc'ed. */
char *flctl_cell(const json_t *v);

/* commands.c: argv starts at the command's noun ("rollouts", "create", ...). */
int flctl_run(const flctl *f, int argc, char **argv);
/* The usage lines of a command (noun), or of every command when noun is NULL. */
void flctl_usage(FILE *out, const char *noun);

#define FLCTL_MAX_ARGS 16

/* Positional arguments and "--name value" / "--name=value" options of one command, checked by
 * commands.c against the command's form before its function runs. */
typedef struct flctl_args {
  const char *noun;
  const char *pos[FLCTL_MAX_ARGS];
  int npos;
  const char *name[FLCTL_MAX_ARGS], *val[FLCTL_MAX_ARGS];
  int nflag;
  bool help;
} flctl_args;

/* The value of option --name, NULL when it was not given. */
const char *flctl_flag(const flctl_args *a, const char *name);
/* Prints the command's usage lines; returns FLCTL_USAGE. */
int flctl_usage_error(const flctl_args *a);

/* args.c. A whole decimal integer in [lo, hi]; else -1 after a message naming `what` (an
 * option or argument name) and the value. */
int flctl_int(const char *what, const char *s, long long lo, long long hi, long long *out);
/* A positive id (1..INT64_MAX, the coordinator's ids) at positional argument i. */
int flctl_id_at(const flctl_args *a, int i, const char *what, long long *out);
/* A percentage 0..100 (decimals allowed); -1 after a message. */
int flctl_percent(const char *what, const char *s, double *out);
/* "site=plant-3,hw=rev-b" as a JSON object of strings; NULL after a message when malformed. */
json_t *flctl_labels(const char *what, const char *s);
/* JSON text, or @FILE with JSON; NULL after a message naming the option. */
json_t *flctl_json_arg(const char *what, const char *s);
/* GET path and print its array `key` as a table. */
int flctl_show_list(const flctl *f, const char *path, const char *key, const flctl_col *cols);
/* Calls and prints the answer object; body is stolen (may be NULL). */
int flctl_show_call(const flctl *f, const char *method, const char *path, json_t *body);
/* GET base, or base?model_id=N with --model; FLCTL_USAGE when --model is no id. */
int flctl_filtered_list(const flctl *f, const flctl_args *a, const char *base, const char *key,
                        const flctl_col *cols);

/* The commands, one per noun of the command table (commands.c); each returns an exit code. */
int flctl_cmd_models(const flctl *f, const flctl_args *a);            /* models.c */
int flctl_cmd_versions(const flctl *f, const flctl_args *a);          /* models.c */
int flctl_cmd_plans(const flctl *f, const flctl_args *a);             /* plans.c */
int flctl_cmd_rounds(const flctl *f, const flctl_args *a);            /* plans.c */
int flctl_cmd_channels(const flctl *f, const flctl_args *a);          /* rollouts.c */
int flctl_cmd_rollouts(const flctl *f, const flctl_args *a);          /* rollouts.c */
int flctl_cmd_pins(const flctl *f, const flctl_args *a);              /* rollouts.c */
int flctl_cmd_fleet(const flctl *f, const flctl_args *a);             /* rollouts.c */
int flctl_cmd_devices(const flctl *f, const flctl_args *a);           /* devices.c */
int flctl_cmd_enrollment_tokens(const flctl *f, const flctl_args *a); /* devices.c */
int flctl_cmd_tokens(const flctl *f, const flctl_args *a);            /* tokens.c */
int flctl_cmd_whoami(const flctl *f, const flctl_args *a);            /* tokens.c */
int flctl_cmd_audit(const flctl *f, const flctl_args *a);             /* info.c */
int flctl_cmd_drift(const flctl *f, const flctl_args *a);             /* info.c */
int flctl_cmd_info(const flctl *f, const flctl_args *a);              /* info.c */

/* evaluation.c: the plan's "cohort" (labels: an object, borrowed, or NULL; conds "a,b") and
 * "evaluation" ({"share"} or {"count"}, with "by_label") from flags (NULL: not given) into
 * plan. 0, or -1 after a message. */
int flctl_plan_cohort_eval(json_t *plan, json_t *labels, const char *conds, const char *share,
                           const char *count, const char *by);
/* versions get: the version, then its federated evaluation as a table. */
int flctl_version_show(const flctl *f, long long model, long long version);

#endif
