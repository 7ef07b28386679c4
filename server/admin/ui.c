/*
 * The operator dashboard (docs/API.md section 6): its static files under /ui/ on the main
 * listener, and GET /admin/v1/whoami, which tells the dashboard the caller's role.
 *
 * The files are the dashboard's only server side: the page talks to the admin JSON API with
 * the token the operator typed (sessionStorage, an Authorization header, no cookies), so the
 * static route needs no token and holds no secret. It serves GET only, names it can prove
 * are inside the directory (a short whitelist of characters, no segment starting with '.',
 * the last component not a symbolic link, regular files only), with a Content-Type from a
 * fixed table (an unknown extension is a 404, never a guess) and nosniff, a strict
 * Content-Security-Policy (scripts and styles from the same origin only, no inline script,
 * no framing), and an ETag over the content so that a browser revalidates cheaply.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "admin/adminapi.h"
#include "auth/auth.h"

/* The largest file served (Chart.js is 200 KB); a larger one is a 404, not a big read. */
#define UI_MAX_FILE (8u << 20)

static const char *const UI_HEADERS[] = {
    "Content-Security-Policy",
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options", "nosniff", "X-Frame-Options", "DENY", "Referrer-Policy",
    "no-referrer",
    /* Revalidated on every load (the ETag makes that a 304): a new coordinator's files are
     * picked up at once, and nothing of the dashboard lingers in shared caches. */
    "Cache-Control", "no-cache", NULL};

/* "/ui" without its slash: relative URLs in the page need the directory form. */
static const char *const UI_REDIRECT[] = {"Location", "ui/", "Cache-Control", "no-cache", NULL};

static const struct {
  const char *ext, *type;
} TYPES[] = {
    {".html", "text/html; charset=utf-8"},
    {".js", "text/javascript; charset=utf-8"},
    {".css", "text/css; charset=utf-8"},
    {".svg", "image/svg+xml"},
    {".png", "image/png"},
    {".ico", "image/x-icon"},
    {".json", "application/json"},
    {".txt", "text/plain; charset=utf-8"},
};

static char ui_dir[PATH_MAX];
static pthread_once_t ui_once = PTHREAD_ONCE_INIT;
static const fl_config *ui_cfg;

/* --ui-dir, else share/fleetlearn/ui beside the executable's directory: <prefix>/bin ->
 * <prefix>/share/fleetlearn/ui when installed, build/server -> build/share/fleetlearn/ui in a
 * build tree (server/CMakeLists.txt puts a copy there), so neither needs the flag. */
static void resolve_dir(void) {
  char exe[PATH_MAX];
  ssize_t n;
  if (ui_cfg->ui_dir != NULL) {
    snprintf(ui_dir, sizeof ui_dir, "%s", ui_cfg->ui_dir);
  } else if ((n = readlink("/proc/self/exe", exe, sizeof exe - 1)) > 0) {
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    if (slash != NULL)
      *slash = '\0';
    snprintf(ui_dir, sizeof ui_dir, "%.*s/../share/fleetlearn/ui", (int)(sizeof ui_dir - 64), exe);
  }
  struct stat st;
  if (ui_dir[0] == '\0' || stat(ui_dir, &st) != 0 || !S_ISDIR(st.st_mode))
    fl__slog(FL_LOG_WARN, "ui_missing", "dir=%s reason=\"not a directory: /ui/ answers 404\"",
             fl__slog_str(ui_dir));
  else
    fl__slog(FL_LOG_INFO, "ui_dir", "dir=%s", fl__slog_str(ui_dir));
}

const char *fl__ui_dir(fl_srv *s) {
  ui_cfg = &s->cfg;
  pthread_once(&ui_once, resolve_dir);
  return ui_dir;
}

/* A name relative to the directory that cannot leave it: [A-Za-z0-9._-] in segments
 * separated by single '/', no segment empty or starting with '.' (so no "..", no dotfiles).
 * The type from its extension; NULL for anything else. */
static const char *safe_type(const char *rel) {
  size_t n = strlen(rel);
  if (n == 0 || n > 200)
    return NULL;
  for (size_t i = 0; i < n; i++) {
    char c = rel[i];
    bool seg_start = i == 0 || rel[i - 1] == '/';
    if (seg_start && (c == '.' || c == '/'))
      return NULL;
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
          c == '_' || c == '-' || c == '/'))
      return NULL;
  }
  if (rel[n - 1] == '/')
    return NULL;
  for (size_t i = 0; i < sizeof TYPES / sizeof TYPES[0]; i++) {
    size_t e = strlen(TYPES[i].ext);
    if (n > e && strcmp(rel + n - e, TYPES[i].ext) == 0)
      return TYPES[i].type;
  }
  return NULL;
}

/* The file's bytes (a regular file, not a symbolic link, at most UI_MAX_FILE); NULL else. */
static char *slurp(const char *path, size_t *len) {
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  struct stat st;
  char *buf = NULL;
  if (fd < 0)
    return NULL;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > UI_MAX_FILE)
    goto done;
  buf = malloc((size_t)st.st_size + 1);
  size_t got = 0;
  while (buf != NULL && got < (size_t)st.st_size) {
    ssize_t k = read(fd, buf + got, (size_t)st.st_size - got);
    if (k < 0 && errno == EINTR)
      continue;
    if (k <= 0) {
      free(buf);
      buf = NULL;
    } else {
      got += (size_t)k;
    }
  }
  if (buf != NULL)
    *len = got;
done:
  close(fd);
  return buf;
}

/* Does If-None-Match name this ETag (a list, weak or strong, or "*")? */
static bool etag_matches(const char *inm, const char *etag) {
  if (inm == NULL)
    return false;
  if (strcmp(inm, "*") == 0)
    return true;
  size_t n = strlen(etag);
  for (const char *p = strstr(inm, etag); p != NULL; p = strstr(p + 1, etag))
    if ((p[n] == '\0' || p[n] == ',' || p[n] == ' ') &&
        (p == inm || p[-1] == ' ' || p[-1] == ',' || p[-1] == '/'))
      return true;
  return false;
}

static void not_found(fl_resp *r) {
  fl__resp_text(r, 404, "text/plain; charset=utf-8", "not found\n");
  r->headers = UI_HEADERS;
  r->reason = "not_found";
}

/* GET /ui/<file> ("/ui/" is index.html) and GET /ui (a redirect to "ui/"). */
void fl__ui_static(fl_srv *s, fl_req *q, fl_resp *r) {
  if (strcmp(q->path, "/ui") == 0) {
    fl__resp_text(r, 308, "text/plain; charset=utf-8", "ui/\n");
    r->headers = UI_REDIRECT;
    return;
  }
  const char *rel = q->path + strlen("/ui/");
  if (*rel == '\0')
    rel = "index.html";
  const char *type = safe_type(rel);
  const char *dir = fl__ui_dir(s);
  char path[PATH_MAX + 256];
  size_t len = 0;
  char *data = NULL;
  if (type == NULL || dir[0] == '\0') {
    not_found(r);
    return;
  }
  snprintf(path, sizeof path, "%s/%s", dir, rel);
  data = slurp(path, &len);
  if (data == NULL) {
    not_found(r);
    return;
  }
  uint8_t h[FL_SHA256_LEN];
  char hex[2 * FL_SHA256_LEN + 1];
  fl__sha256(data, len, h);
  fl__hex(h, 16, hex);
  snprintf(r->etag, sizeof r->etag, "\"%s\"", hex);
  r->headers = UI_HEADERS;
  if (etag_matches(fl__req_header(q, "If-None-Match"), r->etag)) {
    free(data);
    free(r->data);
    r->status = 304;
    r->data = NULL;
    r->len = 0;
    r->content_type = NULL;
    return;
  }
  free(r->data);
  r->status = 200;
  r->content_type = type;
  r->data = data;
  r->len = len;
}

/* GET /admin/v1/whoami (any role): the caller's token id, name, role and expiry, so that the
 * dashboard shows only the buttons the role may use (the API refuses the others anyway). */
void fl__admin_whoami(fl_srv *s, fl_req *q, fl_resp *r) {
  admin_ctx a;
  fl_pgp p;
  if (fl__admin_begin(s, q, r, &a))
    return;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, q->auth->token_id);
  fl__admin_json_query(r, a.c, NULL,
                       "SELECT json_build_object('token_id', token_id, 'name', name, 'role', role,"
                       " 'bootstrap', bootstrap, 'expires_at', expires_at)::text"
                       " FROM admin_tokens WHERE token_id = $1",
                       &p, true);
  fl__admin_end(s, &a);
}
