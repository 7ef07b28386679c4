/*
 * An embedder's transport for fl-gateway: plain HTTP/1.1 over one TCP connection per exchange,
 * on POSIX sockets only. fl-gateway uses it when its libflclient was built without libcurl
 * (FL_WITH_CURL=OFF, docs/PORTING.md), so that a lean gateway can still reach a coordinator.
 * It is synchronous, as fl/client.h allows: begin() does the whole exchange within the
 * options' timeouts and the first poll() reports it.
 *
 * Plain http:// only (no TLS): the coordinator's key must then be provisioned or the link be
 * trusted (loopback, a VPN); fl-gateway asks for -I like the built-in transport does. A device
 * on an open network uses MQTT over TLS or a TLS transport of its own.
 */
#include "transport_http.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct gw_http {
  char host[128], port[8], prefix[128]; /* from http://host[:port][/prefix] */
  long connect_ms, total_ms;
  size_t max_body;
  fl_err result;
  int status;
  int64_t retry_after_ms;
  char *buf; /* the whole answer: headers and body */
  size_t len, cap, body_off, body_len;
  char detail[512];
} gw_http;

static int64_t now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static fl_err fail(gw_http *t, fl_err err, const char *what) {
  snprintf(t->detail, sizeof t->detail, "%s%s%s", what, errno ? ": " : "",
           errno ? strerror(errno) : "");
  return err;
}

/* Waits until fd is ready for `events` or the deadline passes. */
static fl_err wait_fd(gw_http *t, int fd, short events, int64_t deadline) {
  for (;;) {
    int64_t left = deadline - now_ms();
    if (left <= 0) {
      errno = 0;
      return fail(t, FL_E_TIMEOUT, "timed out");
    }
    struct pollfd p = {.fd = fd, .events = events};
    int n = poll(&p, 1, (int)left);
    if (n > 0)
      return FL_OK;
    if (n < 0 && errno != EINTR)
      return fail(t, FL_E_TRANSPORT, "poll");
  }
}

/* A non-blocking socket connected to the first address that answers. */
static fl_err dial(gw_http *t, int64_t deadline, int *out) {
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
  int rc = getaddrinfo(t->host, t->port, &hints, &res);
  if (rc != 0) {
    snprintf(t->detail, sizeof t->detail, "%s: %s", t->host, gai_strerror(rc));
    return FL_E_TRANSPORT;
  }
  fl_err err = FL_E_TRANSPORT;
  for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
    int fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
    if (fd < 0)
      continue;
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    int soerr = 0;
    socklen_t sl = sizeof soerr;
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0 ||
        (errno == EINPROGRESS && (err = wait_fd(t, fd, POLLOUT, deadline)) == FL_OK &&
         getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) == 0 && soerr == 0)) {
      freeaddrinfo(res);
      *out = fd;
      return FL_OK;
    }
    if (soerr != 0) {
      errno = soerr;
      err = fail(t, FL_E_TRANSPORT, "connect");
    } else if (err != FL_E_TIMEOUT)
      err = fail(t, FL_E_TRANSPORT, "connect");
    close(fd);
  }
  freeaddrinfo(res);
  return err;
}

static fl_err send_all(gw_http *t, int fd, const void *p, size_t n, int64_t deadline) {
  const char *c = p;
  while (n > 0) {
    ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
    if (w > 0) {
      c += w;
      n -= (size_t)w;
    } else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      fl_err err = wait_fd(t, fd, POLLOUT, deadline);
      if (err != FL_OK)
        return err;
    } else if (w < 0 && errno != EINTR)
      return fail(t, FL_E_TRANSPORT, "send");
  }
  return FL_OK;
}

/* Reads until the server closes (the request said Connection: close), within max_body plus
 * room for the headers. */
static fl_err recv_all(gw_http *t, int fd, int64_t deadline) {
  for (;;) {
    if (t->cap - t->len < 4096) {
      if (t->cap > t->max_body + 65536) {
        errno = 0;
        return fail(t, FL_E_TOOBIG, "answer larger than max_response_bytes");
      }
      size_t cap = t->cap ? t->cap * 2 : 65536;
      char *b = realloc(t->buf, cap + 1);
      if (b == NULL)
        return FL_E_NOMEM;
      t->buf = b;
      t->cap = cap;
    }
    ssize_t r = recv(fd, t->buf + t->len, t->cap - t->len, 0);
    if (r > 0)
      t->len += (size_t)r;
    else if (r == 0)
      return FL_OK;
    else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      fl_err err = wait_fd(t, fd, POLLIN, deadline);
      if (err != FL_OK)
        return err;
    } else if (errno != EINTR)
      return fail(t, FL_E_TRANSPORT, "recv");
  }
}

/* Status line, Content-Length, Retry-After (delta-seconds) and where the body starts. */
static fl_err parse(gw_http *t) {
  errno = 0;
  t->buf[t->len] = '\0';
  char *end = strstr(t->buf, "\r\n\r\n");
  if (end == NULL || sscanf(t->buf, "HTTP/1.%*d %d", &t->status) != 1)
    return fail(t, FL_E_TRANSPORT, "malformed HTTP answer");
  *end = '\0';
  t->body_off = (size_t)(end + 4 - t->buf);
  t->body_len = t->len - t->body_off;
  for (char *line = strstr(t->buf, "\r\n"); line != NULL; line = strstr(line, "\r\n")) {
    line += 2;
    if (strncasecmp(line, "Content-Length:", 15) == 0) {
      size_t n = strtoull(line + 15, NULL, 10);
      if (n > t->body_len)
        return fail(t, FL_E_TRANSPORT, "answer shorter than its Content-Length");
      t->body_len = n;
    } else if (strncasecmp(line, "Retry-After:", 12) == 0) {
      t->retry_after_ms = 1000 * (int64_t)strtol(line + 12, NULL, 10);
    } else if (strncasecmp(line, "Transfer-Encoding:", 18) == 0) {
      return fail(t, FL_E_TRANSPORT, "chunked answers are not supported");
    }
  }
  if (t->body_len > t->max_body)
    return fail(t, FL_E_TOOBIG, "answer larger than max_response_bytes");
  return FL_OK;
}

static fl_err exchange(gw_http *t, const fl_http_request *req) {
  int64_t start = now_ms(), deadline = start + t->total_ms;
  int64_t connect_deadline = start + (t->connect_ms < t->total_ms ? t->connect_ms : t->total_ms);
  char head[2048];
  int n = snprintf(head, sizeof head,
                   "%s %s%s HTTP/1.1\r\nHost: %s:%s\r\nConnection: close\r\n"
                   "Content-Type: application/x-protobuf\r\nContent-Length: %zu\r\n"
                   "%s%s%s%s%s%s\r\n",
                   req->method, t->prefix, req->path, t->host, t->port, req->body_len,
                   req->auth ? "X-FL-Auth: " : "", req->auth ? req->auth : "",
                   req->auth ? "\r\n" : "", req->if_none_match ? "If-None-Match: " : "",
                   req->if_none_match ? req->if_none_match : "", req->if_none_match ? "\r\n" : "");
  if (n < 0 || (size_t)n >= sizeof head) {
    errno = 0;
    return fail(t, FL_E_INVAL, "request headers too long");
  }
  int fd = -1;
  fl_err err = dial(t, connect_deadline, &fd);
  if (err != FL_OK)
    return err;
  err = send_all(t, fd, head, (size_t)n, deadline);
  if (err == FL_OK && req->body_len > 0)
    err = send_all(t, fd, req->body, req->body_len, deadline);
  if (err == FL_OK)
    err = recv_all(t, fd, deadline);
  close(fd);
  return err == FL_OK ? parse(t) : err;
}

static fl_err gw_begin(void *ctx, const fl_http_request *req) {
  gw_http *t = ctx;
  t->len = 0;
  t->status = 0;
  t->retry_after_ms = 0;
  t->detail[0] = '\0';
  t->result = exchange(t, req);
  return t->result == FL_E_NOMEM ? FL_E_NOMEM : FL_OK; /* other failures come at poll() */
}

static fl_err gw_poll(void *ctx, int timeout_ms, fl_http_response *resp) {
  (void)timeout_ms;
  gw_http *t = ctx;
  if (t->result != FL_OK)
    return t->result;
  resp->status = t->status;
  resp->body = (const uint8_t *)t->buf + t->body_off;
  resp->body_len = t->body_len;
  resp->retry_after_ms = t->retry_after_ms;
  return FL_OK;
}

static void gw_end(void *ctx) {
  (void)ctx;
}

static void gw_destroy(void *ctx) {
  gw_http *t = ctx;
  free(t->buf);
  free(t);
}

static const char *gw_detail(void *ctx) {
  return ((gw_http *)ctx)->detail;
}

fl_err gw_transport_http(fl_transport *out, const char *url, long connect_ms, long total_ms,
                         size_t max_body, char *why, size_t why_len) {
  if (strncasecmp(url, "http://", 7) != 0) {
    snprintf(why, why_len, "%s: this transport speaks plain http:// only", url);
    return FL_E_INVAL;
  }
  gw_http *t = calloc(1, sizeof *t);
  if (t == NULL)
    return FL_E_NOMEM;
  const char *h = url + 7, *slash = strchr(h, '/');
  size_t hl = slash ? (size_t)(slash - h) : strlen(h);
  const char *colon = memchr(h, ':', hl);
  size_t name_len = colon ? (size_t)(colon - h) : hl;
  size_t port_len = colon ? hl - name_len - 1 : 0;
  if (name_len == 0 || name_len >= sizeof t->host || port_len >= sizeof t->port ||
      (slash && strlen(slash) >= sizeof t->prefix)) {
    free(t);
    snprintf(why, why_len, "%s: cannot parse http://host[:port][/prefix]", url);
    return FL_E_INVAL;
  }
  memcpy(t->host, h, name_len);
  if (colon)
    memcpy(t->port, colon + 1, port_len);
  else
    strcpy(t->port, "80");
  if (slash)
    snprintf(t->prefix, sizeof t->prefix, "%s", slash);
  size_t pl = strlen(t->prefix);
  if (pl > 0 && t->prefix[pl - 1] == '/')
    t->prefix[pl - 1] = '\0'; /* request paths start with '/' */
  t->connect_ms = connect_ms > 0 ? connect_ms : 10000;
  t->total_ms = total_ms > 0 ? total_ms : 60000;
  t->max_body = max_body > 0 ? max_body : (size_t)256 << 20;
  *out = (fl_transport){.version = FL_TRANSPORT_VERSION,
                        .ctx = t,
                        .begin = gw_begin,
                        .poll = gw_poll,
                        .end = gw_end,
                        .destroy = gw_destroy,
                        .detail = gw_detail};
  return FL_OK;
}
