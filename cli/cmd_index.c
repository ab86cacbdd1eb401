/* cmd_index.c - `vlmdb index train|add|merge`: one big IVF index built
 * across shards, the LAION way (train once on a sample, every shard adds
 * its vectors to a copy of the trained index, the parts merge into one
 * index whose inverted lists are one file, served memory-mapped).  Global
 * ids: merge.h. */
#include "merge.h"
#include "opts.h"
#include "vlm_cli.h"
#include "vlm_error.h"
#include "vlm_index.h"
#include "vlmdb.h"

#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char index_usage[] =
    "usage: vlmdb index train --db DB --factory IVF... --sample N --out FILE\n"
    "       vlmdb index add --db SHARD --trained FILE --out PART\n"
    "       vlmdb index merge --trained FILE --out OUT PART...\n"
    "       (each also takes --modality image|text (default image), --json)\n"
    "\n"
    "One IVF index over every shard, its inverted lists in one file:\n"
    "  train  samples N vectors evenly from DB, trains the IVF index the\n"
    "         factory string describes (\"IVF65536,PQ64\", \"IVF1024,Flat\")\n"
    "         on them and writes it, empty, to FILE.\n"
    "  add    adds every vector of SHARD to a copy of FILE under the shard's\n"
    "         own ids; writes PART and PART.json (its shard index and id\n"
    "         space).  One task per shard, in parallel.\n"
    "  merge  combines the parts into OUT, an index whose inverted lists are\n"
    "         OUT.ivfdata (the two files stay together), each part's ids\n"
    "         moved up by its shard's offset: the sum of the id spaces of the\n"
    "         shards before it (the ids `vlmdb merge` gives the merged\n"
    "         database).  The parts are mapped, not loaded.\n"
    "\n"
    "example:\n"
    "  vlmdb index train --db shard-0 --factory IVF1024,PQ32 --sample 100000 \\\n"
    "      --out trained.vlmidx\n"
    "  vlmdb index add --db shard-3 --trained trained.vlmidx --out part-3.vlmidx\n"
    "  vlmdb index merge --trained trained.vlmidx --out image.vlmidx part-*.vlmidx\n";

typedef struct {
  const char *cmd;
  const char *db, *factory, *trained, *out, *modality;
  long sample;
  int as_json;
  int m; /* 0 image, 1 text */
} index_args;

static void print_json_line(json_t *o) {
  char *s = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(9));
  if (s)
    printf("%s\n", s);
  free(s);
  json_decref(o);
}

static const float *vec_of(const vlm_record *rec, int m) {
  return m ? rec->text_vec : rec->image_vec;
}

/* ---------------------------------------------------------------- train */

typedef struct {
  int m, dim;
  long stride, seen, got, want;
  float *x;
} sampler;

static int sample_one(const vlm_record *rec, void *arg) {
  sampler *s = arg;
  const float *v = vec_of(rec, s->m);
  if (!v)
    return 0;
  if (s->seen++ % s->stride == 0 && s->got < s->want)
    memcpy(s->x + (size_t)s->got++ * s->dim, v, (size_t)s->dim * 4);
  return 0;
}

static int index_train(index_args *a) {
  if (!a->db || !a->factory || !a->out || a->sample < 1)
    return vlm_cli_usage_error(a->cmd, "train needs --db, --factory, "
                               "--sample N and --out");
  if (strncmp(a->factory, "IVF", 3) != 0)
    return vlm_cli_usage_error(a->cmd, "--factory %s: only IVF indexes "
                               "merge (FAISS cannot merge HNSW graphs)",
                               a->factory);
  vlm_db *db;
  if (vlm_cli_open_db(a->cmd, a->db, 1, &db))
    return VLM_EXIT_RUNTIME;
  vlm_db_info info;
  vlm_index *ix = NULL;
  sampler s = {.m = a->m, .want = a->sample};
  int rc = vlm_db_stat(db, &info);
  if (rc)
    goto fail;
  s.dim = info.dim;
  int64_t have = a->m ? info.text_vectors : info.image_vectors;
  s.stride = have > a->sample ? have / a->sample : 1;
  if (!(s.x = malloc((size_t)a->sample * info.dim * sizeof *s.x))) {
    rc = vlm_seterr(VLM_ENOMEM, "a sample of %ld vectors", a->sample);
    goto fail;
  }
  if ((rc = vlm_index_create(a->factory, info.dim, VLM_METRIC_IP, &ix)) ||
      (rc = vlm_cli_walk_ids(db, 0, sample_one, &s)))
    goto fail;
  if (s.got < vlm_index_train_size(ix)) {
    vlm_cli_error(a->cmd, "%s has %ld %s vectors to train on, %s needs at "
                  "least %lld", a->db, s.got, a->modality, a->factory,
                  (long long)vlm_index_train_size(ix));
    vlm_index_free(ix);
    free(s.x);
    vlm_db_close(db);
    return VLM_EXIT_RUNTIME;
  }
  if ((rc = vlm_index_train(ix, s.got, s.x)) ||
      (rc = vlm_index_write(ix, a->out)))
    goto fail;
  if (a->as_json) {
    json_t *o = json_object();
    json_object_set_new(o, "trained", json_string(a->out));
    json_object_set_new(o, "factory", json_string(a->factory));
    json_object_set_new(o, "sample", json_integer(s.got));
    print_json_line(o);
  } else {
    printf("trained %s on %ld %s vectors of %s: %s\n", a->factory, s.got,
           a->modality, a->db, a->out);
  }
  vlm_index_free(ix);
  free(s.x);
  vlm_db_close(db);
  return VLM_EXIT_OK;
fail:
  vlm_cli_liberror(a->cmd, rc);
  vlm_index_free(ix);
  free(s.x);
  vlm_db_close(db);
  return VLM_EXIT_RUNTIME;
}

/* ------------------------------------------------------------------ add */

#define ADD_CHUNK 4096

typedef struct {
  vlm_index *ix;
  int m, dim, n;
  int64_t added;
  float *x;
  int64_t *ids;
} adder;

static int flush_adds(adder *ad) {
  int rc = vlm_index_add(ad->ix, ad->n, ad->x, ad->ids);
  ad->added += rc ? 0 : ad->n;
  ad->n = 0;
  return rc;
}

static int add_one(const vlm_record *rec, void *arg) {
  adder *ad = arg;
  const float *v = vec_of(rec, ad->m);
  if (!v)
    return 0;
  memcpy(ad->x + (size_t)ad->n * ad->dim, v, (size_t)ad->dim * 4);
  ad->ids[ad->n++] = (int64_t)rec->id;
  return ad->n == ADD_CHUNK ? flush_adds(ad) : 0;
}

static char *sidecar_path(const char *part) {
  char *p = malloc(strlen(part) + 6);
  if (p)
    sprintf(p, "%s.json", part);
  return p;
}

/* PART.json, written whole or not at all. */
static int write_sidecar(const char *part, json_t *o) {
  char *p = sidecar_path(part), *tmp = p ? malloc(strlen(p) + 5) : NULL;
  int rc = -1;
  if (tmp) {
    sprintf(tmp, "%s.tmp", p);
    if (json_dump_file(o, tmp, JSON_INDENT(2)) == 0 && rename(tmp, p) == 0)
      rc = 0;
    else
      unlink(tmp);
  }
  free(tmp);
  free(p);
  return rc;
}

static int index_add(index_args *a) {
  if (!a->db || !a->trained || !a->out)
    return vlm_cli_usage_error(a->cmd, "add needs --db, --trained and --out");
  vlm_db *db;
  if (vlm_cli_open_db(a->cmd, a->db, 1, &db))
    return VLM_EXIT_RUNTIME;
  vlm_db_info info;
  adder ad = {.m = a->m};
  int rc = vlm_db_stat(db, &info);
  if (rc || (rc = vlm_index_read(a->trained, &ad.ix)))
    goto fail;
  if (vlm_index_dim(ad.ix) != info.dim || vlm_index_count(ad.ix) != 0 ||
      !vlm_index_is_trained(ad.ix)) {
    vlm_cli_error(a->cmd, "%s is not an empty trained index of dimension "
                  "%d (%s's)", a->trained, info.dim, a->db);
    vlm_index_free(ad.ix);
    vlm_db_close(db);
    return VLM_EXIT_RUNTIME;
  }
  ad.dim = info.dim;
  ad.x = malloc((size_t)ADD_CHUNK * info.dim * sizeof *ad.x);
  ad.ids = malloc(ADD_CHUNK * sizeof *ad.ids);
  if (!ad.x || !ad.ids) {
    rc = vlm_seterr(VLM_ENOMEM, "index add");
    goto fail;
  }
  if ((rc = vlm_cli_walk_ids(db, 0, add_one, &ad)) ||
      (ad.n && (rc = flush_adds(&ad))) ||
      (rc = vlm_index_write(ad.ix, a->out)))
    goto fail;
  json_t *o = json_object();
  json_object_set_new(o, "part", json_string(a->out));
  json_object_set_new(o, "shard", json_integer(info.shard));
  json_object_set_new(o, "id_space", json_integer((json_int_t)info.next_id - 1));
  json_object_set_new(o, "vectors", json_integer(ad.added));
  json_object_set_new(o, "modality", json_string(a->modality));
  json_object_set_new(o, "factory", json_string(vlm_index_factory(ad.ix)));
  if (write_sidecar(a->out, o) != 0) {
    json_decref(o);
    vlm_cli_error(a->cmd, "%s.json: %s", a->out, strerror(errno));
    rc = VLM_EXIT_RUNTIME;
    goto out;
  }
  if (a->as_json) {
    print_json_line(o);
  } else {
    printf("added %lld %s vectors of %s (shard %d, ids 1..%llu) to %s\n",
           (long long)ad.added, a->modality, a->db, info.shard,
           (unsigned long long)info.next_id - 1, a->out);
    json_decref(o);
  }
  rc = VLM_EXIT_OK;
  goto out;
fail:
  vlm_cli_liberror(a->cmd, rc);
  rc = VLM_EXIT_RUNTIME;
out:
  vlm_index_free(ad.ix);
  free(ad.x);
  free(ad.ids);
  vlm_db_close(db);
  return rc;
}

/* ---------------------------------------------------------------- merge */

static int index_merge(index_args *a, int nparts, char **paths) {
  if (!a->trained || !a->out || nparts < 1)
    return vlm_cli_usage_error(a->cmd, "merge needs --trained, --out and "
                               "one PART or more");
  vlm_index **parts = calloc((size_t)nparts, sizeof *parts);
  vlm_index **ordered = calloc((size_t)nparts, sizeof *ordered);
  int *shard = calloc((size_t)nparts, sizeof *shard);
  int *order = calloc((size_t)nparts, sizeof *order);
  uint64_t *space = calloc((size_t)nparts, sizeof *space);
  int64_t *offsets = calloc((size_t)nparts, sizeof *offsets);
  int64_t *ordered_off = calloc((size_t)nparts, sizeof *ordered_off);
  char *lists = malloc(strlen(a->out) + 9);
  vlm_index *into = NULL;
  int rc = VLM_EXIT_RUNTIME, err = 0;
  if (!parts || !ordered || !shard || !order || !space || !offsets ||
      !ordered_off || !lists) {
    vlm_cli_error(a->cmd, "out of memory");
    goto out;
  }
  sprintf(lists, "%s.ivfdata", a->out);
  for (int i = 0; i < nparts; i++) {
    char *side = sidecar_path(paths[i]);
    json_error_t jerr;
    json_t *o = side ? json_load_file(side, 0, &jerr) : NULL;
    json_t *sh = json_object_get(o, "shard"), *sp = json_object_get(o, "id_space");
    const char *mod = json_string_value(json_object_get(o, "modality"));
    if (!json_is_integer(sh) || !json_is_integer(sp) ||
        json_integer_value(sp) < 0 || !mod) {
      vlm_cli_error(a->cmd, "%s: %s", side ? side : paths[i],
                    o ? "not a part description (shard, id_space, modality)"
                      : jerr.text);
      json_decref(o);
      free(side);
      goto out;
    }
    if (strcmp(mod, a->modality) != 0) {
      vlm_cli_error(a->cmd, "%s holds %s vectors, not %s", paths[i], mod,
                    a->modality);
      json_decref(o);
      free(side);
      goto out;
    }
    shard[i] = (int)json_integer_value(sh);
    space[i] = (uint64_t)json_integer_value(sp);
    json_decref(o);
    free(side);
    if ((err = vlm_index_read_mmap(paths[i], &parts[i]))) {
      vlm_cli_liberror(a->cmd, err);
      goto out;
    }
  }
  char why[256];
  if (vlm_cli_shard_offsets(nparts, shard, space, order, offsets, why,
                            sizeof why)) {
    vlm_cli_error(a->cmd, "%s", why);
    goto out;
  }
  for (int k = 0; k < nparts; k++) {
    ordered[k] = parts[order[k]];
    ordered_off[k] = offsets[order[k]];
  }
  /* No index file names a list file while it is being written. */
  if (unlink(a->out) != 0 && errno != ENOENT) {
    vlm_cli_error(a->cmd, "%s: %s", a->out, strerror(errno));
    goto out;
  }
  int64_t total = 0;
  if ((err = vlm_index_read(a->trained, &into)) ||
      (err = vlm_index_merge(into, ordered, ordered_off, nparts, lists)) ||
      (err = vlm_index_write(into, a->out))) {
    vlm_cli_liberror(a->cmd, err);
    goto out;
  }
  total = vlm_index_count(into);
  struct stat st;
  long long bytes = stat(lists, &st) == 0 ? (long long)st.st_size : -1;
  if (a->as_json) {
    json_t *o = json_object(), *offs = json_array();
    json_object_set_new(o, "index", json_string(a->out));
    json_object_set_new(o, "lists", json_string(lists));
    json_object_set_new(o, "lists_bytes", json_integer(bytes));
    json_object_set_new(o, "vectors", json_integer(total));
    for (int k = 0; k < nparts; k++) {
      json_t *p = json_object();
      json_object_set_new(p, "part", json_string(paths[order[k]]));
      json_object_set_new(p, "shard", json_integer(shard[order[k]]));
      json_object_set_new(p, "offset", json_integer(ordered_off[k]));
      json_array_append_new(offs, p);
    }
    json_object_set_new(o, "parts", offs);
    print_json_line(o);
  } else {
    printf("merged %d parts, %lld vectors: %s (lists %s, %lld bytes)\n",
           nparts, (long long)total, a->out, lists, bytes);
  }
  rc = VLM_EXIT_OK;
out:
  vlm_index_free(into);
  if (parts)
    for (int i = 0; i < nparts; i++)
      vlm_index_free(parts[i]);
  free(parts);
  free(ordered);
  free(shard);
  free(order);
  free(space);
  free(offsets);
  free(ordered_off);
  free(lists);
  return rc;
}

/* ------------------------------------------------------------- command */

int cmd_index(int argc, char **argv) {
  index_args a = {.cmd = "index", .modality = "image"};
  static const struct option longopts[] = {
      {"db", required_argument, NULL, 'd'},
      {"factory", required_argument, NULL, 'f'},
      {"sample", required_argument, NULL, 's'},
      {"trained", required_argument, NULL, 't'},
      {"out", required_argument, NULL, 'o'},
      {"modality", required_argument, NULL, 'm'},
      {"json", no_argument, NULL, 'j'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  if (argc < 2 || argv[1][0] == '-') {
    if (argc >= 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) {
      fputs(index_usage, stdout);
      return VLM_EXIT_OK;
    }
    return vlm_cli_usage_error(a.cmd, "which: train, add or merge?");
  }
  const char *verb = argv[1];
  vlm_cli_getopt_reset();
  int c;
  while ((c = getopt_long(argc - 1, argv + 1, "h", longopts, NULL)) != -1) {
    switch (c) {
    case 'd': a.db = optarg; break;
    case 'f': a.factory = optarg; break;
    case 't': a.trained = optarg; break;
    case 'o': a.out = optarg; break;
    case 'm': a.modality = optarg; break;
    case 'j': a.as_json = 1; break;
    case 's':
      if (vlm_cli_parse_long(a.cmd, "--sample", optarg, 1, 100000000,
                             &a.sample))
        return VLM_EXIT_USAGE;
      break;
    case 'h': fputs(index_usage, stdout); return VLM_EXIT_OK;
    default: return vlm_cli_getopt_failed(a.cmd);
    }
  }
  if (!strcmp(a.modality, "image"))
    a.m = 0;
  else if (!strcmp(a.modality, "text"))
    a.m = 1;
  else
    return vlm_cli_usage_error(a.cmd, "--modality %s: image or text",
                               a.modality);
  int rest = argc - 1 - optind;
  char **paths = argv + 1 + optind;
  if (!strcmp(verb, "merge"))
    return index_merge(&a, rest, paths);
  if (rest > 0)
    return vlm_cli_usage_error(a.cmd, "unexpected argument %s", paths[0]);
  if (!strcmp(verb, "train"))
    return index_train(&a);
  if (!strcmp(verb, "add"))
    return index_add(&a);
  return vlm_cli_usage_error(a.cmd, "unknown subcommand %s: train, add or "
                             "merge", verb);
}
