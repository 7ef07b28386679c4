/*
 * Drift statistics in the store: service windows, training statistics, version references;
 * the metrics and the admin listing (drift.h).
 *
 * Statistics are stored as the packed DriftStats they arrived as (or were pooled into): one
 * format on the wire and at rest, checked by fl__drift_check on the way in.
 */
#include "drift/drift.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "admin/adminapi.h"
#include "store/store_pg.h"

static uint8_t *pack(const Fl__V1__DriftStats *m, size_t *len) {
  *len = fl__v1__drift_stats__get_packed_size(m);
  uint8_t *buf = malloc(*len ? *len : 1);
  if (buf != NULL)
    fl__v1__drift_stats__pack(m, buf);
  return buf;
}

/* One prepared statement whose last parameter is m packed. */
static int exec_stats(PGconn *c, const char *name, const char *sql, fl_pgp *p,
                      const Fl__V1__DriftStats *m) {
  size_t len;
  uint8_t *buf = pack(m, &len);
  if (buf == NULL)
    return -1;
  fl__pgp_bin(p, buf, len);
  PGresult *r = fl__pg_exec_prep(c, name, sql, p, false, NULL);
  free(buf);
  if (r == NULL)
    return -1;
  PQclear(r);
  return 0;
}

int fl__drift_store_service(PGconn *c, uint64_t device_id, const Fl__V1__DriftStats *m) {
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, device_id);
  fl__pgp_u64(&p, m->model_id);
  fl__pgp_u64(&p, m->version);
  return exec_stats(c, "fl_drift_service",
                    "INSERT INTO drift_service (device_id, model_id, version, stats)"
                    " VALUES ($1, $2, $3, $4)"
                    " ON CONFLICT (device_id) DO UPDATE SET model_id = excluded.model_id,"
                    " version = excluded.version, stats = excluded.stats, received_at = now()",
                    &p, m);
}

int fl__drift_store_train(PGconn *c, uint64_t round_id, uint64_t device_id,
                          const Fl__V1__DriftStats *m) {
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, round_id);
  fl__pgp_u64(&p, device_id);
  return exec_stats(c, "fl_drift_train",
                    "INSERT INTO drift_train (round_id, device_id, stats) VALUES ($1, $2, $3)"
                    " ON CONFLICT DO NOTHING",
                    &p, m);
}

int fl__drift_decode(const uint8_t *data, size_t len, fl_drift_stats *s) {
  char msg[160];
  Fl__V1__DriftStats *m = fl__v1__drift_stats__unpack(NULL, len, data);
  int rc = m != NULL && fl__drift_check(m, msg) == 0 ? 0 : -1;
  if (rc == 0)
    fl__drift_from_msg(s, m);
  fl__v1__drift_stats__free_unpacked(m, NULL);
  return rc;
}

int fl__drift_reference(PGconn *c, uint64_t round_id, uint64_t model_id, uint64_t version) {
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, round_id);
  PGresult *r = fl__pg_exec(c, "SELECT stats FROM drift_train WHERE round_id = $1", &p, true, NULL);
  if (r == NULL)
    return FL_E_DB;
  fl_drift_stats *pool = malloc(sizeof *pool), *one = malloc(sizeof *one);
  int err = FL_E_NOMEM;
  if (pool == NULL || one == NULL)
    goto out;
  fl__drift_init(pool);
  /* Devices whose statistics do not match the first one's layout are left out: a reference
   * of mixed layouts could not be compared with anything. */
  for (int i = 0; i < PQntuples(r); i++)
    if (fl__drift_decode((const uint8_t *)PQgetvalue(r, i, 0), (size_t)PQgetlength(r, i, 0), one) ==
        0)
      (void)fl__drift_pool(pool, one);
  err = FL_OK;
  if (pool->count == 0)
    goto out;
  uint64_t hist[FL_DRIFT_MAX_BINS];
  Fl__V1__DriftStats m;
  fl__drift_to_msg(pool, &m, hist);
  m.model_id = model_id;
  m.version = version;
  size_t len;
  uint8_t *buf = pack(&m, &len);
  err = FL_E_NOMEM;
  if (buf == NULL)
    goto out;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, model_id);
  fl__pgp_u64(&p, version);
  fl__pgp_bin(&p, buf, len);
  fl__pgp_u64(&p, pool->devices);
  fl__pgp_u64(&p, pool->count);
  PGresult *w = fl__pg_exec(c,
                            "INSERT INTO drift_reference (model_id, version, stats, devices,"
                            " samples) VALUES ($1, $2, $3, $4, $5)",
                            &p, false, NULL);
  free(buf);
  err = w != NULL ? FL_OK : FL_E_DB;
  PQclear(w);
out:
  free(pool);
  free(one);
  PQclear(r);
  return err;
}

int fl__drift_drop_train(PGconn *c, uint64_t round_id) {
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, round_id);
  PGresult *r = fl__pg_exec(c, "DELETE FROM drift_train WHERE round_id = $1", &p, false, NULL);
  PQclear(r);
  return r != NULL ? FL_OK : FL_E_DB;
}

/* Label values go into the exposition between quotes: \ " and newlines escaped. */
static void put_label(FILE *f, const char *v) {
  for (; *v != '\0'; v++) {
    if (*v == '\\' || *v == '"')
      fputc('\\', f);
    if (*v == '\n')
      fputs("\\n", f);
    else
      fputc(*v, f);
  }
}

void fl__drift_put_metrics(FILE *f, PGconn *c) {
  PGresult *ev = fl__pg_exec(c,
                             "SELECT model_id, cohort_label, cohort, count(*) FROM drift_events"
                             " GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
                             NULL, false, NULL);
  PGresult *st = ev ? fl__pg_exec(c,
                                  "SELECT model_id, version, cohort_label, cohort,"
                                  " coalesce(psi, 'NaN'), coalesce(max_shift, 'NaN')"
                                  " FROM drift_status ORDER BY 1, 2, 3, 4",
                                  NULL, false, NULL)
                    : NULL;
  if (st == NULL)
    goto out;
  fprintf(f,
          "# HELP fl_drift_events_total Drift events raised, by model and cohort.\n"
          "# TYPE fl_drift_events_total counter\n");
  for (int i = 0; i < PQntuples(ev); i++) {
    fprintf(f, "fl_drift_events_total{model_id=\"%s\",cohort_label=\"", PQgetvalue(ev, i, 0));
    put_label(f, PQgetvalue(ev, i, 1));
    fputs("\",cohort=\"", f);
    put_label(f, PQgetvalue(ev, i, 2));
    fprintf(f, "\"} %s\n", PQgetvalue(ev, i, 3));
  }
  static const char *const names[][2] = {
      {"fl_drift_psi",
       "Population stability index of a cohort's score histogram at its last"
       " drift test (NaN: no histogram)."},
      {"fl_drift_max_shift",
       "Largest standardized mean shift of a cohort's features at its last"
       " drift test."}};
  for (int k = 0; k < 2; k++) {
    fprintf(f, "# HELP %s %s\n# TYPE %s gauge\n", names[k][0], names[k][1], names[k][0]);
    for (int i = 0; i < PQntuples(st); i++) {
      fprintf(f, "%s{model_id=\"%s\",version=\"%s\",cohort_label=\"", names[k][0],
              PQgetvalue(st, i, 0), PQgetvalue(st, i, 1));
      put_label(f, PQgetvalue(st, i, 2));
      fputs("\",cohort=\"", f);
      put_label(f, PQgetvalue(st, i, 3));
      fprintf(f, "\"} %s\n", PQgetvalue(st, i, 4 + k));
    }
  }
out:
  PQclear(st);
  PQclear(ev);
}

void fl__drift_admin(fl_srv *s, fl_req *q, fl_resp *r) {
  fl__admin_list_by_model(
      s, q, r, "drift",
      "SELECT json_build_object("
      " 'events', coalesce((SELECT json_agg(json_build_object('event_id', event_id,"
      "  'model_id', model_id, 'version', version, 'plan_id', plan_id,"
      "  'cohort_label', cohort_label, 'cohort', cohort, 'psi', psi, 'max_shift', max_shift,"
      "  'features', features, 'devices', devices, 'samples', samples,"
      "  'detected_at', detected_at, 'resolved_at', resolved_at,"
      "  'retrain_plan_id', retrain_plan_id, 'retrain_note', retrain_note,"
      "  'rollout_id', rollout_id, 'rollout_note', rollout_note)"
      "  ORDER BY event_id DESC) FROM drift_events"
      "  WHERE $1::bigint = 0 OR model_id = $1), '[]'::json),"
      " 'cohorts', coalesce((SELECT json_agg(json_build_object('model_id', model_id,"
      "  'version', version, 'cohort_label', cohort_label, 'cohort', cohort, 'psi', psi,"
      "  'max_shift', max_shift, 'devices', devices, 'samples', samples, 'drifted', drifted,"
      "  'tested_at', tested_at) ORDER BY model_id, version, cohort_label, cohort)"
      "  FROM drift_status WHERE $1::bigint = 0 OR model_id = $1), '[]'::json),"
      " 'references', coalesce((SELECT json_agg(json_build_object('model_id', model_id,"
      "  'version', version, 'devices', devices, 'samples', samples,"
      "  'created_at', created_at) ORDER BY model_id, version)"
      "  FROM drift_reference WHERE $1::bigint = 0 OR model_id = $1), '[]'::json))::text");
}
