/* Error codes: every code has a distinct, non-empty message and name; unknown codes are safe. */
#include <criterion/criterion.h>
#include <string.h>

#include "fl/err.h"

static const int all_codes[] = {
#define X(name, num, msg) num,
    FL_ERRNO_MAP(X)
#undef X
};
#define N_CODES (sizeof all_codes / sizeof all_codes[0])

Test(err, ok_is_zero) {
  cr_assert_eq(FL_OK, 0);
  cr_assert_str_eq(fl_strerror(FL_OK), "success");
  cr_assert_str_eq(fl_err_name(FL_OK), "OK");
}

Test(err, known_codes_have_their_messages) {
  cr_assert_str_eq(fl_strerror(FL_E_BADSIG), "signature verification failed");
  cr_assert_str_eq(fl_err_name(FL_E_BADSIG), "BADSIG");
  cr_assert_str_eq(fl_err_name(FL_E_NOMEM), "NOMEM");
  cr_assert_str_eq(fl_strerror(FL_E_NONFINITE), "value is NaN or infinite");
}

Test(err, messages_and_names_distinct_and_nonempty) {
  for (size_t i = 0; i < N_CODES; i++) {
    cr_assert_gt(strlen(fl_strerror(all_codes[i])), 0);
    cr_assert_gt(strlen(fl_err_name(all_codes[i])), 0);
    cr_assert_str_neq(fl_err_name(all_codes[i]), "UNKNOWN");
    for (size_t j = i + 1; j < N_CODES; j++) {
      cr_assert_neq(all_codes[i], all_codes[j], "numbers must not repeat");
      cr_assert_str_neq(fl_strerror(all_codes[i]), fl_strerror(all_codes[j]));
      cr_assert_str_neq(fl_err_name(all_codes[i]), fl_err_name(all_codes[j]));
    }
  }
}

Test(err, unknown_codes_are_safe) {
  cr_assert_str_eq(fl_strerror(-1), "unknown error");
  cr_assert_str_eq(fl_strerror(100000), "unknown error");
  cr_assert_str_eq(fl_err_name(-7), "UNKNOWN");
  cr_assert_str_eq(fl_err_name(FL_E__COUNT_SENTINEL + 50), "UNKNOWN");
}
