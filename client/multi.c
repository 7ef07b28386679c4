/*
 * fl_multi: one thread drives the rounds of many clients.
 *
 * Clients with the built-in transport (or a wrapper that forwards its attach()) move their
 * easy handles onto one shared libcurl multi handle, so a thousand clients share one connection
 * pool and one poll. Each perform advances every client's step machine without blocking;
 * clients that need training or finished their round are queued for fl_multi_next(). A client
 * handed out for training is "lent": the multi does not touch it until fl_client_train() has
 * returned (it sets an atomic flag and wakes the multi), so the training may run on any worker
 * thread.
 *
 * Without libcurl (FL_WITH_CURL=OFF) the multi has no connection pool: it steps every client
 * and sleeps in poll() on a self-pipe that fl__multi_wakeup() writes, as libcurl's
 * curl_multi_wakeup() interrupts curl_multi_poll() in a normal build.
 */
#include <string.h>

#ifdef FL_HAVE_CURL
#include <curl/curl.h>
#else
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <unistd.h>
#endif

#include "client_internal.h"

/* The sockets of own-connection transports are waited on by curl_multi_poll() beside the
 * libcurl transfers, or by poll() beside the self-pipe without libcurl: both take an array of
 * {fd, events, revents}. */
#ifdef FL_HAVE_CURL
typedef struct curl_waitfd fl_waitfd;
#define FL_WAIT_IN CURL_WAIT_POLLIN
#define FL_WAIT_OUT CURL_WAIT_POLLOUT
#else
typedef struct pollfd fl_waitfd;
#define FL_WAIT_IN POLLIN
#define FL_WAIT_OUT POLLOUT
#endif

typedef struct fl_multi_event {
  fl_client *c;
  fl_step step;
  int err;
} fl_multi_event;

struct fl_multi {
  fl_allocator alloc_copy;
  const fl_allocator *alloc;
#ifdef FL_HAVE_CURL
  CURLM *curlm;
#else
  int wake[2]; /* self-pipe, both ends non-blocking */
#endif
  fl_client *head;
  size_t n_clients;
  /* Ring of events; one slot per client is enough since a client is queued at most once. */
  fl_multi_event *q;
  size_t q_cap, q_head, q_len;
  /* The sockets of transports with their own connection (pollfd, version 3), one per client,
   * waited on beside the libcurl transfers. */
  fl_waitfd *fds; /* fds_cap + 1 slots: the last one is the self-pipe's without libcurl */
  size_t fds_cap;
};

#ifdef FL_HAVE_CURL
static int wait_open(fl_multi *m) {
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
    return FL_E_TRANSPORT;
  m->curlm = curl_multi_init();
  if (m->curlm == NULL) {
    curl_global_cleanup();
    return FL_E_NOMEM;
  }
  return FL_OK;
}

static void wait_close(fl_multi *m) {
  curl_multi_cleanup(m->curlm);
  curl_global_cleanup();
}
#else
static int wait_open(fl_multi *m) {
  if (pipe(m->wake) != 0)
    return FL_E_IO;
  for (int i = 0; i < 2; i++) {
    int fl = fcntl(m->wake[i], F_GETFL);
    if (fl < 0 || fcntl(m->wake[i], F_SETFL, fl | O_NONBLOCK) < 0 ||
        fcntl(m->wake[i], F_SETFD, FD_CLOEXEC) < 0) {
      close(m->wake[0]);
      close(m->wake[1]);
      return FL_E_IO;
    }
  }
  return FL_OK;
}

static void wait_close(fl_multi *m) {
  close(m->wake[0]);
  close(m->wake[1]);
}
#endif

fl_err fl_multi_new(fl_multi **out, const fl_allocator *allocator) {
  if (out == NULL)
    return FL_E_INVAL;
  fl_multi *m = fl__calloc(allocator, 1, sizeof *m);
  if (m == NULL)
    return FL_E_NOMEM;
  if (allocator != NULL) {
    m->alloc_copy = *allocator;
    m->alloc = &m->alloc_copy;
  }
  int err = wait_open(m);
  if (err != FL_OK) {
    fl__free(allocator, m);
    return err;
  }
  *out = m;
  return FL_OK;
}

void fl_multi_free(fl_multi *m) {
  if (m == NULL)
    return;
  while (m->head != NULL)
    fl_multi_remove(m, m->head);
  wait_close(m);
  fl__free(m->alloc, m->q);
  fl__free(m->alloc, m->fds);
  fl_allocator copy = m->alloc_copy;
  fl__free(m->alloc != NULL ? &copy : NULL, m);
}

/* Keeps the ring's order while growing it. */
static int grow_queue(fl_multi *m, size_t need) {
  if (need <= m->q_cap)
    return FL_OK;
  size_t cap = m->q_cap ? m->q_cap * 2 : 16;
  while (cap < need)
    cap *= 2;
  fl_multi_event *q = fl__calloc(m->alloc, cap, sizeof *q);
  if (q == NULL)
    return FL_E_NOMEM;
  for (size_t i = 0; i < m->q_len; i++)
    q[i] = m->q[(m->q_head + i) % m->q_cap];
  fl__free(m->alloc, m->q);
  m->q = q;
  m->q_cap = cap;
  m->q_head = 0;
  return FL_OK;
}

fl_err fl_multi_add(fl_multi *m, fl_client *c) {
  if (m == NULL || c == NULL)
    return FL_E_INVAL;
  if (c->multi != NULL || c->tr_busy)
    return FL_E_STATE;
  int err = grow_queue(m, m->n_clients + 1);
  if (err == FL_OK && c->tr.pollfd != NULL && m->fds_cap < m->n_clients + 1) {
    size_t cap = m->n_clients * 2 + 16;
    fl_waitfd *f = fl__calloc(m->alloc, cap + 1, sizeof *f);
    err = f != NULL ? FL_OK : FL_E_NOMEM;
    if (f != NULL) {
      fl__free(m->alloc, m->fds);
      m->fds = f;
      m->fds_cap = cap;
    }
  }
  if (err != FL_OK)
    return err;
  if (c->tr.attach != NULL) {
    err = c->tr.attach(c->tr.ctx, m);
    if (err != FL_OK)
      return err;
  }
  c->multi = m;
  c->multi_next = m->head;
  c->lent = false;
  c->queued = false;
  c->multi_done_gen = c->phase == FL__PH_DONE ? c->round_gen : c->round_gen - 1;
  m->head = c;
  m->n_clients++;
  return FL_OK;
}

static void unqueue(fl_multi *m, const fl_client *c) {
  size_t kept = 0;
  for (size_t i = 0; i < m->q_len; i++) {
    fl_multi_event e = m->q[(m->q_head + i) % m->q_cap];
    if (e.c != c)
      m->q[(m->q_head + kept++) % m->q_cap] = e;
  }
  m->q_len = kept;
}

fl_err fl_multi_remove(fl_multi *m, fl_client *c) {
  if (m == NULL || c == NULL || c->multi != m)
    return FL_E_INVAL;
  /* The shared multi handle must not keep a transfer of a client that leaves it. */
  if (c->tr_busy)
    fl__round_reset(c);
  if (c->tr.attach != NULL)
    c->tr.attach(c->tr.ctx, NULL);
  fl_client **pp = &m->head;
  while (*pp != c)
    pp = &(*pp)->multi_next;
  *pp = c->multi_next;
  unqueue(m, c);
  c->multi = NULL;
  c->multi_next = NULL;
  c->queued = false;
  c->lent = false;
  m->n_clients--;
  return FL_OK;
}

void fl__multi_forget(fl_client *c) {
  if (c->multi != NULL)
    fl_multi_remove(c->multi, c);
}

#ifdef FL_HAVE_CURL
void *fl__multi_curlm(fl_multi *m) {
  return m->curlm;
}

void fl__multi_wakeup(fl_multi *m) {
  curl_multi_wakeup(m->curlm);
}
#else
/* A full pipe already holds a wake-up: a failed write loses nothing. */
void fl__multi_wakeup(fl_multi *m) {
  char b = 1;
  ssize_t w = write(m->wake[1], &b, 1);
  (void)w;
}
#endif

static void enqueue(fl_multi *m, fl_client *c, fl_step step, int err) {
  if (c->queued || m->q_len == m->q_cap)
    return;
  m->q[(m->q_head + m->q_len) % m->q_cap] = (fl_multi_event){c, step, err};
  m->q_len++;
  c->queued = true;
}

static bool in_round(const fl_client *c) {
  return c->phase != FL__PH_IDLE && c->phase != FL__PH_DONE;
}

/* Steps one client without waiting and queues what its caller must hear about. */
static void step_client(fl_multi *m, fl_client *c) {
  if (c->lent) {
    if (!atomic_load_explicit(&c->trained, memory_order_acquire))
      return;
    c->lent = false;
  }
  if (!in_round(c) && (c->phase != FL__PH_DONE || c->multi_done_gen == c->round_gen))
    return;
  fl_step step = FL_STEP_IDLE;
  int err = fl_client_step(c, 0, &step);
  if (step == FL_STEP_NEED_TRAIN) {
    atomic_store_explicit(&c->trained, 0, memory_order_relaxed);
    c->lent = true;
    enqueue(m, c, step, FL_OK);
  } else if (step == FL_STEP_DONE && c->multi_done_gen != c->round_gen) {
    c->multi_done_gen = c->round_gen;
    enqueue(m, c, step, err);
  }
}

static void step_all(fl_multi *m) {
  for (fl_client *c = m->head; c != NULL; c = c->multi_next)
    step_client(m, c);
}

/* How long the poll may sleep: until the earliest backoff ends, at most timeout_ms. */
static int poll_timeout(const fl_multi *m, int timeout_ms) {
  int64_t now = fl__client_now_ms(), t = timeout_ms;
  for (const fl_client *c = m->head; c != NULL; c = c->multi_next) {
    if (c->lent) { /* its other fields belong to the training thread */
      if (atomic_load_explicit(&c->trained, memory_order_acquire))
        t = 0;
      continue;
    }
    if (c->io == FL__IO_BACKOFF && c->wake_at_ms - now < t)
      t = c->wake_at_ms - now;
  }
  return t > 0 ? (int)t : 0;
}

/* The sockets that clients' own-connection transports wait on (fds_cap >= their number). */
static unsigned collect_fds(fl_multi *m) {
  unsigned n = 0;
  for (fl_client *c = m->head; c != NULL && n < m->fds_cap; c = c->multi_next) {
    if (c->lent || !c->tr_busy || c->tr.pollfd == NULL)
      continue;
    int ev = 0;
    int fd = c->tr.pollfd(c->tr.ctx, &ev);
    if (fd < 0)
      continue;
    m->fds[n++] = (fl_waitfd){.fd = fd,
                              .events = (short)(((ev & FL_POLL_IN) ? FL_WAIT_IN : 0) |
                                                ((ev & FL_POLL_OUT) ? FL_WAIT_OUT : 0)),
                              .revents = 0};
  }
  return n;
}

#ifdef FL_HAVE_CURL
static void collect_finished(fl_multi *m) {
  CURLMsg *msg;
  int left = 0;
  while ((msg = curl_multi_info_read(m->curlm, &left)) != NULL) {
    if (msg->msg != CURLMSG_DONE)
      continue;
    void *tr = NULL;
    curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&tr);
    if (tr != NULL)
      fl__curl_transport_finished(tr, (int)msg->data.result);
  }
}

fl_err fl_multi_perform(fl_multi *m, int timeout_ms) {
  if (m == NULL)
    return FL_E_INVAL;
  int running = 0;
  step_all(m); /* starts the requests of clients that just began a round or finished training */
  CURLMcode mc = curl_multi_perform(m->curlm, &running);
  if (mc == CURLM_OK && m->q_len == 0) {
    unsigned n = m->fds != NULL ? collect_fds(m) : 0;
    mc = curl_multi_poll(m->curlm, n > 0 ? m->fds : NULL, n, poll_timeout(m, timeout_ms), NULL);
  }
  if (mc == CURLM_OK)
    mc = curl_multi_perform(m->curlm, &running);
  collect_finished(m);
  step_all(m);
  if (mc == CURLM_OUT_OF_MEMORY)
    return FL_E_NOMEM;
  return mc == CURLM_OK ? FL_OK : FL_E_TRANSPORT;
}
#else
fl_err fl_multi_perform(fl_multi *m, int timeout_ms) {
  if (m == NULL)
    return FL_E_INVAL;
  step_all(m);
  if (m->q_len == 0) {
    struct pollfd one, *p = &one;
    unsigned n = 0;
    if (m->fds != NULL) {
      n = collect_fds(m);
      p = m->fds;
    }
    p[n] = (struct pollfd){.fd = m->wake[0], .events = POLLIN};
    int r = poll(p, n + 1, poll_timeout(m, timeout_ms));
    if (r < 0 && errno != EINTR)
      return FL_E_IO;
    char drain[64];
    while (r > 0 && (p[n].revents & POLLIN) && read(m->wake[0], drain, sizeof drain) > 0) {
    }
  }
  step_all(m);
  return FL_OK;
}
#endif

int fl_multi_next(fl_multi *m, fl_client **c, fl_step *step, fl_err *err) {
  if (m == NULL || m->q_len == 0)
    return 0;
  fl_multi_event e = m->q[m->q_head];
  m->q_head = (m->q_head + 1) % m->q_cap;
  m->q_len--;
  e.c->queued = false;
  *c = e.c;
  *step = e.step;
  *err = e.err;
  return 1;
}

size_t fl_multi_active(const fl_multi *m) {
  size_t n = 0;
  for (const fl_client *c = m != NULL ? m->head : NULL; c != NULL; c = c->multi_next)
    n += c->lent || in_round(c) ? 1 : 0;
  return n;
}
