/*
 * flctl: one admin API exchange over libcurl, and what the operator sees of the answer.
 */
#include <curl/curl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "flctl.h"

typedef struct buf {
  char *data;
  size_t len;
} buf;

static size_t on_data(char *p, size_t size, size_t n, void *ctx) {
  buf *b = ctx;
  size_t add = size * n;
  char *d = realloc(b->data, b->len + add + 1);
  if (d == NULL)
    return 0; /* curl reports the short write as an error */
  memcpy(d + b->len, p, add);
  b->len += add;
  d[b->len] = '\0';
  b->data = d;
  return add;
}

/* The coordinator's {"error","message"} on stderr, or the raw body when it is not JSON. */
static void print_refusal(long status, const json_t *j, const buf *b) {
  const char *reason = json_string_value(json_object_get(j, "error"));
  const char *msg = json_string_value(json_object_get(j, "message"));
  if (reason != NULL)
    fprintf(stderr, "flctl: HTTP %ld %s: %s\n", status, reason, msg ? msg : "");
  else
    fprintf(stderr, "flctl: HTTP %ld: %.200s\n", status, b->data ? b->data : "");
}

json_t *flctl_call(const flctl *f, const char *method, const char *path, const json_t *body) {
  char url[4096], auth[600], why[CURL_ERROR_SIZE] = "";
  buf b = {0};
  json_t *answer = NULL;
  char *payload = body ? json_dumps(body, JSON_COMPACT) : NULL;
  CURL *h = curl_easy_init();
  struct curl_slist *hdr = NULL;
  snprintf(url, sizeof url, "%s%s", f->url, path);
  snprintf(auth, sizeof auth, "Authorization: Bearer %s", f->token ? f->token : "");
  hdr = curl_slist_append(hdr, auth);
  hdr = curl_slist_append(hdr, "Content-Type: application/json");
  if (h == NULL || hdr == NULL || (body != NULL && payload == NULL)) {
    fprintf(stderr, "flctl: out of memory\n");
    goto out;
  }
  curl_easy_setopt(h, CURLOPT_URL, url);
  curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdr);
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_data);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, &b);
  curl_easy_setopt(h, CURLOPT_TIMEOUT, f->timeout_s);
  curl_easy_setopt(h, CURLOPT_ERRORBUFFER, why);
  if (f->cacert != NULL)
    curl_easy_setopt(h, CURLOPT_CAINFO, f->cacert);
  if (strcmp(method, "POST") == 0)
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, payload ? payload : "{}");
  CURLcode rc = curl_easy_perform(h);
  if (rc != CURLE_OK) {
    fprintf(stderr, "flctl: %s %s: %s\n", method, url, why[0] ? why : curl_easy_strerror(rc));
    if (rc == CURLE_PEER_FAILED_VERIFICATION || rc == CURLE_SSL_CACERT_BADFILE)
      fprintf(stderr,
              "flctl: (a private CA: --cacert FILE, or CURL_CA_BUNDLE / SSL_CERT_FILE%s%s)\n",
              f->cacert ? "; used " : "", f->cacert ? f->cacert_from : "");
    goto out;
  }
  long status = 0;
  curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
  json_t *j = b.data ? json_loads(b.data, JSON_DECODE_ANY, NULL) : NULL;
  if (status == 200 && j != NULL) {
    answer = j;
    goto out;
  }
  print_refusal(status, j, &b);
  json_decref(j);
out:
  curl_slist_free_all(hdr);
  curl_easy_cleanup(h);
  free(payload);
  free(b.data);
  return answer;
}

/* ----- cells and tables ---------------------------------------------------------------------- */

static char *number_text(double v) {
  char s[64];
  if (v == floor(v) && fabs(v) < 1e15)
    snprintf(s, sizeof s, "%.0f", v);
  else
    snprintf(s, sizeof s, "%.6g", v);
  return strdup(s);
}

/* {"a":1,"b":"x"} as "a=1 b=x" (nested values compact). */
static char *object_text(const json_t *o) {
  size_t cap = 64, len = 0;
  char *s = malloc(cap);
  const char *k;
  json_t *v;
  if (s == NULL)
    return NULL;
  s[0] = '\0';
  json_object_foreach((json_t *)o, k, v) {
    char *cell = flctl_cell(v);
    size_t need = len + strlen(k) + (cell ? strlen(cell) : 0) + 3;
    if (need > cap) {
      char *t = realloc(s, need * 2);
      if (t == NULL) {
        free(cell);
        break;
      }
      s = t;
      cap = need * 2;
    }
    len += (size_t)sprintf(s + len, "%s%s=%s", len ? " " : "", k, cell ? cell : "");
    free(cell);
  }
  if (len == 0) {
    free(s);
    return strdup("-");
  }
  return s;
}

char *flctl_cell(const json_t *v) {
  if (v == NULL || json_is_null(v))
    return strdup("-");
  if (json_is_string(v))
    return strdup(json_string_value(v));
  if (json_is_true(v))
    return strdup("yes");
  if (json_is_false(v))
    return strdup("no");
  if (json_is_number(v))
    return number_text(json_number_value(v));
  if (json_is_object(v))
    return object_text(v);
  return json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
}

/* Cell text cut to the column's limit (UTF-8 unaware: admin data is ASCII). */
static char *cell_at(const json_t *row, const flctl_col *c) {
  char *s = flctl_cell(json_object_get(row, c->key));
  if (s != NULL && c->max > 3 && (int)strlen(s) > c->max)
    strcpy(s + c->max - 3, "...");
  return s;
}

void flctl_table(const flctl *f, const json_t *answer, const json_t *rows, const flctl_col *cols) {
  if (f->json) {
    json_dumpf(answer, stdout, JSON_INDENT(2));
    fputc('\n', stdout);
    return;
  }
  int ncol = 0, width[32];
  for (; cols[ncol].key != NULL && ncol < 32; ncol++)
    width[ncol] = (int)strlen(cols[ncol].header);
  size_t i;
  json_t *row;
  json_array_foreach((json_t *)rows, i, row) for (int k = 0; k < ncol; k++) {
    char *s = cell_at(row, &cols[k]);
    if (s != NULL && (int)strlen(s) > width[k])
      width[k] = (int)strlen(s);
    free(s);
  }
  for (int k = 0; k < ncol; k++)
    printf("%-*s%s", width[k], cols[k].header, k + 1 < ncol ? "  " : "\n");
  json_array_foreach((json_t *)rows, i, row) for (int k = 0; k < ncol; k++) {
    char *s = cell_at(row, &cols[k]);
    printf("%-*s%s", k + 1 < ncol ? width[k] : 0, s ? s : "", k + 1 < ncol ? "  " : "\n");
    free(s);
  }
  if (json_array_size(rows) == 0)
    printf("(none)\n");
}

void flctl_object(const flctl *f, const json_t *obj) {
  if (f->json) {
    json_dumpf(obj, stdout, JSON_INDENT(2));
    fputc('\n', stdout);
    return;
  }
  const char *k;
  json_t *v;
  int w = 0;
  json_object_foreach((json_t *)obj, k, v) if ((int)strlen(k) > w) w = (int)strlen(k);
  json_object_foreach((json_t *)obj, k, v) {
    char *s = flctl_cell(v);
    printf("%-*s  %s\n", w, k, s ? s : "");
    free(s);
  }
}
