/*
 * flctl commands: the one table of every command, its forms (options and usage lines),
 * argument parsing and dispatch. Each command maps its arguments onto one admin API call
 * (docs/API.md, section 3 and 5) and prints the answer as a table (or JSON with --json); the
 * commands live one file per noun (models.c, plans.c, rollouts.c, devices.c, tokens.c,
 * info.c) on the argument helpers of args.c. Every argument is checked before anything is
 * sent: a command with an unknown option, a malformed number or a missing argument changes
 * nothing and exits with FLCTL_USAGE.
 */
#include <stdio.h>
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

static int parse_args(int argc, char **argv, flctl_args *a) {
  for (int i = 0; i < argc; i++) {
    if (strncmp(argv[i], "--", 2) != 0) {
      if (a->npos == FLCTL_MAX_ARGS) {
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
    if (a->nflag == FLCTL_MAX_ARGS) {
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

const char *flctl_flag(const flctl_args *a, const char *name) {
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

int flctl_usage_error(const flctl_args *a) {
  fprintf(stderr, "flctl: usage:\n");
  flctl_usage(stderr, a->noun);
  fprintf(stderr, "(flctl help for all commands)\n");
  return FLCTL_USAGE;
}

/* Refuses an option the typed form does not take, or one given twice. */
static int check_flags(const form *m, const flctl_args *a) {
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
/* ----- dispatch ------------------------------------------------------------------------------ */

typedef struct command {
  const char *name;
  int (*fn)(const flctl *f, const flctl_args *a);
} command;

static const command COMMANDS[] = {{"models", flctl_cmd_models},
                                   {"versions", flctl_cmd_versions},
                                   {"plans", flctl_cmd_plans},
                                   {"rounds", flctl_cmd_rounds},
                                   {"channels", flctl_cmd_channels},
                                   {"rollouts", flctl_cmd_rollouts},
                                   {"pins", flctl_cmd_pins},
                                   {"fleet", flctl_cmd_fleet},
                                   {"devices", flctl_cmd_devices},
                                   {"tokens", flctl_cmd_tokens},
                                   {"enrollment-tokens", flctl_cmd_enrollment_tokens},
                                   {"drift", flctl_cmd_drift},
                                   {"audit", flctl_cmd_audit},
                                   {"info", flctl_cmd_info},
                                   {"whoami", flctl_cmd_whoami},
                                   {NULL, NULL}};

/* The form the arguments name: the noun's only form, or the one of its subcommand (the first
 * positional, "list" when there is none). NULL for an unknown subcommand. */
static const form *typed_form(const flctl_args *a) {
  for (const form *m = FORMS; m->noun != NULL; m++) {
    if (strcmp(m->noun, a->noun) != 0)
      continue;
    if (m->sub == NULL || strcmp(m->sub, a->npos > 0 ? a->pos[0] : "list") == 0)
      return m;
  }
  return NULL;
}

int flctl_run(const flctl *f, int argc, char **argv) {
  flctl_args a;
  for (const command *c = COMMANDS; c->name != NULL; c++) {
    if (strcmp(argv[0], c->name) != 0)
      continue;
    memset(&a, 0, sizeof a);
    a.noun = c->name;
    if (parse_args(argc - 1, argv + 1, &a))
      return flctl_usage_error(&a);
    if (a.help) {
      flctl_usage(stdout, a.noun);
      return FLCTL_OK;
    }
    const form *m = typed_form(&a);
    if (m == NULL)
      return flctl_usage_error(&a);
    if (check_flags(m, &a))
      return FLCTL_USAGE;
    return c->fn(f, &a);
  }
  fprintf(stderr, "flctl: unknown command '%s' (flctl help)\n", argv[0]);
  return FLCTL_USAGE;
}
