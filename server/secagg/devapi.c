/*
 * Secure aggregation's device endpoints (docs/API.md 1.8, docs/SECAGG.md "Protocol"). Each is
 * a SignedRequest like every device request (policy FL_AUTH_DEVICE: the signature, device and
 * nonce are checked before the handler, which finds them in q->auth); the
 * messages that change state check the round's phase under a share lock on its row, which the
 * phase transitions take exclusively (phases.c), so a message counts in the phase it was
 * checked in or is refused. Every refusal comes before anything is written.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/auth.h"
#include "crypto.h"
#include "digest.h"
#include "mem.h"
#include "secagg.h"
#include "secagg/protocol.h"

/* The device's standing in a secure-aggregation round. */
typedef struct sa_view {
  bool found, open, assigned, member, accepted;
  char phase[16];
  char state[16];
  char reason[200];
  uint32_t participant, n, d;
  uint32_t *nbr;
  bool shares_sent, alive, in_sum, unmasked;
  uint8_t c_pk[32], s_pk[32];
  int64_t until_ms;
} sa_view;

static void unavailable(fl_resp *r) {
  fl__resp_dev_error(r, 503, "unavailable", "database unavailable", fl__now_ms() + 1000);
}

/* Reads the view; with lock, inside the caller's transaction under a share lock on the round
 * row. 0, or -1 (database). */
static int load_view(PGconn *c, uint64_t round_id, uint64_t device_id, bool lock, sa_view *v) {
  fl_pgp p;
  memset(v, 0, sizeof *v);
  if (round_id > INT64_MAX)
    return 0;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, round_id);
  fl__pgp_u64(&p, device_id);
  char sql[1400];
  snprintf(sql, sizeof sql,
           "SELECT r.secagg_phase, r.state, coalesce(r.secagg_reason, r.reason, ''),"
           " coalesce(r.secagg_n, 0), (extract(epoch FROM r.secagg_until) * 1000)::bigint,"
           " EXISTS (SELECT 1 FROM assignments a WHERE a.round_id = $1 AND a.device_id = $2),"
           " EXISTS (SELECT 1 FROM acceptances a WHERE a.round_id = $1 AND a.device_id = $2),"
           " m.device_id IS NOT NULL, coalesce(m.participant, 0), coalesce(m.neighbors::text,"
           " '{}'), coalesce(m.shares_sent, false), coalesce(m.alive, false),"
           " coalesce(m.in_sum, false), coalesce(m.unmasked, false), encode(m.c_pk, 'hex'),"
           " encode(m.s_pk, 'hex')"
           " FROM rounds r LEFT JOIN secagg_members m ON m.round_id = r.round_id"
           "  AND m.device_id = $2 WHERE r.round_id = $1 AND r.secagg_phase IS NOT NULL%s",
           lock ? " FOR SHARE OF r" : "");
  PGresult *r =
      fl__pg_exec_prep(c, lock ? "fl_secagg_view_lock" : "fl_secagg_view", sql, &p, false, NULL);
  if (r == NULL)
    return -1;
  int rc = 0;
  if (PQntuples(r) == 1) {
    v->found = true;
    snprintf(v->phase, sizeof v->phase, "%s", PQgetvalue(r, 0, 0));
    snprintf(v->state, sizeof v->state, "%s", PQgetvalue(r, 0, 1));
    snprintf(v->reason, sizeof v->reason, "%s", PQgetvalue(r, 0, 2));
    v->open = strcmp(v->state, "open") == 0;
    v->n = (uint32_t)fl__pg_u64(r, 0, 3);
    v->until_ms = fl__pg_i64(r, 0, 4);
    v->assigned = PQgetvalue(r, 0, 5)[0] == 't';
    v->accepted = PQgetvalue(r, 0, 6)[0] == 't';
    v->member = PQgetvalue(r, 0, 7)[0] == 't';
    v->participant = (uint32_t)fl__pg_u64(r, 0, 8);
    v->shares_sent = PQgetvalue(r, 0, 10)[0] == 't';
    v->alive = PQgetvalue(r, 0, 11)[0] == 't';
    v->in_sum = PQgetvalue(r, 0, 12)[0] == 't';
    v->unmasked = PQgetvalue(r, 0, 13)[0] == 't';
    if (fl__secagg_int_array(PQgetvalue(r, 0, 9), &v->nbr, &v->d) ||
        (v->member && (fl__unhex(PQgetvalue(r, 0, 14), v->c_pk, 32) ||
                       fl__unhex(PQgetvalue(r, 0, 15), v->s_pk, 32))))
      rc = -1;
  }
  PQclear(r);
  return rc;
}

/* The checks every state-changing message shares: the round exists, is open, in `phase`, and
 * the device is assigned (keys) or a participant (the others). 1 go on, 0 refused (*r). */
static int check_view(const sa_view *v, const char *phase, fl_resp *r) {
  char msg[96];
  if (!v->found) {
    fl__resp_dev_error(r, 404, "unknown_round", "no such secure-aggregation round", 0);
    return 0;
  }
  if (!v->open) {
    fl__resp_dev_error(r, 409, "round_closed", "the round is no longer open", 0);
    return 0;
  }
  if (!v->assigned) {
    fl__resp_dev_error(r, 403, "not_assigned", "device is not assigned to this round", 0);
    return 0;
  }
  if (strcmp(v->phase, phase) != 0) {
    snprintf(msg, sizeof msg, "the round is in phase %s, not %s", v->phase, phase);
    fl__resp_dev_error(r, 409, "wrong_phase", msg, 0);
    return 0;
  }
  if (strcmp(phase, "keys") != 0 && v->participant == 0) {
    fl__resp_dev_error(r, 403, "not_participant", "device is not a participant of this round", 0);
    return 0;
  }
  return 1;
}

static Fl__V1__SecAggPhase phase_enum(const sa_view *v) {
  static const char *const names[] = {"keys", "shares", "masked", "unmask"};
  if (strcmp(v->state, "closed") == 0 || strcmp(v->phase, "ready") == 0)
    return FL__V1__SEC_AGG_PHASE__SECAGG_PHASE_DONE;
  if (strcmp(v->state, "abandoned") == 0 || strcmp(v->phase, "abandoned") == 0)
    return FL__V1__SEC_AGG_PHASE__SECAGG_PHASE_ABANDONED;
  for (int i = 0; i < 4; i++)
    if (strcmp(v->phase, names[i]) == 0)
      return (Fl__V1__SecAggPhase)(i + 1);
  return FL__V1__SEC_AGG_PHASE__SECAGG_PHASE_UNSPECIFIED;
}

static void send_ack(fl_resp *r, uint64_t round_id, const sa_view *v, bool duplicate) {
  Fl__V1__SecAggAck ack = FL__V1__SEC_AGG_ACK__INIT;
  ack.round_id = round_id;
  ack.phase = phase_enum(v);
  ack.duplicate = duplicate;
  fl__resp_proto(r, 200, &ack.base);
}

/* The view's neighbour list as an int[] literal (digits only). */
static char *nbr_literal(const sa_view *v) {
  char *lit = malloc((size_t)v->d * 12 + 3), *w = lit;
  if (lit == NULL)
    return NULL;
  w += sprintf(w, "{");
  for (uint32_t i = 0; i < v->d; i++)
    w += sprintf(w, "%s%u", i ? "," : "", v->nbr[i]);
  sprintf(w, "}");
  return lit;
}

static int nbr_index(const sa_view *v, uint32_t x) {
  for (uint32_t i = 0; i < v->d; i++)
    if (v->nbr[i] == x)
      return (int)i;
  return -1;
}

static int exec_ok(PGconn *c, const char *sql, const fl_pgp *p) {
  PGresult *r = fl__pg_exec(c, sql, p, false, NULL);
  PQclear(r);
  return r != NULL ? 0 : -1;
}

/* The body as message d, unpacked within its protobuf budget (mem.h); NULL with the 400 in *r.
 * Free with protobuf_c_message_free_unpacked(m, NULL). */
static ProtobufCMessage *unpack_body(const fl_auth *a, const ProtobufCMessageDescriptor *d,
                                     fl_resp *r) {
  ProtobufCAllocator pa;
  fl_pb_budget pb;
  char msg[64];
  fl__protobuf_budget(&pa, &pb, NULL, a->sr->body.len);
  ProtobufCMessage *m = protobuf_c_message_unpack(d, &pa, a->sr->body.len, a->sr->body.data);
  if (m == NULL) {
    snprintf(msg, sizeof msg, "body is not a %s", d->short_name);
    fl__resp_dev_error(r, 400, "malformed_request", msg, 0);
  }
  return m;
}

/* Opens a phase message's transaction: the view under the round's share lock, the same
 * message again (done) acknowledged as a duplicate, then check_view. 1 go on, 0 answered
 * (*r), -1 database. */
static int begin_phase(PGconn *c, uint64_t round_id, uint64_t device_id, const char *phase,
                       bool (*done)(const sa_view *), sa_view *v, fl_resp *r) {
  if (fl__pg_cmd(c, "BEGIN") || load_view(c, round_id, device_id, true, v))
    return -1;
  if (v->found && done(v)) {
    send_ack(r, round_id, v, true);
    return 0;
  }
  return check_view(v, phase, r);
}

static bool shares_done(const sa_view *v) {
  return v->shares_sent;
}
static bool unmask_done(const sa_view *v) {
  return v->unmasked;
}

/* ----- POST /v1/secagg/keys ----------------------------------------------------------------- */

void fl__secagg_h_keys(fl_srv *s, fl_req *q, fl_resp *r) {
  (void)s; /* the policy (auth/pipeline.c) has done what needed the server */
  PGconn *c = q->auth->c;
  const Fl__V1__SignedRequest *sr = q->auth->sr;
  const uint8_t *pub = q->auth->pub;
  uint8_t d[FL_SHA256_LEN];
  sa_view v = {0};
  Fl__V1__SecAggAdvertise *a =
      (Fl__V1__SecAggAdvertise *)unpack_body(q->auth, &fl__v1__sec_agg_advertise__descriptor, r);
  if (a == NULL)
    goto out;
  if (a->c_pk.len != 32 || a->s_pk.len != 32 || a->signature.len != FL_SIG_LEN) {
    fl__resp_dev_error(r, 400, "malformed_request",
                       "SecAggAdvertise needs 32-byte c_pk and s_pk and a 64-byte signature", 0);
    goto out;
  }
  /* The key signature travels to the neighbours, which check it: checked here first. */
  if (fl__secagg_keys_digest(sr->device_id, a->round_id, a->c_pk.data, 32, a->s_pk.data, 32, d) ||
      fl__verify_raw(pub, d, sizeof d, a->signature.data, a->signature.len) != FL_OK) {
    fl__resp_dev_error(r, 401, "bad_signature", "the key signature does not verify", 0);
    goto out;
  }
  if (fl__pg_cmd(c, "BEGIN") || load_view(c, a->round_id, sr->device_id, true, &v))
    goto unavail;
  if (v.member && v.found) {
    bool same = memcmp(v.c_pk, a->c_pk.data, 32) == 0 && memcmp(v.s_pk, a->s_pk.data, 32) == 0;
    if (same)
      send_ack(r, a->round_id, &v, true);
    else
      fl__resp_dev_error(r, 409, "conflicting_keys", "other keys were advertised for this round",
                         0);
    goto out;
  }
  if (!check_view(&v, "keys", r))
    goto out;
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, a->round_id);
  fl__pgp_u64(&p, sr->device_id);
  fl__pgp_bin(&p, a->c_pk.data, 32);
  fl__pgp_bin(&p, a->s_pk.data, 32);
  fl__pgp_bin(&p, a->signature.data, a->signature.len);
  if (exec_ok(c,
              "INSERT INTO secagg_members (round_id, device_id, c_pk, s_pk, key_sig)"
              " VALUES ($1, $2, $3, $4, $5)",
              &p) ||
      fl__pg_cmd(c, "COMMIT"))
    goto unavail;
  send_ack(r, a->round_id, &v, false);
  goto out;
unavail:
  unavailable(r);
out:
  free(v.nbr);
  fl__v1__sec_agg_advertise__free_unpacked(a, NULL);
}

/* ----- POST /v1/secagg/shares --------------------------------------------------------------- */

/* One sealed message per neighbour, from this participant, of the sealed length. */
static int check_shares(const sa_view *v, const Fl__V1__SecAggShares *m, fl_resp *r) {
  bool *seen = calloc(v->d + 1, 1);
  int ok = seen != NULL && m->n_shares == v->d;
  for (size_t i = 0; ok && i < m->n_shares; i++) {
    const Fl__V1__SecAggSealed *x = m->shares[i];
    int k = nbr_index(v, x->receiver);
    ok = x->sender == v->participant && k >= 0 && !seen[k] &&
         x->ciphertext.len == FL_SECAGG_SEALED_BYTES;
    if (ok)
      seen[k] = true;
  }
  free(seen);
  if (!ok)
    fl__resp_dev_error(r, 422, "bad_shares",
                       "exactly one 104-byte sealed share per neighbour, sent by the participant",
                       0);
  return ok;
}

void fl__secagg_h_shares(fl_srv *s, fl_req *q, fl_resp *r) {
  (void)s; /* the policy (auth/pipeline.c) has done what needed the server */
  PGconn *c = q->auth->c;
  const Fl__V1__SignedRequest *sr = q->auth->sr;
  sa_view v = {0};
  char *recv = NULL, *hex = NULL;
  Fl__V1__SecAggShares *m =
      (Fl__V1__SecAggShares *)unpack_body(q->auth, &fl__v1__sec_agg_shares__descriptor, r);
  if (m == NULL)
    goto out;
  int rc = begin_phase(c, m->round_id, sr->device_id, "shares", shares_done, &v, r);
  if (rc < 0)
    goto unavail;
  if (rc == 0 || !check_shares(&v, m, r))
    goto out;
  recv = malloc(m->n_shares * 12 + 3);
  hex = malloc(m->n_shares * (2 * FL_SECAGG_SEALED_BYTES + 1) + 3);
  if (recv == NULL || hex == NULL)
    goto unavail;
  char *wr = recv, *wh = hex;
  wr += sprintf(wr, "{");
  wh += sprintf(wh, "{");
  for (size_t i = 0; i < m->n_shares; i++) {
    wr += sprintf(wr, "%s%u", i ? "," : "", m->shares[i]->receiver);
    wh += sprintf(wh, "%s", i ? "," : "");
    fl__hex(m->shares[i]->ciphertext.data, FL_SECAGG_SEALED_BYTES, wh);
    wh += 2 * FL_SECAGG_SEALED_BYTES;
  }
  sprintf(wr, "}");
  sprintf(wh, "}");
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, m->round_id);
  fl__pgp_u64(&p, v.participant);
  fl__pgp_text(&p, recv);
  fl__pgp_text(&p, hex);
  fl__pgp_u64(&p, sr->device_id);
  if (exec_ok(c,
              "WITH ins AS (INSERT INTO secagg_shares (round_id, receiver, sender, sealed)"
              " SELECT $1, t.r, $2, decode(t.h, 'hex')"
              " FROM unnest($3::int[], $4::text[]) AS t(r, h))"
              " UPDATE secagg_members SET shares_sent = true, reported_at = now()"
              " WHERE round_id = $1 AND device_id = $5",
              &p) ||
      fl__pg_cmd(c, "COMMIT"))
    goto unavail;
  send_ack(r, m->round_id, &v, false);
  goto out;
unavail:
  unavailable(r);
out:
  free(recv);
  free(hex);
  free(v.nbr);
  fl__v1__sec_agg_shares__free_unpacked(m, NULL);
}

/* ----- POST /v1/secagg/unmask --------------------------------------------------------------- */

/* The neighbours' flags (alive, in_sum) in neighbour order. */
static int nbr_flags(PGconn *c, uint64_t round_id, const sa_view *v, bool *alive, bool *in_sum) {
  char *lit = nbr_literal(v);
  fl_pgp p;
  if (lit == NULL)
    return -1;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, round_id);
  fl__pgp_text(&p, lit);
  PGresult *r = fl__pg_exec(c,
                            "SELECT participant, alive, in_sum FROM secagg_members"
                            " WHERE round_id = $1 AND participant = ANY($2::int[])",
                            &p, false, NULL);
  free(lit);
  if (r == NULL)
    return -1;
  for (int i = 0; i < PQntuples(r); i++) {
    int k = nbr_index(v, (uint32_t)fl__pg_u64(r, i, 0));
    if (k >= 0) {
      alive[k] = PQgetvalue(r, i, 1)[0] == 't';
      in_sum[k] = PQgetvalue(r, i, 2)[0] == 't';
    }
  }
  PQclear(r);
  return 0;
}

/* Exactly one share per live neighbour: of b when it is in the sum, of s_sk when not (never
 * both: with both, its input would be unmasked alone), each the 44 bytes of a valid share
 * whose x is this participant. */
static int check_unmask(const sa_view *v, const bool *alive, const bool *in_sum,
                        const Fl__V1__SecAggUnmask *m, fl_resp *r) {
  bool *seen = calloc(v->d + 1, 1);
  uint32_t want = 0;
  for (uint32_t i = 0; i < v->d; i++)
    want += alive[i];
  int ok = seen != NULL && m->n_shares == want;
  for (size_t i = 0; ok && i < m->n_shares; i++) {
    const Fl__V1__SecAggUnmaskShare *x = m->shares[i];
    fl_shamir_share sh;
    int k = nbr_index(v, x->owner);
    ok = k >= 0 && alive[k] && !seen[k] && x->self_mask == in_sum[k] &&
         x->share.len == FL_SHAMIR_SHARE_LEN && fl__shamir_decode(x->share.data, &sh) == FL_OK &&
         sh.x == v->participant;
    if (ok)
      seen[k] = true;
  }
  free(seen);
  if (!ok)
    fl__resp_dev_error(r, 422, "bad_unmask",
                       "exactly one share per live neighbour: of b for a survivor, of s_sk"
                       " for a dropped one, 44 bytes with x = the participant",
                       0);
  return ok;
}

static int insert_unmask(PGconn *c, uint64_t device_id, const sa_view *v,
                         const Fl__V1__SecAggUnmask *m) {
  size_t n = m->n_shares;
  char *own = malloc(n * 12 + 3), *kind = malloc(n * 2 + 3),
       *hex = malloc(n * (2 * FL_SHAMIR_SHARE_LEN + 1) + 3);
  int rc = -1;
  if (own == NULL || kind == NULL || hex == NULL)
    goto out;
  char *wo = own, *wk = kind, *wh = hex;
  wo += sprintf(wo, "{");
  wk += sprintf(wk, "{");
  wh += sprintf(wh, "{");
  for (size_t i = 0; i < n; i++) {
    wo += sprintf(wo, "%s%u", i ? "," : "", m->shares[i]->owner);
    wk += sprintf(wk, "%s%c", i ? "," : "", m->shares[i]->self_mask ? 't' : 'f');
    wh += sprintf(wh, "%s", i ? "," : "");
    fl__hex(m->shares[i]->share.data, FL_SHAMIR_SHARE_LEN, wh);
    wh += 2 * FL_SHAMIR_SHARE_LEN;
  }
  sprintf(wo, "}");
  sprintf(wk, "}");
  sprintf(wh, "}");
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, m->round_id);
  fl__pgp_u64(&p, v->participant);
  fl__pgp_text(&p, own);
  fl__pgp_text(&p, kind);
  fl__pgp_text(&p, hex);
  fl__pgp_u64(&p, device_id);
  rc = exec_ok(c,
               "WITH ins AS (INSERT INTO secagg_unmask (round_id, owner, holder, self_mask, share)"
               " SELECT $1, t.o, $2, t.k, decode(t.h, 'hex')"
               " FROM unnest($3::int[], $4::bool[], $5::text[]) AS t(o, k, h))"
               " UPDATE secagg_members SET unmasked = true, reported_at = now()"
               " WHERE round_id = $1 AND device_id = $6",
               &p);
out:
  free(own);
  free(kind);
  free(hex);
  return rc;
}

void fl__secagg_h_unmask(fl_srv *s, fl_req *q, fl_resp *r) {
  (void)s; /* the policy (auth/pipeline.c) has done what needed the server */
  PGconn *c = q->auth->c;
  const Fl__V1__SignedRequest *sr = q->auth->sr;
  sa_view v = {0};
  bool *alive = NULL, *in_sum = NULL;
  Fl__V1__SecAggUnmask *m =
      (Fl__V1__SecAggUnmask *)unpack_body(q->auth, &fl__v1__sec_agg_unmask__descriptor, r);
  if (m == NULL)
    goto out;
  int rc = begin_phase(c, m->round_id, sr->device_id, "unmask", unmask_done, &v, r);
  if (rc < 0)
    goto unavail;
  if (rc == 0)
    goto out;
  if (!v.in_sum) {
    fl__resp_dev_error(r, 403, "not_in_sum", "only participants whose input is in the sum unmask",
                       0);
    goto out;
  }
  alive = calloc(v.d + 1, 1);
  in_sum = calloc(v.d + 1, 1);
  if (alive == NULL || in_sum == NULL || nbr_flags(c, m->round_id, &v, alive, in_sum))
    goto unavail;
  if (!check_unmask(&v, alive, in_sum, m, r))
    goto out;
  if (insert_unmask(c, sr->device_id, &v, m) || fl__pg_cmd(c, "COMMIT"))
    goto unavail;
  send_ack(r, m->round_id, &v, false);
  goto out;
unavail:
  unavailable(r);
out:
  free(alive);
  free(in_sum);
  free(v.nbr);
  fl__v1__sec_agg_unmask__free_unpacked(m, NULL);
}

/* ----- POST /v1/secagg/state ---------------------------------------------------------------- */

/* What a state answer points into: the results stay alive until it is packed. */
typedef struct state_bufs {
  PGresult *peers, *inbox, *surv;
  Fl__V1__SecAggPeer *pv, **pp;
  Fl__V1__SecAggSealed *sv, **sp;
  uint32_t *survivors;
} state_bufs;

static void state_free(state_bufs *b) {
  PQclear(b->peers);
  PQclear(b->inbox);
  PQclear(b->surv);
  free(b->pv);
  free(b->pp);
  free(b->sv);
  free(b->sp);
  free(b->survivors);
}

static ProtobufCBinaryData bin(const PGresult *r, int row, int col) {
  return (ProtobufCBinaryData){(size_t)PQgetlength(r, row, col),
                               (uint8_t *)PQgetvalue(r, row, col)};
}

/* The neighbours' keys (from the share phase on). */
static int state_peers(PGconn *c, uint64_t round_id, const sa_view *v, state_bufs *b,
                       Fl__V1__SecAggState *st) {
  char *lit = nbr_literal(v);
  fl_pgp p;
  if (lit == NULL)
    return -1;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, round_id);
  fl__pgp_text(&p, lit);
  b->peers = fl__pg_exec(c,
                         "SELECT m.participant, m.device_id, d.public_key, m.c_pk, m.s_pk,"
                         " m.key_sig FROM secagg_members m JOIN devices d"
                         " ON d.device_id = m.device_id WHERE m.round_id = $1"
                         " AND m.participant = ANY($2::int[]) ORDER BY m.participant",
                         &p, true, NULL);
  free(lit);
  if (b->peers == NULL)
    return -1;
  int n = PQntuples(b->peers);
  b->pv = calloc((size_t)n + 1, sizeof *b->pv);
  b->pp = calloc((size_t)n + 1, sizeof *b->pp);
  if (b->pv == NULL || b->pp == NULL)
    return -1;
  for (int i = 0; i < n; i++) {
    Fl__V1__SecAggPeer *e = &b->pv[i];
    fl__v1__sec_agg_peer__init(e);
    e->participant = (uint32_t)fl__pg_bin_i32(b->peers, i, 0);
    e->device_id = (uint64_t)fl__pg_bin_i64(b->peers, i, 1);
    e->device_key = bin(b->peers, i, 2);
    e->c_pk = bin(b->peers, i, 3);
    e->s_pk = bin(b->peers, i, 4);
    e->signature = bin(b->peers, i, 5);
    b->pp[i] = e;
  }
  st->n_neighbors = (size_t)n;
  st->neighbors = b->pp;
  return 0;
}

/* The sealed shares to this participant from the live neighbours (from the masked phase on). */
static int state_inbox(PGconn *c, uint64_t round_id, const sa_view *v, state_bufs *b,
                       Fl__V1__SecAggState *st) {
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, round_id);
  fl__pgp_u64(&p, v->participant);
  b->inbox = fl__pg_exec(c,
                         "SELECT s.sender, s.sealed FROM secagg_shares s JOIN secagg_members m"
                         " ON m.round_id = s.round_id AND m.participant = s.sender AND m.alive"
                         " WHERE s.round_id = $1 AND s.receiver = $2 ORDER BY s.sender",
                         &p, true, NULL);
  if (b->inbox == NULL)
    return -1;
  int n = PQntuples(b->inbox);
  b->sv = calloc((size_t)n + 1, sizeof *b->sv);
  b->sp = calloc((size_t)n + 1, sizeof *b->sp);
  if (b->sv == NULL || b->sp == NULL)
    return -1;
  for (int i = 0; i < n; i++) {
    fl__v1__sec_agg_sealed__init(&b->sv[i]);
    b->sv[i].sender = (uint32_t)fl__pg_bin_i32(b->inbox, i, 0);
    b->sv[i].receiver = v->participant;
    b->sv[i].ciphertext = bin(b->inbox, i, 1);
    b->sp[i] = &b->sv[i];
  }
  st->n_inbox = (size_t)n;
  st->inbox = b->sp;
  return 0;
}

/* The neighbours whose masked input is in the sum (unmasking). */
static int state_survivors(PGconn *c, uint64_t round_id, const sa_view *v, state_bufs *b,
                           Fl__V1__SecAggState *st) {
  char *lit = nbr_literal(v);
  fl_pgp p;
  if (lit == NULL)
    return -1;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, round_id);
  fl__pgp_text(&p, lit);
  b->surv = fl__pg_exec(c,
                        "SELECT participant FROM secagg_members WHERE round_id = $1 AND in_sum"
                        " AND participant = ANY($2::int[]) ORDER BY participant",
                        &p, false, NULL);
  free(lit);
  if (b->surv == NULL)
    return -1;
  int n = PQntuples(b->surv);
  b->survivors = calloc((size_t)n + 1, sizeof *b->survivors);
  if (b->survivors == NULL)
    return -1;
  for (int i = 0; i < n; i++)
    b->survivors[i] = (uint32_t)fl__pg_u64(b->surv, i, 0);
  st->n_survivors = (size_t)n;
  st->survivors = b->survivors;
  return 0;
}

/* The answer to a state request from the device's view v. 0, or -1 (database). */
/* later_ms: a poll that was not held (too many parked, wait.c) looks again after that long, on
 * a new connection; 0: one that was held asks again at once. */
static int state_answer(PGconn *c, uint64_t round_id, const sa_view *v, int wait_for,
                        uint32_t later_ms, fl_resp *r) {
  state_bufs b = {0};
  if (!v->found) {
    fl__resp_dev_error(r, 404, "unknown_round", "no such secure-aggregation round", 0);
    return 0;
  }
  if (!v->assigned) {
    fl__resp_dev_error(r, 403, "not_assigned", "device is not assigned to this round", 0);
    return 0;
  }
  Fl__V1__SecAggState st = FL__V1__SEC_AGG_STATE__INIT;
  st.round_id = round_id;
  st.phase = phase_enum(v);
  st.participant = v->participant;
  st.n = v->n;
  st.phase_deadline_ms = v->until_ms;
  st.reason = st.phase == FL__V1__SEC_AGG_PHASE__SECAGG_PHASE_ABANDONED ? (char *)v->reason : "";
  /* A device polling for a later phase needs only to learn that it has not come yet. */
  bool waiting = wait_for != 0 && (int)st.phase < wait_for;
  bool running = st.phase >= FL__V1__SEC_AGG_PHASE__SECAGG_PHASE_SHARES &&
                 st.phase <= FL__V1__SEC_AGG_PHASE__SECAGG_PHASE_UNMASK && v->participant > 0 &&
                 !waiting;
  int rc = -1;
  if (running && state_peers(c, round_id, v, &b, &st))
    goto out;
  if (running && st.phase >= FL__V1__SEC_AGG_PHASE__SECAGG_PHASE_MASKED && v->alive &&
      state_inbox(c, round_id, v, &b, &st))
    goto out;
  if (running && st.phase == FL__V1__SEC_AGG_PHASE__SECAGG_PHASE_UNMASK && v->in_sum &&
      state_survivors(c, round_id, v, &b, &st))
    goto out;
  switch (st.phase) {
    case FL__V1__SEC_AGG_PHASE__SECAGG_PHASE_KEYS:
      st.contributed = v->member;
      break;
    case FL__V1__SEC_AGG_PHASE__SECAGG_PHASE_SHARES:
      st.contributed = v->shares_sent;
      break;
    case FL__V1__SEC_AGG_PHASE__SECAGG_PHASE_MASKED:
      st.contributed = v->accepted;
      break;
    case FL__V1__SEC_AGG_PHASE__SECAGG_PHASE_UNMASK:
      st.contributed = v->unmasked;
      break;
    default:
      break;
  }
  /* Still before its phase after a long poll: ask again at once (the hold was the wait). Not
   * held: later, and the connection is closed, so that the wait holds none of MHD's. */
  static const char *const close_hdr[] = {"Connection", "close", NULL};
  if (waiting)
    st.poll_after_ms = later_ms > 0 ? later_ms : 1;
  if (waiting && later_ms > 0)
    r->headers = close_hdr;
  fl__resp_proto(r, 200, &st.base);
  rc = 0;
out:
  state_free(&b);
  return rc;
}

int fl__secagg_state_answer(PGconn *c, uint64_t round_id, uint64_t device_id, int wait_for,
                            fl_resp *r) {
  sa_view v;
  int rc = load_view(c, round_id, device_id, false, &v)
               ? -1
               : state_answer(c, round_id, &v, wait_for, 0, r);
  free(v.nbr);
  if (rc < 0)
    unavailable(r);
  return rc;
}

/* When a poll that found no room among the parked ones looks again: spread over [h/8, h/4)
 * of its hold h (2.5-5 s for libflclient's 20 s), at least 250 ms. Each such device so makes
 * a request every few seconds instead of one per hold, but its phase reaches it within 5 s,
 * well inside a phase's quiet (15-30 s at the deadlines that fleets this large use). */
static uint32_t unparked_later_ms(uint64_t device_id, uint32_t hold_ms) {
  uint32_t h = hold_ms < FL_SECAGG_HOLD_MAX_MS ? hold_ms : FL_SECAGG_HOLD_MAX_MS;
  uint32_t lo = h / 8 > 250 ? h / 8 : 250;
  uint64_t x = (device_id ^ (uint64_t)fl__now_ms()) * 0x9e3779b97f4a7c15ULL;
  return lo + (uint32_t)((x >> 33) % lo);
}

void fl__secagg_h_state(fl_srv *s, fl_req *q, fl_resp *r) {
  PGconn *c = q->auth->c;
  const Fl__V1__SignedRequest *sr = q->auth->sr;
  sa_view v = {0};
  Fl__V1__SecAggStateRequest *m = (Fl__V1__SecAggStateRequest *)unpack_body(
      q->auth, &fl__v1__sec_agg_state_request__descriptor, r);
  if (m == NULL)
    goto out;
  if (load_view(c, m->round_id, sr->device_id, false, &v)) {
    unavailable(r);
    goto out;
  }
  /* Before the phase it waits for, in a round still going: parked until the phase comes
   * (wait.c), no thread and no database connection held. */
  int ph = v.found ? (int)phase_enum(&v) : 0, parked = -1;
  if (m->hold_ms > 0 && v.assigned && v.open && (int)m->wait_for > ph &&
      ph >= FL__V1__SEC_AGG_PHASE__SECAGG_PHASE_KEYS &&
      ph <= FL__V1__SEC_AGG_PHASE__SECAGG_PHASE_UNMASK)
    parked = fl__secagg_park(s, q, m->round_id, sr->device_id, (int)m->wait_for, m->hold_ms);
  if (parked == 0)
    goto out;
  if (state_answer(c, m->round_id, &v, (int)m->wait_for,
                   parked == 1 ? unparked_later_ms(sr->device_id, m->hold_ms) : 0, r))
    unavailable(r);
out:
  free(v.nbr);
  fl__v1__sec_agg_state_request__free_unpacked(m, NULL);
}

/* ----- the masked input (POST /v1/updates) --------------------------------------------------- */

int fl__secagg_upload_check(PGconn *c, uint64_t round_id, uint64_t device_id,
                            const Fl__V1__UpdateUpload *u, size_t n_params, fl_resp *r) {
  sa_view v;
  if (load_view(c, round_id, device_id, false, &v))
    return -1;
  int rc = check_view(&v, "masked", r);
  if (rc && !v.alive) {
    fl__resp_dev_error(r, 403, "not_participant",
                       "device is not a live participant (its shares did not arrive in time)", 0);
    rc = 0;
  }
  if (rc && (u->n_delta != 0 || u->secagg_masked.len != 4 * n_params)) {
    fl__resp_dev_error(r, 422, "bad_shape",
                       "a secure-aggregation upload is secagg_masked: one uint32 per parameter,"
                       " and no delta",
                       0);
    rc = 0;
  }
  free(v.nbr);
  return rc;
}
