/*
 * Unpacking an upload without copying its parameters: the envelope's body and the delta
 * tensors' data and indices point into the request's bytes, which must outlive the messages.
 * NULL when the bytes are not such a message (or out of memory): the caller then unpacks with
 * protobuf-c's copying unpack, whose verdict is the one that counts. Free with the matching
 * _free, never with protobuf-c's free_unpacked.
 */
#ifndef FL_AUTH_INPLACE_H
#define FL_AUTH_INPLACE_H

#include <stddef.h>
#include <stdint.h>

#include "fl/v1/fleetlearn.pb-c.h"

Fl__V1__SignedRequest *fl__inplace_envelope(const uint8_t *body, size_t len);
void fl__inplace_envelope_free(Fl__V1__SignedRequest *sr);
Fl__V1__UpdateUpload *fl__inplace_upload(const uint8_t *body, size_t len);
void fl__inplace_upload_free(Fl__V1__UpdateUpload *u);

#endif
