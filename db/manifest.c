/* manifest.c - manifest.json: what a database directory is.
 *
 * The manifest names the format and its version, the vector dimension and
 * metric, the index factory string, the model that made the vectors, the
 * declared fields, and the FAISS checkpoint of each modality (file, the
 * last batch it holds, the id watermark, and the list file of an adopted
 * merged IVF index: binaries before it ignore the member), and whether
 * the database keeps images ("keep_images", absent when it does not; also
 * ignored by binaries before it).  It is replaced atomically:
 * written to manifest.json.tmp, fsync'd, renamed, and the directory
 * fsync'd, so a crash leaves either the old or the new manifest.
 *
 * The manifest carries "checksum", XXH3-64 of its own content (the
 * object without that member, dumped compact with sorted keys), so a
 * flipped bit in it (a model directory, a factory string, a field type)
 * is refused at open instead of quietly changing what the database does.
 * (Index files carry a checksum of their own, written by the index shim.)
 * Manifests written before it have none and are read as before.
 */
#include "db_int.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#define MANIFEST_FORMAT "vlmdb"

static const char *mod_name[VLM__NMOD] = {"image", "text"};

static const char *type_name(vlm_field_type t) {
  switch (t) {
  case VLM_FIELD_INT: return "int";
  case VLM_FIELD_REAL: return "real";
  default: return "text";
  }
}

int vlm__fsync_dir(const char *dir) {
  int fd = open(dir, O_RDONLY | O_DIRECTORY);
  if (fd < 0)
    return vlm_seterr(VLM_EIO, "%s: %s", dir, strerror(errno));
  int rc = fsync(fd);
  int e = errno;
  close(fd);
  if (rc != 0)
    return vlm_seterr(e == ENOSPC ? VLM_ENOSPACE : VLM_EIO, "fsync %s: %s",
                      dir, strerror(e));
  return 0;
}

/* XXH3-64 of root without its "checksum" member, dumped compact with
 * sorted keys (so the pretty layout on disk does not matter). */
static int content_sum(json_t *root, uint64_t *out) {
  json_t *copy = json_copy(root);
  if (!copy)
    return -1;
  json_object_del(copy, "checksum");
  char *text = json_dumps(copy, JSON_COMPACT | JSON_SORT_KEYS);
  json_decref(copy);
  if (!text)
    return -1;
  *out = XXH3_64bits(text, strlen(text));
  free(text);
  return 0;
}

static int parse_hex64(json_t *v, uint64_t *out) {
  const char *s = json_string_value(v);
  char *end;
  if (!s || strlen(s) != 16)
    return -1;
  errno = 0;
  *out = strtoull(s, &end, 16);
  return *end || errno ? -1 : 0;
}

static json_t *hex64(uint64_t v) {
  char s[17];
  snprintf(s, sizeof s, "%016llx", (unsigned long long)v);
  return json_string(s);
}

static int copy_str(char *dst, size_t cap, json_t *v, const char *name,
                    const char *path) {
  if (!json_is_string(v))
    return vlm_seterr(VLM_EFORMAT, "%s: \"%s\" missing or not a string",
                      path, name);
  const char *s = json_string_value(v);
  if (strlen(s) >= cap)
    return vlm_seterr(VLM_EFORMAT, "%s: \"%s\" too long", path, name);
  strcpy(dst, s);
  return 0;
}

int vlm__model_family_ok(const char *name) {
  size_t n = strlen(name);
  if (n < 1 || n >= sizeof ((vlm__manifest *)0)->model_family)
    return -1;
  for (size_t i = 0; i < n; i++)
    if (!((name[i] >= 'a' && name[i] <= 'z') ||
          (name[i] >= '0' && name[i] <= '9') || name[i] == '_'))
      return -1;
  return 0;
}

int vlm__slot_mine(const vlm__manifest *m, int slot) {
  if (!m->nslot_ranges)
    return 1;
  int lo = 0, hi = m->nslot_ranges - 1; /* sorted, disjoint */
  while (lo <= hi) {
    int mid = (lo + hi) / 2;
    if (slot < m->slot_ranges[mid].first)
      hi = mid - 1;
    else if (slot > m->slot_ranges[mid].last)
      lo = mid + 1;
    else
      return 1;
  }
  return 0;
}

/* "cluster": {"digest", "shard", "shards", "slots": [[first, last], ...]}
 * (absent: not a shard). */
static int read_cluster(json_t *c, vlm__manifest *m, const char *path) {
  if (!c)
    return 0;
  json_t *digest = json_object_get(c, "digest");
  json_t *shard = json_object_get(c, "shard");
  json_t *shards = json_object_get(c, "shards");
  json_t *slots = json_object_get(c, "slots");
  const char *d = json_string_value(digest);
  if (!json_is_object(c) || !d || strlen(d) != 16 ||
      strspn(d, "0123456789abcdef") != 16 || !json_is_integer(shards) ||
      json_integer_value(shards) < 1 ||
      json_integer_value(shards) > VLM_CLUSTER_MAX_SHARDS ||
      !json_is_integer(shard) || json_integer_value(shard) < 0 ||
      json_integer_value(shard) >= json_integer_value(shards) ||
      !json_is_array(slots) || json_array_size(slots) < 1 ||
      json_array_size(slots) > VLM_CLUSTER_MAX_RANGES)
    return vlm_seterr(VLM_EFORMAT, "%s: bad \"cluster\"", path);
  for (size_t i = 0; i < json_array_size(slots); i++) {
    json_t *r = json_array_get(slots, i);
    json_t *a = json_array_get(r, 0), *b = json_array_get(r, 1);
    if (!json_is_array(r) || json_array_size(r) != 2 || !json_is_integer(a) ||
        !json_is_integer(b) || json_integer_value(a) < 0 ||
        json_integer_value(b) >= VLM_SLOTS ||
        json_integer_value(a) > json_integer_value(b) ||
        (i && json_integer_value(a) <= m->slot_ranges[i - 1].last))
      return vlm_seterr(VLM_EFORMAT, "%s: bad \"cluster\" slot range %zu",
                        path, i);
    m->slot_ranges[i].first = (int)json_integer_value(a);
    m->slot_ranges[i].last = (int)json_integer_value(b);
  }
  m->nslot_ranges = (int)json_array_size(slots);
  m->shard = (int)json_integer_value(shard);
  m->nshards = (int)json_integer_value(shards);
  strcpy(m->cluster_digest, d);
  return 0;
}

int vlm__manifest_read(const char *dir, vlm__manifest *m) {
  char path[PATH_MAX];
  struct stat st;
  memset(m, 0, sizeof *m);
  if (stat(dir, &st) != 0)
    return vlm_seterr(VLM_ENOTFOUND, "%s: %s", dir, strerror(errno));
  if (!S_ISDIR(st.st_mode))
    return vlm_seterr(VLM_EFORMAT, "%s: not a directory", dir);
  snprintf(path, sizeof path, "%s/manifest.json", dir);
  if (access(path, F_OK) != 0)
    return vlm_seterr(VLM_EFORMAT,
                      "%s: not a vlmdb database (no manifest.json)", dir);
  json_error_t jerr;
  json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
  if (!root)
    return vlm_seterr(VLM_EFORMAT, "%s:%d: not valid JSON: %s", path,
                      jerr.line, jerr.text);
  int rc = 0;
  if (!json_is_object(root)) {
    rc = vlm_seterr(VLM_EFORMAT, "%s: not a JSON object", path);
    goto done;
  }
  json_t *fmt = json_object_get(root, "format");
  if (!json_is_string(fmt) || strcmp(json_string_value(fmt), MANIFEST_FORMAT)) {
    rc = vlm_seterr(VLM_EFORMAT, "%s: not a vlmdb manifest (format is not "
                    "\"vlmdb\")", path);
    goto done;
  }
  json_t *ver = json_object_get(root, "format_version");
  if (!json_is_integer(ver)) {
    rc = vlm_seterr(VLM_EFORMAT, "%s: format_version missing", path);
    goto done;
  }
  if (json_integer_value(ver) != VLM__FORMAT_VERSION) {
    rc = vlm_seterr(VLM_EVERSION,
                    "%s: format version %lld, this vlmdb reads version %d",
                    path, (long long)json_integer_value(ver),
                    VLM__FORMAT_VERSION);
    goto done;
  }
  m->format_version = VLM__FORMAT_VERSION;
  json_t *sum = json_object_get(root, "checksum");
  if (sum) {
    uint64_t want, have;
    if (parse_hex64(sum, &want) != 0) {
      rc = vlm_seterr(VLM_ECORRUPT, "%s: \"checksum\" is not 16 hex digits",
                      path);
      goto done;
    }
    if (content_sum(root, &have) != 0) {
      rc = vlm_seterr(VLM_ENOMEM, "%s", path);
      goto done;
    }
    if (have != want) {
      rc = vlm_seterr(VLM_ECORRUPT, "%s is damaged (its content does not "
                      "match its checksum): restore it from a backup of "
                      "this database", path);
      goto done;
    }
  }
  json_t *dim = json_object_get(root, "dim");
  if (!json_is_integer(dim) || json_integer_value(dim) < 1 ||
      json_integer_value(dim) > 65536) {
    rc = vlm_seterr(VLM_EFORMAT, "%s: bad \"dim\"", path);
    goto done;
  }
  m->dim = (int)json_integer_value(dim);
  json_t *metric = json_object_get(root, "metric");
  if (!json_is_string(metric) || strcmp(json_string_value(metric), "ip")) {
    rc = vlm_seterr(VLM_EUNSUPPORTED, "%s: metric must be \"ip\"", path);
    goto done;
  }
  if ((rc = copy_str(m->factory, sizeof m->factory,
                     json_object_get(root, "index_factory"), "index_factory",
                     path)) ||
      (rc = copy_str(m->model_id, sizeof m->model_id,
                     json_object_get(root, "model_id"), "model_id", path)))
    goto done;
  json_t *mdir = json_object_get(root, "model_dir");
  if (json_is_string(mdir) &&
      (rc = copy_str(m->model_dir, sizeof m->model_dir, mdir, "model_dir",
                     path)))
    goto done;
  /* Absent in manifests written before the model families: every model
   * vlmdb loaded then was a CLIP. */
  json_t *family = json_object_get(root, "model_family");
  if (!family) {
    strcpy(m->model_family, "clip");
  } else if ((rc = copy_str(m->model_family, sizeof m->model_family, family,
                            "model_family", path))) {
    goto done;
  } else if (vlm__model_family_ok(m->model_family) != 0) {
    rc = vlm_seterr(VLM_EFORMAT, "%s: bad \"model_family\"", path);
    goto done;
  }
  /* Absent: the model's own setting (manifests before it was recorded) */
  json_t *orient = json_object_get(root, "image_orientation");
  if (!orient) {
    strcpy(m->image_orientation, "model");
  } else if ((rc = copy_str(m->image_orientation, sizeof m->image_orientation,
                            orient, "image_orientation", path))) {
    goto done;
  } else if (strcmp(m->image_orientation, "apply") &&
             strcmp(m->image_orientation, "ignore")) {
    rc = vlm_seterr(VLM_EFORMAT, "%s: bad \"image_orientation\"", path);
    goto done;
  }
  json_t *fields = json_object_get(root, "fields");
  if (!json_is_array(fields) || json_array_size(fields) > VLM__MAX_FIELDS) {
    rc = vlm_seterr(VLM_EFORMAT, "%s: bad \"fields\"", path);
    goto done;
  }
  for (size_t i = 0; i < json_array_size(fields); i++) {
    json_t *f = json_array_get(fields, i);
    const char *t = json_string_value(json_object_get(f, "type"));
    if ((rc = copy_str(m->fname[i], sizeof m->fname[i],
                       json_object_get(f, "name"), "fields[].name", path)))
      goto done;
    char why[128];
    if (vlm__field_name_ok(m->fname[i], why, sizeof why) != 0) {
      rc = vlm_seterr(VLM_EFORMAT, "%s: field %s", path, why);
      goto done;
    }
    if (t && !strcmp(t, "text"))
      m->ftype[i] = VLM_FIELD_TEXT;
    else if (t && !strcmp(t, "int"))
      m->ftype[i] = VLM_FIELD_INT;
    else if (t && !strcmp(t, "real"))
      m->ftype[i] = VLM_FIELD_REAL;
    else {
      rc = vlm_seterr(VLM_EFORMAT, "%s: field %s: bad type", path,
                      m->fname[i]);
      goto done;
    }
    m->nfields++;
  }
  /* Absent in manifests of databases made before meta.sqlite had page
   * checksums. */
  json_t *ck = json_object_get(root, "sql_page_checksums");
  if (ck && !json_is_boolean(ck)) {
    rc = vlm_seterr(VLM_EFORMAT, "%s: \"sql_page_checksums\" is not a boolean",
                    path);
    goto done;
  }
  m->sql_cksum = json_is_true(ck);
  /* Absent: the database does not keep images (manifests before the
   * setting, and databases made without it). */
  json_t *keep = json_object_get(root, "keep_images");
  if (keep && !json_is_boolean(keep)) {
    rc = vlm_seterr(VLM_EFORMAT, "%s: \"keep_images\" is not a boolean",
                    path);
    goto done;
  }
  m->keep_images = json_is_true(keep);
  if ((rc = read_cluster(json_object_get(root, "cluster"), m, path)))
    goto done;
  json_t *ix = json_object_get(root, "index");
  for (int mod = 0; mod < VLM__NMOD; mod++) {
    json_t *c = json_object_get(ix, mod_name[mod]);
    if (!json_is_object(c))
      continue;
    json_t *file = json_object_get(c, "file");
    json_t *seq = json_object_get(c, "seq");
    json_t *upto = json_object_get(c, "upto");
    if (!json_is_string(file) || !json_is_integer(seq) ||
        !json_is_integer(upto) ||
        strlen(json_string_value(file)) >= sizeof m->ckpt[mod].file ||
        strchr(json_string_value(file), '/')) {
      rc = vlm_seterr(VLM_EFORMAT, "%s: bad index checkpoint \"%s\"", path,
                      mod_name[mod]);
      goto done;
    }
    strcpy(m->ckpt[mod].file, json_string_value(file));
    /* Optional: the list file the index file names (absent in manifests
     * written before it was recorded, and for indexes without one). */
    json_t *lists = json_object_get(c, "lists");
    if (lists && (!json_is_string(lists) ||
                  strlen(json_string_value(lists)) >=
                      sizeof m->ckpt[mod].lists ||
                  strchr(json_string_value(lists), '/') ||
                  json_string_value(lists)[0] == '\0' ||
                  json_string_value(lists)[0] == '.')) {
      rc = vlm_seterr(VLM_EFORMAT, "%s: bad index checkpoint \"%s\" (its "
                      "\"lists\")", path, mod_name[mod]);
      goto done;
    }
    if (lists)
      strcpy(m->ckpt[mod].lists, json_string_value(lists));
    m->ckpt[mod].seq = (uint64_t)json_integer_value(seq);
    m->ckpt[mod].upto = (uint64_t)json_integer_value(upto);
    /* Optional (absent in older manifests: the index is tuned again).
     * An effort without its measured recall was tuned on the indexed
     * vectors themselves, which overstated recall: measured again too. */
    json_t *tuned = json_object_get(c, "tuned");
    json_t *tuned_n = json_object_get(c, "tuned_n");
    json_t *tuned_recall = json_object_get(c, "tuned_recall");
    json_t *tuned_queries = json_object_get(c, "tuned_queries");
    if (json_is_integer(tuned) && json_is_integer(tuned_n) &&
        json_integer_value(tuned) > 0 && json_integer_value(tuned) <= 1 << 20 &&
        json_integer_value(tuned_n) > 0 && json_is_number(tuned_recall) &&
        json_number_value(tuned_recall) >= 0 &&
        json_number_value(tuned_recall) <= 1 &&
        json_is_integer(tuned_queries) &&
        json_integer_value(tuned_queries) > 0 &&
        json_integer_value(tuned_queries) <= 1 << 20) {
      m->ckpt[mod].tuned = (int)json_integer_value(tuned);
      m->ckpt[mod].tuned_n = (int64_t)json_integer_value(tuned_n);
      m->ckpt[mod].tuned_recall = json_number_value(tuned_recall);
      m->ckpt[mod].tuned_queries = (int)json_integer_value(tuned_queries);
    }
  }
  /* Optional: the live bitmaps saved at a checkpoint (livebits.c).  A
   * malformed entry is ignored: open then reads the vector records. */
  json_t *live = ix ? json_object_get(ix, "live") : NULL;
  if (json_is_object(live)) {
    json_t *file = json_object_get(live, "file");
    json_t *seq = json_object_get(live, "seq");
    json_t *next = json_object_get(live, "next");
    if (json_is_string(file) && json_is_integer(seq) &&
        json_is_integer(next) && json_integer_value(seq) >= 0 &&
        json_integer_value(next) >= 0 &&
        strlen(json_string_value(file)) < sizeof m->live_file &&
        !strchr(json_string_value(file), '/')) {
      strcpy(m->live_file, json_string_value(file));
      m->live_seq = (uint64_t)json_integer_value(seq);
      m->live_next = (uint64_t)json_integer_value(next);
    }
  }
done:
  json_decref(root);
  return rc;
}

int vlm__manifest_write(const char *dir, const vlm__manifest *m) {
  char path[PATH_MAX], tmp[PATH_MAX];
  int rc = 0, fd = -1;
  char *text = NULL;
  json_t *root = json_object();
  json_t *fields = json_array();
  json_t *ix = json_object();
  if (!root || !fields || !ix) {
    json_decref(root);
    json_decref(fields);
    json_decref(ix);
    return vlm_seterr(VLM_ENOMEM, "manifest");
  }
  json_object_set_new(root, "format", json_string(MANIFEST_FORMAT));
  json_object_set_new(root, "format_version", json_integer(m->format_version));
  json_object_set_new(root, "dim", json_integer(m->dim));
  json_object_set_new(root, "metric", json_string("ip"));
  json_object_set_new(root, "index_factory", json_string(m->factory));
  json_object_set_new(root, "model_id", json_string(m->model_id));
  json_object_set_new(root, "model_dir", json_string(m->model_dir));
  json_object_set_new(root, "model_family",
                      json_string(m->model_family[0] ? m->model_family
                                                     : "clip"));
  if (!strcmp(m->image_orientation, "apply") ||
      !strcmp(m->image_orientation, "ignore"))
    json_object_set_new(root, "image_orientation",
                        json_string(m->image_orientation));
  if (m->sql_cksum)
    json_object_set_new(root, "sql_page_checksums", json_true());
  if (m->keep_images)
    json_object_set_new(root, "keep_images", json_true());
  for (int i = 0; i < m->nfields; i++) {
    json_t *f = json_object();
    json_object_set_new(f, "name", json_string(m->fname[i]));
    json_object_set_new(f, "type", json_string(type_name(m->ftype[i])));
    json_array_append_new(fields, f);
  }
  json_object_set_new(root, "fields", fields);
  if (m->nslot_ranges) {
    json_t *c = json_object(), *slots = json_array();
    for (int i = 0; c && slots && i < m->nslot_ranges; i++)
      json_array_append_new(slots,
                            json_pack("[ii]", m->slot_ranges[i].first,
                                      m->slot_ranges[i].last));
    json_object_set_new(c, "digest", json_string(m->cluster_digest));
    json_object_set_new(c, "shard", json_integer(m->shard));
    json_object_set_new(c, "shards", json_integer(m->nshards));
    json_object_set_new(c, "slots", slots);
    json_object_set_new(root, "cluster", c);
  }
  for (int mod = 0; mod < VLM__NMOD; mod++) {
    if (!m->ckpt[mod].file[0])
      continue;
    json_t *c = json_object();
    json_object_set_new(c, "file", json_string(m->ckpt[mod].file));
    json_object_set_new(c, "seq", json_integer((json_int_t)m->ckpt[mod].seq));
    json_object_set_new(c, "upto",
                        json_integer((json_int_t)m->ckpt[mod].upto));
    if (m->ckpt[mod].lists[0])
      json_object_set_new(c, "lists", json_string(m->ckpt[mod].lists));
    if (m->ckpt[mod].tuned > 0) {
      json_object_set_new(c, "tuned", json_integer(m->ckpt[mod].tuned));
      json_object_set_new(c, "tuned_n",
                          json_integer((json_int_t)m->ckpt[mod].tuned_n));
      json_object_set_new(c, "tuned_recall",
                          json_real(m->ckpt[mod].tuned_recall));
      json_object_set_new(c, "tuned_queries",
                          json_integer(m->ckpt[mod].tuned_queries));
    }
    json_object_set_new(ix, mod_name[mod], c);
  }
  if (m->live_file[0]) {
    json_t *live = json_object();
    json_object_set_new(live, "file", json_string(m->live_file));
    json_object_set_new(live, "seq", json_integer((json_int_t)m->live_seq));
    json_object_set_new(live, "next", json_integer((json_int_t)m->live_next));
    json_object_set_new(ix, "live", live);
  }
  json_object_set_new(root, "index", ix);
  uint64_t sum;
  if (content_sum(root, &sum) != 0) {
    json_decref(root);
    return vlm_seterr(VLM_ENOMEM, "manifest");
  }
  json_object_set_new(root, "checksum", hex64(sum));
  text = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
  json_decref(root);
  if (!text)
    return vlm_seterr(VLM_ENOMEM, "manifest");

  snprintf(path, sizeof path, "%s/manifest.json", dir);
  snprintf(tmp, sizeof tmp, "%s/manifest.json.tmp", dir);
  fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    rc = vlm_seterr(errno == ENOSPC ? VLM_ENOSPACE : VLM_EIO, "%s: %s", tmp,
                    strerror(errno));
    goto done;
  }
  size_t len = strlen(text), off = 0;
  while (off < len) {
    ssize_t w = VLM__WRITE("file-write", fd, text + off, len - off);
    if (w < 0 && errno == EINTR)
      continue;
    if (w < 0) {
      rc = vlm_seterr(errno == ENOSPC ? VLM_ENOSPACE : VLM_EIO, "%s: %s", tmp,
                      strerror(errno));
      goto done;
    }
    off += (size_t)w;
  }
  if (write(fd, "\n", 1) != 1 || fsync(fd) != 0) {
    rc = vlm_seterr(errno == ENOSPC ? VLM_ENOSPACE : VLM_EIO, "%s: %s", tmp,
                    strerror(errno));
    goto done;
  }
  close(fd);
  fd = -1;
  if (rename(tmp, path) != 0) {
    rc = vlm_seterr(VLM_EIO, "rename %s: %s", tmp, strerror(errno));
    goto done;
  }
  rc = vlm__fsync_dir(dir);
done:
  if (fd >= 0) {
    close(fd);
    unlink(tmp);
  } else if (rc != 0) {
    unlink(tmp);
  }
  free(text);
  return rc;
}
