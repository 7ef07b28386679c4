/*
 * fl-sim: a fleet of virtual devices running libflclient against a real coordinator over
 * loopback HTTP, with real signatures and a real PostgreSQL (issue 5).
 *
 * Order of a run: load or generate the data and split it over the devices; start a throwaway
 * PostgreSQL and a coordinator unless --url names one; create the model through the admin API;
 * create the devices and enroll them with one-time tokens; create the training plan; then,
 * round by round, let the devices train and upload, wait for the coordinator to close the
 * round, download the new version and evaluate it on the held-out test set.
 */
#include <cblas.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "admin.h"
#include "coord.h"
#include "fleet.h"
#include "mqtt.h"
#include "fl/err.h"
#include "options.h"
#include "flsupport/guard.h"
#include "flsupport/proc.h"
#include "pg.h"
#include "report.h"
#include "sim.h"

volatile sig_atomic_t sim_stop_requested;

static void on_stop_signal(int sig) {
  (void)sig;
  sim_stop_requested = 1;
}

/* SIGINT, SIGTERM, SIGHUP and SIGPIPE (the reader of our output went away: `fl-sim | head`)
 * end the run early and cleanly: the services are stopped and the work directory removed on
 * the way out. Without SA_RESTART, so that the main thread's sleeps end early; SA_RESETHAND,
 * so that a second ^C is not caught. SIGPIPE stays caught: every later write to the closed
 * pipe raises it again and must not kill us before the clean-up (writes fail with EPIPE).
 * Deaths that no handler sees (SIGKILL, a crash) are the guard's (flsupport/guard.h). */
static void catch_stop_signals(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof(sa));
  sa.sa_handler = on_stop_signal;
  sa.sa_flags = SA_RESETHAND;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGHUP, &sa, NULL);
  sa.sa_flags = 0;
  sigaction(SIGPIPE, &sa, NULL);
}

/* Services: the coordinator's URL and admin token, started here or given. */
typedef struct services {
  sim_pg pg;
  sim_coord coord;
  const char *url, *token;
  char *coord_args; /* split copy of --coordinator-args, pointed into by the coordinator argv */
  pid_t bridge;     /* --bridge-bin */
} services;

/* --transport mqtt --bridge-bin: the bridge between the broker and the coordinator in use. */
static int start_bridge(services *s, const sim_options *o, const char *work_dir) {
  if (strcmp(o->transport, "mqtt") != 0 || o->bridge_bin == NULL)
    return FL_OK;
  sim_mqtt_broker b;
  char msg[160];
  if (sim_mqtt_parse(o->broker, &b, msg, sizeof msg) != FL_OK)
    return FL_E_INVAL;
  return sim_mqtt_bridge_start(o->bridge_bin, &b, s->url, work_dir, &s->bridge);
}

static int start_services(services *s, const sim_options *o, const char *work_dir) {
  memset(s, 0, sizeof(*s));
  if (o->url != NULL) {
    s->url = o->url;
    s->token = o->admin_token ? o->admin_token : getenv("FL_ADMIN_TOKEN");
    if (s->token == NULL) {
      fprintf(stderr, "fl-sim: --url needs --admin-token or FL_ADMIN_TOKEN\n");
      return FL_E_INVAL;
    }
    return FL_OK;
  }
  const char *db = o->database_url;
  if (db == NULL) {
    printf("starting a throwaway PostgreSQL...\n");
    int rc = sim_pg_start(&s->pg, o->pg_bin);
    if (rc != FL_OK)
      return rc;
    db = s->pg.conninfo;
  }
  printf("starting fl-coordinator...\n");
  /* A fleet round is about throughput, not one upload's latency: gathering uploads for 200 ms
   * per group commit makes about 80 commits of a 1000-device round instead of 450, each of
   * which writes an 800 KB partial sum to PostgreSQL (measured: PostgreSQL's CPU time down by
   * a third; see benches/RESULTS.md, Fleet). */
  char *extra[32] = {"--checkin-interval=500", "--tick=50", "--max-connections=512",
                     "--commit-interval=200"};
  size_t n = 4;
  char *save = NULL;
  s->coord_args = o->coordinator_args ? strdup(o->coordinator_args) : NULL;
  for (char *t = s->coord_args ? strtok_r(s->coord_args, " \t", &save) : NULL; t && n < 31;
       t = strtok_r(NULL, " \t", &save))
    extra[n++] = t;
  extra[n] = NULL;
  int rc = sim_coord_start(&s->coord, o->coordinator_bin, db, work_dir, extra);
  if (rc != FL_OK)
    return rc;
  s->url = s->coord.url;
  s->token = s->coord.admin_token;
  printf("coordinator at %s (log %s)\n", s->url, s->coord.log_path);
  return FL_OK;
}

static void stop_services(services *s) {
  sim_mqtt_bridge_stop(s->bridge);
  sim_coord_stop(&s->coord);
  sim_pg_stop(&s->pg);
  free(s->coord_args);
}

/* A temporary work directory that is not kept is the guard's too: it goes however we end. */
static int make_work_dir(const sim_options *o, char *out, size_t cap) {
  if (o->work_dir != NULL) {
    snprintf(out, cap, "%s", o->work_dir);
    return mkdir(out, 0700) == 0 || access(out, W_OK) == 0 ? FL_OK : FL_E_IO;
  }
  if (fl_sup_mkdtemp(out, cap, "fl-sim-") != FL_OK)
    return FL_E_IO;
  if (!o->keep_work_dir)
    fl_sup_guard_dir(out, true);
  return FL_OK;
}

static void remove_work_dir(const sim_options *o, const char *work_dir) {
  if (o->keep_work_dir || o->work_dir != NULL)
    return;
  fl_sup_rmtree(work_dir);
  fl_sup_guard_dir(work_dir, false);
}

/* Every device round allocates and frees blocks of a model's size (the training copy, its
 * gradient, the delta, the encoded tensors, the wire buffer: 800 KB each for the 2NN). glibc
 * serves blocks that large with fresh mmaps, or trims them off its heaps once freed, so each
 * device round paid page faults and the kernel's zeroing of every page again (10% of fl-sim's
 * CPU, RESULTS.md). A simulator runs thousands of device rounds in one process: freed memory
 * is kept for the next device instead. The peak does not change much, since the exchanges in
 * flight and the training threads hold such blocks at the peak anyway. */
static void keep_freed_memory(void) {
#ifdef __GLIBC__
  mallopt(M_MMAP_THRESHOLD, 64 << 20);
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
#endif
}

int main(int argc, char **argv) {
  sim_options o;
  sim_options_defaults(&o);
  int rc = sim_options_parse(&o, argc, argv);
  if (rc != FL_OK)
    return rc == 1 ? 0 : 2;
  /* The workers are the parallelism: BLAS threads on top would oversubscribe the cores. */
  openblas_set_num_threads(1);
  keep_freed_memory();
  catch_stop_signals();
  /* Before the data and the fleet's threads: the guard is a fork of this process. */
  if (o.url == NULL && fl_sup_guard_start() != FL_OK)
    fprintf(stderr, "fl-sim: no guard process: a crash would leave the services behind\n");
  sim_data data;
  if (sim_data_load(&data, &o) != FL_OK)
    return 1;
  char work_dir[256];
  if (make_work_dir(&o, work_dir, sizeof(work_dir)) != FL_OK ||
      (mkdir(o.out_dir, 0755) != 0 && access(o.out_dir, W_OK) != 0)) {
    fprintf(stderr, "fl-sim: cannot create the work or output directory\n");
    sim_data_free(&data);
    return 1;
  }
  services svc;
  rc = start_services(&svc, &o, work_dir);
  if (rc == FL_OK)
    rc = start_bridge(&svc, &o, work_dir);
  if (rc == FL_OK && sim_stop_requested) /* a signal during the start-up */
    rc = FL_E_STATE;
  else if (rc == FL_OK)
    rc = sim_run(&o, &data, svc.url, svc.token, work_dir);
  else
    fprintf(stderr, "fl-sim: cannot start the services: %s\n", fl_strerror(rc));
  if (rc != FL_OK && svc.coord.pid > 0)
    sim_coord_log_tail(&svc.coord, 15);
  stop_services(&svc);
  remove_work_dir(&o, work_dir);
  sim_data_free(&data);
  return rc == FL_OK ? 0 : 1;
}
