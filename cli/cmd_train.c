/* cmd_train.c - `vlmdb train`: train or fine-tune a CLIP, SigLIP or
 * Chinese-CLIP model on a catalog of image-text pairs (the library does
 * the work: vlm_train.h). */
#include "vlm_cli.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "catalog.h"
#include "vlm_error.h"
#include "vlm_train.h"
#include "vlmdb.h"

#include <ftw.h>
#include <jansson.h>
#include <stdint.h>
#include <sys/stat.h>

static const char usage[] =
    "usage: vlmdb train (--catalog FILE | --db DB) --out DIR\n"
    "                   [--init DIR | --config FILE]\n"
    "                   [--epochs N] [--batch N] [--lr X] [--seed N]\n"
    "                   [--threads N] [--lora RANK] [--resume] [options]\n"
    "\n"
    "Train a CLIP, SigLIP or Chinese-CLIP model on the items of a catalog\n"
    "that have both an image and a text (the formats `vlmdb ingest` reads),\n"
    "with the family's loss (CLIP's symmetric contrastive loss, SigLIP's\n"
    "sigmoid loss), and write it to DIR in the Hugging Face layout:\n"
    "config.json, model.safetensors, the tokenizer files,\n"
    "preprocessor_config.json, training.json, plus metrics.csv (held-out\n"
    "Recall@1/5/10 after every epoch), train.log and checkpoint/.\n"
    "\n"
    "model:\n"
    "  --init DIR          start from this model (any model `vlmdb embed`\n"
    "                      loads); without it, --config FILE gives the\n"
    "                      geometry (a Hugging Face config.json of a\n"
    "                      CLIPModel, SiglipModel or ChineseCLIPModel) of a\n"
    "                      model trained from scratch\n"
    "  --context N         text positions (default: the --init model's or\n"
    "                      the config's); longer than the --init model's\n"
    "                      grows its position embeddings (not SigLIP)\n"
    "  --tokenizer DIR     the family's tokenizer: vocab.json + merges.txt\n"
    "                      (CLIP), spiece.model or tokenizer.model (SigLIP),\n"
    "                      vocab.txt (Chinese-CLIP) (default: the --init\n"
    "                      model's, else the default model's)\n"
    "  --lora RANK         train low-rank adapters on every attention and\n"
    "                      MLP projection, base weights frozen; the output\n"
    "                      has them merged in\n"
    "  --lora-alpha X      adapter scale numerator (default 2 x RANK)\n"
    "  --save-adapters     also write adapter_model.safetensors (PEFT names)\n"
    "  --f32               write model.safetensors in F32 (default F16)\n"
    "data:\n"
    "  --catalog FILE      training pairs (JSONL, CSV/TSV or a directory);\n"
    "                      repeat it to train on several.  A JSONL row's\n"
    "                      \"weight\" (default 1) is how often it is drawn\n"
    "                      per epoch: 0.25 = in a quarter of the epochs\n"
    "  --weight X          multiply the weights of the --catalog (or\n"
    "                      --text-pairs) before it\n"
    "                      (mix sources: --catalog a --catalog b --weight 3)\n"
    "  --db DB             train on a database's own pairs instead: every\n"
    "                      item with a caption and an image (the bytes\n"
    "                      `ingest --keep-images` kept, else its source\n"
    "                      file); the held-out share (--val-fraction, by a\n"
    "                      hash of the key) is written to\n"
    "                      DIR/heldout-pairs.jsonl for `vlmdb eval --pairs`;\n"
    "                      transparent images are handled as the --init\n"
    "                      model says (its vlmdb_alpha), as the database\n"
    "                      embeds them\n"
    "  --text-pairs FILE   pairs of texts that mean the same (JSONL rows\n"
    "                      {\"a\": TEXT, \"b\": TEXT, \"weight\": W}: a word\n"
    "                      and its definition, a name and its translation);\n"
    "                      each step adds a contrastive loss between their\n"
    "                      sides on the text tower alone (repeatable;\n"
    "                      --weight after it scales its rows' weights)\n"
    "  --text-batch N      text pairs per step (default: half the batch,\n"
    "                      at most that)\n"
    "  --text-weight X     the text-pair loss's weight in a step's loss\n"
    "                      (default 1)\n"
    "  --text-rounds K     batches of text pairs per step, each with its\n"
    "                      own negatives, their mean loss weighted by\n"
    "                      --text-weight (default 1; texts cost little\n"
    "                      next to images)\n"
    "  --images-root DIR   base of relative image paths\n"
    "  --val-catalog FILE  held-out pairs evaluated after every epoch\n"
    "                      (repeatable)\n"
    "  --val-fraction X    else hold out this share of the catalog, chosen\n"
    "                      by a hash of the key (default 0.05; 0 = none)\n"
    "  --no-augment        no random crops or colour jitter\n"
    "  --crop-scale X      smallest random crop, as a share of the area\n"
    "                      (default 0.5)\n"
    "  --jitter X          colour jitter strength (default 0.2)\n"
    "  --hflip             random horizontal flips (off by default: images\n"
    "                      may contain text)\n"
    "  --silhouette X      show this share of the --catalog before it as\n"
    "                      silhouettes: gray, negated (light on dark),\n"
    "                      blurred to 28 x 28, as small scans of products\n"
    "                      on black (default 0)\n"
    "  --alpha-white       composite transparent images onto white (default:\n"
    "                      drop alpha, as CLIP's reference preprocessing)\n"
    "  --alt-text-share X  how often a row with \"texts\" (other captions:\n"
    "                      translations, paraphrases) is captioned by one of\n"
    "                      them instead of its \"text\" (default 0.5)\n"
    "  --cache-mb N        decoded images kept in memory (default 4096)\n"
    "  --loader-threads N  threads building batches ahead (default 1)\n"
    "optimization:\n"
    "  --epochs N          passes over the data (default 10)\n"
    "  --max-steps N       train this many steps instead\n"
    "  --batch N           pairs per step (default 128)\n"
    "  --lr X              peak learning rate (default 5e-4 from scratch,\n"
    "                      1e-5 fine-tuning, 1e-4 with --lora)\n"
    "  --min-lr X          end of the cosine decay (default 0)\n"
    "  --warmup N          linear warm-up steps (default 10%, at most 2000)\n"
    "  --weight-decay X    AdamW decoupled weight decay (default 0.1)\n"
    "  --grad-clip X       clip the gradient's global norm (default 1; 0 =\n"
    "                      off)\n"
    "  --seed N            random seed (default 1)\n"
    "  --threads N         compute threads (default: all cores)\n"
    "checkpoints:\n"
    "  --checkpoint-every N  steps between checkpoints (default: each epoch)\n"
    "  --resume            continue from DIR/checkpoint (bit for bit with the\n"
    "                      same thread count) with the checkpoint's schedule\n"
    "                      and options; starts afresh if there is none\n"
    "  --stop-after N      checkpoint and stop after step N\n"
    "  -q, --quiet         no progress lines\n"
    "  -h, --help          this help\n"
    "\n"
    "Ctrl-C (or SIGTERM) writes a checkpoint and stops; run the same command\n"
    "with --resume to continue.  Exit status: 0, 1 when training failed or\n"
    "was stopped, 2 for bad flags.\n"
    "\n"
    "example:\n"
    "  vlmdb train --catalog clipart.jsonl --config models/default-config.json \\\n"
    "              --out models/clipart --epochs 40 --batch 128 --seed 1\n"
    "  vlmdb train --catalog products.jsonl --init models/default --lora 8 \\\n"
    "              --out models/products --epochs 5\n"
    "  vlmdb train --db products.vlm --init models/default --lora 8 \\\n"
    "              --out models/products --epochs 5\n";

static volatile int stop_flag;

static void on_signal(int sig) {
  (void)sig;
  stop_flag = 1;
}

static int parse_long(const char *cmd, const char *flag, const char *text,
                      long min, long max, long *out) {
  char *end;
  errno = 0;
  long v = strtol(text, &end, 10);
  if (errno || end == text || *end || v < min || v > max) {
    vlm_cli_error(cmd, "%s wants an integer in [%ld, %ld], not '%s'", flag,
                  min, max, text);
    return -1;
  }
  *out = v;
  return 0;
}

static int parse_double(const char *cmd, const char *flag, const char *text,
                        double min, double max, double *out) {
  char *end;
  errno = 0;
  double v = strtod(text, &end);
  if (errno || end == text || *end || !(v >= min && v <= max)) {
    vlm_cli_error(cmd, "%s wants a number in [%g, %g], not '%s'", flag, min,
                  max, text);
    return -1;
  }
  *out = v;
  return 0;
}

typedef struct {
  vlm_train_item *items;
  char **strings;
  int n, cap, nstr, capstr;
} item_list;

/* Take ownership of a malloc'd block (a string, or an array of them). */
static void *keep(item_list *l, void *s) {
  if (!s)
    return NULL;
  if (l->nstr == l->capstr) {
    int cap = l->capstr ? l->capstr * 2 : 256;
    char **p = realloc(l->strings, sizeof *p * cap);
    if (!p)
      return NULL;
    l->strings = p;
    l->capstr = cap;
  }
  l->strings[l->nstr++] = s;
  return s;
}

static void list_free(item_list *l) {
  for (int i = 0; i < l->nstr; i++)
    free(l->strings[i]);
  free(l->strings);
  free(l->items);
}

/* The catalog's rows with an image and a text.  Bad rows and rows
 * without both are reported (the first few) and counted. */
static int read_pairs(const char *cmd, const char *path,
                      const char *images_root, item_list *out, int quiet) {
  vlm_catalog_options co = {0};
  co.images_root = images_root;
  vlm_catalog *cat = NULL;
  int rc = vlm_catalog_open(path, &co, &cat);
  if (rc) {
    vlm_cli_liberror(cmd, rc);
    return -1;
  }
  vlm_catalog_row row = {0};
  long bad = 0, partial = 0;
  for (;;) {
    rc = vlm_catalog_next(cat, &row);
    if (rc <= 0)
      break;
    if (row.error) {
      if (!quiet && bad < 10)
        fprintf(stderr, "vlmdb %s: %s:%ld: skipped: %s\n", cmd, path,
                row.line, row.message);
      bad++;
    } else if (!row.image || !row.text || !*row.text) {
      partial++;
    } else {
      if (out->n == out->cap) {
        int cap = out->cap ? out->cap * 2 : 1024;
        vlm_train_item *p = realloc(out->items, sizeof *p * cap);
        if (!p) {
          rc = VLM_ENOMEM;
          break;
        }
        out->items = p;
        out->cap = cap;
      }
      vlm_train_item *it = &out->items[out->n];
      it->key = keep(out, row.key);
      it->image = keep(out, row.image);
      it->text = keep(out, row.text);
      if (!it->key || !it->image || !it->text) {
        rc = VLM_ENOMEM;
        break;
      }
      row.key = row.image = row.text = NULL; /* now owned by the list */
      it->alt_texts = NULL;
      it->n_alt_texts = 0;
      it->weight = row.weight;
      it->silhouette = 0;
      if (row.ntexts > 0) {
        int kept = 0;
        while (kept < row.ntexts && keep(out, row.texts[kept]))
          kept++;
        if (kept < row.ntexts || !keep(out, row.texts)) {
          for (int k = kept; k < row.ntexts; k++)
            free(row.texts[k]);
          free(row.texts); /* never kept on this path */
          row.texts = NULL;
          row.ntexts = 0;
          rc = VLM_ENOMEM;
          break;
        }
        it->alt_texts = (const char *const *)row.texts;
        it->n_alt_texts = row.ntexts;
        row.texts = NULL; /* the strings and the array are the list's */
        row.ntexts = 0;
      }
      out->n++;
    }
    vlm_catalog_row_clear(&row);
  }
  vlm_catalog_row_clear(&row);
  vlm_catalog_close(cat);
  if (rc < 0) {
    vlm_cli_liberror(cmd, rc);
    return -1;
  }
  if (!quiet && (bad || partial))
    fprintf(stderr, "vlmdb %s: %s: %d pairs; %ld bad rows and %ld rows "
                    "without both an image and a text skipped\n",
            cmd, path, out->n, bad, partial);
  if (out->n == 0) {
    vlm_cli_error(cmd, "%s: no items with both an image and a text", path);
    return -1;
  }
  return 0;
}

/* ---- text pairs (--text-pairs) ------------------------------------------ */

typedef struct {
  vlm_train_text_pair *pairs;
  int n, cap;
  char **strings;
  long nstr, capstr;
} text_pair_list;

static void text_pairs_free(text_pair_list *l) {
  for (long i = 0; i < l->nstr; i++)
    free(l->strings[i]);
  free(l->strings);
  free(l->pairs);
}

static char *tp_keep(text_pair_list *l, const char *s) {
  if (l->nstr == l->capstr) {
    long cap = l->capstr ? l->capstr * 2 : 1024;
    char **p = realloc(l->strings, sizeof *p * (size_t)cap);
    if (!p)
      return NULL;
    l->strings = p;
    l->capstr = cap;
  }
  char *d = strdup(s);
  if (d)
    l->strings[l->nstr++] = d;
  return d;
}

/* JSONL rows {"a": TEXT, "b": TEXT, "weight": W (optional, > 0)}; a row
 * that is not one is reported (the first ten) and skipped. */
static int read_text_pairs(const char *cmd, const char *path, double scale,
                           text_pair_list *out, int quiet) {
  FILE *f = fopen(path, "r");
  if (!f) {
    vlm_cli_error(cmd, "%s: %s", path, strerror(errno));
    return -1;
  }
  char *line = NULL;
  size_t cap = 0;
  long lineno = 0, bad = 0;
  int first = out->n, rc = 0;
  while (getline(&line, &cap, f) > 0) {
    lineno++;
    if (line[strspn(line, " \t\r\n")] == '\0')
      continue;
    json_error_t e;
    json_t *o = json_loads(line, 0, &e);
    json_t *w = json_object_get(o, "weight");
    const char *a = json_string_value(json_object_get(o, "a"));
    const char *b = json_string_value(json_object_get(o, "b"));
    double weight = w ? json_number_value(w) : 1;
    const char *why = !o ? e.text
                      : !json_is_object(o) ? "not a JSON object"
                      : !a || !b ? "wants string members \"a\" and \"b\""
                      : (w && !json_is_number(w)) || !(weight > 0) ||
                              !isfinite(weight)
                          ? "weight is not a positive number"
                          : NULL;
    if (why) {
      if (!quiet && bad < 10)
        fprintf(stderr, "vlmdb %s: %s:%ld: skipped: %s\n", cmd, path, lineno,
                why);
      bad++;
      json_decref(o);
      continue;
    }
    if (out->n == out->cap) {
      int ncap = out->cap ? out->cap * 2 : 4096;
      vlm_train_text_pair *p = realloc(out->pairs, sizeof *p * (size_t)ncap);
      if (!p) {
        json_decref(o);
        rc = VLM_ENOMEM;
        break;
      }
      out->pairs = p;
      out->cap = ncap;
    }
    vlm_train_text_pair *tp = &out->pairs[out->n];
    tp->a = tp_keep(out, a);
    tp->b = tp_keep(out, b);
    weight *= scale;
    tp->weight = weight < VLM_CATALOG_MAX_WEIGHT ? weight
                                                 : VLM_CATALOG_MAX_WEIGHT;
    json_decref(o);
    if (!tp->a || !tp->b) {
      rc = VLM_ENOMEM;
      break;
    }
    out->n++;
  }
  int read_error = ferror(f);
  free(line);
  fclose(f);
  if (rc) {
    vlm_cli_liberror(cmd, rc);
    return -1;
  }
  if (read_error) {
    vlm_cli_error(cmd, "%s: read error", path);
    return -1;
  }
  if (!quiet && bad)
    fprintf(stderr, "vlmdb %s: %s: %d text pairs; %ld bad rows skipped\n",
            cmd, path, out->n - first, bad);
  if (out->n == first) {
    vlm_cli_error(cmd, "%s: no text pairs", path);
    return -1;
  }
  return 0;
}

/* ---- pairs of a database (--db) ------------------------------------------ */

typedef struct {
  item_list *out;
  char **need_bytes; /* keys whose image comes from kept bytes */
  int nneed, capneed;
  long no_caption, no_image;
  int rc;
} db_walk;

static int db_visit(const vlm_record *rec, void *arg) {
  db_walk *w = arg;
  item_list *out = w->out;
  if (!rec->caption || !*rec->caption) {
    w->no_caption++;
    return 0;
  }
  int kept = rec->image_len > 0;
  if (!kept && (!rec->source || access(rec->source, R_OK) != 0)) {
    w->no_image++;
    return 0;
  }
  if (out->n == out->cap) {
    int cap = out->cap ? out->cap * 2 : 1024;
    vlm_train_item *p = realloc(out->items, sizeof *p * cap);
    if (!p)
      return w->rc = VLM_ENOMEM;
    out->items = p;
    out->cap = cap;
  }
  vlm_train_item *it = &out->items[out->n];
  memset(it, 0, sizeof *it);
  it->key = keep(out, strdup(rec->key));
  it->text = keep(out, strdup(rec->caption));
  it->image = kept ? NULL : keep(out, strdup(rec->source));
  if (!it->key || !it->text || (!kept && !it->image))
    return w->rc = VLM_ENOMEM;
  if (kept) {
    if (w->nneed == w->capneed) {
      int cap = w->capneed ? w->capneed * 2 : 256;
      char **p = realloc(w->need_bytes, sizeof *p * cap);
      if (!p)
        return w->rc = VLM_ENOMEM;
      w->need_bytes = p;
      w->capneed = cap;
    }
    w->need_bytes[w->nneed++] = (char *)it->key;
  }
  out->n++;
  return 0;
}

/* 1 when the pair of key is held out at fraction: FNV-1a of the key with
 * splitmix64's finalizer, so that keys sharing a long prefix (item0001,
 * item0002, ...) still land on both sides.  (The trainer's own
 * --val-fraction split takes the high bits of plain FNV-1a, which such
 * keys barely change; it is left as it is so that earlier runs keep
 * their split.) */
static int held_out(const char *key, double fraction) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (const unsigned char *p = (const unsigned char *)key; *p; p++)
    h = (h ^ *p) * 0x100000001b3ull;
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebull;
  h ^= h >> 31;
  return (double)(h >> 11) / 9007199254740992.0 < fraction;
}

/* The database's pairs: every item with a caption and an image, into
 * train, and those held_out() picks into val (strings owned by train).
 * The trainer reads images by path, so kept bytes are written to files in
 * scratch (removed by the caller once the run is done).  The held-out
 * keys go to heldout as eval pairs. */
static int read_db_pairs(const char *cmd, const char *db_dir,
                         const char *scratch, const char *heldout,
                         double val_fraction, item_list *out, item_list *val,
                         int quiet) {
  vlm_db *db = NULL;
  vlm_db_open_options ro = {.readonly = 1};
  db_walk w = {.out = out};
  FILE *f = NULL;
  int rc = vlm_db_open(db_dir, &ro, &db), status = -1;
  if (rc || (rc = vlm_db_foreach(db, db_visit, &w)) || (rc = w.rc))
    goto fail;
  if (w.nneed && mkdir(scratch, 0755) != 0 && errno != EEXIST) {
    vlm_cli_error(cmd, "%s: %s", scratch, strerror(errno));
    goto done;
  }
  /* items and need_bytes list the kept ones in the same order */
  for (int i = 0, j = 0; i < out->n && j < w.nneed; i++) {
    vlm_train_item *it = &out->items[i];
    if (it->key != w.need_bytes[j])
      continue;
    j++;
    uint8_t *bytes = NULL;
    size_t len = 0;
    if ((rc = vlm_db_get_image(db, it->key, &bytes, &len)))
      goto fail;
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%08d", scratch, j);
    FILE *img = fopen(path, "wb");
    int ok = img && fwrite(bytes, 1, len, img) == len;
    free(bytes);
    if ((img && fclose(img)) || !ok) {
      vlm_cli_error(cmd, "writing %s failed", path);
      goto done;
    }
    if (!(it->image = keep(out, strdup(path)))) {
      rc = VLM_ENOMEM;
      goto fail;
    }
  }
  if (!(f = fopen(heldout, "w"))) {
    vlm_cli_error(cmd, "%s: %s", heldout, strerror(errno));
    goto done;
  }
  long nheld = 0;
  if (!(val->items = malloc(sizeof *val->items * (size_t)(out->n + 1)))) {
    rc = VLM_ENOMEM;
    goto fail;
  }
  int kept_n = 0;
  for (int i = 0; i < out->n; i++) {
    if (!held_out(out->items[i].key, val_fraction)) {
      out->items[kept_n++] = out->items[i];
      continue;
    }
    val->items[val->n++] = out->items[i];
    json_t *o = json_pack("{s:s, s:s}", "image", out->items[i].key, "text",
                          out->items[i].key);
    char *line = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!line || fprintf(f, "%s\n", line) < 0) {
      free(line);
      vlm_cli_error(cmd, "writing %s failed", heldout);
      goto done;
    }
    free(line);
    nheld++;
  }
  out->n = kept_n;
  if (fclose(f) != 0) {
    f = NULL;
    vlm_cli_error(cmd, "writing %s failed", heldout);
    goto done;
  }
  f = NULL;
  if (!quiet)
    fprintf(stderr, "vlmdb %s: %s: %d pairs to train on, %ld held out "
            "(listed in %s; %ld images from kept bytes); %ld items without a "
            "caption and %ld without an image skipped\n", cmd, db_dir,
            out->n, nheld, heldout,
            (long)w.nneed, w.no_caption, w.no_image);
  if (out->n == 0) {
    vlm_cli_error(cmd, "%s: no items with both an image and a caption",
                  db_dir);
    goto done;
  }
  status = 0;
  goto done;
fail:
  vlm_cli_liberror(cmd, rc);
done:
  if (f)
    fclose(f);
  free(w.need_bytes);
  vlm_db_close(db);
  return status;
}

/* 1 when the model in dir composites transparent images onto white (its
 * preprocessor_config.json says "vlmdb_alpha": "white"), as every vlmdb
 * command that embeds with it does. */
static int model_alpha_white(const char *dir) {
  char path[PATH_MAX];
  snprintf(path, sizeof path, "%s/preprocessor_config.json", dir);
  json_t *o = json_load_file(path, 0, NULL);
  const char *alpha = json_string_value(json_object_get(o, "vlmdb_alpha"));
  int white = alpha && !strcmp(alpha, "white");
  json_decref(o);
  return white;
}

static int rm_entry(const char *path, const struct stat *st, int flag,
                    struct FTW *ftw) {
  (void)st, (void)flag, (void)ftw;
  return remove(path);
}

/* The default tokenizer: the default model's, else the CLIP tokenizer in
 * the source tree's test fixtures (the standard vocabulary). */
static const char *default_tokenizer(void) {
  static char found[PATH_MAX];
  char probe[PATH_MAX + 32];
  const char *model = vlm_cli_default_model();
  snprintf(probe, sizeof probe, "%s/vocab.json", model);
  if (access(probe, R_OK) == 0)
    return model;
  char exe[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n > 0) {
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    if (slash) {
      *slash = '\0';
      snprintf(found, sizeof found, "%s/../tests/fixtures/clip-tiny", exe);
      snprintf(probe, sizeof probe, "%s/vocab.json", found);
      if (access(probe, R_OK) == 0)
        return found;
    }
  }
  if (access("tests/fixtures/clip-tiny/vocab.json", R_OK) == 0)
    return "tests/fixtures/clip-tiny";
  return NULL;
}

static char *join_args(int argc, char **argv) {
  size_t len = 16;
  for (int i = 0; i < argc; i++)
    len += strlen(argv[i]) * 2 + 3;
  char *s = malloc(len), *p = s;
  if (!s)
    return NULL;
  p += sprintf(p, "vlmdb");
  for (int i = 0; i < argc; i++) {
    int quote = strpbrk(argv[i], " \t'\"\\$") != NULL || !*argv[i];
    *p++ = ' ';
    if (quote)
      *p++ = '\'';
    for (const char *q = argv[i]; *q; q++) {
      if (*q == '\'' && quote) {
        memcpy(p, "'\\''", 4);
        p += 4;
      } else {
        *p++ = *q;
      }
    }
    if (quote)
      *p++ = '\'';
  }
  *p = '\0';
  return s;
}

int cmd_train(int argc, char **argv) {
  const char *cmd = "train";
  enum { MAX_CATALOGS = 32 };
  const char *catalogs[MAX_CATALOGS], *val_catalogs[MAX_CATALOGS];
  double cat_weight[MAX_CATALOGS], tp_weight[MAX_CATALOGS];
  double cat_silhouette[MAX_CATALOGS];
  const char *text_pairs[MAX_CATALOGS];
  int ncat = 0, nval = 0, ntp = 0, last_weighted = 0;
  const char *images_root = NULL, *db_dir = NULL;
  int quiet = 0, val_fraction_given = 0;
  vlm_train_options o;
  vlm_train_options_default(&o);
  o.val_fraction = 0.05;
  enum {
    O_CATALOG = 256, O_OUT, O_INIT, O_CONFIG, O_TOKENIZER, O_LORA,
    O_LORA_ALPHA, O_SAVE_ADAPTERS, O_F32, O_IMAGES_ROOT, O_VAL_CATALOG,
    O_VAL_FRACTION, O_NO_AUGMENT, O_CROP_SCALE, O_JITTER, O_HFLIP, O_ALPHA_WHITE,
    O_ALT_TEXT_SHARE, O_CONTEXT, O_WEIGHT, O_SILHOUETTE,
    O_CACHE_MB, O_LOADER_THREADS, O_EPOCHS, O_MAX_STEPS, O_BATCH, O_LR,
    O_MIN_LR, O_WARMUP, O_WEIGHT_DECAY, O_GRAD_CLIP, O_SEED, O_THREADS,
    O_CHECKPOINT_EVERY, O_RESUME, O_STOP_AFTER, O_DB, O_TEXT_PAIRS,
    O_TEXT_BATCH, O_TEXT_WEIGHT, O_TEXT_ROUNDS
  };
  static const struct option longopts[] = {
      {"catalog", required_argument, NULL, O_CATALOG},
      {"db", required_argument, NULL, O_DB},
      {"text-pairs", required_argument, NULL, O_TEXT_PAIRS},
      {"text-batch", required_argument, NULL, O_TEXT_BATCH},
      {"text-weight", required_argument, NULL, O_TEXT_WEIGHT},
      {"text-rounds", required_argument, NULL, O_TEXT_ROUNDS},
      {"weight", required_argument, NULL, O_WEIGHT},
      {"out", required_argument, NULL, O_OUT},
      {"init", required_argument, NULL, O_INIT},
      {"config", required_argument, NULL, O_CONFIG},
      {"tokenizer", required_argument, NULL, O_TOKENIZER},
      {"lora", required_argument, NULL, O_LORA},
      {"lora-alpha", required_argument, NULL, O_LORA_ALPHA},
      {"save-adapters", no_argument, NULL, O_SAVE_ADAPTERS},
      {"f32", no_argument, NULL, O_F32},
      {"images-root", required_argument, NULL, O_IMAGES_ROOT},
      {"val-catalog", required_argument, NULL, O_VAL_CATALOG},
      {"val-fraction", required_argument, NULL, O_VAL_FRACTION},
      {"no-augment", no_argument, NULL, O_NO_AUGMENT},
      {"crop-scale", required_argument, NULL, O_CROP_SCALE},
      {"jitter", required_argument, NULL, O_JITTER},
      {"hflip", no_argument, NULL, O_HFLIP},
      {"silhouette", required_argument, NULL, O_SILHOUETTE},
      {"alpha-white", no_argument, NULL, O_ALPHA_WHITE},
      {"alt-text-share", required_argument, NULL, O_ALT_TEXT_SHARE},
      {"context", required_argument, NULL, O_CONTEXT},
      {"cache-mb", required_argument, NULL, O_CACHE_MB},
      {"loader-threads", required_argument, NULL, O_LOADER_THREADS},
      {"epochs", required_argument, NULL, O_EPOCHS},
      {"max-steps", required_argument, NULL, O_MAX_STEPS},
      {"batch", required_argument, NULL, O_BATCH},
      {"lr", required_argument, NULL, O_LR},
      {"min-lr", required_argument, NULL, O_MIN_LR},
      {"warmup", required_argument, NULL, O_WARMUP},
      {"weight-decay", required_argument, NULL, O_WEIGHT_DECAY},
      {"grad-clip", required_argument, NULL, O_GRAD_CLIP},
      {"seed", required_argument, NULL, O_SEED},
      {"threads", required_argument, NULL, O_THREADS},
      {"checkpoint-every", required_argument, NULL, O_CHECKPOINT_EVERY},
      {"resume", no_argument, NULL, O_RESUME},
      {"stop-after", required_argument, NULL, O_STOP_AFTER},
      {"quiet", no_argument, NULL, 'q'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  optind = 0; /* full reset: commands may run more than once per process */
  int c;
  long lv;
  double dv;
#define LONG_ARG(flag, lo, hi, dst)                                          \
  do {                                                                       \
    if (parse_long(cmd, flag, optarg, lo, hi, &lv))                          \
      return VLM_EXIT_USAGE;                                                 \
    dst = lv;                                                                \
  } while (0)
#define DOUBLE_ARG(flag, lo, hi, dst)                                        \
  do {                                                                       \
    if (parse_double(cmd, flag, optarg, lo, hi, &dv))                        \
      return VLM_EXIT_USAGE;                                                 \
    dst = dv;                                                                \
  } while (0)
  while ((c = getopt_long(argc, argv, "qh", longopts, NULL)) != -1) {
    switch (c) {
    case O_CATALOG:
      if (ncat == MAX_CATALOGS) {
        vlm_cli_error(cmd, "at most %d --catalog files", MAX_CATALOGS);
        return VLM_EXIT_USAGE;
      }
      cat_weight[ncat] = 1;
      cat_silhouette[ncat] = 0;
      catalogs[ncat++] = optarg;
      last_weighted = 'c';
      break;
    case O_WEIGHT:
      if (last_weighted == 't') {
        DOUBLE_ARG("--weight", 1e-6, VLM_CATALOG_MAX_WEIGHT,
                   tp_weight[ntp - 1]);
        break;
      }
      if (!ncat) {
        vlm_cli_error(cmd, "--weight scales the --catalog (or --text-pairs) "
                           "before it");
        return VLM_EXIT_USAGE;
      }
      DOUBLE_ARG("--weight", 1e-6, VLM_CATALOG_MAX_WEIGHT, cat_weight[ncat - 1]);
      break;
    case O_SILHOUETTE:
      if (!ncat) {
        vlm_cli_error(cmd, "--silhouette applies to the --catalog before it");
        return VLM_EXIT_USAGE;
      }
      DOUBLE_ARG("--silhouette", 0, 1, cat_silhouette[ncat - 1]);
      break;
    case O_TEXT_PAIRS:
      if (ntp == MAX_CATALOGS) {
        vlm_cli_error(cmd, "at most %d --text-pairs files", MAX_CATALOGS);
        return VLM_EXIT_USAGE;
      }
      tp_weight[ntp] = 1;
      text_pairs[ntp++] = optarg;
      last_weighted = 't';
      break;
    case O_TEXT_BATCH: LONG_ARG("--text-batch", 1, 32768, o.text_batch); break;
    case O_TEXT_WEIGHT: DOUBLE_ARG("--text-weight", 0, 1000, o.text_weight); break;
    case O_TEXT_ROUNDS: LONG_ARG("--text-rounds", 1, 1024, o.text_rounds); break;
    case O_DB: db_dir = optarg; break;
    case O_OUT: o.out_dir = optarg; break;
    case O_INIT: o.init_dir = optarg; break;
    case O_CONFIG: o.config_path = optarg; break;
    case O_TOKENIZER: o.tokenizer_dir = optarg; break;
    case O_LORA: LONG_ARG("--lora", 1, 1024, o.lora_rank); break;
    case O_LORA_ALPHA: DOUBLE_ARG("--lora-alpha", 1e-6, 1e6, o.lora_alpha); break;
    case O_SAVE_ADAPTERS: o.save_adapters = 1; break;
    case O_F32: o.f16 = 0; break;
    case O_IMAGES_ROOT: images_root = optarg; break;
    case O_VAL_CATALOG:
      if (nval == MAX_CATALOGS) {
        vlm_cli_error(cmd, "at most %d --val-catalog files", MAX_CATALOGS);
        return VLM_EXIT_USAGE;
      }
      val_catalogs[nval++] = optarg;
      break;
    case O_VAL_FRACTION:
      DOUBLE_ARG("--val-fraction", 0, 0.9, o.val_fraction);
      val_fraction_given = 1;
      break;
    case O_NO_AUGMENT: o.no_augment = 1; break;
    case O_CROP_SCALE: DOUBLE_ARG("--crop-scale", 0.01, 1, o.crop_scale_min); break;
    case O_JITTER: DOUBLE_ARG("--jitter", 0, 0.99, o.jitter); break;
    case O_HFLIP: o.hflip = 1; break;
    case O_ALPHA_WHITE: o.alpha_white = 1; break;
    case O_ALT_TEXT_SHARE: DOUBLE_ARG("--alt-text-share", 0, 1, o.alt_text_share); break;
    case O_CONTEXT: LONG_ARG("--context", 2, 1 << 14, o.context_length); break;
    case O_CACHE_MB: LONG_ARG("--cache-mb", 0, 1 << 20, o.cache_mb); break;
    case O_LOADER_THREADS: LONG_ARG("--loader-threads", 1, 64, o.loader_threads); break;
    case O_EPOCHS: LONG_ARG("--epochs", 1, 1000000, o.epochs); break;
    case O_MAX_STEPS: LONG_ARG("--max-steps", 1, LONG_MAX, o.max_steps); break;
    case O_BATCH: LONG_ARG("--batch", 2, 65536, o.batch); break;
    case O_LR: DOUBLE_ARG("--lr", 1e-12, 10, o.lr); break;
    case O_MIN_LR: DOUBLE_ARG("--min-lr", 0, 10, o.min_lr); break;
    case O_WARMUP: LONG_ARG("--warmup", 0, INT_MAX, o.warmup_steps); break;
    case O_WEIGHT_DECAY: DOUBLE_ARG("--weight-decay", 0, 10, o.weight_decay); break;
    case O_GRAD_CLIP:
      DOUBLE_ARG("--grad-clip", 0, 1e9, o.grad_clip);
      if (o.grad_clip == 0)
        o.grad_clip = -1;
      break;
    case O_SEED: LONG_ARG("--seed", 0, LONG_MAX, o.seed); break;
    case O_THREADS: LONG_ARG("--threads", 1, 256, o.threads); break;
    case O_CHECKPOINT_EVERY: LONG_ARG("--checkpoint-every", 1, INT_MAX, o.checkpoint_every); break;
    case O_RESUME: o.resume = 1; break;
    case O_STOP_AFTER: LONG_ARG("--stop-after", 1, LONG_MAX, o.stop_after); break;
    case 'q': quiet = 1; break;
    case 'h': fputs(usage, stdout); return VLM_EXIT_OK;
    default: fputs(usage, stderr); return VLM_EXIT_USAGE;
    }
  }
#undef LONG_ARG
#undef DOUBLE_ARG
  if (optind != argc) {
    vlm_cli_error(cmd, "unexpected argument '%s' (see --help)", argv[optind]);
    return VLM_EXIT_USAGE;
  }
  if ((!ncat && !db_dir) || !o.out_dir) {
    vlm_cli_error(cmd, "--catalog FILE (or --db DB) and --out DIR are "
                       "required (see --help)");
    return VLM_EXIT_USAGE;
  }
  if (ncat && db_dir) {
    vlm_cli_error(cmd, "give --catalog or --db, not both");
    return VLM_EXIT_USAGE;
  }
  if (db_dir && nval) {
    vlm_cli_error(cmd, "--db holds its pairs out by key (--val-fraction); "
                       "not with --val-catalog");
    return VLM_EXIT_USAGE;
  }
  if (o.init_dir && o.config_path) {
    vlm_cli_error(cmd, "give --init or --config, not both");
    return VLM_EXIT_USAGE;
  }
  if (!o.init_dir && !o.config_path && !o.resume) {
    vlm_cli_error(cmd, "give --init DIR (fine-tune) or --config FILE (from "
                       "scratch)");
    return VLM_EXIT_USAGE;
  }
  if (nval && val_fraction_given) {
    vlm_cli_error(cmd, "give --val-catalog or --val-fraction, not both");
    return VLM_EXIT_USAGE;
  }
  /* resuming, the output directory holds the tokenizer the run began
   * with (the export copies it), whatever its family */
  if (!o.tokenizer_dir && !o.init_dir && !o.resume) {
    o.tokenizer_dir = default_tokenizer();
    if (!o.tokenizer_dir && !o.resume) {
      vlm_cli_error(cmd, "no tokenizer found: give --tokenizer DIR (with "
                         "vocab.json and merges.txt)");
      return VLM_EXIT_USAGE;
    }
  }
  item_list train = {0}, val = {0};
  text_pair_list tpl = {0};
  int status = VLM_EXIT_RUNTIME;
  char *command = join_args(argc, argv);
  char scratch[PATH_MAX] = "";
  if (db_dir) {
    char heldout[PATH_MAX];
    snprintf(scratch, sizeof scratch, "%s/db-images", o.out_dir);
    snprintf(heldout, sizeof heldout, "%s/heldout-pairs.jsonl", o.out_dir);
    if (mkdir(o.out_dir, 0755) != 0 && errno != EEXIST) {
      vlm_cli_error(cmd, "%s: %s", o.out_dir, strerror(errno));
      goto done;
    }
    if (read_db_pairs(cmd, db_dir, scratch, heldout, o.val_fraction, &train,
                      &val, quiet))
      goto done;
    /* The database embeds its images as its model says; training on them
     * otherwise would teach the model pixels it never sees there (a
     * clip-art catalog's transparent backgrounds as black instead of
     * white).  The catalog path keeps its default (alpha dropped). */
    if (o.init_dir && model_alpha_white(o.init_dir))
      o.alpha_white = 1;
    o.val_items = val.n ? val.items : NULL;
    o.n_val = val.n;
    o.val_fraction = 0;
  }
  for (int i = 0; i < ncat; i++) {
    int first = train.n;
    if (read_pairs(cmd, catalogs[i], images_root, &train, quiet))
      goto done;
    for (int k = first; k < train.n; k++)
      train.items[k].silhouette = cat_silhouette[i];
    for (int k = first; k < train.n && cat_weight[i] != 1; k++) {
      double w = train.items[k].weight > 0 ? train.items[k].weight : 1;
      w *= cat_weight[i];
      train.items[k].weight = w < VLM_CATALOG_MAX_WEIGHT ? w
                                                         : VLM_CATALOG_MAX_WEIGHT;
    }
  }
  if (nval) {
    for (int i = 0; i < nval; i++)
      if (read_pairs(cmd, val_catalogs[i], images_root, &val, quiet))
        goto done;
    o.val_items = val.items;
    o.n_val = val.n;
    o.val_fraction = 0;
  }
  for (int i = 0; i < ntp; i++)
    if (read_text_pairs(cmd, text_pairs[i], tp_weight[i], &tpl, quiet))
      goto done;
  o.text_pairs = tpl.pairs;
  o.n_text_pairs = tpl.n;
  o.items = train.items;
  o.n_items = train.n;
  o.log = quiet ? NULL : stderr;
  o.command = command;
  o.stop = &stop_flag;
  stop_flag = 0;
  struct sigaction sa = {0}, old_int, old_term;
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, &old_int);
  sigaction(SIGTERM, &sa, &old_term);
  vlm_train_result res;
  int rc = vlm_train_run(&o, &res);
  sigaction(SIGINT, &old_int, NULL);
  sigaction(SIGTERM, &old_term, NULL);
  if (rc) {
    vlm_cli_liberror(cmd, rc);
  } else {
    printf("trained %lld steps (%d epochs) on %d pairs, final loss %.4f, "
           "%.1f pairs/s\n",
           (long long)res.steps, res.epochs, res.n_train, res.loss,
           res.pairs_per_s);
    if (res.n_text_pairs)
      printf("text pairs: %d (%d skipped), final text loss %.4f\n",
             res.n_text_pairs, res.n_text_skipped, res.text_loss);
    if (res.recall.n)
      printf("held-out %d pairs: image->text R@1 %.3f R@5 %.3f R@10 %.3f "
             "(median rank %.1f); text->image R@1 %.3f R@5 %.3f R@10 %.3f "
             "(median rank %.1f)\n",
             res.recall.n, res.recall.i2t[0], res.recall.i2t[1],
             res.recall.i2t[2], res.recall.i2t_median, res.recall.t2i[0],
             res.recall.t2i[1], res.recall.t2i[2], res.recall.t2i_median);
    printf("model written to %s\n", o.out_dir);
    status = VLM_EXIT_OK;
  }
  vlm_train_result_free(&res);
  /* the kept images' copies: a --resume of a finished run needs none */
  if (scratch[0] && status == VLM_EXIT_OK)
    nftw(scratch, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
done:
  free(command);
  list_free(&train);
  list_free(&val);
  text_pairs_free(&tpl);
  return status;
}
