/*
 * libflclient built without libcurl (FL_WITH_CURL=OFF, docs/PORTING.md): there is no built-in
 * transport. fl_transport_curl() stays exported, so that the library's ABI (client/flclient.map,
 * the SONAME) is the same in every build and a program linked against a full build gets a clear
 * refusal instead of an unresolved symbol; fl_client_new() without opts->transport reaches it
 * and fails the same way.
 */
#include "client_internal.h"

fl_err fl_transport_curl(fl_transport *out, const fl_client_opts *in) {
  if (out == NULL || in == NULL)
    return FL_E_INVAL;
  fl_client_opts opts;
  int err = fl__opts_read(in, &opts);
  if (err != FL_OK)
    return err;
  fl__opts_log(&opts,
               "fl_transport_curl: this libflclient was built without libcurl (FL_WITH_CURL=OFF):"
               " set fl_client_opts.transport to the embedder's transport");
  return FL_E_UNSUPPORTED;
}

bool fl__curl_transport_keep_body(const fl_transport *tr) {
  (void)tr;
  return false;
}
