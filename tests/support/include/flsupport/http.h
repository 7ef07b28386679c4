/*
 * One blocking HTTP exchange on libcurl, for set-up calls and tests: the body and the ETag of
 * the answer are kept. fl_sup_resp_write is the libcurl write callback that fills a response,
 * for callers that drive libcurl themselves (curl multi in bench_ingest).
 */
#ifndef FLSUPPORT_HTTP_H
#define FLSUPPORT_HTTP_H

#include <curl/curl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct fl_sup_resp {
  long status;
  uint8_t *data; /* NUL-terminated past len */
  size_t len;
  char etag[80];
} fl_sup_resp;
void fl_sup_resp_free(fl_sup_resp *r);
/* CURLOPT_WRITEFUNCTION for a fl_sup_resp (CURLOPT_WRITEDATA). */
size_t fl_sup_resp_write(char *p, size_t size, size_t n, void *resp);

typedef struct fl_sup_http_opts {
  struct curl_slist *headers;
  const void *body; /* sent with its length when not NULL; a POST without one sends "" */
  size_t len;
  const char *ca_file; /* https:// is verified against it when set */
  long timeout_ms;     /* 0: 60 s */
} fl_sup_http_opts;

/* method on url. h: a handle to reuse (keep-alive; reset here), or NULL for a temporary one.
 * FL_OK with *out filled (any status), else FL_E_TRANSPORT with curl's reason in err (when
 * not NULL). */
int fl_sup_http(CURL *h, const char *method, const char *url, const fl_sup_http_opts *o,
                fl_sup_resp *out, char *err, size_t err_cap);

/* Raw TCP for tests that send bytes no HTTP client would (slow, oversized, malformed
 * requests): a connected socket to 127.0.0.1:port, or -1; and what the server sends until it
 * closes or goes quiet for timeout_ms (NUL-terminated in buf; returns the byte count). */
int fl_sup_tcp_connect(int port);
size_t fl_sup_tcp_read(int fd, char *buf, size_t cap, int timeout_ms);

#endif
