/* Device API handlers split over devapi.c (enroll, check-in, download, evaluations) and
 * upload.c (update uploads). */
#ifndef FL__DEVAPI_H
#define FL__DEVAPI_H

#include "http.h"

/* A protobuf-c allocator with a byte budget, for unpacking a device's message of wire_len
 * bytes: honest messages unpack to about their wire size, but empty repeated sub-messages take
 * two bytes each on the wire and a struct and a pointer each once unpacked (thirtyfold), which
 * an unauthenticated enrollment could use to make the coordinator allocate gigabytes. Unpacking
 * fails (NULL) once the budget is spent. Free the message with the NULL allocator. */
typedef struct fl_pb_budget {
  ProtobufCAllocator a;
  size_t left;
} fl_pb_budget;
ProtobufCAllocator *fl__pb_budget(fl_pb_budget *b, size_t wire_len);

/* POST /v1/updates (upload.c). */
void fl__devapi_update(fl_srv *s, fl_req *q, fl_resp *r);

#endif
