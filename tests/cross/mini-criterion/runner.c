/*
 * The runner of the mini Criterion (criterion/criterion.h beside this file): every registered
 * test in a forked child, suite .init/.fini around it unless the test has its own, alarm()
 * for .timeout, multiplied by FL_MINI_CRITERION_TIMEOUT_SCALE when set (run-aarch64.sh: a test
 * under qemu-user runs 10-50 times slower than natively). Options: --filter GLOB
 * ("suite/name", fnmatch) and Criterion's --jobs and --verbose, accepted and ignored (the
 * tests run one at a time). Exit status 1 when a test failed or crashed.
 */
#include <fnmatch.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "criterion/criterion.h"

#define FL_MC_SKIPPED 77

static fl_mc_test *g_tests;
static fl_mc_suite *g_suites;
static int g_expect_failed; /* in the test's child: a cr_expect failed, the test fails at its end */

void fl_mc_register(fl_mc_test *t) {
  fl_mc_test **p = &g_tests; /* keep the order of the file */
  while (*p != NULL)
    p = &(*p)->next;
  *p = t;
}

void fl_mc_register_suite(fl_mc_suite *s) {
  s->next = g_suites;
  g_suites = s;
}

static void report(const char *what, const char *file, int line, const char *expr, const char *fmt,
                   va_list ap) {
  fprintf(stderr, "%s:%d: %s failed: %s\n  ", file, line, what, expr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
}

void fl_mc_fail(const char *file, int line, const char *expr, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  report("Assertion", file, line, expr, fmt, ap);
  va_end(ap);
  fflush(NULL);
  _exit(1);
}

void fl_mc_expect_fail(const char *file, int line, const char *expr, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  report("Expectation", file, line, expr, fmt, ap);
  va_end(ap);
  g_expect_failed = 1;
}

void fl_mc_skip(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "skipped:");
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  fflush(NULL);
  _exit(FL_MC_SKIPPED);
}

void fl_mc_log(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  printf("[----] ");
  vprintf(fmt, ap);
  va_end(ap);
  putchar('\n');
}

static const fl_mc_opts *suite_opts(const char *name) {
  for (fl_mc_suite *s = g_suites; s != NULL; s = s->next)
    if (strcmp(s->name, name) == 0)
      return &s->opts;
  return NULL;
}

/* 0 pass, 1 fail, 2 crash, 3 skipped. */
static int run_one(const fl_mc_test *t) {
  const fl_mc_opts *so = suite_opts(t->suite);
  void (*init)(void) = t->opts.init ? t->opts.init : so ? so->init : NULL;
  void (*fini)(void) = t->opts.fini ? t->opts.fini : so ? so->fini : NULL;
  double timeout = t->opts.timeout > 0 ? t->opts.timeout : so ? so->timeout : 0;
  const char *scale = getenv("FL_MINI_CRITERION_TIMEOUT_SCALE");
  if (scale != NULL && atof(scale) > 0)
    timeout *= atof(scale);
  fflush(NULL);
  pid_t pid = fork();
  if (pid < 0)
    return 2;
  if (pid == 0) {
    if (timeout > 0)
      alarm((unsigned)timeout + 1);
    if (init)
      init();
    t->fn();
    if (fini)
      fini();
    fflush(NULL);
    _exit(g_expect_failed);
  }
  int st = 0;
  while (waitpid(pid, &st, 0) < 0) {
  }
  if (WIFEXITED(st))
    return WEXITSTATUS(st) == 0 ? 0 : WEXITSTATUS(st) == FL_MC_SKIPPED ? 3 : 1;
  fprintf(stderr, "%s::%s: CRASH (signal %d)\n", t->suite, t->name, WTERMSIG(st));
  return 2;
}

int main(int argc, char **argv) {
  const char *filter = NULL;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--filter") == 0 && i + 1 < argc)
      filter = argv[++i];
    else if (strncmp(argv[i], "--filter=", 9) == 0)
      filter = argv[i] + 9;
    else if (strcmp(argv[i], "--jobs") == 0 || strcmp(argv[i], "-j") == 0)
      i++;
  }
  int counts[4] = {0}, tested = 0;
  for (fl_mc_test *t = g_tests; t != NULL; t = t->next) {
    char full[256];
    snprintf(full, sizeof full, "%s/%s", t->suite, t->name);
    if (t->opts.disabled || (filter != NULL && fnmatch(filter, full, 0) != 0))
      continue;
    int r = run_one(t);
    static const char *const tag[] = {"PASS", "FAIL", "CRASH", "SKIP"};
    printf("[%s] %s::%s\n", tag[r], t->suite, t->name);
    counts[r]++;
    tested += r != 3;
  }
  printf("[====] Synthesis: Tested: %d | Passing: %d | Failing: %d | Crashing: %d \n", tested,
         counts[0], counts[1], counts[2]);
  return counts[1] + counts[2] > 0 ? 1 : 0;
}
