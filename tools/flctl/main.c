/*
 * flctl: a command line for fleetlearn operators over the coordinator's admin API.
 *
 *   flctl [--url URL] [--token TOKEN] [--cacert FILE] [--json] [--timeout SECONDS] COMMAND ...
 *
 * The URL and token default to FL_URL and FL_ADMIN_TOKEN; the CA bundle that verifies an
 * https:// coordinator to CURL_CA_BUNDLE, then SSL_CERT_FILE (as the curl tool does), then the
 * system's. Output is a table (or key/value lines for one object) by default and the
 * coordinator's JSON with --json. Exit status: 0 on success, 1 when the coordinator refused or
 * could not be reached, 2 on a usage error (nothing was sent then).
 */
#include <curl/curl.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "flctl.h"

static const char USAGE[] =
    "usage: flctl [--url URL] [--token TOKEN] [--cacert FILE] [--json] [--timeout SECONDS]\n"
    "             COMMAND ...\n"
    "  (URL and TOKEN default to $FL_URL and $FL_ADMIN_TOKEN; the CA bundle for https:// to\n"
    "   $CURL_CA_BUNDLE, then $SSL_CERT_FILE, then the system's)\n"
    "commands:\n";

static void usage(FILE *out) {
  fputs(USAGE, out);
  flctl_usage(out, NULL);
}

/* The value of global option argv[*i] ("--name value" or "--name=value"); NULL (after a
 * message) when it is missing. */
static const char *opt_value(int argc, char **argv, int *i, const char *eq) {
  if (eq != NULL)
    return eq + 1;
  if (*i + 1 >= argc) {
    fprintf(stderr, "flctl: %s needs a value\n", argv[*i]);
    return NULL;
  }
  return argv[++*i];
}

static bool is(const char *name, size_t n, const char *want) {
  return strlen(want) == n && strncmp(name, want, n) == 0;
}

/* Global options before the command; returns the index of the command, or -1 after a
 * message on a usage error (or when no command follows). */
static int global_opts(flctl *f, int argc, char **argv) {
  int i = 1;
  for (; i < argc && strncmp(argv[i], "--", 2) == 0; i++) {
    const char *name = argv[i] + 2, *eq = strchr(name, '=');
    size_t n = eq ? (size_t)(eq - name) : strlen(name);
    if (is(name, n, "json") && eq == NULL) {
      f->json = true;
      continue;
    }
    if (is(name, n, "help"))
      return i; /* main prints the usage */
    if (!is(name, n, "url") && !is(name, n, "token") && !is(name, n, "cacert") &&
        !is(name, n, "timeout")) {
      fprintf(stderr, "flctl: unknown option --%.*s\n", (int)n, name);
      return -1;
    }
    const char *v = opt_value(argc, argv, &i, eq);
    long long t;
    if (v == NULL)
      return -1;
    if (is(name, n, "url")) {
      f->url = v;
    } else if (is(name, n, "token")) {
      f->token = v;
    } else if (is(name, n, "cacert")) {
      f->cacert = v;
      f->cacert_from = "--cacert";
    } else {
      if (flctl_int("--timeout", v, 1, 86400, &t))
        return -1;
      f->timeout_s = (long)t;
    }
  }
  if (i >= argc)
    fprintf(stderr, "flctl: no command\n");
  return i < argc ? i : -1;
}

/* FL_URL or --url without its trailing slashes: paths are appended as "/admin/v1/...". */
static int normalise_url(flctl *f, char *buf, size_t cap) {
  size_t n = f->url ? strlen(f->url) : 0;
  while (n > 0 && f->url[n - 1] == '/')
    n--;
  if (n == 0) {
    fprintf(stderr, "flctl: no coordinator URL (--url or FL_URL)\n");
    return -1;
  }
  if (n >= cap) {
    fprintf(stderr, "flctl: coordinator URL too long\n");
    return -1;
  }
  memcpy(buf, f->url, n);
  buf[n] = '\0';
  f->url = buf;
  return 0;
}

/* The CA bundle: --cacert, else CURL_CA_BUNDLE, else SSL_CERT_FILE. Checked here so that a
 * typo is reported with the file's name and where it came from rather than as a TLS error. */
static int pick_cacert(flctl *f) {
  static const char *const vars[] = {"CURL_CA_BUNDLE", "SSL_CERT_FILE"};
  /* The environment's bundle matters only for https://; a stale one must not stop http://. */
  bool https = strncasecmp(f->url, "https://", 8) == 0;
  for (int i = 0; i < 2 && f->cacert == NULL && https; i++) {
    const char *e = getenv(vars[i]);
    if (e != NULL && *e != '\0') {
      f->cacert = e;
      f->cacert_from = vars[i];
    }
  }
  if (f->cacert == NULL)
    return 0;
  FILE *fp = fopen(f->cacert, "r");
  if (fp == NULL) {
    fprintf(stderr, "flctl: CA bundle %s (%s): %s\n", f->cacert, f->cacert_from, strerror(errno));
    return -1;
  }
  fclose(fp);
  return 0;
}

int main(int argc, char **argv) {
  static char url[2048];
  flctl f = {.url = getenv("FL_URL"), .token = getenv("FL_ADMIN_TOKEN"), .timeout_s = 30};
  int cmd = global_opts(&f, argc, argv);
  if (cmd < 0) {
    usage(stderr);
    return FLCTL_USAGE;
  }
  if (strcmp(argv[cmd], "help") == 0 || strcmp(argv[cmd], "--help") == 0) {
    usage(stdout);
    return FLCTL_OK;
  }
  if (normalise_url(&f, url, sizeof url) || pick_cacert(&f))
    return FLCTL_USAGE;
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
    fprintf(stderr, "flctl: libcurl initialisation failed\n");
    return FLCTL_ERR;
  }
  int rc = flctl_run(&f, argc - cmd, argv + cmd);
  curl_global_cleanup();
  return rc;
}
