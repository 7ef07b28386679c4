/*
 * fl-sim and drift detection (drift.h).
 */
#include "drift.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "fl/err.h"

static const char *const SITES[3] = {"plant-1", "plant-2", SIM_DRIFT_SITE};

static int site_of(const sim_data *d, size_t k) {
  return d->drifted != NULL && d->drifted[k] ? 2 : (int)(k % 2);
}

int sim_drift_tokens(sim_admin *a, const sim_data *d, size_t n, char ***tokens) {
  size_t count[3] = {0, 0, 0}, next[3] = {0, 0, 0};
  char **by_site[3] = {NULL, NULL, NULL};
  char **t = calloc(n ? n : 1, sizeof *t);
  int rc = t != NULL ? FL_OK : FL_E_NOMEM;
  for (size_t k = 0; k < n; k++)
    count[site_of(d, k)]++;
  for (int s = 0; rc == FL_OK && s < 3; s++) {
    if (count[s] == 0)
      continue;
    json_t *labels = json_pack("{s:s}", "site", SITES[s]);
    rc = labels != NULL ? fl_sup_admin_enrollment_tokens_labeled(a, count[s], labels, &by_site[s])
                        : FL_E_NOMEM;
    json_decref(labels);
  }
  for (size_t k = 0; rc == FL_OK && k < n; k++) {
    int s = site_of(d, k);
    t[k] = by_site[s][next[s]];
    by_site[s][next[s]++] = NULL;
  }
  for (int s = 0; s < 3; s++)
    if (by_site[s] != NULL)
      sim_admin_free_tokens(by_site[s], count[s]);
  if (rc != FL_OK) {
    sim_admin_free_tokens(t, t != NULL ? n : 0);
    return rc;
  }
  *tokens = t;
  return FL_OK;
}

int sim_drift_plan(json_t *j, const sim_options *o) {
  /* A site is tested once a tenth of its motors reported (at least 5), with a window of the
   * last ten minutes: the devices report at every check-in, once a simulated round. */
  size_t per_site = o->devices * (1 - o->drift_share) / 2;
  /* No test of the first half of the rounds before the drift: the model still learns there,
   * and a version's reference is scored by the version before it (docs/DRIFT.md 1). */
  json_t *d =
      json_pack("{s:s, s:f, s:f, s:I, s:I, s:f, s:I}", "cohort_label", "site", "psi_threshold",
                o->psi_threshold, "mean_shift_threshold", 1.0, "min_devices",
                (json_int_t)(per_site / 10 > 5 ? per_site / 10 : 5), "min_samples", (json_int_t)500,
                "window_s", 600.0, "warmup_rounds", (json_int_t)((o->drift_round - 1) / 2));
  if (d == NULL || json_object_set_new(j, "drift", d))
    return FL_E_NOMEM;
  if (o->retrain_rounds <= 0)
    return FL_OK;
  /* The retrained version to a quarter of the site, then (its loss no worse than the channel's
   * version's on half of the site's devices, 10 reports each at least) to all of it. */
  json_t *gate = json_pack("{s:s, s:f, s:f, s:I}", "metric", "loss", "max_delta", 0.0, "sample_pct",
                           50.0, "min_reports", (json_int_t)10);
  json_t *ro = gate != NULL ? json_pack("{s:s, s:f, s:o}", "channel", "stable", "percent", 25.0,
                                        "gate", gate)
                            : NULL;
  json_t *r = ro != NULL ? json_pack("{s:b, s:f, s:I, s:I, s:o}", "on_drift", 1, "cooldown_s",
                                     3600.0, "max_concurrent", (json_int_t)1, "rounds",
                                     (json_int_t)o->retrain_rounds, "rollout", ro)
                         : NULL;
  return r != NULL && json_object_set_new(j, "retrain", r) == 0 ? FL_OK : FL_E_NOMEM;
}

/* One event seen for the first time: printed, and counted into t. */
static void new_event(const json_t *e, int r, int drift_round, double since_drift_s,
                      sim_drift_track *t, FILE *out) {
  const char *cohort = json_string_value(json_object_get(e, "cohort"));
  long long version = (long long)json_integer_value(json_object_get(e, "version"));
  bool drifted = cohort != NULL && strcmp(cohort, SIM_DRIFT_SITE) == 0;
  /* A device scores its window before the check-in that brings it the newest version: the
   * windows of round r are version r - 1's (versions are numbered from 1, round r makes
   * version r + 1), so the drifted data is first scored by version drift_round - 1. */
  bool after = version >= drift_round - 1;
  int nf = (int)json_array_size(json_object_get(e, "features"));
  fprintf(out,
          "drift: event %lld after round %d: site %s, version %lld, PSI %.3f, max shift %.2f sd, "
          "%d feature%s over the threshold, %lld devices\n",
          (long long)json_integer_value(json_object_get(e, "event_id")), r, cohort ? cohort : "",
          version, json_number_value(json_object_get(e, "psi")),
          json_number_value(json_object_get(e, "max_shift")), nf, nf == 1 ? "" : "s",
          (long long)json_integer_value(json_object_get(e, "devices")));
  if (!after)
    t->before_events++;
  else if (!drifted)
    t->false_events++;
  else if (t->event_round == 0) {
    t->event_round = r;
    t->event_delay_s = since_drift_s;
    t->psi = json_number_value(json_object_get(e, "psi"));
    t->n_features = nf;
    fprintf(out, "drift: site %s detected %d round%s after the drift began (%.1f s)\n",
            SIM_DRIFT_SITE, r - drift_round + 1, r - drift_round + 1 == 1 ? "" : "s",
            since_drift_s);
  }
}

/* The drifted site's retraining: its rollout's stages and the event's resolution. */
static void follow_retrain(sim_admin *a, const json_t *e, int r, sim_drift_track *t, FILE *out) {
  const char *note = json_string_value(json_object_get(e, "rollout_note"));
  const json_t *rid = json_object_get(e, "rollout_id");
  if (t->resolved_round == 0 && json_is_string(json_object_get(e, "resolved_at"))) {
    t->resolved_round = r;
    fprintf(out, "drift: site %s's event resolved after round %d\n", SIM_DRIFT_SITE, r);
  }
  if (note == NULL || strcmp(note, t->rollout_note) == 0)
    return;
  snprintf(t->rollout_note, sizeof t->rollout_note, "%s", note);
  if (json_is_integer(rid) && t->rollout_id == 0) {
    char path[64];
    json_t *ro = NULL;
    t->rollout_id = (uint64_t)json_integer_value(rid);
    snprintf(path, sizeof path, "/admin/v1/rollouts/%llu", (unsigned long long)t->rollout_id);
    if (sim_admin_call(a, "GET", path, NULL, &ro) == FL_OK) {
      json_t *o = json_object_get(ro, "rollout");
      t->rollout_version =
          (uint64_t)json_integer_value(json_object_get(json_is_object(o) ? o : ro, "version"));
    }
    json_decref(ro);
  }
  if (strcmp(note, "staged") == 0 && t->staged_round == 0)
    t->staged_round = r;
  if (strcmp(note, "rolled_out") == 0 && t->rolled_out_round == 0) {
    t->rolled_out_round = r;
    if (t->staged_round == 0)
      t->staged_round = r; /* both stages between two polls */
  }
  fprintf(out, "drift: site %s's retrained version %llu: rollout %llu %s after round %d\n",
          SIM_DRIFT_SITE, (unsigned long long)t->rollout_version, (unsigned long long)t->rollout_id,
          note, r);
}

void sim_drift_poll(sim_admin *a, uint64_t model_id, int r, int drift_round, double since_drift_s,
                    sim_drift_track *t, FILE *out) {
  char path[96];
  snprintf(path, sizeof path, "/admin/v1/drift?model_id=%llu", (unsigned long long)model_id);
  json_t *ans = NULL;
  if (sim_admin_call(a, "GET", path, NULL, &ans) != FL_OK)
    return;
  json_t *events = json_object_get(json_object_get(ans, "drift"), "events");
  uint64_t newest = t->last_event_id;
  /* Newest first: walk them oldest first. */
  for (size_t i = json_array_size(events); i-- > 0;) {
    const json_t *e = json_array_get(events, i);
    uint64_t id = (uint64_t)json_integer_value(json_object_get(e, "event_id"));
    const json_t *plan = json_object_get(e, "retrain_plan_id");
    const char *site = json_string_value(json_object_get(e, "cohort"));
    bool ours = site != NULL && strcmp(site, SIM_DRIFT_SITE) == 0;
    if (json_is_integer(plan) && !ours && (uint64_t)json_integer_value(plan) > t->other_plan_id) {
      t->other_plan_id = (uint64_t)json_integer_value(plan);
      t->other_retrains++;
      fprintf(out, "drift: retraining plan %llu opened for site %s after round %d\n",
              (unsigned long long)t->other_plan_id, site ? site : "", r);
    }
    if (json_is_integer(plan) && ours && t->retrain_plan_id == 0) {
      t->retrain_plan_id = (uint64_t)json_integer_value(plan);
      t->retrain_round = r;
      fprintf(out, "drift: retraining plan %llu opened for site %s after round %d\n",
              (unsigned long long)t->retrain_plan_id,
              json_string_value(json_object_get(e, "cohort")), r);
    }
    if (id > t->last_event_id)
      new_event(e, r, drift_round, since_drift_s, t, out);
    if (t->retrain_plan_id != 0 &&
        (uint64_t)json_integer_value(json_object_get(e, "retrain_plan_id")) == t->retrain_plan_id)
      follow_retrain(a, e, r, t, out);
    newest = id > newest ? id : newest;
  }
  t->last_event_id = newest;
  if (t->retrain_plan_id != 0 && t->rollout_id == 0) {
    char pp[64];
    json_t *pl = NULL;
    snprintf(pp, sizeof pp, "/admin/v1/plans/%llu", (unsigned long long)t->retrain_plan_id);
    if (sim_admin_call(a, "GET", pp, NULL, &pl) == FL_OK)
      fprintf(out, "  retraining plan %llu: %s, %lld rounds done\n",
              (unsigned long long)t->retrain_plan_id,
              json_string_value(json_object_get(pl, "state")),
              (long long)json_integer_value(json_object_get(pl, "rounds_done")));
    json_decref(pl);
  }
  /* Each site's test of the newest version, one line per round. */
  json_t *cohorts = json_object_get(json_object_get(ans, "drift"), "cohorts");
  long long top = 0;
  size_t i;
  json_t *c;
  json_array_foreach(cohorts, i, c) {
    long long v = (long long)json_integer_value(json_object_get(c, "version"));
    top = v > top ? v : top;
  }
  int shown = 0;
  json_array_foreach(cohorts, i, c) {
    if (json_integer_value(json_object_get(c, "version")) != top)
      continue;
    if (shown++ == 0)
      fprintf(out, "  drift tests of version %lld:", top);
    fprintf(out, " %s PSI %.3f shift %.2f (%lld devices);",
            json_string_value(json_object_get(c, "cohort")),
            json_number_value(json_object_get(c, "psi")),
            json_number_value(json_object_get(c, "max_shift")),
            (long long)json_integer_value(json_object_get(c, "devices")));
  }
  if (shown)
    fputc('\n', out);
  json_decref(ans);
}
