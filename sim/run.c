/*
 * The rounds of an fl-sim run and what is reported about them.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "admin.h"
#include "drift.h"
#include "eval.h"
#include "export.h"
#include "fetch.h"
#include "fl/client.h"
#include "fl/err.h"
#include "fleet.h"
#include "metrics.h"
#include "report.h"
#include "run_ctx.h"
#include "sim.h"

#define POLL_MS 50

static double mono_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double wall_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* CPU seconds of this process alone (all its threads; not the coordinator or PostgreSQL it
 * started): the machine is shared, so wall time says little about fl-sim's own cost. */
static double self_cpu_s(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
         (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

/* Peak resident set of this process in KB (VmHWM), 0 if /proc cannot tell. */
static long self_hwm_kb(void) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[128];
  long kb = 0;
  while (f != NULL && fgets(line, sizeof line, f) != NULL)
    if (sscanf(line, "VmHWM: %ld kB", &kb) == 1)
      break;
  if (f != NULL)
    fclose(f);
  return kb;
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* --drift-detect: the fleet serves each new version (channel "stable"), whose service
 * statistics the coordinator tests against the version's reference (docs/DRIFT.md). */
static void deploy(run_ctx *x, uint64_t version) {
  json_t *body = json_pack("{s:I, s:s, s:I}", "model_id", (json_int_t)x->model_id, "name", "stable",
                           "version", (json_int_t)version);
  json_t *ans = NULL;
  if (body == NULL || sim_admin_call(x->admin, "POST", "/admin/v1/channels", body, &ans) != FL_OK)
    fprintf(stderr, "fl-sim: cannot deploy version %llu: %s\n", (unsigned long long)version,
            sim_admin_errmsg(x->admin));
  json_decref(body);
  json_decref(ans);
}

/* Reads the coordinator's counters; 0 when it cannot (the breakdown is then left out). */
static int coord_stats(run_ctx *x, sim_coord_stats *out) {
  const char *text;
  return sim_admin_get_text(x->admin, "/metrics", &text) == FL_OK &&
         sim_coord_stats_parse(out, text) == FL_OK;
}

/* The detector on the drifted cohort and on the rest, printed; into coh[4]: [0], [1] at the
 * fleet's threshold thr, [2], [3] at the 99th percentile of the cohort's own calibration
 * scores c (a version served to one cohort only, as a retrained one is, calibrates on it). */
static int cohort_figures(run_ctx *x, const float *s, const float *c, double thr,
                          sim_detection *coh) {
  const sim_data *d = x->d;
  int rc = FL_OK;
  for (int k = 0; k < 4 && rc == FL_OK; k++) {
    double t = k < 2 ? thr
                     : sim_cohort_quantile(c, x->o->devices, d->calib_per_device, d->drifted,
                                           k == 2, 0.99);
    rc = sim_cohort_detection(s, d->test.labels, x->o->devices, d->test_per_device, d->drifted,
                              k % 2 == 0, t, &coh[k]);
  }
  if (rc == FL_OK)
    printf(
        "  drifted cohort (%zu motors): AUC %.4f F1 %.3f (P %.3f R %.3f), own threshold F1 %.3f; "
        "others: AUC %.4f F1 %.3f, own threshold F1 %.3f\n",
        d->n_drifted, coh[0].auc, coh[0].f1, coh[0].precision, coh[0].recall, coh[2].f1, coh[1].auc,
        coh[1].f1, coh[3].f1);
  return rc;
}

/* Downloads version v and scores it on the held-out data; by cohort into coh[2] when the
 * scenario drifts and coh is not NULL. */
static int evaluate(run_ctx *x, uint64_t version, sim_round_row *row, sim_detection *coh) {
  double t0 = mono_s();
  int rc = sim_fetch_version(x->url, x->obs_key, x->obs_id, x->coord_pub, x->model_id, version,
                             x->model, NULL);
  row->accuracy = row->loss = row->auc = NAN;
  if (rc != FL_OK) {
    fprintf(stderr, "fl-sim: cannot download version %llu: %s\n", (unsigned long long)version,
            fl_strerror(rc));
    return rc;
  }
  const sim_data *d = x->d;
  if (!d->anomaly) {
    rc = sim_eval_dataset(x->model, &d->test, &row->loss, &row->accuracy);
  } else {
    float *s = malloc(d->test.n * sizeof(float)), *c = malloc(d->calib.n * sizeof(float));
    rc = s && c ? sim_recon_errors(x->model, &d->test, s) : FL_E_NOMEM;
    if (rc == FL_OK)
      rc = sim_recon_errors(x->model, &d->calib, c);
    if (rc == FL_OK) {
      double sum = 0;
      for (size_t i = 0; i < d->test.n; i++)
        sum += s[i];
      row->loss = sum / (double)d->test.n;
      row->auc = sim_auc(s, d->test.labels, d->test.n);
      /* Alarm above the 99th percentile of normal calibration data: a 1% false-alarm budget.
       * Accuracy reports the detector's recall at that threshold. */
      double thr = sim_quantile(c, d->calib.n, 0.99), prec, rec;
      sim_precision_recall(s, d->test.labels, d->test.n, thr, &prec, &rec);
      row->accuracy = rec;
      printf("  detection at the 99th percentile of normal: precision %.3f recall %.3f\n", prec,
             rec);
      if (d->drifted != NULL && coh != NULL)
        rc = cohort_figures(x, s, c, thr, coh);
    }
    free(s);
    free(c);
  }
  x->eval_s += mono_s() - t0;
  return rc;
}

/* Waits for round_id to close, showing progress. FL_E_TIMEOUT past the deadline + slack; a
 * secure-aggregation round has a deadline per phase (keys, shares, masked, unmask), and a phase
 * with a dropout lasts all of it. */
static int wait_round(run_ctx *x, uint64_t round_id, int r, sim_progress *pg, double t_start,
                      sim_round_state *st) {
  double limit = (x->o->secure_aggregation != NULL ? 4 : 1) * x->o->deadline_s + 120.0;
  int lost = 0;
  for (;;) {
    if (sim_stop_requested) {
      fprintf(stderr, "\nfl-sim: interrupted\n");
      return FL_E_STATE;
    }
    int rc = sim_admin_round(x->admin, round_id, st);
    /* A poll lost in a busy machine's network stack must not end an hour-long run: only
     * several in a row do, or a refusal. */
    if (rc == FL_E_TRANSPORT && ++lost < 5) {
      fprintf(stderr, "fl-sim: %s (retrying)\n", sim_admin_errmsg(x->admin));
      sleep_ms(1000);
      continue;
    }
    if (rc != FL_OK) {
      fprintf(stderr, "fl-sim: %s\n", sim_admin_errmsg(x->admin));
      return rc;
    }
    lost = 0;
    /* Closed with a new version, or abandoned/stopped without one: either way it is over. */
    if (st->result_version != 0 || (st->state[0] != '\0' && strcmp(st->state, "open") != 0))
      return FL_OK;
    sim_fleet_counts c;
    sim_fleet_counts_get(x->fleet, &c);
    double t = mono_s() - t_start;
    sim_progress_update(pg, r, x->o->rounds, (size_t)c.finished, x->o->devices, t, mono_s());
    if (t > limit)
      return FL_E_TIMEOUT;
    sleep_ms(POLL_MS);
  }
}

/* The round after `prev`: the coordinator opens it when prev closes (the next one by id: an
 * async plan's buffers may close faster than the polls), of this plan (not a drift retraining
 * plan's). */
static int next_round_id(run_ctx *x, uint64_t prev, uint64_t *out) {
  for (int i = 0; i < 200 && !sim_stop_requested; i++) {
    if (sim_admin_next_plan_round(x->admin, x->model_id, x->plan_id, prev, out) == FL_OK)
      return FL_OK;
    sleep_ms(POLL_MS);
  }
  return FL_E_TIMEOUT;
}

static uint64_t reason_count(const sim_net_stats *s, const char *reason) {
  for (int i = 0; i < SIM_MAX_REASONS && s->reasons[i][0]; i++)
    if (strcmp(s->reasons[i], reason) == 0)
      return s->reason_count[i];
  return 0;
}

/* Why round r gave no version: the coordinator's side, then what the devices went through
 * (counts from b to a). A run that trains nothing must not look like a success. */
static void explain_no_version(run_ctx *x, int r, const sim_round_state *st,
                               const sim_fleet_counts *b, const sim_fleet_counts *a) {
  fprintf(stderr, "fl-sim: round %d ended without a new version: %s with %u update%s accepted", r,
          st->state[0] ? st->state : "closed", st->accepted, st->accepted == 1 ? "" : "s");
  if (strcmp(st->state, "abandoned") == 0)
    fprintf(stderr, ", fewer than the %u needed by the deadline", x->min_participants);
  fputc('\n', stderr);
  uint64_t up = a->uploaded - b->uploaded, failed = a->failed - b->failed;
  uint64_t dropped = a->dropped - b->dropped;
  /* a->finished counts this round's devices; the others had not heard back when it ended. */
  char unfinished[48] = "";
  if (x->o->devices > a->finished)
    snprintf(unfinished, sizeof(unfinished), ", %llu unfinished",
             (unsigned long long)(x->o->devices - a->finished));
  if (up == 0 && st->accepted == 0 && failed + dropped > 0)
    fprintf(stderr, "fl-sim: every device failed round %d (%llu failed, %llu dropped out%s)\n", r,
            (unsigned long long)failed, (unsigned long long)dropped, unfinished);
  else
    fprintf(stderr,
            "fl-sim: devices in round %d: %llu uploaded, %llu not folded (target reached), %llu "
            "not folded (round closed), %llu failed, %llu dropped out%s\n",
            r, (unsigned long long)up, (unsigned long long)(a->not_folded - b->not_folded),
            (unsigned long long)(a->closed - b->closed), (unsigned long long)failed,
            (unsigned long long)dropped, unfinished);
  for (int e = 0; e < 32; e++)
    if (a->failed_by_err[e] > b->failed_by_err[e])
      fprintf(stderr, "  failed: %s x %llu\n", fl_strerror(e),
              (unsigned long long)(a->failed_by_err[e] - b->failed_by_err[e]));
  for (int i = 0; i < SIM_MAX_REASONS && a->net.reasons[i][0]; i++) {
    uint64_t n = a->net.reason_count[i] - reason_count(&b->net, a->net.reasons[i]);
    if (n > 0)
      fprintf(stderr, "  refused by the coordinator: %s x %llu\n", a->net.reasons[i],
              (unsigned long long)n);
  }
  x->explained = 1;
}

/* --export-learning: x->model holds the initial version just downloaded (have_initial). */
static int export_learning(const run_ctx *x, int have_initial) {
  if (x->o->export_dir == NULL)
    return FL_OK;
  char msg[512] = "the initial model could not be downloaded";
  int rc = have_initial ? sim_export_learning(
                              x->o->export_dir, x->o, &x->d->spec, fl__model_params_const(x->model),
                              fl__model_num_params(x->model), &x->d->part, msg, sizeof(msg))
                        : FL_E_STATE;
  if (rc != FL_OK)
    fprintf(stderr, "fl-sim: --export-learning: %s\n", msg);
  return rc;
}

static int run_rounds(run_ctx *x, uint64_t round_id) {
  sim_progress pg;
  sim_progress_init(&pg, stdout);
  char csv_path[512];
  snprintf(csv_path, sizeof(csv_path), "%s/rounds.csv", x->o->out_dir);
  FILE *csv = fopen(csv_path, "w");
  if (csv == NULL)
    return FL_E_IO;
  sim_csv_header(csv);
  /* The untrained model's score: what the rounds' figures are to be read against. */
  sim_round_row init = {0};
  uint64_t version = x->initial_version;
  int have_initial =
      evaluate(x, x->initial_version, &init, x->cohort ? x->cohort[0] : NULL) == FL_OK;
  if (have_initial)
    printf("initial model (version %llu): %s %.4f loss %.4f\n",
           (unsigned long long)x->initial_version, x->d->anomaly ? "AUC" : "accuracy",
           x->d->anomaly ? init.auc : init.accuracy, init.loss);
  int rc = export_learning(x, have_initial);
  sim_fleet_counts before;
  sim_fleet_counts_get(x->fleet, &before);
  double drift_t0 = 0;
  for (int r = 1; r <= x->o->rounds && rc == FL_OK; r++) {
    x->have_stats = coord_stats(x, &x->stats);
    if (r == x->o->drift_round && x->d->drifted != NULL) {
      /* From this round on the drifted motors train on, and are tested on, shifted data; the
       * version they have is scored on it first: the drop before any retraining. */
      sim_data_drift(x->d);
      printf(
          "drift: %zu of %zu motors (%s) from round %d; version %llu (round %d's) on the "
          "drifted data:\n",
          x->d->n_drifted, x->o->devices, x->o->drift_kind, r, (unsigned long long)version, r - 1);
      sim_round_row tmp = {0};
      x->have_at_drift = evaluate(x, version, &tmp, x->at_drift) == FL_OK;
    }
    double t0 = mono_s(), w0 = wall_s(), cpu0 = self_cpu_s();
    if (r == x->o->drift_round)
      drift_t0 = t0;
    sim_fleet_next_round(x->fleet);
    sim_round_state st;
    rc = wait_round(x, round_id, r, &pg, t0, &st);
    if (rc != FL_OK)
      break;
    double t1 = mono_s(), w1 = wall_s(), cpu1 = self_cpu_s();
    sim_coord_stats after, d;
    if (x->have_stats && coord_stats(x, &after)) {
      sim_coord_stats_sub(&d, &after, &x->stats);
      sim_coord_stats_print(stdout, "  coordinator: ", &d);
    }
    sim_fleet_counts now;
    sim_fleet_counts_get(x->fleet, &now);
    sim_round_row *row = &x->rows[x->n_rows++];
    row->round = r;
    row->participants = st.accepted;
    row->refused = (size_t)(now.net.refused - before.net.refused);
    row->bytes_up = now.net.bytes_up - before.net.bytes_up;
    row->bytes_down = now.net.bytes_down - before.net.bytes_down;
    row->seconds = t1 - t0;
    /* Training ran on the pool's threads side by side: its wall share is the sum / threads. */
    row->train_s = (now.train_s - before.train_s) / sim_fleet_train_threads(x->fleet);
    double last_ack = now.last_ack_ms / 1000.0;
    row->aggregation_s = last_ack > w0 && last_ack < w1 ? w1 - last_ack : 0;
    row->network_s = fmax(0, row->seconds - row->train_s - row->aggregation_s);
    uint64_t dev_rounds = now.uploaded - before.uploaded;
    double train_cpu = now.train_cpu_s - before.train_cpu_s;
    if (dev_rounds > 0)
      printf(
          "  fl-sim CPU: %.2f ms per device round (%.1f s for %llu uploads), training %.2f ms "
          "of it; peak RSS %ld KB\n",
          (cpu1 - cpu0) * 1e3 / (double)dev_rounds, cpu1 - cpu0, (unsigned long long)dev_rounds,
          train_cpu * 1e3 / (double)dev_rounds, self_hwm_kb());
    if (st.result_version != 0) {
      x->n_versions++;
      version = st.result_version;
      evaluate(x, st.result_version, row, x->cohort ? x->cohort[r] : NULL);
      if (x->o->drift_detect)
        deploy(x, st.result_version);
    } else {
      row->accuracy = row->loss = row->auc = NAN;
      explain_no_version(x, r, &st, &before, &now);
      rc = FL_E_STATE;
    }
    before = now;
    if (x->o->drift_detect)
      sim_drift_poll(x->admin, x->model_id, r, x->o->drift_round,
                     drift_t0 > 0 ? mono_s() - drift_t0 : 0, &x->drift, stdout);
    sim_csv_row(csv, row);
    sim_progress_round(&pg, row, x->o->rounds);
    if (rc == FL_OK && r < x->o->rounds)
      rc = next_round_id(x, round_id, &round_id);
  }
  if (x->drift.rollout_version != 0 && x->cohort != NULL) {
    sim_round_row tmp = {0};
    printf("drift: the retrained version %llu (rolled out to site " SIM_DRIFT_SITE "):\n",
           (unsigned long long)x->drift.rollout_version);
    x->have_retrained = evaluate(x, x->drift.rollout_version, &tmp, x->retrained) == FL_OK;
  }
  fclose(csv);
  return rc;
}

/* An async plan (docs/API.md): buffers of K = --buffer-size (else the participants) updates,
 * which participants and min_participants must equal; every enrolled device may hold a task
 * (max_concurrency), as in FedBuff's setting. -1 on allocation failure. */
static int async_fields(const sim_options *o, json_t *j, uint32_t participants, size_t enrolled) {
  uint32_t k = o->buffer_size ? o->buffer_size : participants;
  size_t conc = enrolled > k ? enrolled : k;
  int bad = json_object_set_new(j, "mode", json_string("async"));
  bad |= json_object_set_new(j, "buffer_size", json_integer(k));
  bad |= json_object_set_new(j, "participants", json_integer(k));
  bad |= json_object_set_new(j, "min_participants", json_integer(k));
  bad |= json_object_set_new(j, "max_staleness", json_integer(o->max_staleness));
  bad |= json_object_set_new(j, "max_concurrency", json_integer((json_int_t)conc));
  json_object_del(j, "over_selection"); /* an async plan ignores it */
  return bad ? -1 : 0;
}

static int create_plan(run_ctx *x, size_t enrolled, uint64_t *round_id) {
  const sim_options *o = x->o;
  uint32_t participants = o->participants ? o->participants : (uint32_t)enrolled;
  sim_plan p = {
      .participants = participants,
      /* Half: dropouts and refused devices must not stall a round. */
      .min_participants = o->min_participants ? o->min_participants : (participants + 1) / 2,
      .over_selection = o->over_selection,
      .deadline_s = o->deadline_s,
      .local_epochs = o->epochs,
      .batch_size = o->batch,
      .learning_rate = o->lr,
      .momentum = o->momentum,
      .weight_decay = o->weight_decay,
      .prox_mu = o->prox_mu,
      .clip_norm = o->clip_norm,
      .encoding = o->encoding,
      .server_optimizer = o->server_optimizer,
      .server_lr = o->server_lr,
      .rounds = (uint32_t)o->rounds};
  x->min_participants = p.min_participants;
  uint64_t plan_id = 0;
  /* The aggregator's fields go on top of the common plan; the coordinator validates them
   * (rule against min_participants) and answers 400 bad_plan with why. */
  json_t *j = fl_sup_plan_json(&p);
  if (j != NULL && o->drift_detect && sim_drift_plan(j, o) != FL_OK) {
    json_decref(j);
    j = NULL;
  }
  /* Fair selection (docs/API.md 2.1) when only some devices train each round: without it the
   * devices that just uploaded win the next round's first check-ins. */
  double window = strcmp(o->mode, "async") == 0 ? 0.0 /* async plans have none */
                  : o->selection_window_s >= 0  ? o->selection_window_s
                  : participants < enrolled     ? 1.0
                                                : 0.0;
  if (j != NULL && window > 0 &&
      json_object_set_new(j, "selection_window_s", json_real(window)) != 0) {
    json_decref(j);
    j = NULL;
  }
  /* DP fields only when asked, so that older coordinators keep working without them. */
  if (j != NULL &&
      ((o->noise_multiplier > 0 &&
        json_object_set_new(j, "noise_multiplier", json_real(o->noise_multiplier)) != 0) ||
       (o->clip_quantile > 0 &&
        json_object_set_new(j, "clip_target_quantile", json_real(o->clip_quantile)) != 0))) {
    json_decref(j);
    j = NULL;
  }
  uint32_t sa_t = 0, sa_k = 0;
  double sa_drop[SIM_SA_PHASES];
  char why[160];
  if (j != NULL && sim_secagg_parse(o, &sa_t, &sa_k, sa_drop, why, sizeof why) == FL_OK &&
      sa_t > 0 &&
      json_object_set_new(j, "secure_aggregation",
                          json_pack("{s:i, s:i}", "threshold", (json_int_t)sa_t, "neighbors",
                                    (json_int_t)sa_k)) != 0) {
    json_decref(j);
    j = NULL;
  }
  if (j != NULL && strcmp(o->mode, "async") == 0 && async_fields(o, j, participants, enrolled)) {
    json_decref(j);
    j = NULL;
  }
  int rc = FL_E_NOMEM;
  if (j != NULL && sim_plan_cohort_eval(j, o->cohort, o->eval_share, o->eval_count, o->eval_by)) {
    json_decref(j);
    j = NULL;
  }
  bool robust = strcmp(o->aggregator, "fedavg") != 0; /* else as before, for older coordinators */
  if (j != NULL && !robust)
    rc = fl_sup_admin_create_plan(x->admin, x->model_id, j, &plan_id, round_id);
  else if (j != NULL && json_object_set_new(j, "aggregator", json_string(o->aggregator)) == 0 &&
           json_object_set_new(j, "trim_fraction", json_real(o->trim_fraction)) == 0 &&
           json_object_set_new(j, "byzantine", json_integer(o->byzantine)) == 0 &&
           json_object_set_new(j, "krum_select", json_integer(o->krum_select)) == 0)
    rc = fl_sup_admin_create_plan(x->admin, x->model_id, j, &plan_id, round_id);
  json_decref(j);
  if (rc != FL_OK)
    fprintf(stderr, "fl-sim: cannot create the plan: %s\n", sim_admin_errmsg(x->admin));
  x->plan_id = plan_id;
  return rc;
}

/* --model-name, or one of its own for each run: a coordinator keeps the models of earlier
 * runs (names are unique there), and a second run against it must not collide. */
static void model_name(const run_ctx *x, char *out, size_t cap) {
  if (x->o->model_name != NULL) {
    snprintf(out, cap, "%s", x->o->model_name);
    return;
  }
  char when[32];
  time_t t = time(NULL);
  struct tm tm;
  gmtime_r(&t, &tm);
  strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
  snprintf(out, cap, "fl-sim %s %s pid %ld", x->d->name, when, (long)getpid());
}

/* Model, tokens, devices, enrollment; then the observer key. */
static int set_up(run_ctx *x, const char *work_dir, size_t *enrolled) {
  const sim_options *o = x->o;
  char name[256];
  model_name(x, name, sizeof(name));
  int rc = sim_admin_create_model(x->admin, name, &x->d->spec, o->seed, &x->model_id,
                                  &x->initial_version);
  if (rc != FL_OK) {
    fprintf(stderr, "fl-sim: cannot create the model \"%s\": %s\n", name,
            sim_admin_errmsg(x->admin));
    return rc;
  }
  printf("model %llu \"%s\"\n", (unsigned long long)x->model_id, name);
  rc = sim_admin_public_key(x->admin, x->coord_pub);
  if (rc != FL_OK) {
    fprintf(stderr, "fl-sim: %s\n", sim_admin_errmsg(x->admin));
    return rc;
  }
  char **tokens = NULL;
  /* --drift-detect enrolls devices by site (drift.h); --labels by share (mix.h): exclusive. */
  rc = o->drift_detect ? sim_drift_tokens(x->admin, x->d, o->devices, &tokens)
                       : sim_admin_tokens_mixed(x->admin, &x->labels, o->seed, o->devices, &tokens);
  if (rc != FL_OK) {
    fprintf(stderr, "fl-sim: cannot get enrollment tokens: %s\n", sim_admin_errmsg(x->admin));
    return rc;
  }
  int kinds = sim_options_bad_kinds(o->bad_kinds);
  uint32_t sa_t, sa_k;
  double sa_drop[SIM_SA_PHASES];
  char why[160];
  if (sim_secagg_parse(o, &sa_t, &sa_k, sa_drop, why, sizeof why) != FL_OK)
    return FL_E_INVAL; /* checked with the options */
  sim_fleet_opts fo = {
      .broker = strcmp(o->transport, "mqtt") == 0 ? o->broker : NULL,
      .n_devices = o->devices,
      .threads = o->threads,
      .train_threads = o->train_threads,
      .max_inflight = o->max_inflight,
      .url = x->url,
      .work_dir = work_dir,
      .train = &x->d->train,
      .part = &x->d->part,
      .labelled = !x->d->anomaly,
      .dropout = o->dropout,
      .net_fail = o->net_fail,
      .straggler_frac = o->straggler_frac,
      .straggler_ms = o->straggler_ms,
      .offline_share = o->offline_share,
      .offline_mean_ms = o->offline_mean_s * 1000.0,
      .continuous = strcmp(o->mode, "async") == 0,
      .bad_frac = o->bad_frac,
      .bad_kinds = kinds > 0 ? (unsigned)kinds : 0,
      .clip_norm = o->clip_norm,
      .sa_drop = {sa_drop[0], sa_drop[1], sa_drop[2], sa_drop[3]},
      .seed = o->seed,
      .model_id = x->model_id,
      .service = o->drift_detect ? &x->d->calib : NULL,
      .service_per_device = x->d->calib_per_device,
      .conditions = &x->conds,
      /* federated evaluation: 50 held-out examples per device */
      .holdout = o->eval_share > 0 || o->eval_count > 0 || o->drift_detect ? &x->d->test : NULL,
      /* --drift-detect: each motor's own held-out windows, for the gate of
       * the retrained version's rollout (docs/DRIFT.md 4) */
      .holdout_per_device = o->drift_detect ? x->d->test_per_device : 50};
  rc = kinds < 0 ? FL_E_INVAL : sim_fleet_new(&x->fleet, &fo);
  double t0 = mono_s();
  if (rc == FL_OK)
    rc = sim_fleet_start(x->fleet, tokens);
  if (rc == FL_OK) {
    *enrolled = sim_fleet_wait_enrolled(x->fleet);
    printf("%zu of %zu devices enrolled in %.1f s\n", *enrolled, o->devices, mono_s() - t0);
    rc = *enrolled > 0 ? FL_OK : FL_E_NOT_ENROLLED;
  }
  sim_admin_free_tokens(tokens, o->devices);
  const char *key_path;
  if (rc == FL_OK)
    rc = sim_fleet_observer(x->fleet, &x->obs_id, &key_path);
  if (rc == FL_OK)
    rc = fl__key_load_pem(&x->obs_key, key_path);
  if (rc == FL_OK)
    rc = fl__model_new(&x->model, &x->d->spec, NULL);
  if (rc != FL_OK)
    fprintf(stderr, "fl-sim: set-up failed: %s\n", fl_strerror(rc));
  return rc;
}

/* With an evaluation policy, the last version's campaign opens when the last round closes,
 * after most devices have checked in: one more pass of check-ins (the plan is done, nobody
 * trains) lets its sample evaluate it and report. Devices told to wait come back within 3 s
 * (record_result in fleet.c), so 5 s give every one a check-in. */
static void evaluation_pass(run_ctx *x) {
  sim_fleet_next_round(x->fleet);
  for (int i = 0; i < 25 && !sim_stop_requested; i++)
    sleep_ms(200);
}

static void plots(run_ctx *x) {
  char svg[512], png[512], csv[512], title[128];
  snprintf(svg, sizeof(svg), "%s/accuracy.svg", x->o->out_dir);
  snprintf(png, sizeof(png), "%s/accuracy.png", x->o->out_dir);
  snprintf(csv, sizeof(csv), "%s/rounds.csv", x->o->out_dir);
  snprintf(title, sizeof(title), "%s, %zu devices", x->d->name, x->o->devices);
  sim_plot_svg(svg, x->rows, (size_t)x->n_rows, title, x->d->anomaly);
  int rc = sim_plot_png(png, csv, title, x->d->anomaly);
  printf("\nper-round CSV: %s\nplot: %s%s%s\n", csv, svg, rc == FL_OK ? " and " : "",
         rc == FL_OK ? png : "");
}

int sim_run(const sim_options *o, const sim_data *d, const char *url, const char *token,
            const char *work_dir) {
  run_ctx x = {.o = o, .d = d, .url = url};
  x.rows = calloc((size_t)(o->rounds > 0 ? o->rounds : 1), sizeof(*x.rows));
  int rc = x.rows ? sim_admin_new(&x.admin, url, token) : FL_E_NOMEM;
  if (rc == FL_OK && d->drifted != NULL) {
    x.cohort = calloc((size_t)o->rounds + 1, sizeof(*x.cohort));
    if (x.cohort == NULL)
      rc = FL_E_NOMEM;
  }
  double t0 = mono_s();
  size_t enrolled = 0;
  uint64_t round_id = 0;
  char msg[160];
  if (rc == FL_OK && (sim_mix_parse_labels(&x.labels, o->labels, msg, sizeof msg) ||
                      sim_mix_parse_conditions(&x.conds, o->conditions, msg, sizeof msg)))
    rc = FL_E_INVAL; /* checked with the options already */
  if (rc == FL_OK)
    rc = set_up(&x, work_dir, &enrolled);
  if (rc == FL_OK)
    rc = create_plan(&x, enrolled, &round_id);
  if (rc == FL_OK) {
    rc = run_rounds(&x, round_id);
    if (rc != FL_OK && !x.explained)
      fprintf(stderr, "fl-sim: rounds stopped: %s\n", fl_strerror(rc));
    if (rc == FL_OK && (o->eval_share > 0 || o->eval_count > 0))
      evaluation_pass(&x);
    sim_run_summary(&x, mono_s() - t0);
    plots(&x);
  }
  sim_fleet_free(x.fleet);
  fl__model_free(x.model);
  fl__key_free(x.obs_key);
  sim_admin_free(x.admin);
  free(x.rows);
  free(x.cohort);
  return rc;
}
