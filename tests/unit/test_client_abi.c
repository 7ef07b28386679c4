/* The versioned structs of fl/client.h (docs/ABI.md): options and transports read by their
 * version, output structs written within the size the caller set, sizes the library sets in
 * the structs it hands to callbacks. A struct "built against an older header" is placed so
 * that it ends at an inaccessible page: reading one byte past it faults. */
#include <stddef.h>
#include <sys/mman.h>

#include "test_client_fake.h"

#define FIELD_END(type, field) (offsetof(type, field) + sizeof(((type *)0)->field))
/* sizeof(fl_client_opts) as version 1 had it: up to follow_training_base, padded to the
 * struct's alignment. */
#define OPTS_V1_SIZE                                                                  \
  ((FIELD_END(fl_client_opts, follow_training_base) + _Alignof(fl_client_opts) - 1) & \
   ~(_Alignof(fl_client_opts) - 1))

/* The same for version 2: up to max_response_bytes. */
#define OPTS_V2_SIZE                                                                \
  ((FIELD_END(fl_client_opts, max_response_bytes) + _Alignof(fl_client_opts) - 1) & \
   ~(_Alignof(fl_client_opts) - 1))

/* The same for version 3: up to allow_insecure_http. */
#define OPTS_V3_SIZE                                                                 \
  ((FIELD_END(fl_client_opts, allow_insecure_http) + _Alignof(fl_client_opts) - 1) & \
   ~(_Alignof(fl_client_opts) - 1))

/* `size` bytes right before a PROT_NONE page. */
typedef struct guarded {
  uint8_t *map;
  size_t page;
  void *p;
} guarded;

static void *guard(guarded *g, size_t size) {
  g->page = (size_t)sysconf(_SC_PAGESIZE);
  g->map = mmap(NULL, 2 * g->page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  cr_assert_neq(g->map, MAP_FAILED);
  cr_assert_eq(mprotect(g->map + g->page, g->page, PROT_NONE), 0);
  cr_assert_eq(size % 8, 0, "the struct must stay aligned at the end of the page");
  g->p = g->map + g->page - size;
  return g->p;
}

static void unguard(guarded *g) {
  munmap(g->map, 2 * g->page);
}

/* Log lines the library sends before there is a handle. */
static char g_log[512];
static void keep_log(void *ctx, fl_log_level level, const char *line) {
  (void)ctx;
  cr_assert_eq(level, FL_LOG_ERROR);
  snprintf(g_log, sizeof g_log, "%s", line);
}

Test(client_abi, options_of_version_1_are_read_without_touching_later_fields) {
  fake_env e;
  fake_data();
  fake_tmpdir(e.dir, sizeof e.dir);
  fake_init(&e.f);
  e.tr = fake_transport(&e.f);
  fl_client_opts full;
  fake_opts(&full, e.dir, &e.tr);
  guarded g;
  cr_assert_lt(OPTS_V1_SIZE, sizeof full);
  fl_client_opts *v1 = guard(&g, OPTS_V1_SIZE);
  memcpy(v1, &full, OPTS_V1_SIZE);
  v1->version = 1;
  cr_assert_eq(fl_client_new(&e.c, v1), FL_OK);
  /* max_response_bytes is not in version 1: the default (1 GiB) lets the model through. */
  cr_assert_eq(fl_client_enroll(e.c, "tok", NULL, 0, NULL), FL_OK, "%s", fl_client_errmsg(e.c));
  cr_assert_eq(fl_client_set_data_memory(e.c, fake_x, fake_y, 20, FAKE_IN), FL_OK);
  fl_round_result r = {.size = sizeof r};
  cr_assert_eq(fl_client_run_round(e.c, &r), FL_OK, "%s", fl_client_errmsg(e.c));
  cr_assert_eq(r.outcome, FL_ROUND_UPLOADED);
  fake_env_down(&e);

  /* The built-in transport reads the options the same way. */
  fl_transport tr;
  v1->server_url = "https://127.0.0.1:9";
  cr_assert_eq(fl_transport_curl(&tr, v1), FL_OK);
  tr.destroy(tr.ctx);
  unguard(&g);
}

/* Version 2 has no allow_insecure_http: such a program gets https only, and the library does
 * not read past its struct to find out. */
Test(client_abi, options_of_version_2_are_read_without_touching_allow_insecure_http) {
  char dir[64];
  fake_tmpdir(dir, sizeof dir);
  guarded g;
  cr_assert_lt(OPTS_V2_SIZE, sizeof(fl_client_opts));
  fl_client_opts *v2 = guard(&g, OPTS_V2_SIZE);
  memset(v2, 0, OPTS_V2_SIZE);
  v2->version = 2;
  v2->state_dir = dir;
  v2->server_url = "http://127.0.0.1:9";
  v2->log_fn = keep_log;
  fl_client *c = NULL;
  g_log[0] = '\0';
  cr_assert_eq(fl_client_new(&c, v2), FL_E_INVAL);
  cr_assert(strstr(g_log, "plain http") != NULL, "log says \"%s\"", g_log);
  fl_transport tr;
  cr_assert_eq(fl_transport_curl(&tr, v2), FL_E_INVAL);
  v2->server_url = "https://127.0.0.1:9";
  cr_assert_eq(fl_client_new(&c, v2), FL_OK);
  fl_client_free(c);
  cr_assert_eq(fl_transport_curl(&tr, v2), FL_OK);
  tr.destroy(tr.ctx);
  unguard(&g);
  fake_rmdir(dir);
}

/* Version 3 has no model_store: such a client keeps its own models, and the library does not
 * read past its struct to look for a store. */
Test(client_abi, options_of_version_3_are_read_without_touching_model_store) {
  fake_env e;
  fake_data();
  fake_tmpdir(e.dir, sizeof e.dir);
  fake_init(&e.f);
  e.tr = fake_transport(&e.f);
  fl_client_opts full;
  fake_opts(&full, e.dir, &e.tr);
  guarded g;
  cr_assert_lt(OPTS_V3_SIZE, sizeof full);
  fl_client_opts *v3 = guard(&g, OPTS_V3_SIZE);
  memcpy(v3, &full, OPTS_V3_SIZE);
  v3->version = 3;
  cr_assert_eq(fl_client_new(&e.c, v3), FL_OK);
  cr_assert_eq(fl_client_enroll(e.c, "tok", NULL, 0, NULL), FL_OK, "%s", fl_client_errmsg(e.c));
  cr_assert_eq(fl_client_set_data_memory(e.c, fake_x, fake_y, 20, FAKE_IN), FL_OK);
  fl_round_result r = {.size = sizeof r};
  cr_assert_eq(fl_client_run_round(e.c, &r), FL_OK, "%s", fl_client_errmsg(e.c));
  cr_assert_eq(r.outcome, FL_ROUND_UPLOADED);
  fake_env_down(&e);
  unguard(&g);
}

Test(client_abi, zero_negative_and_newer_option_versions_are_refused_with_a_reason) {
  char dir[64];
  fake_tmpdir(dir, sizeof dir);
  fake_coord f;
  fake_init(&f);
  fl_transport tr = fake_transport(&f);
  fl_client_opts o;
  fl_client *c = NULL;
  const struct {
    int version;
    fl_err want;
    const char *says;
  } cases[] = {{0, FL_E_INVAL, "set it to FL_CLIENT_OPTS_VERSION"},
               {-3, FL_E_INVAL, "set it to FL_CLIENT_OPTS_VERSION"},
               {FL_CLIENT_OPTS_VERSION + 1, FL_E_UNSUPPORTED, "upgrade the library"}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    fake_opts(&o, dir, &tr);
    o.log_fn = keep_log;
    o.version = cases[i].version;
    g_log[0] = '\0';
    cr_assert_eq(fl_client_new(&c, &o), cases[i].want, "version %d", cases[i].version);
    cr_assert_null(c);
    cr_assert(strstr(g_log, cases[i].says) != NULL, "log says \"%s\"", g_log);
    o.server_url = "https://127.0.0.1:9";
    cr_assert_eq(fl_transport_curl(&tr, &o), cases[i].want);
  }
  /* Nothing was left locked or half-made: the current version opens the directory. */
  fake_opts(&o, dir, &tr);
  cr_assert_eq(fl_client_new(&c, &o), FL_OK);
  fl_client_free(c);
  fake_free(&f);
  fake_rmdir(dir);
}

Test(client_abi, transport_version_and_callbacks_are_checked) {
  char dir[64];
  fake_tmpdir(dir, sizeof dir);
  fake_coord f;
  fake_init(&f);
  fl_client_opts o;
  fl_client *c = NULL;
  fl_transport tr = fake_transport(&f);
  fake_opts(&o, dir, &tr);
  o.log_fn = keep_log;

  tr.version = 0;
  cr_assert_eq(fl_client_new(&c, &o), FL_E_INVAL);
  cr_assert(strstr(g_log, "fl_transport.version is 0") != NULL, "log says \"%s\"", g_log);
  tr.version = FL_TRANSPORT_VERSION + 1;
  cr_assert_eq(fl_client_new(&c, &o), FL_E_UNSUPPORTED);
  cr_assert(strstr(g_log, "upgrade") != NULL, "log says \"%s\"", g_log);
  tr = fake_transport(&f);
  tr.poll = NULL;
  cr_assert_eq(fl_client_new(&c, &o), FL_E_INVAL);
  cr_assert(strstr(g_log, "required") != NULL, "log says \"%s\"", g_log);
  cr_assert_null(c);

  tr = fake_transport(&f);
  cr_assert_eq(fl_client_new(&c, &o), FL_OK);
  tr.version = 99; /* the table was copied: changing the caller's copy changes nothing */
  cr_assert_eq(fl_client_enroll(c, "tok", NULL, 0, NULL), FL_OK, "%s", fl_client_errmsg(c));
  fl_client_free(c);
  fake_free(&f);
  fake_rmdir(dir);
}

static fl_err src_next(void *ctx, float *x, int32_t *labels, float *targets, size_t max,
                       size_t *n) {
  (void)ctx, (void)x, (void)labels, (void)targets, (void)max;
  *n = 0;
  return FL_OK;
}

Test(client_abi, data_source_version_is_checked_and_the_previous_data_stays) {
  fake_env e;
  fake_env_enrolled(&e);
  fl_data_source s = {.version = 0, .x_dim = FAKE_IN, .n_examples = 1, .next = src_next};
  cr_assert_eq(fl_client_set_data_source(e.c, &s), FL_E_INVAL);
  cr_assert(strstr(fl_client_errmsg(e.c), "FL_DATA_SOURCE_VERSION") != NULL);
  s.version = FL_DATA_SOURCE_VERSION + 1;
  cr_assert_eq(fl_client_set_data_source(e.c, &s), FL_E_UNSUPPORTED);
  cr_assert_eq(fl_client_set_holdout_source(e.c, &s), FL_E_UNSUPPORTED);
  s.version = FL_DATA_SOURCE_VERSION;
  s.next = NULL;
  cr_assert_eq(fl_client_set_data_source(e.c, &s), FL_E_INVAL);
  /* The memory data set from fake_env_enrolled is still the one trained on. */
  fl_round_result r = {.size = sizeof r};
  cr_assert_eq(fl_client_run_round(e.c, &r), FL_OK, "%s", fl_client_errmsg(e.c));
  cr_assert_eq(r.sample_count, 20);
  fake_env_down(&e);
}

/* After a successful round: the result into a struct claiming `size` bytes, in a buffer of
 * poison. */
static void result_into(fl_client *c, uint8_t *buf, size_t cap, size_t size, fl_err want) {
  memset(buf, 0xab, cap);
  memcpy(buf, &size, sizeof size);
  cr_assert_eq(fl_client_round_result(c, (fl_round_result *)buf), want, "size %zu", size);
  size_t got;
  memcpy(&got, buf, sizeof got);
  cr_assert_eq(got, size, "the size field is the caller's");
}

Test(client_abi, round_result_is_written_within_the_callers_size) {
  fake_env e;
  fake_env_enrolled(&e);
  fl_round_result r = {.size = sizeof r};
  cr_assert_eq(fl_client_run_round(e.c, &r), FL_OK, "%s", fl_client_errmsg(e.c));
  _Alignas(fl_round_result) uint8_t buf[sizeof r + 64];

  /* A caller built against a newer, larger struct: its unknown fields read as zero, nothing
   * past its size is written. */
  result_into(e.c, buf, sizeof buf, sizeof r + 16, FL_OK);
  fl_round_result got;
  memcpy(&got, buf, sizeof got);
  cr_assert_eq(got.outcome, FL_ROUND_UPLOADED);
  cr_assert_eq(got.round_id, r.round_id);
  cr_assert_eq(got.sample_count, 20);
  for (size_t i = sizeof r; i < sizeof r + 16; i++)
    cr_assert_eq(buf[i], 0, "byte %zu of a newer caller's struct", i);
  for (size_t i = sizeof r + 16; i < sizeof buf; i++)
    cr_assert_eq(buf[i], 0xab, "byte %zu lies past the caller's size", i);

  /* Sizes below the first layout, and garbage sizes, are refused and write nothing. */
  const size_t bad[] = {0, sizeof(size_t), sizeof r - 1, (size_t)1 << 20, SIZE_MAX};
  for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
    result_into(e.c, buf, sizeof buf, bad[k], FL_E_INVAL);
    for (size_t i = sizeof(size_t); i < sizeof buf; i++)
      cr_assert_eq(buf[i], 0xab, "size %zu: byte %zu written", bad[k], i);
  }

  /* Exactly sizeof, ending at an inaccessible page. */
  guarded g;
  fl_round_result *edge = guard(&g, sizeof r);
  edge->size = sizeof r;
  cr_assert_eq(fl_client_round_result(e.c, edge), FL_OK);
  cr_assert_eq(edge->outcome, FL_ROUND_UPLOADED);
  cr_assert_eq(fl_client_run_round(e.c, edge), FL_OK);
  cr_assert_eq(edge->outcome, FL_ROUND_UPLOADED);
  unguard(&g);
  fake_env_down(&e);
}

Test(client_abi, run_round_with_a_bad_result_size_sends_nothing) {
  fake_env e;
  fake_env_enrolled(&e);
  fl_round_result r = {.size = 0};
  cr_assert_eq(fl_client_run_round(e.c, &r), FL_E_INVAL);
  cr_assert_eq(e.f.n_checkin, 0);
  cr_assert_eq(fl_client_run_round(e.c, NULL), FL_OK, "NULL: no result wanted");
  cr_assert_eq(e.f.n_checkin, 1);
  fake_env_down(&e);
}

Test(client_abi, model_info_is_written_within_the_callers_size) {
  fake_env e;
  fake_env_enrolled(&e);
  fl_model_info mi = {.size = 3};
  cr_assert_eq(fl_client_model_info(e.c, &mi), FL_E_INVAL, "a bad size before NOTFOUND");
  mi.size = sizeof mi;
  cr_assert_eq(fl_client_model_info(e.c, &mi), FL_E_NOTFOUND);
  e.f.rollout_version = 2;
  fl_round_result r = {.size = sizeof r};
  cr_assert_eq(fl_client_run_round(e.c, &r), FL_OK, "%s", fl_client_errmsg(e.c));
  cr_assert_eq(r.running_version, 2);

  _Alignas(fl_model_info) uint8_t buf[sizeof mi + 32];
  memset(buf, 0xab, sizeof buf);
  size_t size = sizeof mi + 8;
  memcpy(buf, &size, sizeof size);
  cr_assert_eq(fl_client_model_info(e.c, (fl_model_info *)buf), FL_OK);
  memcpy(&mi, buf, sizeof mi);
  cr_assert_eq(mi.version, 2);
  cr_assert_eq(mi.input_size, FAKE_IN);
  cr_assert_eq(memcmp(mi.sha256, e.f.v[2].sha, FL_SHA256_LEN), 0);
  for (size_t i = sizeof mi; i < sizeof mi + 8; i++)
    cr_assert_eq(buf[i], 0);
  for (size_t i = sizeof mi + 8; i < sizeof buf; i++)
    cr_assert_eq(buf[i], 0xab);
  fake_env_down(&e);
}

/* A transport wrapping the fake that checks the sizes the library sets. */
static fl_transport g_inner;
static int g_sized_req, g_sized_resp;
static fl_err sized_begin(void *ctx, const fl_http_request *req) {
  g_sized_req += req->size == sizeof *req;
  return g_inner.begin(ctx, req);
}
static fl_err sized_poll(void *ctx, int timeout_ms, fl_http_response *resp) {
  g_sized_resp += resp->size == sizeof *resp;
  return g_inner.poll(ctx, timeout_ms, resp);
}

static int g_sized_task;
static fl_err sized_trainer(void *ctx, const fl_train_task *t, float *w, uint64_t *samples,
                            float *loss) {
  (void)ctx, (void)w;
  g_sized_task += t->size == sizeof *t;
  *samples = 1;
  *loss = 1;
  return FL_OK;
}

Test(client_abi, structs_handed_to_callbacks_carry_the_librarys_size) {
  fake_env e;
  fake_data();
  fake_tmpdir(e.dir, sizeof e.dir);
  fake_init(&e.f);
  g_inner = fake_transport(&e.f);
  e.tr = g_inner;
  e.tr.begin = sized_begin;
  e.tr.poll = sized_poll;
  fl_client_opts o;
  fake_opts(&o, e.dir, &e.tr);
  cr_assert_eq(fl_client_new(&e.c, &o), FL_OK);
  cr_assert_eq(fl_client_enroll(e.c, "tok", NULL, 0, NULL), FL_OK);
  fl_client_set_trainer(e.c, sized_trainer, NULL);
  cr_assert_eq(fl_client_run_round(e.c, NULL), FL_OK, "%s", fl_client_errmsg(e.c));
  /* enroll, check-in, model, upload */
  cr_assert_eq(g_sized_req, 4);
  cr_assert_eq(g_sized_resp, 4);
  cr_assert_eq(g_sized_task, 1);
  fake_env_down(&e);
}

Test(client_abi, max_response_bytes_refuses_a_larger_answer_without_retrying) {
  fake_env e;
  fake_data();
  fake_tmpdir(e.dir, sizeof e.dir);
  fake_init(&e.f);
  e.tr = fake_transport(&e.f);
  fl_client_opts o;
  fake_opts(&o, e.dir, &e.tr);
  o.max_response_bytes = e.f.v[1].len - 1; /* the model; enrollment and check-in are smaller */
  cr_assert_eq(fl_client_new(&e.c, &o), FL_OK);
  cr_assert_eq(fl_client_enroll(e.c, "tok", NULL, 0, NULL), FL_OK, "%s", fl_client_errmsg(e.c));
  cr_assert_eq(fl_client_set_data_memory(e.c, fake_x, fake_y, 20, FAKE_IN), FL_OK);
  fl_round_result r = {.size = sizeof r};
  cr_assert_eq(fl_client_run_round(e.c, &r), FL_E_TOOBIG, "%s", fl_client_errmsg(e.c));
  cr_assert_eq(r.outcome, FL_ROUND_FAILED);
  cr_assert_eq(r.err, FL_E_TOOBIG);
  cr_assert_eq(e.f.n_model_get, 1, "a too large answer is not retried");
  cr_assert(strstr(fl_client_errmsg(e.c), "max_response_bytes") != NULL, "%s",
            fl_client_errmsg(e.c));
  fake_env_down(&e);
}

/* A transport whose answers take one extra poll, so that fl_multi waits on pollfd() between. */
static int g_slow_polls, g_pollfd_calls;
static fl_err slow_poll(void *ctx, int timeout_ms, fl_http_response *resp) {
  if (g_slow_polls++ % 2 == 0)
    return FL_E_AGAIN;
  return g_inner.poll(ctx, timeout_ms, resp);
}
static int count_pollfd(void *ctx, int *events) {
  (void)ctx;
  *events = FL_POLL_IN;
  g_pollfd_calls++;
  return -1; /* nothing to wait on: the multi polls again within its timeout */
}

/* Version 3 added pollfd: fl_multi asks a version 3 table for its socket, and never reads the
 * field of a version 2 table (whose struct ends before it: here it holds a value that a read
 * would call). */
static int round_in_multi(int version) {
  fake_env e;
  fake_data();
  fake_tmpdir(e.dir, sizeof e.dir);
  fake_init(&e.f);
  g_inner = fake_transport(&e.f);
  e.tr = g_inner;
  e.tr.version = version;
  e.tr.poll = slow_poll;
  e.tr.pollfd = count_pollfd;
  fl_client_opts o;
  fake_opts(&o, e.dir, &e.tr);
  cr_assert_eq(fl_client_new(&e.c, &o), FL_OK);
  cr_assert_eq(fl_client_enroll(e.c, "tok", NULL, 0, NULL), FL_OK, "%s", fl_client_errmsg(e.c));
  cr_assert_eq(fl_client_set_data_memory(e.c, fake_x, fake_y, 20, FAKE_IN), FL_OK);
  fl_multi *m = NULL;
  cr_assert_eq(fl_multi_new(&m, NULL), FL_OK);
  cr_assert_eq(fl_multi_add(m, e.c), FL_OK);
  cr_assert_eq(fl_client_round_begin(e.c), FL_OK);
  g_pollfd_calls = 0;
  bool done = false;
  for (int i = 0; i < 200 && !done; i++) {
    cr_assert_eq(fl_multi_perform(m, 10), FL_OK);
    fl_client *c;
    fl_step st;
    fl_err err;
    while (fl_multi_next(m, &c, &st, &err)) {
      if (st == FL_STEP_NEED_TRAIN) {
        cr_assert_eq(fl_client_train(c), FL_OK);
        continue;
      }
      cr_assert_eq(err, FL_OK, "%s", fl_client_errmsg(c));
      done = true;
    }
  }
  cr_assert(done, "the round did not finish in the multi");
  cr_assert_eq(fl_multi_remove(m, e.c), FL_OK);
  fl_multi_free(m);
  fake_env_down(&e);
  return g_pollfd_calls;
}

Test(client_abi, pollfd_is_read_from_version_3_transports_only) {
  cr_assert_gt(round_in_multi(3), 0, "fl_multi never asked a version 3 transport for its socket");
  cr_assert_eq(round_in_multi(2), 0, "fl_multi read pollfd of a version 2 table");
}

/* fl_transport_mqtt reads fl_mqtt_opts by its version and refuses what cannot work, with the
 * reason in the log; a well-formed one is made without connecting (that waits for the first
 * exchange). */
Test(client_abi, mqtt_options_are_checked) {
  fl_client_opts o = {.version = FL_CLIENT_OPTS_VERSION,
                      .state_dir = "/nonexistent",
                      .allow_insecure_http = 1,
                      .log_fn = keep_log};
  fl_mqtt_opts mo = {
      .version = FL_MQTT_OPTS_VERSION, .broker_url = "mqtt://127.0.0.1:1", .username = "gw-0042"};
  fl_transport tr;
  fl_err ok = fl_transport_mqtt(&tr, &o, &mo);
  if (ok == FL_E_UNSUPPORTED)
    cr_skip_test("libflclient built without MQTT (FL_WITH_MQTT=OFF)");
  cr_assert_eq(ok, FL_OK, "%s", g_log);
  tr.destroy(tr.ctx);
  const struct {
    int version;
    const char *url, *user;
    int keepalive, insecure;
    fl_err want;
    const char *says;
  } cases[] = {
      {0, "mqtt://h", "d", 0, 1, FL_E_INVAL, "FL_MQTT_OPTS_VERSION"},
      {FL_MQTT_OPTS_VERSION + 1, "mqtt://h", "d", 0, 1, FL_E_UNSUPPORTED, "upgrade"},
      {1, "mqtt://h", NULL, 0, 1, FL_E_INVAL, "username"},
      {1, "mqtt://h", "a/b", 0, 1, FL_E_INVAL, "username"},
      {1, "mqtt://h", "a+", 0, 1, FL_E_INVAL, "username"},
      {1, "mqtt://h", "#", 0, 1, FL_E_INVAL, "username"},
      {1, NULL, "d", 0, 1, FL_E_INVAL, "broker_url"},
      {1, "https://h", "d", 0, 1, FL_E_INVAL, "mqtts://"},
      {1, "mqtt://h", "d", 0, 0, FL_E_INVAL, "plain mqtt"},
      {1, "mqtt://h:0", "d", 0, 1, FL_E_INVAL, "cannot parse"},
      {1, "mqtt://h:99999", "d", 0, 1, FL_E_INVAL, "cannot parse"},
      {1, "mqtt://:1883", "d", 0, 1, FL_E_INVAL, "cannot parse"},
      {1, "mqtt://h", "d", 3, 1, FL_E_INVAL, "keepalive_s"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    o.allow_insecure_http = cases[i].insecure;
    mo = (fl_mqtt_opts){.version = cases[i].version,
                        .broker_url = cases[i].url,
                        .username = cases[i].user,
                        .keepalive_s = cases[i].keepalive};
    g_log[0] = '\0';
    tr.ctx = NULL;
    cr_assert_eq(fl_transport_mqtt(&tr, &o, &mo), cases[i].want, "case %zu", i);
    cr_assert_null(tr.ctx, "case %zu: *out written on failure", i);
    cr_assert(strstr(g_log, cases[i].says) != NULL, "case %zu: log says \"%s\"", i, g_log);
  }
  /* IPv6 literals and mqtts:// (no connection is made yet, so no certificate is needed). */
  o.allow_insecure_http = 0;
  mo = (fl_mqtt_opts){.version = 1, .broker_url = "mqtts://[::1]:8883", .username = "d"};
  cr_assert_eq(fl_transport_mqtt(&tr, &o, &mo), FL_OK, "%s", g_log);
  tr.destroy(tr.ctx);
}
