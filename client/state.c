/*
 * The state directory: everything a device must keep across reboots and power loss.
 *
 *   lock          held with flock() while a handle has the directory open
 *   device.key    Ed25519 private key, PKCS#8 PEM, 0600
 *   identity      device id and the pinned coordinator key, text, 0600
 *   rollout       hashes of the active and previous inference models, text
 *   models/<sha256 hex>.pb   verified ModelVersion messages, cache by content hash
 *
 * Every file is replaced atomically (temp file, fsync, rename, fsync of the directory), so after
 * a power loss a file holds either its old or its new content. What can remain is a temp file;
 * opening the directory removes those (their names contain ".tmp").
 *
 * One exception: a model written to the cache for training only (fl__write_file_fast) is
 * renamed into place without an fsync. It is content-addressed and verified again, signature
 * and digest, every time it is loaded, so after a power loss a torn or empty file is refused
 * like a tampered one, removed, and downloaded again: the cost of a crash is one download, and
 * a round no longer waits for the disk. A cached model that becomes the inference model is
 * synced (fl__file_sync) before the rollout pointer names it, since it must survive a reboot.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "client_internal.h"

#define IDENTITY_MAGIC "fleetlearn-identity 1"

int fl__state_path(const fl_client *c, char *out, size_t out_len, const char *fmt, ...) {
  int n = snprintf(out, out_len, "%s/", c->state_dir);
  if (n < 0 || (size_t)n >= out_len)
    return FL_E_TOOBIG;
  va_list ap;
  va_start(ap, fmt);
  int m = vsnprintf(out + n, out_len - (size_t)n, fmt, ap);
  va_end(ap);
  if (m < 0 || (size_t)m >= out_len - (size_t)n)
    return FL_E_TOOBIG;
  return FL_OK;
}

static int mkdir_0700(const char *path) {
  if (mkdir(path, 0700) == 0 || errno == EEXIST)
    return FL_OK;
  return FL_E_IO;
}

/* A temp file is anything with ".tmp" in its name: fl__write_file_atomic names its temp files
 * that way, and no state file does. */
static int remove_temp_files(const char *dir) {
  DIR *d = opendir(dir);
  if (d == NULL)
    return errno == ENOENT ? FL_OK : FL_E_IO;
  int err = FL_OK;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (strstr(e->d_name, ".tmp") == NULL)
      continue;
    if (unlinkat(dirfd(d), e->d_name, 0) != 0 && errno != ENOENT)
      err = FL_E_IO;
  }
  closedir(d);
  return err;
}

int fl__state_recover(const char *dir) {
  char models[FL__PATH_MAX];
  int n = snprintf(models, sizeof models, "%s/models", dir);
  if (n < 0 || (size_t)n >= sizeof models)
    return FL_E_TOOBIG;
  int err = remove_temp_files(dir);
  int err2 = remove_temp_files(models);
  return err != FL_OK ? err : err2;
}

int fl__state_open(fl_client *c) {
  char path[FL__PATH_MAX];
  if (mkdir_0700(c->state_dir) != FL_OK) {
    fl__client_err(c, "cannot create state directory %s: %s", c->state_dir, strerror(errno));
    return FL_E_IO;
  }
  int err = fl__state_path(c, path, sizeof path, "models");
  if (err != FL_OK)
    return err;
  if (mkdir_0700(path) != FL_OK) {
    fl__client_err(c, "cannot create %s: %s", path, strerror(errno));
    return FL_E_IO;
  }
  err = fl__state_path(c, path, sizeof path, "lock");
  if (err != FL_OK)
    return err;
  c->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (c->lock_fd < 0) {
    fl__client_err(c, "cannot open %s: %s", path, strerror(errno));
    return FL_E_IO;
  }
  /* Two handles on one directory would race on the rollout pointer and the cache. */
  if (flock(c->lock_fd, LOCK_EX | LOCK_NB) != 0) {
    fl__client_err(c, "state directory %s is in use by another handle", c->state_dir);
    close(c->lock_fd);
    c->lock_fd = -1;
    return FL_E_STATE;
  }
  err = fl__state_recover(c->state_dir);
  if (err != FL_OK)
    fl__client_err(c, "cannot remove temp files in %s", c->state_dir);
  return err;
}

void fl__state_close(fl_client *c) {
  if (c->lock_fd >= 0)
    close(c->lock_fd);
  c->lock_fd = -1;
}

static int write_all(int fd, const uint8_t *p, size_t len) {
  while (len > 0) {
    ssize_t w = write(fd, p, len);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0)
      return FL_E_IO;
    p += w;
    len -= (size_t)w;
  }
  return FL_OK;
}

int fl__write_file_fast(const char *path, const void *data, size_t len, unsigned mode) {
  char tmp[FL__PATH_MAX];
  int n = snprintf(tmp, sizeof tmp, "%s.tmp", path);
  if (n < 0 || (size_t)n >= sizeof tmp)
    return FL_E_TOOBIG;
  /* The directory lock makes this handle the only writer; a stale temp file is a leftover. */
  if (unlink(tmp) != 0 && errno != ENOENT)
    return FL_E_IO;
  int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, (mode_t)mode);
  if (fd < 0)
    return FL_E_IO;
  int err = write_all(fd, data, len);
  if (close(fd) != 0)
    err = FL_E_IO;
  if (err == FL_OK && rename(tmp, path) != 0)
    err = FL_E_IO;
  if (err != FL_OK)
    unlink(tmp);
  return err;
}

int fl__file_sync(const char *path) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return errno == ENOENT ? FL_E_NOTFOUND : FL_E_IO;
  int err = fsync(fd) == 0 ? FL_OK : FL_E_IO;
  close(fd);
  if (err != FL_OK)
    return err;
  /* The rename that put it there is durable once its directory is synced. */
  char dir[FL__PATH_MAX];
  int n = snprintf(dir, sizeof dir, "%s", path);
  if (n < 0 || (size_t)n >= sizeof dir)
    return FL_E_TOOBIG;
  char *slash = strrchr(dir, '/');
  if (slash == NULL)
    snprintf(dir, sizeof dir, ".");
  else
    *slash = '\0';
  fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0)
    return FL_E_IO;
  err = fsync(fd) == 0 ? FL_OK : FL_E_IO;
  close(fd);
  return err;
}

int fl__read_file(const fl_allocator *a, const char *path, size_t max, uint8_t **out,
                  size_t *out_len) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return errno == ENOENT ? FL_E_NOTFOUND : FL_E_IO;
  int err = FL_E_IO;
  struct stat st;
  if (fstat(fd, &st) != 0)
    goto out_close;
  err = FL_E_TOOBIG;
  if (st.st_size < 0 || (uint64_t)st.st_size > max)
    goto out_close;
  size_t len = (size_t)st.st_size;
  err = FL_E_NOMEM;
  uint8_t *buf = fl__malloc(a, len);
  if (buf == NULL)
    goto out_close;
  size_t got = 0;
  while (got < len) {
    ssize_t r = read(fd, buf + got, len - got);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0) {
      fl__free(a, buf);
      err = FL_E_IO;
      goto out_close;
    }
    got += (size_t)r;
  }
  *out = buf;
  *out_len = len;
  err = FL_OK;
out_close:
  close(fd);
  return err;
}

/* Loads device.key, or with `create` generates and saves one when there is none. A key file
 * that exists but does not parse is an error: replacing it would silently change identity. */
int fl__state_load_key(fl_client *c, bool create) {
  char path[FL__PATH_MAX];
  int err = fl__state_path(c, path, sizeof path, "device.key");
  if (err != FL_OK)
    return err;
  struct stat st;
  if (stat(path, &st) == 0) {
    if ((st.st_mode & 077) != 0) {
      fl__log(&c->log, FL_LOG_WARN, "%s was readable by others; now 0600", path);
      if (chmod(path, 0600) != 0)
        return FL_E_IO;
    }
    fl_key *k = NULL;
    err = fl__key_load_pem(&k, path);
    if (err != FL_OK) {
      fl__client_err(c, "cannot load device key %s: %s", path, fl_strerror(err));
      return err;
    }
    fl__key_free(c->key);
    c->key = k;
    return FL_OK;
  }
  if (errno != ENOENT)
    return FL_E_IO;
  if (!create)
    return FL_E_NOTFOUND;
  fl_key *k = NULL;
  err = fl__key_generate(&k);
  if (err != FL_OK)
    return err;
  err = fl__key_save_pem(k, path);
  if (err != FL_OK) {
    fl__client_err(c, "cannot save device key %s: %s", path, fl_strerror(err));
    fl__key_free(k);
    return err;
  }
  c->key = k;
  fl__log(&c->log, FL_LOG_INFO, "generated a new device key in %s", path);
  return FL_OK;
}

/* Parses "device_id N" and "coordinator_key HEX" lines after the magic line. */
static int parse_identity(const char *text, uint64_t *id, uint8_t pub[FL_PUBKEY_LEN]) {
  if (strncmp(text, IDENTITY_MAGIC "\n", sizeof IDENTITY_MAGIC) != 0)
    return FL_E_PARSE;
  char hex[2 * FL_PUBKEY_LEN + 1];
  uint64_t v = 0;
  if (sscanf(text + sizeof IDENTITY_MAGIC, "device_id %" SCNu64 "\ncoordinator_key %64s", &v,
             hex) != 2)
    return FL_E_PARSE;
  if (v == 0 || strlen(hex) != 2 * FL_PUBKEY_LEN)
    return FL_E_PARSE;
  if (fl__unhex(hex, pub, FL_PUBKEY_LEN) != FL_OK)
    return FL_E_PARSE;
  *id = v;
  return FL_OK;
}

int fl__state_read_text(fl_client *c, const char *name, size_t max, char path[FL__PATH_MAX],
                        char *text, size_t cap) {
  int err = fl__state_path(c, path, FL__PATH_MAX, "%s", name);
  if (err != FL_OK)
    return err;
  uint8_t *buf = NULL;
  size_t len = 0;
  err = fl__read_file(c->alloc, path, max, &buf, &len);
  if (err != FL_OK)
    return err;
  size_t n = len < cap - 1 ? len : cap - 1;
  memcpy(text, buf, n);
  text[n] = '\0';
  fl__free(c->alloc, buf);
  return FL_OK;
}

int fl__state_load_identity(fl_client *c) {
  char path[FL__PATH_MAX], text[512];
  int err = fl__state_read_text(c, "identity", 4096, path, text, sizeof text);
  if (err != FL_OK)
    return err;
  uint64_t id = 0;
  uint8_t pub[FL_PUBKEY_LEN];
  err = parse_identity(text, &id, pub);
  if (err != FL_OK) {
    fl__client_err(c, "%s is malformed", path);
    return err;
  }
  if (c->coord_from_opts && memcmp(pub, c->coord_pub, FL_PUBKEY_LEN) != 0) {
    fl__client_err(c, "coordinator key in %s differs from the provisioned one", path);
    return FL_E_BADSIG;
  }
  c->device_id = id;
  memcpy(c->coord_pub, pub, FL_PUBKEY_LEN);
  c->have_coord_pub = true;
  return FL_OK;
}

int fl__state_save_identity(fl_client *c, uint64_t device_id, const uint8_t pub[FL_PUBKEY_LEN]) {
  char path[FL__PATH_MAX];
  int err = fl__state_path(c, path, sizeof path, "identity");
  if (err != FL_OK)
    return err;
  char hex[2 * FL_PUBKEY_LEN + 1];
  fl__hex(pub, FL_PUBKEY_LEN, hex);
  char text[256];
  int n = snprintf(text, sizeof text,
                   IDENTITY_MAGIC "\ndevice_id %" PRIu64 "\ncoordinator_key %s\n", device_id, hex);
  if (n < 0 || (size_t)n >= sizeof text)
    return FL_E_TOOBIG;
  err = fl__write_file_atomic(path, text, (size_t)n, 0600);
  if (err != FL_OK) {
    fl__client_err(c, "cannot write %s: %s", path, fl_strerror(err));
    return err;
  }
  c->device_id = device_id;
  memcpy(c->coord_pub, pub, FL_PUBKEY_LEN);
  c->have_coord_pub = true;
  return FL_OK;
}
