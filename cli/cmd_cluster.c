/* cmd_cluster.c - `vlmdb split` (a catalog cut by hash slot into one
 * catalog per shard) and `vlmdb cluster check` (shard databases checked
 * against their cluster map and against each other). */
#include "catalog.h"
#include "opts.h"
#include "shard.h"
#include "vlm_cli.h"
#include "vlm_error.h"
#include "vlmdb.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---------------------------------------------------------------- split */

static const char split_usage[] =
    "usage: vlmdb split --cluster FILE --catalog CATALOG --out DIR\n"
    "                   [--images-root DIR] [--format F] [--db DB] [--json]\n"
    "\n"
    "Cut a catalog into one JSONL catalog per shard of the cluster map FILE,\n"
    "in one pass: DIR/shard-I.jsonl holds the rows whose key hashes to a\n"
    "slot of shard I (every shard gets a file, empty or not).  Image paths\n"
    "are made absolute, so the new catalogs work from DIR.  JSONL rows are\n"
    "copied as they are (unknown members kept); CSV, TSV and directory\n"
    "catalogs are written as JSONL.  Rows without a readable key are\n"
    "reported and left out.  The files appear when the split is complete.\n"
    "\n"
    "  --cluster FILE      the cluster map (cluster.json)\n"
    "  --catalog CATALOG   the catalog to split (as `vlmdb ingest` reads it)\n"
    "  --out DIR           where shard-I.jsonl go (created if missing)\n"
    "  --images-root DIR   base directory of relative image paths\n"
    "  --format F          jsonl, csv, tsv or dir (default: from the name)\n"
    "  --db DB             a database whose declared fields type CSV/TSV\n"
    "                      meta.NAME cells (else they stay strings)\n"
    "  --json              print the summary as JSON\n"
    "  -h, --help          this help\n"
    "\n"
    "example:\n"
    "  vlmdb split --cluster cluster.json --catalog photos.jsonl --out parts\n";

typedef struct {
  const char *cmd;
  const vlm_cluster *cluster;
  char *base;     /* directory relative image paths are joined onto */
  FILE **out;     /* one per shard */
  long *rows;     /* rows written per shard */
  long bad;
} splitter;

static int write_row(splitter *sp, const char *key, json_t *obj) {
  int shard = vlm_cluster_shard_of(sp->cluster, key, strlen(key));
  char *line = json_dumps(obj, JSON_COMPACT | JSON_PRESERVE_ORDER |
                                   JSON_REAL_PRECISION(17));
  if (!line) {
    vlm_cli_error(sp->cmd, "out of memory");
    return -1;
  }
  int rc = fprintf(sp->out[shard], "%s\n", line) < 0 ? -1 : 0;
  free(line);
  if (rc) {
    vlm_cli_error(sp->cmd, "writing shard-%d: %s", shard, strerror(errno));
    return -1;
  }
  sp->rows[shard]++;
  return 0;
}

static int is_uri(const char *s) {
  const char *p = s;
  while (isalnum((unsigned char)*p) || *p == '+' || *p == '-' || *p == '.')
    p++;
  return p > s && !strncmp(p, "://", 3);
}

/* JSONL: each line parsed only to find its key and make its image path
 * absolute; everything else is kept as written. */
static int split_jsonl(splitter *sp, const char *path) {
  FILE *f = fopen(path, "r");
  if (!f) {
    vlm_cli_error(sp->cmd, "%s: %s", path, strerror(errno));
    return -1;
  }
  char *line = NULL;
  size_t cap = 0;
  long lineno = 0;
  ssize_t n;
  int status = 0;
  while ((n = getline(&line, &cap, f)) >= 0) {
    lineno++;
    char *s = line;
    if (lineno == 1 && !strncmp(s, "\xef\xbb\xbf", 3))
      s += 3;
    while (isspace((unsigned char)*s))
      s++;
    if (!*s)
      continue;
    json_error_t jerr;
    json_t *obj = (size_t)n == strlen(line)
                      ? json_loads(s, JSON_REJECT_DUPLICATES, &jerr)
                      : NULL;
    json_t *jkey = json_object_get(obj, "key");
    const char *key = json_string_value(jkey);
    if (!json_is_object(obj) || !key || !*key ||
        strlen(key) != json_string_length(jkey) ||
        strlen(key) > VLM_DB_MAX_KEY) {
      vlm_cli_error(sp->cmd, "%s:%ld: no usable \"key\" (bad JSON, or a "
                    "key missing, empty, too long or not a string): left out",
                    path, lineno);
      sp->bad++;
      json_decref(obj);
      continue;
    }
    const char *image = json_string_value(json_object_get(obj, "image"));
    if (image && *image && image[0] != '/' && !is_uri(image)) {
      char *abs = vlm_catalog_resolve_path(sp->base, image);
      if (!abs || json_object_set_new(obj, "image", json_string(abs))) {
        free(abs);
        json_decref(obj);
        vlm_cli_error(sp->cmd, "out of memory");
        status = -1;
        break;
      }
      free(abs);
    }
    status = write_row(sp, key, obj);
    json_decref(obj);
    if (status)
      break;
  }
  if (!status && ferror(f)) {
    vlm_cli_error(sp->cmd, "%s: read: %s", path, strerror(errno));
    status = -1;
  }
  free(line);
  fclose(f);
  return status;
}

static json_t *vector_json(const float *v, int dim) {
  json_t *a = json_array();
  for (int i = 0; a && i < dim; i++)
    json_array_append_new(a, json_real(v[i]));
  return a;
}

/* CSV, TSV, directories: each row as the JSONL object ingest reads the
 * same way. */
static int split_rows(splitter *sp, const char *path,
                      const vlm_catalog_options *copts) {
  vlm_catalog *cat;
  if (vlm_catalog_open(path, copts, &cat)) {
    vlm_cli_error(sp->cmd, "%s", vlm_errmsg());
    return -1;
  }
  vlm_catalog_row row;
  memset(&row, 0, sizeof row);
  int rc, status = 0;
  while ((rc = vlm_catalog_next(cat, &row)) == 1) {
    if (row.error == VLM_SKIP_SYNTAX || row.error == VLM_SKIP_KEY ||
        !row.key) {
      vlm_cli_error(sp->cmd, "%s:%ld: %s: %s: left out", path, row.line,
                    vlm_skip_reason_name(row.error), row.message);
      sp->bad++;
      continue;
    }
    if (row.error) {
      /* a bad row with a key goes to its shard as it is, for that ingest
       * to report; only what the reader kept of it can be written */
      vlm_cli_error(sp->cmd, "%s:%ld: %s: key \"%s\": %s: left out", path,
                    row.line, vlm_skip_reason_name(row.error), row.key,
                    row.message);
      sp->bad++;
      continue;
    }
    json_t *o = json_object();
    json_object_set_new(o, "key", json_string(row.key));
    if (row.image)
      json_object_set_new(o, "image", json_string(row.image));
    if (row.source && (!row.image || strcmp(row.source, row.image)))
      json_object_set_new(o, "source", json_string(row.source));
    if (row.text)
      json_object_set_new(o, "text", json_string(row.text));
    else if (row.caption)
      json_object_set_new(o, "caption", json_string(row.caption));
    if (row.meta_json)
      json_object_set_new(o, "meta", json_loads(row.meta_json, 0, NULL));
    if (row.image_vec)
      json_object_set_new(o, "image_vector",
                          vector_json(row.image_vec, row.dim));
    if (row.text_vec)
      json_object_set_new(o, "text_vector", vector_json(row.text_vec, row.dim));
    if (row.thumb) {
      char *b64 = vlm_base64_encode(row.thumb, row.thumb_len);
      json_object_set_new(o, "thumbnail", json_string(b64 ? b64 : ""));
      free(b64);
    }
    if (row.kept) {
      char *b64 = vlm_base64_encode(row.kept, row.kept_len);
      json_object_set_new(o, "kept_image", json_string(b64 ? b64 : ""));
      free(b64);
    }
    status = write_row(sp, row.key, o);
    json_decref(o);
    if (status)
      break;
  }
  if (rc < 0) {
    vlm_cli_error(sp->cmd, "%s", vlm_errmsg());
    status = -1;
  }
  vlm_catalog_row_clear(&row);
  vlm_catalog_close(cat);
  return status;
}

static int parse_format(const char *s, vlm_catalog_format *out) {
  static const char *const names[] = {"jsonl", "csv", "tsv", "dir"};
  static const vlm_catalog_format formats[] = {
      VLM_CATALOG_JSONL, VLM_CATALOG_CSV, VLM_CATALOG_TSV, VLM_CATALOG_DIR};
  for (int i = 0; i < 4; i++)
    if (!strcmp(s, names[i])) {
      *out = formats[i];
      return 0;
    }
  return -1;
}

/* Every shard's file is open at once: raise the descriptor limit to what
 * the map needs (up to the hard limit). */
static int enough_files(const char *cmd, int nshards) {
  struct rlimit rl;
  rlim_t need = (rlim_t)nshards + 32;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < need) {
    rl.rlim_cur = rl.rlim_max < need ? rl.rlim_max : need;
    setrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur < need) {
      vlm_cli_error(cmd, "%d shards need %llu open files; the limit is %llu",
                    nshards, (unsigned long long)need,
                    (unsigned long long)rl.rlim_cur);
      return -1;
    }
  }
  return 0;
}

int cmd_split(int argc, char **argv) {
  const char *cmd = "split", *cluster_path = NULL, *catalog = NULL,
             *out_dir = NULL, *images_root = NULL, *db_dir = NULL;
  int as_json = 0;
  vlm_catalog_format format = VLM_CATALOG_AUTO;
  static const struct option longopts[] = {
      {"cluster", required_argument, NULL, 'c'},
      {"catalog", required_argument, NULL, 'C'},
      {"out", required_argument, NULL, 'o'},
      {"images-root", required_argument, NULL, 'r'},
      {"format", required_argument, NULL, 'f'},
      {"db", required_argument, NULL, 'd'},
      {"json", no_argument, NULL, 'j'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  vlm_cli_getopt_reset();
  int c;
  while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
    switch (c) {
    case 'c': cluster_path = optarg; break;
    case 'C': catalog = optarg; break;
    case 'o': out_dir = optarg; break;
    case 'r': images_root = optarg; break;
    case 'd': db_dir = optarg; break;
    case 'j': as_json = 1; break;
    case 'f':
      if (parse_format(optarg, &format))
        return vlm_cli_usage_error(cmd, "--format is jsonl, csv, tsv or dir");
      break;
    case 'h': fputs(split_usage, stdout); return VLM_EXIT_OK;
    default: fputs(split_usage, stderr); return VLM_EXIT_USAGE;
    }
  }
  if (!cluster_path || !catalog || !out_dir)
    return vlm_cli_usage_error(cmd, "--cluster, --catalog and --out are "
                               "required");
  if (optind < argc)
    return vlm_cli_usage_error(cmd, "unexpected argument '%s'", argv[optind]);

  int status = VLM_EXIT_RUNTIME;
  vlm_cluster *cluster = NULL;
  vlm_db *db = NULL;
  splitter sp = {.cmd = cmd};
  int nopen = 0;
  vlm_field fields[VLM_DB_MAX_FIELDS];
  vlm_catalog_options copts = {.format = format, .images_root = images_root};
  vlm_db_info info;
  if (vlm_cli_cluster_load(cmd, cluster_path, &cluster))
    goto done;
  sp.cluster = cluster;
  if (db_dir) {
    if (vlm_cli_open_db(cmd, db_dir, 1, &db))
      goto done;
    if (vlm_db_stat(db, &info)) {
      vlm_cli_liberror(cmd, VLM_EIO);
      goto done;
    }
    for (int i = 0; i < info.nfields; i++) {
      fields[i].name = info.field_names[i];
      fields[i].type = info.field_types[i];
    }
    copts.fields = fields;
    copts.nfields = info.nfields;
    copts.dim = info.dim;
  }
  struct stat st;
  if (stat(catalog, &st) != 0) {
    vlm_cli_error(cmd, "%s: %s", catalog, strerror(errno));
    goto done;
  }
  if (format == VLM_CATALOG_AUTO && !S_ISDIR(st.st_mode)) {
    const char *dot = strrchr(catalog, '.');
    if (dot && (!strcasecmp(dot, ".jsonl") || !strcasecmp(dot, ".ndjson") ||
                !strcasecmp(dot, ".json")))
      format = VLM_CATALOG_JSONL;
  }
  if (images_root) {
    sp.base = vlm_catalog_resolve_path(NULL, images_root);
  } else {
    char *slash = strrchr(catalog, '/');
    char *dir = slash ? strndup(catalog, slash == catalog ? 1
                                                          : (size_t)(slash -
                                                                     catalog))
                      : strdup(".");
    sp.base = dir ? vlm_catalog_resolve_path(NULL, dir) : NULL;
    free(dir);
  }
  int n = cluster->nshards;
  sp.out = calloc((size_t)n, sizeof *sp.out);
  sp.rows = calloc((size_t)n, sizeof *sp.rows);
  if (!sp.base || !sp.out || !sp.rows) {
    vlm_cli_error(cmd, "out of memory");
    goto done;
  }
  if (mkdir(out_dir, 0755) != 0 && errno != EEXIST) {
    vlm_cli_error(cmd, "%s: %s", out_dir, strerror(errno));
    goto done;
  }
  if (enough_files(cmd, n))
    goto done;
  char path[PATH_MAX], final[PATH_MAX];
  for (; nopen < n; nopen++) {
    snprintf(path, sizeof path, "%s/shard-%d.jsonl.tmp", out_dir, nopen);
    if (!(sp.out[nopen] = fopen(path, "w"))) {
      vlm_cli_error(cmd, "%s: %s", path, strerror(errno));
      goto done;
    }
  }
  if (format == VLM_CATALOG_JSONL ? split_jsonl(&sp, catalog)
                                  : split_rows(&sp, catalog, &copts))
    goto done;
  int failed = 0;
  for (int s = 0; s < n; s++) {
    failed |= fflush(sp.out[s]) != 0 || fsync(fileno(sp.out[s])) != 0;
    failed |= fclose(sp.out[s]) != 0;
    sp.out[s] = NULL;
  }
  if (failed) {
    vlm_cli_error(cmd, "writing %s: %s", out_dir, strerror(errno));
    goto done;
  }
  for (int s = 0; s < n; s++) {
    snprintf(path, sizeof path, "%s/shard-%d.jsonl.tmp", out_dir, s);
    snprintf(final, sizeof final, "%s/shard-%d.jsonl", out_dir, s);
    if (rename(path, final) != 0) {
      vlm_cli_error(cmd, "rename %s: %s", path, strerror(errno));
      goto done;
    }
  }
  long total = 0;
  for (int s = 0; s < n; s++)
    total += sp.rows[s];
  if (as_json) {
    json_t *o = json_object(), *per = json_array();
    for (int s = 0; s < n; s++)
      json_array_append_new(per, json_integer(sp.rows[s]));
    json_object_set_new(o, "rows", json_integer(total));
    json_object_set_new(o, "bad", json_integer(sp.bad));
    json_object_set_new(o, "shards", per);
    char *text = json_dumps(o, JSON_COMPACT);
    if (text)
      printf("%s\n", text);
    free(text);
    json_decref(o);
  } else {
    printf("split %ld rows into %d shards in %s:", total, n, out_dir);
    for (int s = 0; s < n; s++)
      printf("%s shard-%d %ld", s ? "," : "", s, sp.rows[s]);
    if (sp.bad)
      printf("; left out %ld rows without a usable key", sp.bad);
    printf("\n");
  }
  status = VLM_EXIT_OK;
done:
  for (int s = 0; sp.out && s < nopen; s++) {
    if (sp.out[s])
      fclose(sp.out[s]);
    if (status != VLM_EXIT_OK) {
      snprintf(path, sizeof path, "%s/shard-%d.jsonl.tmp", out_dir, s);
      unlink(path);
    }
  }
  free(sp.out);
  free(sp.rows);
  free(sp.base);
  vlm_db_close(db);
  vlm_cluster_free(cluster);
  return status;
}

/* -------------------------------------------------------- cluster check */

static const char cluster_usage[] =
    "usage: vlmdb cluster check CLUSTER.json DIR...\n"
    "       vlmdb cluster move --map CLUSTER.json --slots A-B --from DIR --to DIR\n"
    "                          [--out NEW.json] (vlmdb cluster move --help)\n"
    "\n"
    "Check a cluster map and the shard databases built for it: the map's\n"
    "slot ranges are disjoint and cover 0..16383; each DIR is a shard of\n"
    "this map (same digest, or the slots the map gives its shard, as for a\n"
    "shard a `cluster move` left alone), with those slots, and\n"
    "holds only keys of those slots; every shard of the map is given once;\n"
    "model, dimension, model family, index kind and fields are the same in\n"
    "all of them.  Prints one line per shard (its items) on stdout and one\n"
    "line per problem on stderr.\n"
    "\n"
    "Exit status: 0 when there is no problem, 1 when there is one, 2 for\n"
    "bad arguments.\n"
    "\n"
    "  --json              the shards and problems as one JSON object\n"
    "  -h, --help          this help\n"
    "\n"
    "example:\n"
    "  vlmdb cluster check cluster.json out/shard-0 out/shard-1\n";

typedef struct {
  const char *cmd;
  int count;
  json_t *list; /* --json: the problems */
} check_problems;

static void check_problem(check_problems *p, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void check_problem(check_problems *p, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  p->count++;
  if (p->list)
    json_array_append_new(p->list, json_string(msg));
  else
    vlm_cli_error(p->cmd, "%s", msg);
}

static void map_problem(void *arg, const char *text) {
  check_problems *p = arg;
  check_problem(p, "%s", text);
}

static int fields_equal(const vlm_db_info *a, const vlm_db_info *b) {
  if (a->nfields != b->nfields)
    return 0;
  for (int i = 0; i < a->nfields; i++)
    if (strcmp(a->field_names[i], b->field_names[i]) ||
        a->field_types[i] != b->field_types[i])
      return 0;
  return 1;
}

/* Keys of db outside its slots: counted with a key-only walk. */
static long misplaced_keys(vlm_db *db, const vlm_cluster *cluster, int shard,
                           long *first_slot, char *first_key, size_t cap) {
  uint64_t cursor = 0;
  long bad = 0;
  do {
    char **keys;
    int n;
    uint64_t next;
    if (vlm_db_scan(db, cursor, 4096, &keys, &n, &next))
      return -1;
    for (int i = 0; i < n; i++) {
      size_t len = strlen(keys[i]);
      if (vlm_cluster_shard_of(cluster, keys[i], len) != shard) {
        if (!bad++) {
          *first_slot = vlm_key_slot(keys[i], len);
          snprintf(first_key, cap, "%s", keys[i]);
        }
      }
    }
    vlm_db_keys_free(keys, n);
    cursor = next;
  } while (cursor);
  return bad;
}

int cmd_cluster(int argc, char **argv) {
  const char *cmd = "cluster";
  int as_json = 0;
  static const struct option longopts[] = {
      {"json", no_argument, NULL, 'j'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  vlm_cli_getopt_reset();
  int c;
  while ((c = getopt_long(argc, argv, "+h", longopts, NULL)) != -1) {
    switch (c) {
    case 'j': as_json = 1; break;
    case 'h': fputs(cluster_usage, stdout); return VLM_EXIT_OK;
    default: fputs(cluster_usage, stderr); return VLM_EXIT_USAGE;
    }
  }
  if (optind < argc && !strcmp(argv[optind], "move"))
    return cmd_cluster_move(argc - optind, argv + optind);
  if (optind >= argc || strcmp(argv[optind], "check"))
    return vlm_cli_usage_error(cmd, "the subcommands are 'check' and "
                               "'move'");
  optind++;
  /* flags may also follow the subcommand */
  int first = optind;
  for (int i = optind; i < argc; i++)
    if (!strcmp(argv[i], "--json")) {
      as_json = 1;
      memmove(&argv[i], &argv[i + 1], (size_t)(argc - i - 1) * sizeof *argv);
      argc--;
      i--;
    }
  if (argc - first < 2)
    return vlm_cli_usage_error(cmd, "check needs CLUSTER.json and at least "
                               "one shard DIR");
  const char *map_path = argv[first];
  int ndirs = argc - first - 1;
  char **dirs = argv + first + 1;

  check_problems p = {.cmd = cmd, .list = as_json ? json_array() : NULL};
  json_t *shards_json = as_json ? json_array() : NULL;
  vlm_cluster *cluster = NULL;
  vlm_db_info *infos = calloc((size_t)ndirs, sizeof *infos);
  int *given = NULL;
  int ref = -1; /* the first database that opened: the others match it */
  if (!infos) {
    vlm_cli_error(cmd, "out of memory");
    return VLM_EXIT_RUNTIME;
  }
  if (vlm_cluster_load(map_path, map_problem, &p, &cluster) &&
      !p.count)
    check_problem(&p, "%s", vlm_errmsg());
  if (cluster && !(given = calloc((size_t)cluster->nshards, sizeof *given))) {
    vlm_cli_error(cmd, "out of memory");
    free(infos);
    vlm_cluster_free(cluster);
    return VLM_EXIT_RUNTIME;
  }
  for (int d = 0; d < ndirs; d++) {
    vlm_db *db = NULL;
    vlm_db_info *info = &infos[d];
    info->shard = -2; /* not opened */
    vlm_db_open_options o = {.readonly = 1};
    if (vlm_db_open(dirs[d], &o, &db) || vlm_db_stat(db, info)) {
      check_problem(&p, "%s: %s", dirs[d], vlm_errmsg());
      info->shard = -2;
      vlm_db_close(db);
      continue;
    }
    if (info->shard < 0) {
      check_problem(&p, "%s: not a shard (made without --cluster)", dirs[d]);
    } else if (cluster) {
      const vlm_cluster_shard *sh =
          info->shard < cluster->nshards ? &cluster->shards[info->shard]
                                         : NULL;
      /* A shard that `vlmdb cluster move` left alone keeps the digest of
       * the map it was built for: what must agree is its slots. */
      int same_slots =
          sh && sh->nranges == info->nslot_ranges &&
          !memcmp(sh->ranges, info->slot_ranges,
                  (size_t)sh->nranges * sizeof sh->ranges[0]);
      if (info->nshards != cluster->nshards ||
          (strcmp(info->cluster_digest, cluster->digest) && !same_slots))
        check_problem(&p, "%s: made for another cluster map (digest %s, %d "
                      "shards; %s has %s, %d shards)", dirs[d],
                      info->cluster_digest, info->nshards, map_path,
                      cluster->digest, cluster->nshards);
      else if (sh && !same_slots)
        check_problem(&p, "%s: shard %d holds other slots than the map "
                      "gives it", dirs[d], info->shard);
      if (sh && given[info->shard])
        check_problem(&p, "%s: shard %d is also %s", dirs[d], info->shard,
                      dirs[given[info->shard] - 1]);
      else if (sh)
        given[info->shard] = d + 1;
      if (sh) {
        long first_slot = 0;
        char first_key[128];
        long bad = misplaced_keys(db, cluster, info->shard, &first_slot,
                                  first_key, sizeof first_key);
        if (bad < 0)
          check_problem(&p, "%s: walking its keys: %s", dirs[d],
                        vlm_errmsg());
        else if (bad > 0)
          check_problem(&p, "%s: %ld keys of other shards, the first \"%s\" "
                        "(slot %ld)", dirs[d], bad, first_key, first_slot);
      }
    }
    vlm_db_close(db);
    if (ref < 0) {
      ref = d;
    } else {
      const vlm_db_info *r = &infos[ref];
      if (strcmp(info->model_id, r->model_id))
        check_problem(&p, "%s: model id %.16s..., %s has %.16s...", dirs[d],
                      info->model_id, dirs[ref], r->model_id);
      if (info->dim != r->dim)
        check_problem(&p, "%s: dimension %d, %s has %d", dirs[d], info->dim,
                      dirs[ref], r->dim);
      if (strcmp(info->model_family, r->model_family))
        check_problem(&p, "%s: model family %s, %s has %s", dirs[d],
                      info->model_family, dirs[ref], r->model_family);
      if (strcmp(info->index_factory, r->index_factory))
        check_problem(&p, "%s: index %s, %s has %s", dirs[d],
                      info->index_factory, dirs[ref], r->index_factory);
      if (!fields_equal(info, r))
        check_problem(&p, "%s: its fields differ from %s's", dirs[d],
                      dirs[ref]);
      if (strcmp(info->image_orientation, r->image_orientation))
        check_problem(&p, "%s: EXIF %s, %s has %s", dirs[d],
                      info->image_orientation, dirs[ref],
                      r->image_orientation);
      /* nodes of one cluster keep the images they are sent alike */
      if (!info->keep_images != !r->keep_images)
        check_problem(&p, "%s: %s images, %s %s", dirs[d],
                      info->keep_images ? "keeps" : "does not keep",
                      dirs[ref], r->keep_images ? "does" : "does not");
    }
  }
  for (int s = 0; cluster && s < cluster->nshards; s++)
    if (!given[s])
      check_problem(&p, "shard %d: no database given", s);
  long long total = 0;
  for (int d = 0; d < ndirs; d++) {
    const vlm_db_info *info = &infos[d];
    if (info->shard == -2)
      continue;
    total += info->items;
    if (as_json) {
      json_t *o = json_object();
      json_object_set_new(o, "dir", json_string(dirs[d]));
      json_object_set_new(o, "shard", json_integer(info->shard));
      json_object_set_new(o, "items", json_integer(info->items));
      json_array_append_new(shards_json, o);
    } else {
      char held[256];
      vlm_slot_ranges_format(info->slot_ranges, info->nslot_ranges, held,
                             sizeof held);
      printf("shard %d: %s: %lld items, slots %s\n", info->shard, dirs[d],
             (long long)info->items, info->shard >= 0 ? held : "-");
    }
  }
  if (as_json) {
    json_t *o = json_object();
    json_object_set_new(o, "ok", json_boolean(p.count == 0));
    json_object_set_new(o, "items", json_integer(total));
    json_object_set_new(o, "shards", shards_json);
    json_object_set_new(o, "problems", p.list);
    char *text = json_dumps(o, JSON_COMPACT);
    if (text)
      printf("%s\n", text);
    free(text);
    json_decref(o);
  } else {
    printf("%s: %d shard databases, %lld items, %d problem%s\n",
           p.count ? "problems" : "ok", ndirs, total, p.count,
           p.count == 1 ? "" : "s");
  }
  free(given);
  free(infos);
  vlm_cluster_free(cluster);
  return p.count ? VLM_EXIT_RUNTIME : VLM_EXIT_OK;
}
