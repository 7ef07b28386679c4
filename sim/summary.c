/*
 * fl-sim's summary table: what a run did, as the rows of one two-column table.
 */
#include <stdarg.h>
#include <stdio.h>

#include <jansson.h>

#include "run_ctx.h"

static void add_row(sim_kv *rows, size_t *n, const char *label, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void add_row(sim_kv *rows, size_t *n, const char *label, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  rows[*n].label = label;
  vsnprintf(rows[*n].value, sizeof(rows[*n].value), fmt, ap);
  va_end(ap);
  (*n)++;
}

/* The privacy the plan spent (GET /admin/v1/plans/{id}, docs/PRIVACY.md) as a summary row. */
static void privacy_row(run_ctx *x, sim_kv *rows, size_t *n) {
  char path[64];
  json_t *j = NULL;
  if (x->o->noise_multiplier <= 0) {
    add_row(rows, n, "privacy", "not private (no central noise)");
    return;
  }
  snprintf(path, sizeof(path), "/admin/v1/plans/%llu", (unsigned long long)x->plan_id);
  if (sim_admin_call(x->admin, "GET", path, NULL, &j) != FL_OK) {
    add_row(rows, n, "privacy", "unknown (%s)", sim_admin_errmsg(x->admin));
    return;
  }
  json_t *pv = json_object_get(j, "privacy"), *e = json_object_get(pv, "epsilon");
  if (json_is_number(e))
    add_row(rows, n, "privacy (epsilon)", "%.3f at delta %g, %lld rounds, q %.4g, z %g",
            json_number_value(e), json_number_value(json_object_get(pv, "delta")),
            (long long)json_integer_value(json_object_get(pv, "rounds")),
            json_number_value(json_object_get(pv, "sampling_rate")),
            json_number_value(json_object_get(pv, "noise_multiplier")));
  else
    add_row(rows, n, "privacy (epsilon)", "unbounded");
  json_decref(j);
}

/* c[0] at the fleet's threshold; with own, also the F1 at the cohort's own threshold. */
static void detection_row(sim_kv *rows, size_t *n, const char *label, const sim_detection *c,
                          const sim_detection *own) {
  if (own != NULL)
    add_row(rows, n, label,
            "AUC %.4f, F1 %.3f (precision %.3f, recall %.3f); own threshold F1 %.3f", c->auc, c->f1,
            c->precision, c->recall, own->f1);
  else
    add_row(rows, n, label, "AUC %.4f, F1 %.3f (precision %.3f, recall %.3f)", c->auc, c->f1,
            c->precision, c->recall);
}

/* --drift-detect: when the drifted site was detected, the false alarms, the retraining. */
static void drift_detect_rows(run_ctx *x, sim_kv *rows, size_t *n) {
  const sim_drift_track *t = &x->drift;
  int R = x->o->drift_round, last = t->retrain_round;
  if (t->event_round > 0)
    add_row(rows, n, "drift detected (site " SIM_DRIFT_SITE ")",
            "after round %d: %d round%s after the drift began, %.1f s; PSI %.3f, %d feature%s",
            t->event_round, t->event_round - R + 1, t->event_round - R + 1 == 1 ? "" : "s",
            t->event_delay_s, t->psi, t->n_features, t->n_features == 1 ? "" : "s");
  else
    add_row(rows, n, "drift detected (site " SIM_DRIFT_SITE ")", "no");
  add_row(rows, n, "other drift events", "%d of versions before the drift, %d of other sites after",
          t->before_events, t->false_events);
  if (x->o->retrain_rounds <= 0)
    return;
  static char label[96];
  if (t->retrain_plan_id != 0)
    add_row(rows, n, "retraining plan", "plan %llu, opened after round %d, %d rounds",
            (unsigned long long)t->retrain_plan_id, t->retrain_round, x->o->retrain_rounds);
  else
    add_row(rows, n, "retraining plan", "none opened");
  add_row(rows, n, "retraining plans of other sites", "%d", t->other_retrains);
  if (last >= 1 && last <= x->n_rows) {
    snprintf(label, sizeof(label), "drifted cohort, round %d (retraining opened)", last);
    detection_row(rows, n, label, &x->cohort[last][0], &x->cohort[last][2]);
  }
  if (t->rollout_id != 0)
    add_row(rows, n, "retrained version's rollout",
            "version %llu, rollout %llu: staged after round %d, whole site after round %d (%s)",
            (unsigned long long)t->rollout_version, (unsigned long long)t->rollout_id,
            t->staged_round, t->rolled_out_round, t->rollout_note);
  else
    add_row(rows, n, "retrained version's rollout", "none (%s)",
            t->rollout_note[0] ? t->rollout_note : "the retraining did not end");
  if (x->have_retrained)
    detection_row(rows, n, "drifted cohort, retrained version", &x->retrained[0], &x->retrained[2]);
  if (t->resolved_round > 0)
    add_row(rows, n, "drift event of site " SIM_DRIFT_SITE, "resolved after round %d",
            t->resolved_round);
}

/* The drifted cohort before the drift, on its drifted data with the old version, and at the
 * end; the others at the end. */
static void drift_rows(run_ctx *x, sim_kv *rows, size_t *n) {
  int R = x->o->drift_round;
  add_row(rows, n, "drifted cohort", "%zu of %zu motors, %s drift from round %d", x->d->n_drifted,
          x->o->devices, x->o->drift_kind, R);
  /* add_row keeps the label pointer: one buffer per row, alive until the table is printed. */
  static char label[4][96];
  if (R - 1 <= x->n_rows) {
    snprintf(label[0], sizeof(label[0]), "drifted cohort, round %d (before drift)", R - 1);
    detection_row(rows, n, label[0], &x->cohort[R - 1][0], &x->cohort[R - 1][2]);
  }
  if (x->have_at_drift) {
    snprintf(label[1], sizeof(label[1]), "drifted cohort, round %d's version, drifted data", R - 1);
    detection_row(rows, n, label[1], &x->at_drift[0], &x->at_drift[2]);
  }
  if (x->n_rows >= R) {
    snprintf(label[2], sizeof(label[2]), "drifted cohort, round %d", x->n_rows);
    detection_row(rows, n, label[2], &x->cohort[x->n_rows][0], &x->cohort[x->n_rows][2]);
    snprintf(label[3], sizeof(label[3]), "other motors, round %d", x->n_rows);
    detection_row(rows, n, label[3], &x->cohort[x->n_rows][1], &x->cohort[x->n_rows][3]);
  }
  if (x->o->drift_detect)
    drift_detect_rows(x, rows, n);
}

/* The coordinator's federated evaluation of the newest version that has reports: loss (and
 * accuracy, anomaly rate) with their 95% intervals and the number of devices. */
static size_t federated_rows(run_ctx *x, sim_kv *rows, size_t n) {
  static char vals[3][96];
  json_t *ev = NULL;
  static const char *const names[3] = {"loss", "accuracy", "anomaly_rate"};
  uint64_t v = 0;
  if (sim_admin_latest_evaluation(x->admin, x->model_id, &v, &ev) != FL_OK) {
    add_row(rows, &n, "federated evaluation", "no reports");
    return n;
  }
  add_row(rows, &n, "federated evaluation", "version %llu, %lld devices", (unsigned long long)v,
          (long long)json_integer_value(json_object_get(ev, "reports")));
  for (int i = 0; i < 3 && n < 62; i++) {
    json_t *s = json_object_get(json_object_get(ev, "metrics"), names[i]);
    if (s == NULL)
      continue;
    snprintf(vals[i], sizeof vals[i], "  %s", names[i]);
    char ci[64] = "no interval from one device";
    if (json_is_number(json_object_get(s, "ci95_low")))
      snprintf(ci, sizeof ci, "95%% CI [%.4f, %.4f]",
               json_number_value(json_object_get(s, "ci95_low")),
               json_number_value(json_object_get(s, "ci95_high")));
    add_row(rows, &n, vals[i], "%.4f, %s, %lld devices",
            json_number_value(json_object_get(s, "mean")), ci,
            (long long)json_integer_value(json_object_get(s, "reports")));
  }
  json_decref(ev);
  return n;
}

void sim_run_summary(run_ctx *x, double total_s) {
  sim_fleet_counts c;
  sim_fleet_counts_get(x->fleet, &c);
  size_t beh[SIM_BEHAVIOUR_COUNT];
  sim_fleet_behaviours(x->fleet, beh);
  sim_kv rows[64];
  size_t n = 0;
  const sim_round_row *last = x->n_rows ? &x->rows[x->n_rows - 1] : NULL;
  add_row(rows, &n, "data", "%s", x->d->name);
  add_row(rows, &n, "devices", "%zu (%zu misbehaving)", x->o->devices,
          x->o->devices - beh[SIM_HONEST]);
  add_row(rows, &n, "rounds with a new version", "%d of %d", x->n_versions, x->o->rounds);
  privacy_row(x, rows, &n);
  if (last && x->d->anomaly)
    add_row(rows, &n, "final test AUC", "%.4f", last->auc);
  if (x->cohort != NULL)
    drift_rows(x, rows, &n);
  else if (last)
    add_row(rows, &n, "final test accuracy", "%.4f", last->accuracy);
  double round_s = 0;
  for (int i = 0; i < x->n_rows; i++)
    round_s += x->rows[i].seconds;
  if (x->n_rows)
    add_row(rows, &n, "mean round time", "%.2f s (%.1f rounds/min)", round_s / x->n_rows,
            60.0 * x->n_rows / round_s);
  add_row(rows, &n, "uploads acknowledged", "%llu", (unsigned long long)c.uploaded);
  add_row(rows, &n, "device rounds failed", "%llu", (unsigned long long)c.failed);
  add_row(rows, &n, "not folded (target reached)", "%llu", (unsigned long long)c.not_folded);
  add_row(rows, &n, "not folded (round closed)", "%llu", (unsigned long long)c.closed);
  add_row(rows, &n, "dropouts", "%llu", (unsigned long long)c.dropped);
  if (x->o->offline_share > 0)
    add_row(rows, &n, "offline periods", "%llu", (unsigned long long)c.offline);
  add_row(rows, &n, "injected network faults", "%llu", (unsigned long long)c.net.net_faults);
  if (x->o->secure_aggregation != NULL)
    add_row(rows, &n, "secure-aggregation dropouts", "%llu", (unsigned long long)c.net.sa_dropped);
  add_row(rows, &n, "bytes up / down", "%.1f MB / %.1f MB", c.net.bytes_up / 1e6,
          c.net.bytes_down / 1e6);
  add_row(rows, &n, "total time", "%.1f s (evaluation %.1f s)", total_s, x->eval_s);
  rows[n++].label = NULL;
  add_row(rows, &n, "refused requests", "%llu", (unsigned long long)c.net.refused);
  for (int i = 0; i < SIM_MAX_REASONS && c.net.reasons[i][0] && n < 60; i++) {
    static char labels[SIM_MAX_REASONS][48];
    snprintf(labels[i], sizeof(labels[i]), "  refused: %s", c.net.reasons[i]);
    add_row(rows, &n, labels[i], "%llu", (unsigned long long)c.net.reason_count[i]);
  }
  for (int b = 1; b < SIM_BEHAVIOUR_COUNT && n < 64; b++)
    if (beh[b])
      add_row(rows, &n, sim_behaviour_name((sim_behaviour)b), "%zu devices", beh[b]);
  if (x->o->eval_share > 0 || x->o->eval_count > 0)
    n = federated_rows(x, rows, n);
  sim_table_print(stdout, "fl-sim summary", rows, n);
}
