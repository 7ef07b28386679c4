/*
 * Error messages and names, generated from the one X-macro in fl/err.h so that a new code
 * cannot be added without its message.
 */
#include "fl/err.h"

const char *fl_strerror(int err) {
  switch (err) {
#define FL__ERR_MSG(name, num, msg) \
  case (num):                       \
    return (msg);
    FL_ERRNO_MAP(FL__ERR_MSG)
#undef FL__ERR_MSG
    default:
      return "unknown error";
  }
}

const char *fl_err_name(int err) {
  switch (err) {
#define FL__ERR_NAME(name, num, msg) \
  case (num):                        \
    return #name;
    FL_ERRNO_MAP(FL__ERR_NAME)
#undef FL__ERR_NAME
    default:
      return "UNKNOWN";
  }
}
