/*
 * Last-seen telemetry of check-ins (seen.c): devices.last_seen_at and the model version a
 * device reports running, written in batches instead of one synchronous UPDATE per check-in.
 * Best effort: a batch is flushed every FL_SEEN_FLUSH_MS by the rounds ticker or sooner when
 * FL_SEEN_FLUSH_N check-ins wait, with synchronous_commit off; a crash of the coordinator
 * loses at most the unflushed batch, a crash of PostgreSQL the last fraction of a second.
 * Nothing decides with these columns (the admin fleet view and device list show them).
 */
#ifndef FL__SEEN_H
#define FL__SEEN_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stdint.h>

#define FL_SEEN_FLUSH_MS 1000
#define FL_SEEN_FLUSH_N 512
/* Past this many waiting entries (the database is away) new ones are dropped: memory stays
 * bounded, and the next check-in of each device writes it again. */
#define FL_SEEN_MAX 65536

typedef struct fl_seen fl_seen;

int fl__seen_new(fl_seen **out);
void fl__seen_free(fl_seen *s); /* NULL: no-op; unflushed entries are dropped */
/* Records a check-in (now). Returns true when the batch reached FL_SEEN_FLUSH_N (the caller
 * pokes whoever flushes). */
bool fl__seen_note(fl_seen *s, uint64_t device_id, uint64_t running_model_id,
                   uint64_t running_version);
/* Whether a flush is due: FL_SEEN_FLUSH_MS since the last one with entries waiting, or the
 * size threshold. */
bool fl__seen_due(fl_seen *s);
/* Writes the waiting entries (the latest per device) in one transaction. 0, or -1 when the
 * database failed (the entries are dropped: best effort). */
int fl__seen_flush(fl_seen *s, PGconn *c);

#endif
