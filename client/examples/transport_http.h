/* fl-gateway's own plain-HTTP transport (transport_http.c), for a libflclient without libcurl. */
#ifndef FL_GATEWAY_TRANSPORT_HTTP_H
#define FL_GATEWAY_TRANSPORT_HTTP_H

#include <stddef.h>

#include <fl/client.h>

/* A transport to the coordinator at url ("http://host[:port][/prefix]"); timeouts and the
 * answer limit as in fl_client_opts (0: the same defaults). FL_E_INVAL with the reason in why
 * for a URL it cannot use. The caller hands *out to fl_client_new(), which then owns it. */
fl_err gw_transport_http(fl_transport *out, const char *url, long connect_ms, long total_ms,
                         size_t max_body, char *why, size_t why_len);

#endif
