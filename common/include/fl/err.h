/*
 * fleetlearn error codes, shared by libflclient and the coordinator.
 *
 * One X-macro holds every code with its number and message; numbers are never reused, new codes
 * are appended. 0 is success; every function that can fail returns an fl_err.
 */
#ifndef FL_ERR_H
#define FL_ERR_H

#ifdef __cplusplus
extern "C" {
#endif

/* X(NAME, number, message) */
#define FL_ERRNO_MAP(X)                                                               \
  X(OK, 0, "success")                                                                 \
  X(NOMEM, 1, "out of memory")                                                        \
  X(INVAL, 2, "invalid argument")                                                     \
  X(IO, 3, "input/output error")                                                      \
  X(PARSE, 4, "malformed input")                                                      \
  X(SHAPE, 5, "shape or size mismatch")                                               \
  X(NONFINITE, 6, "value is NaN or infinite")                                         \
  X(BADSIG, 7, "signature verification failed")                                       \
  X(BADHASH, 8, "content hash mismatch")                                              \
  X(CRYPTO, 9, "cryptographic library error")                                         \
  X(NOTFOUND, 10, "not found")                                                        \
  X(TRANSPORT, 11, "transport error")                                                 \
  X(TIMEOUT, 12, "timed out")                                                         \
  X(REFUSED, 13, "refused by the coordinator")                                        \
  X(RETRY_LATER, 14, "try again later")                                               \
  X(UNSUPPORTED, 15, "not supported")                                                 \
  X(STATE, 16, "operation not valid in the current state")                            \
  X(TOOBIG, 17, "too large")                                                          \
  X(NORM, 18, "norm exceeds the bound")                                               \
  X(DB, 19, "database error")                                                         \
  X(AGAIN, 20, "operation in progress; call again")                                   \
  X(NOT_ENROLLED, 21, "device is not enrolled")                                       \
  X(REVOKED, 22, "device is revoked")

typedef enum fl_err {
#define FL__ERR_ENUM(name, num, msg) FL_E_##name = (num),
  FL_ERRNO_MAP(FL__ERR_ENUM)
#undef FL__ERR_ENUM
  FL_E__COUNT_SENTINEL
} fl_err;

/* FL_OK reads better than FL_E_OK at call sites. */
#define FL_OK FL_E_OK

/* Message for an error code; never NULL, also for unknown codes. Static storage. */
const char *fl_strerror(int err);

/* Symbolic name without the prefix ("BADSIG"); never NULL. Static storage. */
const char *fl_err_name(int err);

#ifdef __cplusplus
}
#endif
#endif /* FL_ERR_H */
