/*
 * Connection deadlines libmicrohttpd does not have (conns.c). MHD's --timeout is an idle
 * timeout: every byte restarts it, so a client that trickles one header byte every few seconds
 * keeps a connection forever (slowloris). Each connection is tracked from its accept to its
 * close (MHD_OPTION_NOTIFY_CONNECTION) in one of three phases, set by the connection's own
 * event-loop thread:
 *   header  waiting for a request header (since the accept or the previous response): the
 *           whole header must arrive within --header-timeout;
 *   body    receiving a body: each window of --body-timeout must bring --min-body-rate bytes
 *           per second on average;
 *   busy    the request is being handled or answered (an upload suspended until its group
 *           commit is busy): no deadline of ours, MHD's idle timeout applies to the answer.
 * A reaper thread checks the deadlines four times a second and closes a connection past one
 * with shutdown(2) on its socket: MHD's loop then sees the end of the stream and closes it
 * the usual way (request callbacks, counters, per-address accounting). The socket stays this
 * connection's while the reaper holds the table lock: MHD reports the close (and the record
 * leaves the table, under that lock) before it closes the descriptor.
 */
#ifndef FL__HTTP_CONNS_H
#define FL__HTTP_CONNS_H

#include <microhttpd.h>
#include <stddef.h>
#include <stdint.h>

#include "server.h"

typedef struct fl_conns fl_conns;
typedef struct fl_conn fl_conn;

/* Starts the reaper with the deadlines of cfg; it reports to m (fl__metrics_connections). */
int fl__conns_new(fl_conns **out, const fl_config *cfg, fl_metrics *m);
/* Stops the reaper; every connection must have been closed (the daemons stopped). */
void fl__conns_free(fl_conns *t);
/* MHD_OPTION_NOTIFY_CONNECTION callback; cls is the fl_conns. */
void fl__conns_notify(void *cls, struct MHD_Connection *mc, void **socket_context,
                      enum MHD_ConnectionNotificationCode code);
/* The record of a connection (NULL when it could not be tracked). */
fl_conn *fl__conn_of(struct MHD_Connection *mc);
/* Phase changes, from the connection's thread; a NULL record is ignored. */
void fl__conn_header_done(fl_conn *c, bool body_follows);
void fl__conn_body(fl_conn *c, size_t n);
void fl__conn_busy(fl_conn *c);
void fl__conn_idle(fl_conn *c); /* answered: the next request's header is awaited */

#endif
