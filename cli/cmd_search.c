/* cmd_search.c - `vlmdb search`: k nearest items to a text, an image or a
 * stored item, as an aligned table or JSON. */
#include "opts.h"
#include "vlm_cli.h"
#include "vlm_clip.h"
#include "vlm_error.h"
#include "vlmdb.h"

#include <getopt.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

static const char usage[] =
    "usage: vlmdb search --db DIR (--text T | --image PATH | --key K)\n"
    "                    [-k N] [--filter EXPR] [--target image|text|any]\n"
    "                    [--hybrid [--hybrid-weight W]] [--ef N] [--nprobe N]\n"
    "                    [--exact] [--collapse T] [--min-score S]\n"
    "                    [--offset N] [--group-by FIELD [--per N]]\n"
    "                    [--fields F1,F2]\n"
    "                    [--model DIR] [--json]\n"
    "\n"
    "Find the k items nearest to a query: a text (--text), an image file\n"
    "(--image) or an item already stored (--key: its image vector, else its\n"
    "text vector).  Prints rank, score (cosine similarity), key, which of\n"
    "the item's vectors matched, caption and the fields asked for.\n"
    "\n"
    "  --db DIR            the database\n"
    "  --text T            query text\n"
    "  --image PATH        query image (JPEG, PNG, WebP, GIF, TIFF, BMP, HEIC, AVIF)\n"
    "  --key K             query by a stored item\n"
    "  -k, --k N           results wanted (default 10, at most 10000)\n"
    "  --filter EXPR       SQL condition over the declared fields and key,\n"
    "                      e.g. \"category = 'animals' AND year >= 2005\"\n"
    "  --target T          match image vectors, text vectors or any (default)\n"
    "  --hybrid            fuse BM25 over captions with the vector ranking\n"
    "                      (needs --text)\n"
    "  --hybrid-weight W   BM25's weight in the fusion, 0..1 (default 0.5)\n"
    "  --ef N              HNSW efSearch for this query\n"
    "  --nprobe N          IVF lists to probe for this query\n"
    "  --exact             brute-force search (no index)\n"
    "  --collapse T        one result per group of near-identical images\n"
    "                      (image vectors with cosine >= T, e.g. 0.95); the\n"
    "                      match column shows how many were folded (+N)\n"
    "  --min-score S       only results scoring at least S (a cosine, -1..1);\n"
    "                      without -k, every one of them up to 10000\n"
    "                      (not with --hybrid)\n"
    "  --offset N          skip the first N results: a page of the ranking\n"
    "                      (ranks N+1 .. N+k; ties go to the older item)\n"
    "  --group-by FIELD    at most --per results (default 1) per value of a\n"
    "                      declared field; items without it form one group\n"
    "  --per N             results per group with --group-by\n"
    "  --fields F1,F2      metadata fields to show as columns\n"
    "  --model DIR         the model, if not where the database says\n"
    "  --json              one JSON object instead of the table\n"
    "  -h, --help          this help\n"
    "\n"
    "example:\n"
    "  vlmdb search --db photos.vlm --text \"a red bike\" -k 5 \\\n"
    "      --filter \"year >= 2015\" --fields category,year\n";

/* ---------------------------------------------------------- table text */

/* Display width of a UTF-8 string (invalid bytes count as one column). */
static int display_width(const char *s) {
  int w = 0;
  const utf8proc_uint8_t *p = (const utf8proc_uint8_t *)s;
  while (*p) {
    utf8proc_int32_t cp;
    utf8proc_ssize_t n = utf8proc_iterate(p, -1, &cp);
    if (n <= 0) {
      w++;
      p++;
      continue;
    }
    int cw = utf8proc_charwidth(cp);
    w += cw > 0 ? cw : 0;
    p += n;
  }
  return w;
}

/* A cell: control characters become spaces, and text wider than max
 * columns is cut with an ellipsis.  Returns a malloc'd string. */
static char *cell_text(const char *s, int max) {
  if (!s)
    s = "-";
  size_t n = strlen(s);
  char *out = malloc(n + 4);
  if (!out)
    return NULL;
  const utf8proc_uint8_t *p = (const utf8proc_uint8_t *)s;
  size_t o = 0;
  int w = 0;
  while (*p) {
    utf8proc_int32_t cp;
    utf8proc_ssize_t len = utf8proc_iterate(p, -1, &cp);
    int invalid = len <= 0;
    if (invalid) {
      cp = '?';
      len = 1;
    }
    int control = cp < 0x20 || cp == 0x7f;
    int cw = control ? 1 : utf8proc_charwidth(cp);
    if (cw < 0)
      cw = 0;
    if (w + cw > max - 1 &&
        (size_t)(p - (const utf8proc_uint8_t *)s) + (size_t)len < n) {
      memcpy(out + o, "\xe2\x80\xa6", 3); /* an ellipsis */
      o += 3;
      break;
    }
    if (invalid || control) {
      out[o++] = invalid ? '?' : ' ';
    } else {
      memcpy(out + o, p, (size_t)len);
      o += (size_t)len;
    }
    w += cw;
    p += len;
  }
  out[o] = '\0';
  return out;
}

static void print_padded(const char *s, int width, int right) {
  int pad = width - display_width(s);
  if (right)
    for (int i = 0; i < pad; i++)
      putchar(' ');
  fputs(s, stdout);
  if (!right)
    for (int i = 0; i < pad; i++)
      putchar(' ');
}

/* A metadata value as text for a cell: strings as they are, numbers and
 * the rest as JSON. */
static char *meta_value_text(json_t *meta, const char *name) {
  json_t *v = meta ? json_object_get(meta, name) : NULL;
  if (!v || json_is_null(v))
    return strdup("-");
  if (json_is_string(v))
    return strdup(json_string_value(v));
  return json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT | JSON_REAL_PRECISION(10));
}

/* ---------------------------------------------------------------- main */

#define MAX_COLS 32

typedef struct {
  vlm_hit *hits;
  int nhits;
  vlm_record **recs; /* NULL entries for keys gone meanwhile */
  int offset;        /* the rank of hits[0] is offset + 1 */
} result_set;

static const char *target_name(vlm_target t) {
  return t == VLM_TARGET_IMAGE ? "image" : t == VLM_TARGET_TEXT ? "text"
                                                                : "any";
}

static void print_table(const result_set *rs, char **fields, int nfields) {
  int ncols = 5 + nfields;
  const char *heads[MAX_COLS] = {"rank", "score", "key", "match", "caption"};
  for (int f = 0; f < nfields; f++)
    heads[5 + f] = fields[f];
  int width[MAX_COLS];
  char **cells = calloc((size_t)rs->nhits * ncols, sizeof *cells);
  if (!cells)
    return;
  for (int c = 0; c < ncols; c++)
    width[c] = display_width(heads[c]);
  for (int i = 0; i < rs->nhits; i++) {
    char buf[64];
    const vlm_record *rec = rs->recs[i];
    json_t *meta = rec && rec->meta_json ? json_loads(rec->meta_json, 0, NULL)
                                         : NULL;
    char **row = cells + (size_t)i * ncols;
    snprintf(buf, sizeof buf, "%d", rs->offset + i + 1);
    row[0] = strdup(buf);
    snprintf(buf, sizeof buf, "%.4f", rs->hits[i].score);
    row[1] = strdup(buf);
    row[2] = cell_text(rs->hits[i].key, 60);
    if (rs->hits[i].similar) { /* collapsed near-duplicates */
      snprintf(buf, sizeof buf, "%s +%d", target_name(rs->hits[i].modality),
               rs->hits[i].similar);
      row[3] = strdup(buf);
    } else {
      row[3] = strdup(target_name(rs->hits[i].modality));
    }
    row[4] = cell_text(rec ? rec->caption : NULL, 50);
    for (int f = 0; f < nfields; f++) {
      char *v = meta_value_text(meta, fields[f]);
      row[5 + f] = cell_text(v, 30);
      free(v);
    }
    json_decref(meta);
    for (int c = 0; c < ncols; c++) {
      int w = row[c] ? display_width(row[c]) : 0;
      if (w > width[c])
        width[c] = w;
    }
  }
  for (int c = 0; c < ncols; c++) {
    if (c)
      fputs("  ", stdout);
    print_padded(heads[c], c == ncols - 1 ? 0 : width[c], c < 2);
  }
  putchar('\n');
  for (int i = 0; i < rs->nhits; i++) {
    char **row = cells + (size_t)i * ncols;
    for (int c = 0; c < ncols; c++) {
      if (c)
        fputs("  ", stdout);
      print_padded(row[c] ? row[c] : "?", c == ncols - 1 ? 0 : width[c],
                   c < 2);
    }
    putchar('\n');
  }
  for (size_t i = 0; i < (size_t)rs->nhits * ncols; i++)
    free(cells[i]);
  free(cells);
}

static void print_json(const result_set *rs, json_t *query,
                       const vlm_search_options *opts, int hybrid) {
  json_t *o = json_object(), *results = json_array();
  json_object_set_new(o, "query", query);
  json_object_set_new(o, "k", json_integer(opts->k));
  json_object_set_new(o, "target", json_string(target_name(opts->target)));
  json_object_set_new(o, "filter",
                      opts->filter ? json_string(opts->filter) : json_null());
  json_object_set_new(o, "hybrid", json_boolean(hybrid));
  json_object_set_new(o, "exact", json_boolean(opts->exact));
  if (opts->collapse > 0)
    json_object_set_new(o, "collapse", json_real(opts->collapse));
  if (opts->use_min_score)
    json_object_set_new(o, "min_score", json_real(opts->min_score));
  if (opts->offset > 0)
    json_object_set_new(o, "offset", json_integer(opts->offset));
  if (opts->group_by) {
    json_object_set_new(o, "group_by", json_string(opts->group_by));
    json_object_set_new(o, "per", json_integer(opts->group_per));
  }
  for (int i = 0; i < rs->nhits; i++) {
    const vlm_record *rec = rs->recs[i];
    json_t *r = json_object();
    json_object_set_new(r, "rank", json_integer(rs->offset + i + 1));
    json_object_set_new(r, "key", json_string(rs->hits[i].key));
    json_object_set_new(r, "score", json_real(rs->hits[i].score));
    json_object_set_new(r, "match",
                        json_string(target_name(rs->hits[i].modality)));
    if (opts->collapse > 0)
      json_object_set_new(r, "similar", json_integer(rs->hits[i].similar));
    json_object_set_new(r, "caption", rec && rec->caption
                                          ? json_string(rec->caption)
                                          : json_null());
    json_object_set_new(r, "source", rec && rec->source
                                         ? json_string(rec->source)
                                         : json_null());
    json_t *meta = rec && rec->meta_json ? json_loads(rec->meta_json, 0, NULL)
                                         : NULL;
    json_object_set_new(r, "meta", meta ? meta : json_object());
    json_array_append_new(results, r);
  }
  json_object_set_new(o, "results", results);
  char *s = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(7));
  if (s)
    printf("%s\n", s);
  free(s);
  json_decref(o);
}

static int split_fields(char *list, char **fields, int max) {
  int n = 0;
  char *save = NULL;
  for (char *f = strtok_r(list, ",", &save); f; f = strtok_r(NULL, ",", &save)) {
    if (n == max)
      return -1;
    fields[n++] = f;
  }
  return n;
}

int cmd_search(int argc, char **argv) {
  const char *cmd = "search", *db_dir = NULL, *text = NULL, *image = NULL,
             *key = NULL, *model_dir = NULL;
  char *field_list = NULL;
  char *fields[MAX_COLS - 5];
  int nfields = 0, as_json = 0, hybrid = 0;
  long k = 10, ef = 0, nprobe = 0, offset = 0, per = 0;
  int k_given = 0;
  vlm_search_options sopts = {0};
  static const struct option longopts[] = {
      {"db", required_argument, NULL, 'd'},
      {"text", required_argument, NULL, 't'},
      {"image", required_argument, NULL, 'i'},
      {"key", required_argument, NULL, 'K'},
      {"k", required_argument, NULL, 'k'},
      {"filter", required_argument, NULL, 'f'},
      {"target", required_argument, NULL, 'T'},
      {"hybrid", no_argument, NULL, 'H'},
      {"hybrid-weight", required_argument, NULL, 'W'},
      {"ef", required_argument, NULL, 'e'},
      {"nprobe", required_argument, NULL, 'n'},
      {"exact", no_argument, NULL, 'x'},
      {"collapse", required_argument, NULL, 'C'},
      {"min-score", required_argument, NULL, 'S'},
      {"offset", required_argument, NULL, 'O'},
      {"group-by", required_argument, NULL, 'G'},
      {"per", required_argument, NULL, 'P'},
      {"fields", required_argument, NULL, 'F'},
      {"model", required_argument, NULL, 'm'},
      {"json", no_argument, NULL, 'j'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  vlm_cli_getopt_reset();
  int c;
  while ((c = getopt_long(argc, argv, "k:h", longopts, NULL)) != -1) {
    switch (c) {
    case 'd': db_dir = optarg; break;
    case 't': text = optarg; break;
    case 'i': image = optarg; break;
    case 'K': key = optarg; break;
    case 'k':
      if (vlm_cli_parse_long(cmd, "-k", optarg, 1, VLM_DB_MAX_K, &k))
        return VLM_EXIT_USAGE;
      k_given = 1;
      break;
    case 'S': {
      char *end;
      double s = strtod(optarg, &end);
      if (end == optarg || *end || !(s >= -1 && s <= 1))
        return vlm_cli_usage_error(cmd, "--min-score is a number from -1 "
                                        "to 1");
      sopts.use_min_score = 1;
      sopts.min_score = (float)s;
      break;
    }
    case 'O':
      if (vlm_cli_parse_long(cmd, "--offset", optarg, 0, VLM_DB_MAX_K - 1,
                             &offset))
        return VLM_EXIT_USAGE;
      break;
    case 'G': sopts.group_by = optarg; break;
    case 'P':
      if (vlm_cli_parse_long(cmd, "--per", optarg, 1, VLM_DB_MAX_K, &per))
        return VLM_EXIT_USAGE;
      break;
    case 'f': sopts.filter = optarg; break;
    case 'T':
      if (vlm_cli_parse_target(cmd, optarg, &sopts.target))
        return VLM_EXIT_USAGE;
      break;
    case 'H': hybrid = 1; break;
    case 'W': {
      char *end;
      double w = strtod(optarg, &end);
      if (end == optarg || *end || !(w > 0 && w <= 1))
        return vlm_cli_usage_error(cmd, "--hybrid-weight is a number in "
                                        "(0, 1]");
      sopts.hybrid_weight = (float)w;
      break;
    }
    case 'e':
      if (vlm_cli_parse_long(cmd, "--ef", optarg, 1, 1 << 20, &ef))
        return VLM_EXIT_USAGE;
      break;
    case 'n':
      if (vlm_cli_parse_long(cmd, "--nprobe", optarg, 1, 1 << 20, &nprobe))
        return VLM_EXIT_USAGE;
      break;
    case 'x': sopts.exact = 1; break;
    case 'C':
      if (vlm_cli_parse_collapse(cmd, optarg, &sopts.collapse))
        return VLM_EXIT_USAGE;
      break;
    case 'F': field_list = optarg; break;
    case 'm': model_dir = optarg; break;
    case 'j': as_json = 1; break;
    case 'h': fputs(usage, stdout); return VLM_EXIT_OK;
    default: fputs(usage, stderr); return VLM_EXIT_USAGE;
    }
  }
  if (!db_dir)
    return vlm_cli_usage_error(cmd, "--db DIR is required");
  if (optind < argc)
    return vlm_cli_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
  if (!!text + !!image + !!key != 1)
    return vlm_cli_usage_error(cmd, "give one of --text, --image or --key");
  if (hybrid && !text)
    return vlm_cli_usage_error(cmd, "--hybrid needs --text");
  if (hybrid && sopts.use_min_score)
    return vlm_cli_usage_error(cmd, "--min-score is a cosine and a hybrid "
                                    "score is fused ranks: not both");
  if (per && !sopts.group_by)
    return vlm_cli_usage_error(cmd, "--per needs --group-by");
  if (sopts.group_by && sopts.collapse > 0)
    return vlm_cli_usage_error(cmd, "--group-by and --collapse cannot be "
                                    "combined");
  if (sopts.use_min_score && !k_given)
    k = VLM_DB_MAX_K - offset; /* every result above it, up to the bound */
  if (offset + k > VLM_DB_MAX_K)
    return vlm_cli_usage_error(cmd, "--offset %ld + -k %ld is past the "
                               "deepest result a search returns (%d)",
                               offset, k, VLM_DB_MAX_K);
  char *fields_copy = field_list ? strdup(field_list) : NULL;
  if (fields_copy &&
      (nfields = split_fields(fields_copy, fields, MAX_COLS - 5)) < 0) {
    free(fields_copy);
    return vlm_cli_usage_error(cmd, "at most %d --fields", MAX_COLS - 5);
  }
  sopts.k = (int)k;
  sopts.offset = (int)offset;
  sopts.group_per = (int)per;
  sopts.ef_search = (int)ef;
  sopts.nprobe = (int)nprobe;
  if (hybrid)
    sopts.hybrid_text = text;

  int status = VLM_EXIT_RUNTIME;
  vlm_db *db = NULL;
  vlm_clip *clip = NULL;
  float *query = NULL;
  json_t *jquery = json_object();
  result_set rs = {0};
  rs.offset = (int)offset;
  if (vlm_cli_open_db(cmd, db_dir, 1, &db))
    goto done;
  vlm_db_info info;
  int rc = vlm_db_stat(db, &info);
  if (rc) {
    vlm_cli_liberror(cmd, rc);
    goto done;
  }
  query = malloc((size_t)info.dim * sizeof *query);
  if (!query)
    goto done;
  if (key) {
    vlm_record *rec;
    rc = vlm_db_get(db, key, &rec);
    if (rc) {
      vlm_cli_liberror(cmd, rc);
      goto done;
    }
    const float *v = rec->image_vec ? rec->image_vec : rec->text_vec;
    memcpy(query, v, (size_t)info.dim * sizeof *query);
    vlm_record_free(rec);
    json_object_set_new(jquery, "key", json_string(key));
  } else {
    if (vlm_cli_load_model(cmd, db, model_dir, 0, &clip))
      goto done;
    if (text)
      rc = vlm_clip_encode_texts(clip, &text, 1, 0, query);
    else
      rc = vlm_clip_encode_images(clip, &image, 1, 0, query);
    if (rc) {
      vlm_cli_liberror(cmd, rc);
      goto done;
    }
    json_object_set_new(jquery, text ? "text" : "image",
                        json_string(text ? text : image));
  }
  rc = vlm_db_search(db, query, &sopts, &rs.hits, &rs.nhits);
  if (rc) {
    vlm_cli_liberror(cmd, rc);
    if (rc == VLM_EFILTER || rc == VLM_EINVAL) /* the user's options */
      status = VLM_EXIT_USAGE;
    goto done;
  }
  rs.recs = calloc(rs.nhits ? (size_t)rs.nhits : 1, sizeof *rs.recs);
  if (!rs.recs)
    goto done;
  for (int i = 0; i < rs.nhits; i++) {
    rc = vlm_db_get(db, rs.hits[i].key, &rs.recs[i]);
    if (rc && rc != VLM_ENOTFOUND) {
      vlm_cli_liberror(cmd, rc);
      goto done;
    }
  }
  if (as_json) {
    print_json(&rs, jquery, &sopts, hybrid);
    jquery = NULL; /* owned by the output object */
  } else if (rs.nhits == 0) {
    fprintf(stderr, "vlmdb %s: no results\n", cmd);
  } else {
    print_table(&rs, fields, nfields);
  }
  status = VLM_EXIT_OK;
done:
  json_decref(jquery);
  if (rs.recs)
    for (int i = 0; i < rs.nhits; i++)
      vlm_record_free(rs.recs[i]);
  free(rs.recs);
  vlm_hits_free(rs.hits, rs.nhits);
  free(query);
  free(fields_copy);
  vlm_clip_free(clip);
  vlm_db_close(db);
  return status;
}
