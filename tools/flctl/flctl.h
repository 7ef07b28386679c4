/*
 * flctl internals: one admin API call (output.c), readable tables or JSON (output.c), and the
 * commands (commands.c) dispatched by main.c.
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
/* A whole decimal integer in [lo, hi]; else -1 after a message naming `what` (an option or
 * argument name) and the value. */
int flctl_int(const char *what, const char *s, long long lo, long long hi, long long *out);

/* evaluation.c: the plan's "cohort" (labels: an object, borrowed, or NULL; conds "a,b") and
 * "evaluation" ({"share"} or {"count"}, with "by_label") from flags (NULL: not given) into
 * plan. 0, or -1 after a message. */
int flctl_plan_cohort_eval(json_t *plan, json_t *labels, const char *conds, const char *share,
                           const char *count, const char *by);
/* versions get: the version, then its federated evaluation as a table. */
int flctl_version_show(const flctl *f, long long model, long long version);

#endif
