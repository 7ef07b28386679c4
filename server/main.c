/*
 * fl-coordinator: start-up and graceful shutdown.
 *
 * Start: configuration (parsed, then checked: listen address, TLS files and key file modes,
 * the bootstrap token), signing key, database (waiting for it up to a minute), migrations,
 * the bootstrap admin token (step admin_token: a database or token file error), committer
 * and ticker threads, then the HTTP daemon. Everything that does not need the database is
 * checked before it, so that a typo is reported at once and not after a minute of retries.
 * SIGTERM/SIGINT: stop accepting connections, let in-flight requests finish (uploads among
 * them wait for their group commit), commit whatever is still pending, stop the threads, close.
 *
 * Exit status: 0 after a graceful stop (or --help), 2 for a configuration that is refused
 * (bad option value, unreadable file, listen address that cannot be bound), 1 when start-up
 * fails later (database, ...); the last log line, event=startup_failed, says which and why.
 */
#include <errno.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "rounds/aggregate.h"
#include "admin/adminapi.h"
#include "auth/auth.h"
#include "auth/keys.h"
#include "http/http.h"
#include "store/migrations.h"
#include "registry/models.h"
#include "rounds/round_cache.h"
#include "rounds/rounds.h"
#include "secagg/protocol.h"
#include "store/store_pg.h"
#include "tensor.h"

static int load_or_create_key(fl_srv *s) {
  int err = fl__key_load_pem(&s->key, s->cfg.signing_key);
  if (err == FL_E_IO && access(s->cfg.signing_key, F_OK) != 0) {
    err = fl__key_generate(&s->key);
    if (err == FL_OK)
      err = fl__key_save_pem(s->key, s->cfg.signing_key);
    if (err == FL_OK)
      fl__slog(FL_LOG_INFO, "signing_key_created", "path=%s", fl__slog_str(s->cfg.signing_key));
  }
  if (err == FL_OK)
    err = fl__key_public(s->key, s->pub);
  if (err) {
    fl__slog(FL_LOG_ERROR, "signing_key_failed", "path=%s error=%s",
             fl__slog_str(s->cfg.signing_key), fl__slog_str(fl_strerror(err)));
    return err;
  }
  char hex[2 * FL_PUBKEY_LEN + 1];
  fl__hex(s->pub, sizeof s->pub, hex);
  fl__slog(FL_LOG_INFO, "signing_key_loaded", "public_key=%s", hex);
  return FL_OK;
}

/* Connects (retrying for a minute: the database may start together with us) and migrates. */
static int open_database(fl_srv *s) {
  int err = FL_E_DB;
  for (int i = 0; i < 60 && err != FL_OK; i++) {
    err = fl__pool_new(&s->pool, s->cfg.database_url, s->cfg.db_pool_size);
    if (err != FL_OK)
      sleep(1);
  }
  if (err)
    return err;
  PGconn *c = fl__pool_get(s->pool);
  if (c == NULL)
    return FL_E_DB;
  err = fl__migrate(c);
  fl__pool_put(s->pool, c);
  return err;
}

/* The bootstrap admin token (auth.h): applied when configured and new, generated into
 * --admin-token-out when none is configured and the database has no token. A step of its own
 * so that an unwritable token file is not reported as a database failure. */
static int bootstrap_token(fl_srv *s) {
  PGconn *c = fl__pool_get(s->pool);
  if (c == NULL)
    return FL_E_DB;
  int err = fl__auth_bootstrap(s, c) ? FL_E_IO : FL_OK;
  fl__pool_put(s->pool, c);
  return err;
}

/* Starts every part in order; *step names the one that failed. */
static int start(fl_srv *s, const char **step) {
  int err = fl__metrics_new(&s->metrics);
  if (err == FL_OK && (*step = "signing_key"))
    err = load_or_create_key(s);
  if (err == FL_OK && (*step = "database"))
    err = open_database(s);
  if (err == FL_OK && (*step = "admin_token"))
    err = bootstrap_token(s);
  if (err == FL_OK && (*step = "models"))
    err = fl__models_new(&s->models);
  if (err == FL_OK && (*step = "caches"))
    err = fl__nonces_new(&s->nonces);
  if (err == FL_OK && (*step = "caches"))
    err = fl__round_cache_new(&s->round_cache);
  if (err == FL_OK && (*step = "caches"))
    err = fl__keys_new(&s->keys);
  if (err == FL_OK && (*step = "aggregator"))
    err = fl__agg_new(&s->agg, s);
  if (err == FL_OK && (*step = "rounds"))
    err = fl__rounds_new(&s->rounds, s);
  if (err == FL_OK && (*step = "aggregator"))
    err = fl__agg_start(s->agg);
  if (err == FL_OK && (*step = "rounds"))
    err = fl__rounds_start(s->rounds);
  if (err == FL_OK && (*step = "http")) {
    (void)fl__ui_dir(s); /* a missing dashboard is logged at start, not at its first request */
    err = fl__http_start(s);
  }
  return err;
}

static void shutdown_all(fl_srv *s) {
  atomic_store(&s->ready, false);
  fl__http_quiesce(s);
  fl__secagg_wake_all(); /* long polls answered now: no request is parked past this */
  fl__http_stop(s);      /* waits for in-flight requests */
  fl__agg_stop(s->agg);  /* commits what is left, answers every waiter */
  fl__rounds_stop(s->rounds);
  fl__agg_free(s->agg);
  fl__rounds_free(s->rounds);
  fl__models_free(s->models);
  fl__round_cache_free(s->round_cache);
  fl__keys_free(s->keys);
  fl__nonces_free(s->nonces);
  fl__pool_free(s->pool);
  fl__key_free(s->key);
  fl__metrics_free(s->metrics);
}

int main(int argc, char **argv) {
  static fl_srv srv;
  sigset_t set;
  int sig = 0;
  int rc = fl__config_parse(&srv.cfg, argc, argv);
  if (rc != 0)
    return rc > 0 ? 0 : 2;
  fl__slog_init(srv.cfg.log_level, srv.cfg.replica_id, srv.cfg.log_json);
  char why[1024];
  if (fl__config_check(&srv.cfg, why, sizeof why)) {
    fl__slog(FL_LOG_ERROR, "startup_failed", "step=config error=%s", fl__slog_str(why));
    return 2;
  }
  /* Request threads fold concurrently and each fold is a bandwidth-bound pass: OpenBLAS worker
   * threads would only spin in sched_yield between calls (half of the coordinator's CPU at
   * 500 uploads/s, benches/RESULTS.md "Ingest"). */
  fl__tensor_set_threads(1);
  /* Every upload allocates a body and its decoded copies of hundreds of KB. With glibc's
   * defaults these come from fresh mmaps or trimmed heap and page-fault in again on every
   * request (about 14% of the coordinator's CPU per 100k-parameter upload, benches/RESULTS.md
   * "Ingest"); keep freed memory for the next request instead. */
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 64 << 20);
  /* Block the stop signals before any thread starts so that every thread inherits the mask
   * and only sigwait() below sees them. */
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, NULL);
  signal(SIGPIPE, SIG_IGN);
  atomic_init(&srv.ready, false);
  atomic_init(&srv.upload_rx_ms, 0);
  const char *step = "metrics";
  int err = start(&srv, &step);
  if (err != FL_OK) {
    fl__slog(FL_LOG_ERROR, "startup_failed", "step=%s error=%s%s", step,
             fl__slog_str(fl_strerror(err)),
             strcmp(step, "database") == 0
                 ? " hint=\"see the db_connect_failed and db_error lines above\""
                 : "");
    shutdown_all(&srv);
    return 1;
  }
  atomic_store(&srv.ready, true);
  fl__slog(FL_LOG_INFO, "started", NULL);
  while (sigwait(&set, &sig) != 0)
    ;
  fl__slog(FL_LOG_INFO, "stopping", "signal=%d", sig);
  shutdown_all(&srv);
  fl__slog(FL_LOG_INFO, "stopped", NULL);
  return 0;
}
