/*
 * Worker threads stepping many libflclient handles.
 */
#include "fleet.h"
#include "mqtt.h"
#include "outcome.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "client_internal.h" /* fl__curl_transport_keep_body */
#include "fl/client.h"
#include "fl/err.h"
#include "sim.h"

/* How long one fl_multi_perform may wait for the network: short, since round starts, straggler
 * delays and the in-flight cap are only looked at between performs. */
#define PERFORM_MS 2

typedef struct device {
  fl_client *c;
  size_t index;
  int active;        /* a round begun and not yet DONE */
  uint64_t cur_seq;  /* simulated round it takes part in */
  uint64_t done_seq; /* last simulated round this device finished */
  int64_t next_ms;   /* not before: the coordinator's retry window */
  sim_behaviour behaviour;
  int enrolled;
  char key_path[300];
  fl_rng dropout_rng;
  int intermittent, parked; /* offline_share's devices; parked: offline holding its task */
  int64_t resume_ms;        /* parked until */
  fl_rng offline_rng;
  fl_rng cond_rng; /* its conditions at each check-in (--conditions) */
  uint64_t shuffle_seed;
  uint32_t resets; /* epochs started in the current round */
  /* data source */
  const fl_dataset *data;
  const uint32_t *rows;
  size_t n_rows, pos;
  uint32_t *order;
  int labelled;
  int lent; /* handed to the pool this round: counts in train_pool.unsent until DONE */
} device;

typedef struct worker {
  struct sim_fleet *f;
  size_t lo, hi;
  sim_net net;
  fl_multi *multi;
  device **by_client; /* the slice's devices sorted by client handle, for fl_multi_next */
  pthread_t thread;
  pthread_mutex_t mu; /* guards snap and failed_by_err */
  sim_net_stats snap;
  uint64_t failed_by_err[32];
  char *const *tokens;
} worker;

/* Devices lent out by the workers' multis for training, and the threads that train them. */
typedef struct train_pool {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  device **q; /* ring of n_devices slots: a device is queued at most once */
  size_t cap, head, len;
  /* Devices taken for training whose round has not ended: each holds its packed update until
   * it is uploaded. Training is faster than the coordinator takes uploads, so without a bound
   * a 10,000-device round would hold thousands of 800 KB updates at once. */
  size_t unsent, max_unsent;
  int stop;
  pthread_t *threads;
  int n_started;
} train_pool;

struct sim_fleet {
  sim_fleet_opts o;
  fl_model_store *store; /* one copy of each version for all devices */
  train_pool pool;
  device *dev;
  worker *w;
  int started;
  atomic_uint_fast64_t seq;
  atomic_int stop;
  atomic_uint_fast64_t enroll_tried, enrolled;
  atomic_uint_fast64_t finished, uploaded, failed, dropped, offline, train_ns, train_cpu_ns;
  atomic_uint_fast64_t not_folded; /* device rounds answered 409 target_reached */
  atomic_int_fast64_t last_ack_ms;
  sim_mqtt_broker mqtt; /* o.broker split */
};

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint64_t clock_ns(clockid_t id) {
  struct timespec ts;
  clock_gettime(id, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t mono_ns(void) {
  return clock_ns(CLOCK_MONOTONIC);
}

/* fl_data_source over this device's rows of the shared data set, shuffled each epoch. The
 * coordinator's seed is not used: it mixes in the device id, which follows enrollment order
 * and so the thread count. The device's own seed, the simulated round and the epoch do not. */
static fl_err ds_reset(void *ctx, uint64_t seed) {
  (void)seed;
  device *d = ctx;
  fl_rng r;
  fl__rng_seed(
      &r, sim_device_seed(d->shuffle_seed, d->cur_seq * 65536 + d->resets++, SIM_SEED_SHUFFLE));
  memcpy(d->order, d->rows, d->n_rows * sizeof(uint32_t));
  fl__rng_shuffle_u32(&r, d->order, d->n_rows);
  d->pos = 0;
  return FL_OK;
}

static fl_err ds_next(void *ctx, float *x, int32_t *labels, float *targets, size_t max, size_t *n) {
  device *d = ctx;
  size_t dim = d->data->x_dim, k = 0;
  for (; k < max && d->pos < d->n_rows; k++, d->pos++) {
    uint32_t row = d->order[d->pos];
    memcpy(x + k * dim, d->data->x + (size_t)row * dim, dim * sizeof(float));
    if (labels != NULL && d->labelled)
      labels[k] = d->data->labels[row];
    /* A label-flipping attacker trains honestly on labels c -> C - 1 - c. */
    if (labels != NULL && d->labelled && d->behaviour == SIM_LABELFLIP && d->data->n_classes > 0)
      labels[k] = d->data->n_classes - 1 - labels[k];
    if (targets != NULL && !d->labelled)
      memcpy(targets + k * dim, d->data->x + (size_t)row * dim, dim * sizeof(float));
  }
  *n = k;
  return FL_OK;
}

static void count_failure(struct sim_fleet *f, worker *w, int err) {
  atomic_fetch_add(&f->failed, 1);
  pthread_mutex_lock(&w->mu);
  w->failed_by_err[err >= 0 && err < 32 ? err : 31]++;
  pthread_mutex_unlock(&w->mu);
}

/* An intermittent device's next offline period in ms: with probability 1/2 one drawn from the
 * exponential of mean offline_mean_ms, else 0 (stays online). Always 0 for the others. */
static int64_t offline_period(struct sim_fleet *f, device *d) {
  if (!d->intermittent || fl__rng_uniform(&d->offline_rng) >= 0.5)
    return 0;
  double u = fl__rng_uniform(&d->offline_rng);
  int64_t ms = (int64_t)(-f->o.offline_mean_ms * log(1.0 - u)) + 1;
  atomic_fetch_add(&f->offline, 1);
  return ms;
}

static void record_result(struct sim_fleet *f, worker *w, device *d) {
  fl_round_result r = {.size = sizeof r};
  fl_client_round_result(d->c, &r);
  d->active = 0;
  if (r.outcome == FL_ROUND_NOT_SELECTED) {
    int64_t now = now_ms(), at = r.retry_at_ms;
    /* Keep the simulation moving even if the coordinator paces devices far out. */
    d->next_ms = at <= now ? now + 200 : at > now + 3000 ? now + 3000 : at;
    return;
  }
  d->done_seq = d->cur_seq;
  atomic_fetch_add(&f->finished, 1);
  int64_t off = offline_period(f, d);
  if (off > 0)
    d->next_ms = now_ms() + off; /* offline: no check-in before it is back */
  if (r.outcome == FL_ROUND_UPLOADED) {
    atomic_fetch_add(&f->uploaded, 1);
    int64_t now = now_ms(), prev = atomic_load(&f->last_ack_ms);
    while (now > prev && !atomic_compare_exchange_weak(&f->last_ack_ms, &prev, now))
      ;
  } else if (sim_target_reached(r.err, fl_client_errmsg(d->c))) {
    atomic_fetch_add(&f->not_folded, 1);
  } else {
    count_failure(f, w, r.err);
  }
}

/* The conditions of this check-in, each drawn with its probability (--conditions). */
static int set_conditions(struct sim_fleet *f, device *d) {
  const sim_mix *m = f->o.conditions;
  if (m == NULL || m->n == 0)
    return FL_OK;
  double u[SIM_MIX_MAX];
  const char *names[SIM_MIX_MAX];
  for (size_t i = 0; i < m->n; i++)
    u[i] = fl__rng_uniform(&d->cond_rng);
  return fl_client_set_conditions(d->c, names, sim_mix_conditions(m, u, names));
}

/* Device k's slice of the hold-out data for federated evaluation (borrowed by the client). */
static int set_holdout(struct sim_fleet *f, device *d) {
  const fl_dataset *h = f->o.holdout;
  size_t per = f->o.holdout_per_device;
  if (h == NULL || per == 0 || h->n < per)
    return FL_OK;
  size_t from = (d->index * per) % (h->n - per + 1);
  return fl_client_set_holdout_memory(d->c, h->x + from * h->x_dim,
                                      d->labelled && h->labels ? h->labels + from : NULL, per,
                                      h->x_dim);
}

/* Starts the device's round when the simulated round allows it. */
static void maybe_begin(struct sim_fleet *f, worker *w, device *d, uint64_t seq) {
  if (!d->enrolled || d->active || (!f->o.continuous && d->done_seq >= seq) ||
      now_ms() < d->next_ms)
    return;
  d->cur_seq = seq;
  d->resets = 0;
  /* What the device saw in service since its last check-in: its stream, scored by the model
   * it runs (none yet before its first round: FL_E_NOTFOUND, nothing to report). */
  const fl_dataset *sv = f->o.service;
  if (sv != NULL && (d->index + 1) * f->o.service_per_device <= sv->n)
    (void)fl_client_observe(d->c, sv->x + d->index * f->o.service_per_device * sv->x_dim,
                            f->o.service_per_device, NULL);
  int rc = set_conditions(f, d);
  if (rc == FL_OK)
    rc = fl_client_round_begin(d->c);
  if (rc != FL_OK) {
    d->done_seq = seq;
    atomic_fetch_add(&f->finished, 1);
    count_failure(f, w, rc);
    return;
  }
  d->active = 1;
}

/* A selected device that drops out says nothing more to the coordinator. The multi lends a
 * client that needs training until fl_client_train() returns; taking it out and back in is how
 * a round is abandoned instead. */
static void drop_out(struct sim_fleet *f, worker *w, device *d) {
  fl_multi_remove(w->multi, d->c);
  fl_client_round_cancel(d->c);
  if (fl_multi_add(w->multi, d->c) != FL_OK)
    d->enrolled = 0; /* out of memory: the device leaves the fleet */
  d->active = 0;
  d->done_seq = d->cur_seq;
  atomic_fetch_add(&f->finished, 1);
  atomic_fetch_add(&f->dropped, 1);
}

static int cmp_by_client(const void *a, const void *b) {
  uintptr_t x = (uintptr_t)(*(device *const *)a)->c, y = (uintptr_t)(*(device *const *)b)->c;
  return x < y ? -1 : x > y;
}

static device *find_device(worker *w, const fl_client *c) {
  size_t lo = 0, hi = w->hi - w->lo;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (w->by_client[mid]->c == c)
      return w->by_client[mid];
    if ((uintptr_t)w->by_client[mid]->c < (uintptr_t)c)
      lo = mid + 1;
    else
      hi = mid;
  }
  return NULL;
}

/* The device lent for training has ended its round: room for another to train. */
static void pool_release(train_pool *p, device *d) {
  if (!d->lent)
    return;
  d->lent = 0;
  pthread_mutex_lock(&p->mu);
  p->unsent--;
  pthread_cond_broadcast(&p->cv);
  pthread_mutex_unlock(&p->mu);
}

static void pool_push(train_pool *p, device *d) {
  d->lent = 1;
  pthread_mutex_lock(&p->mu);
  p->q[(p->head + p->len) % p->cap] = d;
  p->len++;
  pthread_cond_signal(&p->cv);
  pthread_mutex_unlock(&p->mu);
}

/* A training thread: the device's client and its data source are this thread's until
 * fl_client_train returns (the worker does not touch a lent client, and the device's fields
 * the data source uses are not the worker's while the device is active). */
static void *trainer_main(void *arg) {
  struct sim_fleet *f = arg;
  train_pool *p = &f->pool;
  for (;;) {
    pthread_mutex_lock(&p->mu);
    while ((p->len == 0 || p->unsent >= p->max_unsent) && !p->stop)
      pthread_cond_wait(&p->cv, &p->mu);
    if (p->stop) {
      pthread_mutex_unlock(&p->mu);
      return NULL;
    }
    device *d = p->q[p->head];
    p->head = (p->head + 1) % p->cap;
    p->len--;
    p->unsent++;
    pthread_mutex_unlock(&p->mu);
    uint64_t t0 = mono_ns(), c0 = clock_ns(CLOCK_THREAD_CPUTIME_ID);
    fl_client_train(d->c); /* a failure ends the round; the next step reports it */
    atomic_fetch_add(&f->train_cpu_ns, clock_ns(CLOCK_THREAD_CPUTIME_ID) - c0);
    atomic_fetch_add(&f->train_ns, mono_ns() - t0);
  }
}

static int pool_start(struct sim_fleet *f) {
  train_pool *p = &f->pool;
  p->threads = calloc((size_t)f->o.train_threads, sizeof(*p->threads));
  if (p->threads == NULL)
    return FL_E_NOMEM;
  for (int i = 0; i < f->o.train_threads; i++) {
    if (pthread_create(&p->threads[i], NULL, trainer_main, f) != 0)
      return FL_E_NOMEM;
    p->n_started++;
  }
  return FL_OK;
}

/* After the workers stopped: queued devices stay untrained (their clients are freed next). */
static void pool_stop(train_pool *p) {
  pthread_mutex_lock(&p->mu);
  p->stop = 1;
  pthread_cond_broadcast(&p->cv);
  pthread_mutex_unlock(&p->mu);
  for (int i = 0; i < p->n_started; i++)
    pthread_join(p->threads[i], NULL);
  p->n_started = 0;
}

/* What the multi has to say: devices to train (handed to the pool) and rounds over. */
static void handle_events(struct sim_fleet *f, worker *w) {
  fl_client *c;
  fl_step step;
  fl_err err;
  while (fl_multi_next(w->multi, &c, &step, &err)) {
    device *d = find_device(w, c);
    if (d == NULL)
      continue;
    if (step == FL_STEP_NEED_TRAIN) {
      if (fl__rng_uniform(&d->dropout_rng) < f->o.dropout) {
        drop_out(f, w, d);
        continue;
      }
      int64_t off = offline_period(f, d);
      if (off > 0) {
        /* Offline holding the task: trained and uploaded once back (worker_main). */
        d->parked = 1;
        d->resume_ms = now_ms() + off;
        continue;
      }
      pool_push(&f->pool, d); /* the multi steps it again once fl_client_train returned */
    } else if (step == FL_STEP_DONE) {
      pool_release(&f->pool, d);
      record_result(f, w, d);
    }
  }
}

static void enroll_slice(struct sim_fleet *f, worker *w) {
  for (size_t k = w->lo; k < w->hi && !atomic_load(&f->stop); k++) {
    device *d = &f->dev[k];
    int rc = fl_client_enroll(d->c, w->tokens[k], NULL, 0, "fl-sim");
    if (rc == FL_OK)
      rc = fl_multi_add(w->multi, d->c);
    d->enrolled = rc == FL_OK;
    if (rc != FL_OK && k == w->lo)
      fprintf(stderr, "fl-sim: device %zu cannot enroll: %s (%s)\n", k, fl_strerror(rc),
              fl_client_errmsg(d->c));
    atomic_fetch_add(&f->enrolled, (uint64_t)d->enrolled);
    atomic_fetch_add(&f->enroll_tried, 1);
  }
}

static void *worker_main(void *arg) {
  worker *w = arg;
  struct sim_fleet *f = w->f;
  enroll_slice(f, w);
  while (!atomic_load(&f->stop)) {
    uint64_t seq = atomic_load(&f->seq);
    if (seq == 0) {
      struct timespec ts = {0, 5 * 1000 * 1000};
      nanosleep(&ts, NULL);
      continue;
    }
    int64_t now = now_ms();
    for (size_t k = w->lo; k < w->hi; k++) {
      device *d = &f->dev[k];
      if (d->parked && now >= d->resume_ms) {
        d->parked = 0;
        pool_push(&f->pool, d);
      }
      maybe_begin(f, w, d, seq);
    }
    fl_multi_perform(w->multi, PERFORM_MS);
    handle_events(f, w);
    pthread_mutex_lock(&w->mu);
    w->snap = w->net.stats;
    pthread_mutex_unlock(&w->mu);
  }
  return NULL;
}

/* Which devices misbehave, and how: a seeded choice of bad_frac of them, kinds in turn. */
static void assign_behaviours(struct sim_fleet *f) {
  size_t n = f->o.n_devices, n_bad = (size_t)(f->o.bad_frac * (double)n + 0.5);
  unsigned kinds = f->o.bad_kinds ? f->o.bad_kinds : 0x1e;
  uint32_t *perm = malloc(n * sizeof(*perm));
  if (perm == NULL)
    return;
  for (size_t i = 0; i < n; i++)
    perm[i] = (uint32_t)i;
  fl_rng r;
  fl__rng_seed(&r, f->o.seed ^ 0xbadbadu);
  fl__rng_shuffle_u32(&r, perm, n);
  int kind = 0;
  for (size_t i = 0; i < n_bad && i < n; i++) {
    do
      kind = kind % (SIM_BEHAVIOUR_COUNT - 1) + 1;
    while (!(kinds & (1u << kind)));
    f->dev[perm[i]].behaviour = (sim_behaviour)kind;
  }
  free(perm);
}

/* The device's MQTT transport: its own broker account, PREFIX followed by its index. */
static fl_err mqtt_transport(struct sim_fleet *f, const device *d, const fl_client_opts *co,
                             fl_transport *out) {
  char user[80];
  snprintf(user, sizeof user, "%s%05zu", f->mqtt.prefix, d->index);
  fl_mqtt_opts mo = {.version = FL_MQTT_OPTS_VERSION,
                     .broker_url = f->mqtt.url,
                     .username = user,
                     .password = f->mqtt.password[0] != '\0' ? f->mqtt.password : NULL};
  return fl_transport_mqtt(out, co, &mo);
}

/* The device's transport: libflclient's own curl (or MQTT) transport inside the fault
 * injection. */
static int make_transport(struct sim_fleet *f, device *d, sim_net *net, const fl_client_opts *co,
                          fl_transport *out) {
  fl_rng r;
  fl__rng_seed(&r, sim_device_seed(f->o.seed, d->index, SIM_SEED_PROFILE));
  int straggler = fl__rng_uniform(&r) < f->o.straggler_frac;
  sim_link_opts lo = {.net = net,
                      .key_path = d->key_path,
                      .behaviour = d->behaviour,
                      .straggler_ms = straggler ? f->o.straggler_ms : 0,
                      .net_fail = f->o.net_fail,
                      .clip_norm = f->o.clip_norm,
                      .sa_drop = f->o.sa_drop,
                      .seed = sim_device_seed(f->o.seed, d->index, SIM_SEED_FAULTS),
                      .borrow_body = 1};
  int rc =
      f->o.broker != NULL ? mqtt_transport(f, d, co, &lo.inner) : fl_transport_curl(&lo.inner, co);
  /* What the link hands on lives until inner.end() (transport.h): neither copies an upload. */
  if (rc == FL_OK)
    fl__curl_transport_keep_body(&lo.inner);
  return rc == FL_OK ? sim_link_transport(out, &lo) : rc;
}

static int make_device(struct sim_fleet *f, size_t k, sim_net *net) {
  device *d = &f->dev[k];
  char dir[256];
  snprintf(dir, sizeof(dir), "%s/devices/%05zu", f->o.work_dir, k);
  snprintf(d->key_path, sizeof(d->key_path), "%s/device.key", dir);
  d->index = k;
  d->data = f->o.train;
  d->rows = f->o.part->index + f->o.part->offsets[k];
  d->n_rows = sim_partition_size(f->o.part, k);
  d->labelled = f->o.labelled;
  d->shuffle_seed = sim_device_seed(f->o.seed, k, SIM_SEED_SHUFFLE);
  fl__rng_seed(&d->dropout_rng, sim_device_seed(f->o.seed, k, SIM_SEED_DROPOUT));
  fl__rng_seed(&d->offline_rng, sim_device_seed(f->o.seed, k, SIM_SEED_OFFLINE));
  d->intermittent = fl__rng_uniform(&d->offline_rng) < f->o.offline_share;
  fl__rng_seed(&d->cond_rng, sim_device_seed(f->o.seed, k, SIM_SEED_CONDITIONS));
  d->order = malloc((d->n_rows ? d->n_rows : 1) * sizeof(uint32_t));
  if (d->order == NULL)
    return FL_E_NOMEM;
  fl_client_opts co = {.version = FL_CLIENT_OPTS_VERSION,
                       .server_url = f->o.url,
                       /* a simulator, not a device: it runs against test coordinators,
                        * usually on loopback over plain http */
                       .allow_insecure_http = 1,
                       .state_dir = dir,
                       .max_retries = 4,
                       .backoff_base_ms = 50,
                       .backoff_max_ms = 2000,
                       .request_timeout_ms = 120000,
                       .connect_timeout_ms = 10000,
                       .model_id = f->o.model_id,
                       .model_store = f->store};
  fl_transport tr;
  int rc = make_transport(f, d, net, &co, &tr);
  if (rc != FL_OK)
    return rc;
  co.transport = &tr;
  rc = fl_client_new(&d->c, &co);
  if (rc != FL_OK) {
    tr.destroy(tr.ctx);
    return rc;
  }
  if (f->o.service != NULL && (rc = fl_client_set_service_stats(d->c, 1)) != FL_OK)
    return rc;
  fl_data_source src = {.version = FL_DATA_SOURCE_VERSION,
                        .ctx = d,
                        .x_dim = f->o.train->x_dim,
                        .n_examples = d->n_rows,
                        .reset = ds_reset,
                        .next = ds_next};
  rc = fl_client_set_data_source(d->c, &src);
  return rc == FL_OK ? set_holdout(f, d) : rc;
}

/* The worker's multi and its lookup table (after its devices exist). */
static int make_worker(struct sim_fleet *f, worker *w) {
  /* The cap on exchanges in flight, split between the workers: what the coordinator's
   * connection threads are sized for (fl-sim starts it with 512). */
  int share = f->o.max_inflight / f->o.threads;
  w->net.max_inflight = (unsigned)(share > 0 ? share : 1);
  int rc = FL_OK;
  for (size_t k = w->lo; rc == FL_OK && k < w->hi; k++)
    rc = make_device(f, k, &w->net);
  if (rc == FL_OK)
    rc = fl_multi_new(&w->multi, NULL);
  size_t n = w->hi - w->lo;
  w->by_client = rc == FL_OK ? malloc((n ? n : 1) * sizeof(*w->by_client)) : NULL;
  if (rc == FL_OK && w->by_client == NULL)
    rc = FL_E_NOMEM;
  if (rc != FL_OK)
    return rc;
  for (size_t i = 0; i < n; i++)
    w->by_client[i] = &f->dev[w->lo + i];
  qsort(w->by_client, n, sizeof(*w->by_client), cmp_by_client);
  return FL_OK;
}

int sim_fleet_new(sim_fleet **out, const sim_fleet_opts *o) {
  if (o->n_devices == 0 || o->threads < 1 || o->train_threads < 0 || o->max_inflight < 1 ||
      o->part->n_parties < o->n_devices)
    return FL_E_INVAL;
  struct sim_fleet *f = calloc(1, sizeof(*f));
  if (f == NULL)
    return FL_E_NOMEM;
  f->o = *o;
  char msg[160];
  if (o->broker != NULL && sim_mqtt_parse(o->broker, &f->mqtt, msg, sizeof msg) != FL_OK) {
    free(f);
    return FL_E_INVAL;
  }
  if (f->o.train_threads == 0) {
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    f->o.train_threads = cpus > 0 ? (int)cpus : 1;
  }
  pthread_mutex_init(&f->pool.mu, NULL);
  pthread_cond_init(&f->pool.cv, NULL);
  f->pool.cap = o->n_devices;
  /* As many trained updates as can be in flight, and one more per training thread: the
   * uploads never wait for training, and the memory does not grow with the fleet. */
  f->pool.max_unsent = (size_t)o->max_inflight + (size_t)f->o.train_threads;
  f->pool.q = calloc(o->n_devices, sizeof(*f->pool.q));
  f->dev = calloc(o->n_devices, sizeof(*f->dev));
  f->w = calloc((size_t)o->threads, sizeof(*f->w));
  char dir[256];
  snprintf(dir, sizeof(dir), "%s/devices", o->work_dir);
  int rc = f->dev && f->w && f->pool.q ? FL_OK : FL_E_NOMEM;
  if (rc == FL_OK && mkdir(dir, 0700) != 0 && errno != EEXIST)
    rc = FL_E_IO;
  if (rc == FL_OK)
    rc = fl_model_store_new(&f->store, NULL);
  if (rc == FL_OK)
    assign_behaviours(f);
  for (int t = 0; rc == FL_OK && t < o->threads; t++) {
    worker *w = &f->w[t];
    w->f = f;
    w->lo = o->n_devices * (size_t)t / (size_t)o->threads;
    w->hi = o->n_devices * (size_t)(t + 1) / (size_t)o->threads;
    pthread_mutex_init(&w->mu, NULL);
    rc = make_worker(f, w);
  }
  if (rc != FL_OK) {
    sim_fleet_free(f);
    return rc;
  }
  *out = f;
  return FL_OK;
}

int sim_fleet_train_threads(const sim_fleet *f) {
  return f->o.train_threads;
}

int sim_fleet_start(sim_fleet *f, char *const *tokens) {
  if (pool_start(f) != FL_OK) {
    pool_stop(&f->pool);
    return FL_E_NOMEM;
  }
  for (int t = 0; t < f->o.threads; t++) {
    f->w[t].tokens = tokens;
    if (pthread_create(&f->w[t].thread, NULL, worker_main, &f->w[t]) != 0) {
      atomic_store(&f->stop, 1);
      for (int j = 0; j < t; j++)
        pthread_join(f->w[j].thread, NULL);
      return FL_E_NOMEM;
    }
  }
  f->started = 1;
  return FL_OK;
}

size_t sim_fleet_wait_enrolled(sim_fleet *f) {
  while (atomic_load(&f->enroll_tried) < f->o.n_devices && !sim_stop_requested) {
    struct timespec ts = {0, 20 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  if (atomic_load(&f->enroll_tried) < f->o.n_devices) {
    /* Interrupted: the workers may still read the tokens, which the caller frees next. */
    atomic_store(&f->stop, 1);
    for (int t = 0; f->started && t < f->o.threads; t++)
      pthread_join(f->w[t].thread, NULL);
    f->started = 0;
  }
  return (size_t)atomic_load(&f->enrolled);
}

void sim_fleet_next_round(sim_fleet *f) {
  atomic_store(&f->finished, 0);
  atomic_fetch_add(&f->seq, 1);
}

static void add_stats(sim_net_stats *to, const sim_net_stats *s) {
  to->bytes_up += s->bytes_up;
  to->bytes_down += s->bytes_down;
  to->requests += s->requests;
  to->net_faults += s->net_faults;
  to->sa_dropped += s->sa_dropped;
  for (int i = 0; i < SIM_MAX_REASONS && s->reasons[i][0]; i++) {
    int j = 0;
    while (j < SIM_MAX_REASONS && to->reasons[j][0] && strcmp(to->reasons[j], s->reasons[i]))
      j++;
    if (j == SIM_MAX_REASONS)
      continue;
    memcpy(to->reasons[j], s->reasons[i], sizeof(to->reasons[j]));
    to->reason_count[j] += s->reason_count[i];
    to->refused += s->reason_count[i];
  }
}

void sim_fleet_counts_get(sim_fleet *f, sim_fleet_counts *c) {
  memset(c, 0, sizeof(*c));
  c->finished = atomic_load(&f->finished);
  c->uploaded = atomic_load(&f->uploaded);
  c->failed = atomic_load(&f->failed);
  c->not_folded = atomic_load(&f->not_folded);
  c->dropped = atomic_load(&f->dropped);
  c->offline = atomic_load(&f->offline);
  c->train_s = (double)atomic_load(&f->train_ns) / 1e9;
  c->train_cpu_s = (double)atomic_load(&f->train_cpu_ns) / 1e9;
  c->last_ack_ms = atomic_load(&f->last_ack_ms);
  for (int t = 0; t < f->o.threads; t++) {
    pthread_mutex_lock(&f->w[t].mu);
    add_stats(&c->net, &f->w[t].snap);
    for (int e = 0; e < 32; e++)
      c->failed_by_err[e] += f->w[t].failed_by_err[e];
    pthread_mutex_unlock(&f->w[t].mu);
  }
}

int sim_fleet_observer(sim_fleet *f, uint64_t *device_id, const char **key_path) {
  for (size_t k = 0; k < f->o.n_devices; k++) {
    device *d = &f->dev[k];
    if (d->enrolled && d->behaviour == SIM_HONEST) {
      *device_id = fl_client_device_id(d->c);
      *key_path = d->key_path;
      return FL_OK;
    }
  }
  return FL_E_NOTFOUND;
}

void sim_fleet_behaviours(const sim_fleet *f, size_t counts[SIM_BEHAVIOUR_COUNT]) {
  memset(counts, 0, SIM_BEHAVIOUR_COUNT * sizeof(size_t));
  for (size_t k = 0; k < f->o.n_devices; k++)
    counts[f->dev[k].behaviour]++;
}

void sim_fleet_free(sim_fleet *f) {
  if (f == NULL)
    return;
  atomic_store(&f->stop, 1);
  for (int t = 0; f->started && t < f->o.threads; t++)
    pthread_join(f->w[t].thread, NULL);
  pool_stop(&f->pool); /* no client is trained while the clients are freed */
  for (size_t k = 0; f->dev && k < f->o.n_devices; k++) {
    fl_client_free(f->dev[k].c); /* leaves its worker's multi first */
    free(f->dev[k].order);
  }
  for (int t = 0; f->w && t < f->o.threads; t++) {
    fl_multi_free(f->w[t].multi);
    free(f->w[t].by_client);
    pthread_mutex_destroy(&f->w[t].mu);
  }
  fl_model_store_free(f->store); /* after every client that borrowed it */
  free(f->pool.q);
  free(f->pool.threads);
  pthread_cond_destroy(&f->pool.cv);
  pthread_mutex_destroy(&f->pool.mu);
  free(f->dev);
  free(f->w);
  free(f);
}
