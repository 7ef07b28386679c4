/*
 * Blocking HTTP exchanges; see flsupport/http.h.
 */
#include "flsupport/http.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <stdio.h>

#include "fl/err.h"

void fl_sup_resp_free(fl_sup_resp *r) {
  free(r->data);
  memset(r, 0, sizeof *r);
}

size_t fl_sup_resp_write(char *p, size_t size, size_t n, void *resp) {
  fl_sup_resp *r = resp;
  size_t add = size * n;
  uint8_t *d = realloc(r->data, r->len + add + 1);
  if (d == NULL)
    return 0;
  memcpy(d + r->len, p, add);
  r->data = d;
  r->len += add;
  r->data[r->len] = 0;
  return add;
}

static size_t on_header(char *p, size_t size, size_t n, void *resp) {
  fl_sup_resp *r = resp;
  size_t len = size * n;
  if (len > 6 && strncasecmp(p, "ETag: ", 6) == 0) {
    size_t m = len - 6;
    while (m > 0 && (p[6 + m - 1] == '\r' || p[6 + m - 1] == '\n'))
      m--;
    snprintf(r->etag, sizeof r->etag, "%.*s", (int)m, p + 6);
  }
  return len;
}

int fl_sup_http(CURL *h, const char *method, const char *url, const fl_sup_http_opts *o,
                fl_sup_resp *out, char *err, size_t err_cap) {
  static const fl_sup_http_opts plain;
  CURL *c = h ? h : curl_easy_init();
  memset(out, 0, sizeof *out);
  if (o == NULL)
    o = &plain;
  if (c == NULL)
    return FL_E_NOMEM;
  curl_easy_reset(c);
  curl_easy_setopt(c, CURLOPT_URL, url);
  curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, o->headers);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, fl_sup_resp_write);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, out);
  curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(c, CURLOPT_HEADERDATA, out);
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, o->timeout_ms > 0 ? o->timeout_ms : 60000L);
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  if (o->ca_file != NULL && strncmp(url, "https:", 6) == 0)
    curl_easy_setopt(c, CURLOPT_CAINFO, o->ca_file);
  /* A POST always has a body (perhaps empty); other methods only when one is given. */
  if (o->body != NULL || strcmp(method, "POST") == 0) {
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, o->body ? o->body : "");
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(o->body ? o->len : 0));
  }
  CURLcode cc = curl_easy_perform(c);
  if (cc == CURLE_OK)
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &out->status);
  if (h == NULL)
    curl_easy_cleanup(c);
  if (cc != CURLE_OK) {
    if (err != NULL)
      snprintf(err, err_cap, "%s %s: %s", method, url, curl_easy_strerror(cc));
    fl_sup_resp_free(out);
    return FL_E_TRANSPORT;
  }
  return FL_OK;
}

int fl_sup_tcp_connect(int port) {
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -1;
  inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

size_t fl_sup_tcp_read(int fd, char *buf, size_t cap, int timeout_ms) {
  size_t n = 0;
  struct pollfd p = {fd, POLLIN, 0};
  while (n + 1 < cap && poll(&p, 1, timeout_ms) == 1) {
    ssize_t k = recv(fd, buf + n, cap - 1 - n, 0);
    if (k <= 0)
      break;
    n += (size_t)k;
  }
  buf[n] = '\0';
  return n;
}
