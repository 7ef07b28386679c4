/*
 * flctl: a command line for fleetlearn operators over the coordinator's admin API.
 *
 *   flctl [--url URL] [--token TOKEN] [--json] [--timeout SECONDS] COMMAND ...
 *
 * The URL and token default to FL_URL and FL_ADMIN_TOKEN. Output is a table (or key/value
 * lines for one object) by default and the coordinator's JSON with --json. Exit status: 0 on
 * success, 1 when the coordinator refused or could not be reached, 2 on a usage error.
 */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "flctl.h"

static const char USAGE[] =
    "usage: flctl [--url URL] [--token TOKEN] [--json] [--timeout SECONDS] COMMAND ...\n"
    "  (URL and TOKEN default to $FL_URL and $FL_ADMIN_TOKEN)\n"
    "commands:\n"
    "  models list | models create NAME --spec JSON|@FILE [--seed N]\n"
    "  versions list MODEL_ID\n"
    "  plans create MODEL_ID [--plan JSON|@FILE] | plans stop PLAN_ID\n"
    "  rounds list [--model ID] | rounds get ROUND_ID\n"
    "  channels list [--model ID] | channels set MODEL_ID NAME VERSION\n"
    "  channels rollback CHANNEL_ID\n"
    "  rollouts list [--model ID] | rollouts get ID\n"
    "  rollouts create MODEL_ID VERSION [--channel NAME] [--percent P] [--cohort k=v,...]\n"
    "                  [--gate JSON|@FILE]\n"
    "  rollouts raise ID PERCENT | pause ID | resume ID | promote ID | rollback ID\n"
    "  pins list | pins add MODEL_ID VERSION (--device ID | --labels k=v,...) | pins remove ID\n"
    "  fleet MODEL_ID\n"
    "  devices list | devices revoke DEVICE_ID\n"
    "  tokens create admin|operator|viewer [--name NAME]\n"
    "  enrollment-tokens create [--count N] [--labels k=v,...] [--ttl SECONDS]\n"
    "  audit [--limit N]\n"
    "  info\n";

/* Global options before the command; returns the index of the command or -1. */
static int global_opts(flctl *f, int argc, char **argv) {
  int i = 1;
  for (; i < argc && strncmp(argv[i], "--", 2) == 0; i++) {
    const char *name = argv[i] + 2;
    if (strcmp(name, "json") == 0) {
      f->json = true;
      continue;
    }
    if (i + 1 >= argc)
      return -1;
    if (strcmp(name, "url") == 0)
      f->url = argv[++i];
    else if (strcmp(name, "token") == 0)
      f->token = argv[++i];
    else if (strcmp(name, "timeout") == 0)
      f->timeout_s = atol(argv[++i]);
    else
      return -1;
  }
  return i < argc ? i : -1;
}

int main(int argc, char **argv) {
  flctl f = {.url = getenv("FL_URL"), .token = getenv("FL_ADMIN_TOKEN"), .timeout_s = 30};
  int cmd = global_opts(&f, argc, argv);
  if (cmd < 0 || strcmp(argv[cmd], "help") == 0 || strcmp(argv[cmd], "--help") == 0) {
    fputs(USAGE, cmd < 0 ? stderr : stdout);
    return cmd < 0 ? FLCTL_USAGE : FLCTL_OK;
  }
  if (f.url == NULL || f.url[0] == '\0') {
    fprintf(stderr, "flctl: no coordinator URL (--url or FL_URL)\n");
    return FLCTL_USAGE;
  }
  if (f.timeout_s <= 0)
    f.timeout_s = 30;
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
    fprintf(stderr, "flctl: libcurl initialisation failed\n");
    return FLCTL_ERR;
  }
  int rc = flctl_run(&f, argc - cmd, argv + cmd);
  curl_global_cleanup();
  return rc;
}
