/*
 * A minimal stand-in for Criterion's <criterion/criterion.h>, for the cross-built unit tests
 * (tests/cross/run-aarch64.sh, -DFL_MINI_CRITERION=ON): Criterion's own runner spins forever
 * under qemu-user after setting up its nanomsg channel, and its arm64 packages cannot be
 * installed beside the amd64 ones. The same test files compile against this header: Test,
 * TestSuite (.init, .fini, .timeout), the cr_assert and cr_expect families the unit tests use
 * (a failed cr_expect reports and lets the test go on, then fails it), cr_skip_test and
 * cr_log_info. Each test runs in a forked child (a failed assertion ends only that test),
 * under alarm() when it has a timeout; runner.c prints Criterion's synthesis line.
 */
#ifndef FL_MINI_CRITERION_H
#define FL_MINI_CRITERION_H

#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h> /* Criterion's header brings these in; tests rely on it */
#include <string.h>

typedef struct fl_mc_opts {
  int unused_; /* lets the initialiser start with a positional 0 before the designated fields */
  void (*init)(void);
  void (*fini)(void);
  double timeout;
  const char *description;
  bool disabled;
} fl_mc_opts;

typedef struct fl_mc_test {
  const char *suite, *name;
  void (*fn)(void);
  fl_mc_opts opts;
  struct fl_mc_test *next;
} fl_mc_test;

typedef struct fl_mc_suite {
  const char *name;
  fl_mc_opts opts;
  struct fl_mc_suite *next;
} fl_mc_suite;

void fl_mc_register(fl_mc_test *t);
void fl_mc_register_suite(fl_mc_suite *s);
_Noreturn void fl_mc_fail(const char *file, int line, const char *expr, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void fl_mc_expect_fail(const char *file, int line, const char *expr, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
_Noreturn void fl_mc_skip(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void fl_mc_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#define Test(suite, name, ...)                                                \
  static void fl_mc_fn_##suite##_##name(void);                                \
  static fl_mc_test fl_mc_t_##suite##_##name = {                              \
      #suite, #name, fl_mc_fn_##suite##_##name, {0, __VA_ARGS__}, NULL};      \
  __attribute__((constructor)) static void fl_mc_reg_##suite##_##name(void) { \
    fl_mc_register(&fl_mc_t_##suite##_##name);                                \
  }                                                                           \
  static void fl_mc_fn_##suite##_##name(void)

#define TestSuite(suite, ...)                                            \
  static fl_mc_suite fl_mc_s_##suite = {#suite, {0, __VA_ARGS__}, NULL}; \
  __attribute__((constructor)) static void fl_mc_sreg_##suite(void) {    \
    fl_mc_register_suite(&fl_mc_s_##suite);                              \
  }                                                                      \
  _Static_assert(1, "TestSuite " #suite)

/* " " __VA_ARGS__ makes the optional message a format string that is never empty.
 * FL_MC_CHECK ends the test (cr_assert), FL_MC_EXPECT records the failure and goes on. */
#define FL_MC_CHECK(cond, expr, ...)                         \
  do {                                                       \
    if (!(cond))                                             \
      fl_mc_fail(__FILE__, __LINE__, expr, " " __VA_ARGS__); \
  } while (0)
#define FL_MC_EXPECT(cond, expr, ...)                               \
  do {                                                              \
    if (!(cond))                                                    \
      fl_mc_expect_fail(__FILE__, __LINE__, expr, " " __VA_ARGS__); \
  } while (0)

/* Each check once, for both families: K is FL_MC_CHECK or FL_MC_EXPECT. */
#define FL_MC_EQ(K, a, b, ...) K((a) == (b), #a " == " #b, __VA_ARGS__)
#define FL_MC_NEQ(K, a, b, ...) K((a) != (b), #a " != " #b, __VA_ARGS__)
#define FL_MC_LT(K, a, b, ...) K((a) < (b), #a " < " #b, __VA_ARGS__)
#define FL_MC_LEQ(K, a, b, ...) K((a) <= (b), #a " <= " #b, __VA_ARGS__)
#define FL_MC_GT(K, a, b, ...) K((a) > (b), #a " > " #b, __VA_ARGS__)
#define FL_MC_GEQ(K, a, b, ...) K((a) >= (b), #a " >= " #b, __VA_ARGS__)
#define FL_MC_NULL(K, p, ...) K((p) == NULL, #p " == NULL", __VA_ARGS__)
#define FL_MC_NOT_NULL(K, p, ...) K((p) != NULL, #p " != NULL", __VA_ARGS__)
#define FL_MC_FLOAT_EQ(K, a, b, eps, ...) \
  K(fabs((double)(a) - (double)(b)) <= (double)(eps), #a " ~= " #b, __VA_ARGS__)
#define FL_MC_STR_EQ(K, a, b, ...) K(strcmp((a), (b)) == 0, #a " eq " #b, __VA_ARGS__)
#define FL_MC_STR_NEQ(K, a, b, ...) K(strcmp((a), (b)) != 0, #a " neq " #b, __VA_ARGS__)
#define FL_MC_STR_EMPTY(K, a, ...) K((a)[0] == '\0', #a " is empty", __VA_ARGS__)
#define FL_MC_ARR_EQ(K, a, b, n, ...) \
  K(memcmp((a), (b), (n)) == 0, #a " == " #b " (bytes)", __VA_ARGS__)
#define FL_MC_ARR_NEQ(K, a, b, n, ...) \
  K(memcmp((a), (b), (n)) != 0, #a " != " #b " (bytes)", __VA_ARGS__)

#define cr_assert(c, ...) FL_MC_CHECK(c, #c, __VA_ARGS__)
#define cr_assert_not(c, ...) FL_MC_CHECK(!(c), "!(" #c ")", __VA_ARGS__)
#define cr_assert_fail(...) FL_MC_CHECK(0, "cr_assert_fail", __VA_ARGS__)
#define cr_assert_eq(...) FL_MC_EQ(FL_MC_CHECK, __VA_ARGS__)
#define cr_assert_neq(...) FL_MC_NEQ(FL_MC_CHECK, __VA_ARGS__)
#define cr_assert_lt(...) FL_MC_LT(FL_MC_CHECK, __VA_ARGS__)
#define cr_assert_leq(...) FL_MC_LEQ(FL_MC_CHECK, __VA_ARGS__)
#define cr_assert_gt(...) FL_MC_GT(FL_MC_CHECK, __VA_ARGS__)
#define cr_assert_geq(...) FL_MC_GEQ(FL_MC_CHECK, __VA_ARGS__)
#define cr_assert_null(...) FL_MC_NULL(FL_MC_CHECK, __VA_ARGS__)
#define cr_assert_not_null(...) FL_MC_NOT_NULL(FL_MC_CHECK, __VA_ARGS__)
#define cr_assert_float_eq(...) FL_MC_FLOAT_EQ(FL_MC_CHECK, __VA_ARGS__)
#define cr_assert_str_eq(...) FL_MC_STR_EQ(FL_MC_CHECK, __VA_ARGS__)
#define cr_assert_str_neq(...) FL_MC_STR_NEQ(FL_MC_CHECK, __VA_ARGS__)
#define cr_assert_str_empty(...) FL_MC_STR_EMPTY(FL_MC_CHECK, __VA_ARGS__)
#define cr_assert_arr_eq(...) FL_MC_ARR_EQ(FL_MC_CHECK, __VA_ARGS__)
#define cr_assert_arr_neq(...) FL_MC_ARR_NEQ(FL_MC_CHECK, __VA_ARGS__)

#define cr_expect(c, ...) FL_MC_EXPECT(c, #c, __VA_ARGS__)
#define cr_expect_not(c, ...) FL_MC_EXPECT(!(c), "!(" #c ")", __VA_ARGS__)
#define cr_expect_eq(...) FL_MC_EQ(FL_MC_EXPECT, __VA_ARGS__)
#define cr_expect_neq(...) FL_MC_NEQ(FL_MC_EXPECT, __VA_ARGS__)
#define cr_expect_lt(...) FL_MC_LT(FL_MC_EXPECT, __VA_ARGS__)
#define cr_expect_leq(...) FL_MC_LEQ(FL_MC_EXPECT, __VA_ARGS__)
#define cr_expect_gt(...) FL_MC_GT(FL_MC_EXPECT, __VA_ARGS__)
#define cr_expect_geq(...) FL_MC_GEQ(FL_MC_EXPECT, __VA_ARGS__)
#define cr_expect_null(...) FL_MC_NULL(FL_MC_EXPECT, __VA_ARGS__)
#define cr_expect_not_null(...) FL_MC_NOT_NULL(FL_MC_EXPECT, __VA_ARGS__)
#define cr_expect_float_eq(...) FL_MC_FLOAT_EQ(FL_MC_EXPECT, __VA_ARGS__)
#define cr_expect_str_eq(...) FL_MC_STR_EQ(FL_MC_EXPECT, __VA_ARGS__)
#define cr_expect_str_neq(...) FL_MC_STR_NEQ(FL_MC_EXPECT, __VA_ARGS__)
#define cr_expect_str_empty(...) FL_MC_STR_EMPTY(FL_MC_EXPECT, __VA_ARGS__)
#define cr_expect_arr_eq(...) FL_MC_ARR_EQ(FL_MC_EXPECT, __VA_ARGS__)
#define cr_expect_arr_neq(...) FL_MC_ARR_NEQ(FL_MC_EXPECT, __VA_ARGS__)
#define cr_skip_test(...) fl_mc_skip(" " __VA_ARGS__)
#define cr_log_info(...) fl_mc_log(__VA_ARGS__)

#endif
