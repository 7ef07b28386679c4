/*
 * Drift detection in the coordinator (docs/DRIFT.md).
 *
 * drift.c: what devices send is stored (a check-in's service window replaces the device's
 * previous one in drift_service; an accepted upload's training statistics wait in drift_train
 * for the round's close, which pools them into the new version's drift_reference), the
 * metrics and the admin API's GET /admin/v1/drift. detect.c: the ticker's pass that pools each
 * cohort's windows, tests them against the reference of the version they ran, records drift
 * events and opens retraining plans.
 */
#ifndef FL__DRIFT_H
#define FL__DRIFT_H

#include <stdio.h>

#include <libpq-fe.h>

#include "drift/stats.h"
#include "fl/v1/fleetlearn.pb-c.h"
#include "http/http.h"
#include "server.h"

/* A check-in's checked service window (its model and version are the message's). 0 or -1. */
int fl__drift_store_service(PGconn *c, uint64_t device_id, const Fl__V1__DriftStats *m);
/* An accepted upload's checked training statistics, in the group commit's transaction. */
int fl__drift_store_train(PGconn *c, uint64_t round_id, uint64_t device_id,
                          const Fl__V1__DriftStats *m);
/* At a round's close, in its transaction: the reference of (model_id, version) pooled from the
 * round's training statistics (none: no reference). FL_OK or FL_E_DB. */
int fl__drift_reference(PGconn *c, uint64_t round_id, uint64_t model_id, uint64_t version);
/* The round's training statistics are no longer needed (closed or abandoned). */
int fl__drift_drop_train(PGconn *c, uint64_t round_id);
/* Decodes stored statistics (a packed DriftStats) into s; -1 when they do not parse. */
int fl__drift_decode(const uint8_t *data, size_t len, fl_drift_stats *s);

/* The ticker's pass (detect.c), at most once per second per replica, and one replica at a
 * time (an advisory lock). */
void fl__drift_tick(fl_srv *s);

/* Scrape: fl_drift_events_total, fl_drift_psi and fl_drift_max_shift, read on c. */
void fl__drift_put_metrics(FILE *f, PGconn *c);

/* GET /admin/v1/drift[?model_id=N]: the events, newest first, and the cohorts' last tests. */
void fl__drift_admin(fl_srv *s, fl_req *q, fl_resp *r);

#endif
