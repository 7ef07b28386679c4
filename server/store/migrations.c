/*
 * Schema migrations, applied at start-up under a session advisory lock so that replicas that
 * start together apply each one exactly once. A migration is a list of statements run in one
 * transaction together with its row in schema_migrations. Migrations are append-only: a
 * shipped one is never edited, a change is a new one.
 */
#include <stdio.h>
#include <string.h>

#include "store/migrations.h"
#include "server.h"

typedef struct migration {
  int version;
  const char *name;
  const char *const *stmts;
} migration;

static const char *const M1[] = {
    "CREATE TABLE admin_tokens ("
    " token_id bigserial PRIMARY KEY, token_hash bytea NOT NULL UNIQUE,"
    " role text NOT NULL CHECK (role IN ('admin','operator','viewer')),"
    " name text NOT NULL DEFAULT '', created_at timestamptz NOT NULL DEFAULT now())",
    "CREATE TABLE audit_log ("
    " entry_id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now(),"
    " actor text NOT NULL, action text NOT NULL, target text NOT NULL DEFAULT '',"
    " detail jsonb NOT NULL DEFAULT '{}')",
    "CREATE TABLE enrollment_tokens ("
    " token_hash bytea PRIMARY KEY, labels jsonb NOT NULL DEFAULT '{}',"
    " expires_at timestamptz NOT NULL, used_by bigint, used_at timestamptz,"
    " created_at timestamptz NOT NULL DEFAULT now())",
    "CREATE TABLE devices ("
    " device_id bigserial PRIMARY KEY, public_key bytea NOT NULL UNIQUE,"
    " state text NOT NULL DEFAULT 'active' CHECK (state IN ('active','revoked')),"
    " labels jsonb NOT NULL DEFAULT '{}', firmware text NOT NULL DEFAULT '',"
    " running_model_id bigint, running_version bigint,"
    " enrolled_at timestamptz NOT NULL DEFAULT now(), last_seen_at timestamptz,"
    " revoked_at timestamptz)",
    "CREATE TABLE nonces ("
    " device_id bigint NOT NULL, nonce bytea NOT NULL,"
    " seen_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (device_id, nonce))",
    "CREATE INDEX nonces_seen_at ON nonces (seen_at)",
    "CREATE TABLE models ("
    " model_id bigserial PRIMARY KEY, name text NOT NULL UNIQUE, spec bytea NOT NULL,"
    " spec_json jsonb NOT NULL, n_params bigint NOT NULL, seed bigint NOT NULL,"
    " created_at timestamptz NOT NULL DEFAULT now())",
    "CREATE TABLE versions ("
    " model_id bigint NOT NULL REFERENCES models, version bigint NOT NULL,"
    " parent_version bigint NOT NULL, round_id bigint NOT NULL DEFAULT 0,"
    " weights bytea NOT NULL, sha256 bytea NOT NULL, signature bytea NOT NULL,"
    " metrics jsonb NOT NULL DEFAULT '{}', created_at timestamptz NOT NULL DEFAULT now(),"
    " PRIMARY KEY (model_id, version))",
    "CREATE TABLE plans ("
    " plan_id bigserial PRIMARY KEY, model_id bigint NOT NULL REFERENCES models,"
    " config jsonb NOT NULL,"
    " state text NOT NULL DEFAULT 'active' CHECK (state IN ('active','stopped','done')),"
    " rounds_done int NOT NULL DEFAULT 0, created_at timestamptz NOT NULL DEFAULT now())",
    "CREATE UNIQUE INDEX plans_one_active ON plans (model_id) WHERE state = 'active'",
    "CREATE TABLE rounds ("
    " round_id bigserial PRIMARY KEY, plan_id bigint NOT NULL REFERENCES plans,"
    " model_id bigint NOT NULL, base_version bigint NOT NULL,"
    " state text NOT NULL DEFAULT 'open'"
    "  CHECK (state IN ('open','closed','abandoned','stopped')),"
    " target int NOT NULL, min_count int NOT NULL, max_assign int NOT NULL,"
    " assigned int NOT NULL DEFAULT 0, accepted int NOT NULL DEFAULT 0,"
    " opened_at timestamptz NOT NULL DEFAULT now(), deadline_at timestamptz NOT NULL,"
    " closed_at timestamptz, result_version bigint, reason text,"
    " metrics jsonb NOT NULL DEFAULT '{}')",
    "CREATE INDEX rounds_open ON rounds (round_id) WHERE state = 'open'",
    "CREATE INDEX rounds_model ON rounds (model_id, round_id)",
    "CREATE TABLE assignments ("
    " round_id bigint NOT NULL REFERENCES rounds, device_id bigint NOT NULL,"
    " assigned_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (round_id, device_id))",
    "CREATE TABLE acceptances ("
    " round_id bigint NOT NULL REFERENCES rounds, device_id bigint NOT NULL,"
    " digest bytea NOT NULL, sample_count bigint NOT NULL, loss double precision NOT NULL,"
    " bytes bigint NOT NULL, replica text NOT NULL,"
    " accepted_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (round_id, device_id))",
    "CREATE TABLE partials ("
    " partial_id bigserial PRIMARY KEY, round_id bigint NOT NULL REFERENCES rounds,"
    " replica text NOT NULL, sum bytea NOT NULL, weight double precision NOT NULL,"
    " count int NOT NULL, loss_sum double precision NOT NULL, bytes bigint NOT NULL,"
    " committed_at timestamptz NOT NULL DEFAULT now())",
    "CREATE INDEX partials_round ON partials (round_id)",
    "CREATE TABLE optimizer_state ("
    " plan_id bigint PRIMARY KEY REFERENCES plans, step bigint NOT NULL,"
    " m bytea, v bytea)",
    "CREATE TABLE evaluations ("
    " eval_id bigserial PRIMARY KEY, device_id bigint NOT NULL, model_id bigint NOT NULL,"
    " version bigint NOT NULL, gate_id bigint NOT NULL DEFAULT 0,"
    " sample_count bigint NOT NULL, metrics jsonb NOT NULL,"
    " reported_at timestamptz NOT NULL DEFAULT now())",
    NULL};

/* Float vectors hardly compress; storing them uncompressed out of line saves a pglz pass over
 * every partial sum and every version (it was most of a group commit's time). */
static const char *const M2[] = {
    "ALTER TABLE partials ALTER COLUMN sum SET STORAGE EXTERNAL",
    "ALTER TABLE versions ALTER COLUMN weights SET STORAGE EXTERNAL",
    "ALTER TABLE optimizer_state ALTER COLUMN m SET STORAGE EXTERNAL",
    "ALTER TABLE optimizer_state ALTER COLUMN v SET STORAGE EXTERNAL",
    NULL};

/* Rollouts: channels per model, staged rollouts with an optional evaluation gate (the gate's
 * id is the rollout's id), and pins of a device or a cohort to a version. */
static const char *const M3[] = {
    "CREATE TABLE channels ("
    " channel_id bigserial PRIMARY KEY, model_id bigint NOT NULL REFERENCES models,"
    " name text NOT NULL, version bigint NOT NULL, previous_version bigint,"
    " created_at timestamptz NOT NULL DEFAULT now(),"
    " updated_at timestamptz NOT NULL DEFAULT now(), UNIQUE (model_id, name))",
    "CREATE TABLE rollouts ("
    " rollout_id bigserial PRIMARY KEY, channel_id bigint NOT NULL REFERENCES channels,"
    " model_id bigint NOT NULL, version bigint NOT NULL, from_version bigint NOT NULL,"
    " percent double precision NOT NULL CHECK (percent >= 0 AND percent <= 100),"
    " cohort jsonb NOT NULL DEFAULT '{}',"
    " state text NOT NULL DEFAULT 'active'"
    "  CHECK (state IN ('active','paused','promoted','stopped','rolled_back')),"
    " reason text, gate jsonb,"
    " gate_state text CHECK (gate_state IN ('evaluating','passed','failed')),"
    " gate_result jsonb NOT NULL DEFAULT '{}',"
    " created_at timestamptz NOT NULL DEFAULT now(),"
    " updated_at timestamptz NOT NULL DEFAULT now())",
    "CREATE UNIQUE INDEX rollouts_one_live ON rollouts (channel_id)"
    " WHERE state IN ('active','paused')",
    "CREATE TABLE pins ("
    " pin_id bigserial PRIMARY KEY, model_id bigint NOT NULL REFERENCES models,"
    " device_id bigint, labels jsonb, version bigint NOT NULL,"
    " created_at timestamptz NOT NULL DEFAULT now(),"
    " CHECK ((device_id IS NULL) <> (labels IS NULL)))",
    "CREATE INDEX pins_model ON pins (model_id)",
    "CREATE INDEX evaluations_gate ON evaluations (gate_id, version, device_id)"
    " WHERE gate_id <> 0",
    NULL};

/* Admin token life cycle (docs/API.md section 3): expiry, revocation, last use, and the
 * bootstrap state: the hash of the configured bootstrap token last applied, so that a restart
 * with the same FL_ADMIN_TOKEN inserts nothing (a revoked or deleted bootstrap token stays so)
 * and a changed one replaces it. One row (id = 1). */
static const char *const M_ADMIN_TOKENS[] = {
    "ALTER TABLE admin_tokens ADD COLUMN expires_at timestamptz,"
    " ADD COLUMN revoked_at timestamptz, ADD COLUMN last_used_at timestamptz,"
    " ADD COLUMN created_by text NOT NULL DEFAULT '',"
    " ADD COLUMN bootstrap boolean NOT NULL DEFAULT false",
    "UPDATE admin_tokens SET bootstrap = true WHERE name = 'bootstrap'",
    "CREATE TABLE admin_bootstrap ("
    " id int PRIMARY KEY CHECK (id = 1), token_hash bytea NOT NULL,"
    " applied_at timestamptz NOT NULL DEFAULT now())",
    NULL};

/* Fair selection (rounds.c): a round's selection window and early-draw pool size, the time
 * of its draw, and the candidates that checked in during the window. Candidates are UNLOGGED:
 * a check-in told to wait writes no WAL and waits for no flush, and losing them in a crash
 * costs a round only a smaller pool (the devices check in again). The index finds a device's
 * latest acceptance (its retry window after a round). */
static const char *const M_SELECTION[] = {
    "ALTER TABLE rounds ADD COLUMN select_until timestamptz,"
    " ADD COLUMN pool int NOT NULL DEFAULT 0, ADD COLUMN drawn_at timestamptz",
    "CREATE UNLOGGED TABLE candidates ("
    " round_id bigint NOT NULL, device_id bigint NOT NULL,"
    " at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (round_id, device_id))",
    "CREATE INDEX acceptances_device ON acceptances (device_id, accepted_at)", NULL};

/* Stored updates: a robust aggregator's round keeps every accepted update, as the device sent
 * it, from the group commit that acknowledges it to the transaction that closes the round
 * (rounds/aggregate.c, rounds/close.c). The key is the acceptance's. EXTERNAL: the data are
 * floats or already compressed encodings, which pglz would only burn CPU on. */
static const char *const M_STORED_UPDATES[] = {
    "CREATE TABLE round_updates ("
    " round_id bigint NOT NULL, device_id bigint NOT NULL, delta bytea NOT NULL,"
    " PRIMARY KEY (round_id, device_id),"
    " FOREIGN KEY (round_id, device_id) REFERENCES acceptances (round_id, device_id))",
    "ALTER TABLE round_updates ALTER COLUMN delta SET STORAGE EXTERNAL", NULL};

/* Differential privacy (docs/PRIVACY.md): the population a DP plan's sampling rate was taken
 * from when it started (q = participants / population), and per partial sum the count of
 * updates their devices did not have to clip (adaptive clipping's bit, rounds/close.c). */
static const char *const M_PRIVACY[] = {
    "ALTER TABLE plans ADD COLUMN dp_population bigint, ADD COLUMN dp_sampling_rate float8",
    "ALTER TABLE partials ADD COLUMN unclipped int NOT NULL DEFAULT 0", NULL};

/* Check-in cost (issue 12). The registry generation: one counter bumped by every transaction
 * that changes channels, rollouts or pins, so a coordinator can cache the registry and check
 * in one cheap read that its copy is current (registry/rollouts.c). The triggers are deferred
 * to commit time: the counter's row lock is always a transaction's last one, so two admin
 * transactions (a promotion writes rollouts, then channels) cannot deadlock over it. Partial
 * sums keep SET STORAGE EXTERNAL (migration 2), stated again here so that a database restored
 * from a dump made without it (pg_dump keeps it, hand-made schemas may not) gets it back. */
static const char *const M_CHECKIN_COST[] = {
    "CREATE TABLE registry_generation (id int PRIMARY KEY CHECK (id = 1), gen bigint NOT NULL)",
    "INSERT INTO registry_generation (id, gen) VALUES (1, 1)",
    "CREATE FUNCTION fl_registry_bump() RETURNS trigger LANGUAGE plpgsql AS"
    " $$BEGIN UPDATE registry_generation SET gen = gen + 1 WHERE id = 1; RETURN NULL; END$$",
    "CREATE CONSTRAINT TRIGGER channels_generation AFTER INSERT OR UPDATE OR DELETE ON channels"
    " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION fl_registry_bump()",
    "CREATE CONSTRAINT TRIGGER rollouts_generation AFTER INSERT OR UPDATE OR DELETE ON rollouts"
    " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION fl_registry_bump()",
    "CREATE CONSTRAINT TRIGGER pins_generation AFTER INSERT OR UPDATE OR DELETE ON pins"
    " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION fl_registry_bump()",
    "ALTER TABLE partials ALTER COLUMN sum SET STORAGE EXTERNAL",
    NULL};

/* Asynchronous (FedBuff) rounds (rounds/async.h): an update may be folded into a later round
 * (buffer) than its task's; its acceptance keeps the task's round, which a retry names and
 * which identifies it (one update per task: the unique index), and its staleness tau. NULL
 * for synchronous rounds, where the two are the same. */
static const char *const M_ASYNC[] = {
    "ALTER TABLE acceptances ADD COLUMN task_round_id bigint,"
    " ADD COLUMN staleness int NOT NULL DEFAULT 0",
    "CREATE UNIQUE INDEX acceptances_task ON acceptances (task_round_id, device_id)"
    " WHERE task_round_id IS NOT NULL",
    NULL};

/* Federated evaluation of every version (registry/evaluation.c): a campaign per new version
 * of a plan with an evaluation policy, the plan's cohort copied so that the sample stays the
 * one the version was opened with; the devices handed the task (a report is accepted only
 * from them; stratum: their by_label value); reports carry their campaign. */
static const char *const M_EVALUATION[] = {
    "CREATE TABLE eval_campaigns ("
    " campaign_id bigserial PRIMARY KEY, plan_id bigint NOT NULL REFERENCES plans,"
    " model_id bigint NOT NULL, version bigint NOT NULL, policy jsonb NOT NULL,"
    " labels jsonb NOT NULL DEFAULT '{}', cohort jsonb NOT NULL DEFAULT '{}',"
    " state text NOT NULL DEFAULT 'open' CHECK (state IN ('open','full','closed')),"
    " result jsonb NOT NULL DEFAULT '{}', opened_at timestamptz NOT NULL DEFAULT now(),"
    " updated_at timestamptz, closed_at timestamptz,"
    " FOREIGN KEY (model_id, version) REFERENCES versions, UNIQUE (plan_id, model_id, version))",
    "CREATE INDEX eval_campaigns_live ON eval_campaigns (campaign_id) WHERE state <> 'closed'",
    "CREATE INDEX eval_campaigns_version ON eval_campaigns (model_id, version)",
    "CREATE TABLE eval_tasks ("
    " campaign_id bigint NOT NULL REFERENCES eval_campaigns, device_id bigint NOT NULL,"
    " stratum text NOT NULL DEFAULT '', handed_at timestamptz NOT NULL DEFAULT now(),"
    " PRIMARY KEY (campaign_id, device_id))",
    "ALTER TABLE evaluations ADD COLUMN campaign_id bigint NOT NULL DEFAULT 0",
    "CREATE INDEX evaluations_campaign ON evaluations (campaign_id, device_id)"
    " WHERE campaign_id <> 0",
    NULL};

/* Secure aggregation (server/secagg/, docs/SECAGG.md). The round's phase sits on its row, so
 * that the group commit's row lock on the round orders a masked input against the end of the
 * collection phase (rounds/aggregate.c). Members: one row per device that advertised its keys,
 * numbered when the key phase ends (participant, neighbours); shares_sent marks U1 (live after
 * the share exchange), in_sum U2 (its masked input is in the partial sums), unmasked the
 * devices whose unmasking shares arrived. Sealed shares are relayed as the devices sent them
 * (the coordinator cannot open them); unmasking shares are kept until the round closes. */
static const char *const M_SECAGG[] = {
    "ALTER TABLE rounds ADD COLUMN secagg_phase text CHECK (secagg_phase IN"
    " ('keys','shares','masked','unmask','ready','abandoned')),"
    " ADD COLUMN secagg_until timestamptz, ADD COLUMN secagg_n int,"
    " ADD COLUMN secagg_reason text",
    "CREATE TABLE secagg_members ("
    " round_id bigint NOT NULL REFERENCES rounds, device_id bigint NOT NULL REFERENCES devices,"
    " participant int, neighbors int[], c_pk bytea NOT NULL, s_pk bytea NOT NULL,"
    " key_sig bytea NOT NULL, shares_sent boolean NOT NULL DEFAULT false,"
    " alive boolean NOT NULL DEFAULT false, in_sum boolean NOT NULL DEFAULT false,"
    " unmasked boolean NOT NULL DEFAULT false,"
    " PRIMARY KEY (round_id, device_id), UNIQUE (round_id, participant))",
    "CREATE TABLE secagg_shares ("
    " round_id bigint NOT NULL REFERENCES rounds, receiver int NOT NULL, sender int NOT NULL,"
    " sealed bytea NOT NULL, PRIMARY KEY (round_id, receiver, sender))",
    "CREATE TABLE secagg_unmask ("
    " round_id bigint NOT NULL REFERENCES rounds, owner int NOT NULL, holder int NOT NULL,"
    " self_mask boolean NOT NULL, share bytea NOT NULL, PRIMARY KEY (round_id, owner, holder))",
    NULL};

/* Drift detection (server/drift/, docs/DRIFT.md): each device's latest service window, the
 * training statistics of a round's accepted updates until its close pools them into the
 * version's reference, the last test of each cohort (the gauges), and the events. */
static const char *const M_DRIFT[] = {
    "CREATE TABLE drift_service ("
    " device_id bigint PRIMARY KEY, model_id bigint NOT NULL, version bigint NOT NULL,"
    " stats bytea NOT NULL, received_at timestamptz NOT NULL DEFAULT now())",
    "CREATE INDEX drift_service_model ON drift_service (model_id, received_at)",
    "CREATE TABLE drift_train ("
    " round_id bigint NOT NULL, device_id bigint NOT NULL, stats bytea NOT NULL,"
    " PRIMARY KEY (round_id, device_id))",
    "CREATE TABLE drift_reference ("
    " model_id bigint NOT NULL, version bigint NOT NULL, stats bytea NOT NULL,"
    " devices int NOT NULL, samples bigint NOT NULL,"
    " created_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (model_id, version))",
    "CREATE TABLE drift_status ("
    " model_id bigint NOT NULL, version bigint NOT NULL, cohort_label text NOT NULL,"
    " cohort text NOT NULL, psi double precision, max_shift double precision,"
    " devices int NOT NULL, samples bigint NOT NULL, drifted boolean NOT NULL,"
    " tested_at timestamptz NOT NULL DEFAULT now(),"
    " PRIMARY KEY (model_id, version, cohort_label, cohort))",
    "CREATE TABLE drift_events ("
    " event_id bigserial PRIMARY KEY, model_id bigint NOT NULL, version bigint NOT NULL,"
    " plan_id bigint NOT NULL, cohort_label text NOT NULL, cohort text NOT NULL,"
    " psi double precision, max_shift double precision, features jsonb NOT NULL,"
    " devices int NOT NULL, samples bigint NOT NULL,"
    " detected_at timestamptz NOT NULL DEFAULT now(), resolved_at timestamptz,"
    " retrain_plan_id bigint, retrain_note text)",
    "CREATE UNIQUE INDEX drift_events_open ON drift_events"
    " (model_id, cohort_label, cohort) WHERE resolved_at IS NULL",
    "ALTER TABLE plans ADD COLUMN drift_event_id bigint",
    NULL};

/* Secure aggregation's phases end when they go quiet (secagg/phases.c): when each member's
 * message of the phase arrived. */
static const char *const M_SECAGG_PROGRESS[] = {
    "ALTER TABLE secagg_members ADD COLUMN reported_at timestamptz NOT NULL DEFAULT now()", NULL};

/* Room on each page of devices for its rows' next versions: the batched last-seen UPDATE
 * (store/seen.c) writes every active device's row every few ticks, and on full pages each new
 * version lands on another page, with an entry in every index. With 30% free the updates stay
 * HOT (84% against 29% in bench_checkin, benches/RESULTS.md). New pages are filled to 70%;
 * the rows already stored move as they are updated and vacuumed (VACUUM FULL devices rewrites
 * them at once, offline). */
static const char *const M_DEVICES_FILLFACTOR[] = {"ALTER TABLE devices SET (fillfactor = 70)",
                                                   NULL};

/* The model's life after a drift (docs/DRIFT.md 4): a retraining plan runs beside the model's
 * main plan (one active main plan per model, one plan per drift event), and the event names
 * the staged rollout of the retrained version to its cohort. */
static const char *const M_RETRAIN_ROLLOUT[] = {
    "DROP INDEX plans_one_active",
    "CREATE UNIQUE INDEX plans_one_active ON plans (model_id)"
    " WHERE state = 'active' AND drift_event_id IS NULL",
    "CREATE UNIQUE INDEX plans_one_per_event ON plans (drift_event_id)"
    " WHERE drift_event_id IS NOT NULL",
    "ALTER TABLE drift_events ADD COLUMN rollout_id bigint, ADD COLUMN rollout_note text", NULL};

static const migration MIGRATIONS[] = {
    {1, "initial schema", M1},
    {2, "uncompressed float vectors", M2},
    {3, "rollouts", M3},
    {4, "admin token life cycle", M_ADMIN_TOKENS},
    {5, "fair selection", M_SELECTION},
    {6, "stored updates", M_STORED_UPDATES},
    {7, "differential privacy", M_PRIVACY},

    {8, "check-in cost", M_CHECKIN_COST},
    {9, "asynchronous rounds", M_ASYNC},
    {10, "federated evaluation", M_EVALUATION},
    {11, "secure aggregation", M_SECAGG},
    {12, "drift detection", M_DRIFT},
    {13, "secure aggregation progress", M_SECAGG_PROGRESS},
    {14, "retraining beside the main plan, rollout of the retrained version", M_RETRAIN_ROLLOUT},
    {15, "devices fillfactor", M_DEVICES_FILLFACTOR},
};

/* Any 64-bit constant shared by all replicas; it only names the lock. */
#define MIGRATION_LOCK "7302214519"

static int apply_one(PGconn *c, const migration *m) {
  fl_pgp p;
  if (fl__pg_cmd(c, "BEGIN"))
    return FL_E_DB;
  for (const char *const *s = m->stmts; *s != NULL; s++)
    if (fl__pg_cmd(c, *s))
      goto rollback;
  fl__pgp_init(&p);
  fl__pgp_i64(&p, m->version);
  fl__pgp_text(&p, m->name);
  PGresult *r = fl__pg_exec(c, "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                            &p, false, NULL);
  if (r == NULL)
    goto rollback;
  PQclear(r);
  if (fl__pg_cmd(c, "COMMIT"))
    return FL_E_DB;
  fl__slog(FL_LOG_INFO, "migration_applied", "version=%d name=\"%s\"", m->version, m->name);
  return FL_OK;
rollback:
  fl__pg_cmd(c, "ROLLBACK");
  return FL_E_DB;
}

static int current_version(PGconn *c, int *out) {
  PGresult *r = fl__pg_exec(c, "SELECT coalesce(max(version), 0) FROM schema_migrations", NULL,
                            false, NULL);
  if (r == NULL)
    return FL_E_DB;
  *out = (int)fl__pg_i64(r, 0, 0);
  PQclear(r);
  return FL_OK;
}

int fl__migrate(PGconn *c) {
  int err = FL_E_DB, have = 0;
  if (fl__pg_cmd(c, "SELECT pg_advisory_lock(" MIGRATION_LOCK ")"))
    return FL_E_DB;
  if (fl__pg_cmd(c, "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    " version int PRIMARY KEY, name text NOT NULL,"
                    " applied_at timestamptz NOT NULL DEFAULT now())"))
    goto unlock;
  if (current_version(c, &have))
    goto unlock;
  err = FL_OK;
  for (size_t i = 0; i < sizeof MIGRATIONS / sizeof MIGRATIONS[0] && err == FL_OK; i++)
    if (MIGRATIONS[i].version > have)
      err = apply_one(c, &MIGRATIONS[i]);
unlock:
  fl__pg_cmd(c, "SELECT pg_advisory_unlock(" MIGRATION_LOCK ")");
  return err;
}
