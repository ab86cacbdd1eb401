/* train_data.c - reading, checking, caching and augmenting the training
 * pairs, and the loader threads that build batches ahead of the compute.
 *
 * Images are decoded once, in parallel, when the data set is opened:
 * that finds unreadable images before training starts, gives the data
 * digest, and (within cache_bytes) keeps each image reduced to a shorter
 * side of twice the model's input, which is all a random resized crop
 * needs.  Images over the budget are decoded again each time they are
 * used, through the same reduction, so the pixels never depend on
 * whether an image was cached.
 */
#include "train_data.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "image.h"
#include "preprocess.h"
#include "sha256.h"
#include "tokenizer_spm.h"
#include "tokenizer_wp.h"
#include "vlm_clip.h"
#include "vlm_error.h"
#include "vlm_file.h"

/* ---- random numbers ---------------------------------------------------- */

static uint64_t splitmix64(uint64_t *x) {
  uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/* A stream keyed by (seed, a, b, salt). */
static uint64_t stream_seed(uint64_t seed, uint64_t a, uint64_t b,
                            uint64_t salt) {
  uint64_t x = seed;
  uint64_t h = splitmix64(&x);
  x = h ^ (a * 0xd6e8feb86659fd93ull);
  h = splitmix64(&x);
  x = h ^ (b * 0xa0761d6478bd642full);
  h = splitmix64(&x);
  x = h ^ salt;
  return splitmix64(&x);
}

static double uniform(uint64_t *s) { /* [0, 1) */
  return (double)(splitmix64(s) >> 11) * (1.0 / 9007199254740992.0);
}

uint64_t vlm__tdata_stream(uint64_t seed, uint64_t a, uint64_t b,
                           uint64_t salt) {
  return stream_seed(seed, a, b, salt);
}

double vlm__tdata_uniform(uint64_t *s) { return uniform(s); }

/* ---- the data set ------------------------------------------------------ */

typedef struct {
  int item;        /* index into the caller's items */
  double weight;   /* expected draws per epoch */
  double silhouette; /* share of draws shown as silhouettes */
  int ntok;
  int32_t *ids;
  int nalt;        /* usable alt_texts, tokenized */
  int *alt_ntok;
  int32_t **alt_ids;
  int *alt_src;    /* their indices into the item's alt_texts */
  vlm_image img;   /* cached reduced image (rgb NULL when not cached) */
  float *pixels;   /* eval mode */
  char *path;      /* for decoding again when not cached */
} pair;

typedef struct {
  int64_t step;    /* step held (or being built) */
  int state;       /* 0 free, 1 building, 2 ready, 3 in use */
  float *pixels;
  int *pairs;
} slot;

struct vlm__tdata {
  vlm__tdata_cfg cfg;
  pair *pairs;
  int n, skipped;
  int draws;       /* pairs drawn per epoch: the rounded sum of weights */
  int list_cap;    /* room an epoch's list needs: the sum of ceil(weight) */
  char digest[65];
  /* loader */
  int batch, spe, nslots, nthreads;
  int64_t next_build, end_step;
  slot *slots;
  pthread_t *threads;
  int started, quit;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int load_error;
};

int vlm__tdata_count(const vlm__tdata *d) { return d->n; }
int vlm__tdata_draws(const vlm__tdata *d) { return d->draws; }
int vlm__tdata_skipped(const vlm__tdata *d) { return d->skipped; }
int vlm__tdata_item(const vlm__tdata *d, int i) { return d->pairs[i].item; }
const char *vlm__tdata_digest(const vlm__tdata *d) { return d->digest; }
int vlm__tdata_steps_per_epoch(const vlm__tdata *d) { return d->spe; }
int vlm__tdata_alt_count(const vlm__tdata *d, int i) {
  return d->pairs[i].nalt;
}

/* The random streams of a pair's r-th draw in an epoch: the epoch's for
 * the first, so unweighted data is drawn exactly as before weights. */
static int64_t draw_epoch(const vlm__tdata *d, int draw, int64_t epoch) {
  return epoch + (int64_t)(draw / d->n) * ((int64_t)1 << 40);
}

void vlm__tdata_train_tokens(const vlm__tdata *d, int draw, int64_t epoch,
                             const int32_t **ids, int *len) {
  const pair *p = &d->pairs[draw % d->n];
  epoch = draw_epoch(d, draw, epoch);
  if (p->nalt > 0) {
    uint64_t rs = stream_seed(d->cfg.seed, (uint64_t)epoch, (uint64_t)p->item,
                              0x63617074ull);
    if (uniform(&rs) < d->cfg.alt_text_share) {
      int k = (int)(uniform(&rs) * p->nalt);
      *ids = p->alt_ids[k];
      *len = p->alt_ntok[k];
      return;
    }
  }
  *ids = p->ids;
  *len = p->ntok;
}

const float *vlm__tdata_pixels(const vlm__tdata *d, int i) {
  return d->pairs[i].pixels;
}

void vlm__tdata_tokens(const vlm__tdata *d, int i, const int32_t **ids,
                       int *len) {
  *ids = d->pairs[i].ids;
  *len = d->pairs[i].ntok;
}

/* Image files: regular files only (a FIFO would block the loader). */
static int read_file(const char *path, uint8_t **data, size_t *len) {
  return vlm_read_file(path, VLM_MAX_IMAGE_FILE, data, len);
}

/* ---- reduction ----------------------------------------------------------- */

/* Reduce a decoded image so its shorter side is at most `side` (Pillow's
 * bicubic, antialiased), or copy it. */
static int reduce(const vlm_image *img, int side, vlm_image *out) {
  int sw = img->w, sh = img->h, mn = sw < sh ? sw : sh;
  if (mn <= side)
    return vlm__image_crop(img, 0, 0, sw, sh, out);
  int ow = (int)((int64_t)sw * side / mn), oh = (int)((int64_t)sh * side / mn);
  return vlm__image_resize(img, ow > 0 ? ow : 1, oh > 0 ? oh : 1, out);
}

/* ---- opening: decode, check, tokenize, digest --------------------------- */

typedef struct {
  vlm__tdata *d;
  const vlm_train_item *items;
  const vlm__tokenizer *tok;
  int empty_ids; /* ids the tokenizer gives for an empty text */
  int n;
  atomic_int next;
  atomic_llong cached_bytes;
  /* per item results */
  int *ok;
  char (*why)[256];
  uint8_t (*sha)[32];
  pair *tmp;
} prep_ctx;

/* The family's image processor, as embed/config.c's
 * vlm__pp_family_defaults gives it to vlm_clip_load: CLIP's torchvision
 * pipeline; Hugging Face's for the others (EXIF orientation, RGB first,
 * floored crop offsets), SigLIP's resizing straight to the model's size. */
static void family_preprocess(vlm__preprocess_cfg *pc, vlm__family family,
                              int image_size) {
  vlm__preprocess_defaults(pc, image_size);
  if (family == VLM__FAMILY_CLIP)
    return;
  pc->rgb_first = 1;
  pc->exif_transpose = 1;
  pc->crop_floor = 1;
  if (family == VLM__FAMILY_SIGLIP) {
    pc->resize_w = pc->resize_h = image_size;
    pc->center_crop = 0;
  }
}

/* Tokenize text with the family's tokenizer, unpadded, into at most
 * context_length ids. */
static int family_tokenize(const vlm__tokenizer *tok, const vlm__tdata_cfg *cfg,
                           const char *text, int32_t *ids, int *n_ids) {
  int ctx = cfg->context_length;
  if (cfg->spm)
    return vlm__spm_tokenize(cfg->spm, text, ctx, ids, ctx, n_ids);
  if (cfg->wp)
    return vlm__wp_tokenize(cfg->wp, text,
                            cfg->wp_max_len > 0 && cfg->wp_max_len < ctx
                                ? cfg->wp_max_len
                                : ctx,
                            ids, ctx, n_ids);
  return vlm__tokenize(tok, text, ctx, ids, ctx, n_ids);
}

int vlm__tdata_empty_ids(const vlm__tdata_cfg *cfg, const vlm__tokenizer *tok,
                         int *n) {
  int32_t empty[8];
  vlm__tdata_cfg small = *cfg;
  small.context_length = 8;
  if (family_tokenize(tok, &small, "", empty, n))
    return vlm_seterr(VLM_EINVAL, "tokenizer: %s", vlm_errmsg());
  return 0;
}

int vlm__tdata_text_ids(const vlm__tdata_cfg *cfg, const vlm__tokenizer *tok,
                        int empty_ids, const char *text, int32_t **out,
                        int *n_out, char *why, size_t why_size) {
  int32_t *ids = malloc(sizeof(int32_t) * (size_t)cfg->context_length);
  int n_ids = 0;
  if (!ids) {
    snprintf(why, why_size, "out of memory");
    return -1;
  }
  if (family_tokenize(tok, cfg, text, ids, &n_ids)) {
    snprintf(why, why_size, "text: %s", vlm_errmsg());
    free(ids);
    return -1;
  }
  if (n_ids <= empty_ids) {
    snprintf(why, why_size, "empty text");
    free(ids);
    return -1;
  }
  for (int k = 0; k < n_ids; k++)
    if (ids[k] < 0 || ids[k] >= cfg->vocab_size) {
      snprintf(why, why_size,
               "token id %d outside the model's vocabulary of %d", ids[k],
               cfg->vocab_size);
      free(ids);
      return -1;
    }
  /* SigLIP's model sees exactly context_length ids, the padding
   * included */
  for (; cfg->spm && n_ids < cfg->context_length; n_ids++)
    ids[n_ids] = cfg->pad_id;
  *out = ids;
  *n_out = n_ids;
  return 0;
}

/* Tokenize one caption into a malloc'd array.  0, or -1 with why set
 * (the caption is empty, or has ids outside the vocabulary). */
static int tokenize_caption(const prep_ctx *c, const char *text,
                            int32_t **out, int *n_out, char *why,
                            size_t why_size) {
  return vlm__tdata_text_ids(&c->d->cfg, c->tok, c->empty_ids, text, out,
                             n_out, why, why_size);
}

static void prep_one(prep_ctx *c, int i) {
  const vlm__tdata_cfg *cfg = &c->d->cfg;
  const vlm_train_item *it = &c->items[i];
  pair *p = &c->tmp[i];
  uint8_t *data = NULL;
  size_t len = 0;
  vlm_image img = {0};
  p->item = i;
  p->weight = it->weight > 0 ? it->weight : 1;
  p->silhouette = it->silhouette > 0 ? it->silhouette < 1 ? it->silhouette : 1
                                     : 0;
  c->ok[i] = 0;
  if (!it->image || !it->text) {
    snprintf(c->why[i], sizeof c->why[i], "needs both an image and a text");
    return;
  }
  /* text */
  int32_t *ids = NULL;
  int n_ids = 0;
  if (tokenize_caption(c, it->text, &ids, &n_ids, c->why[i],
                       sizeof c->why[i]))
    return;
  p->ids = ids;
  p->ntok = n_ids;
  /* other captions: one that cannot be used is left out, not the pair */
  if (it->alt_texts && it->n_alt_texts > 0) {
    size_t m = (size_t)it->n_alt_texts;
    p->alt_ids = calloc(m, sizeof *p->alt_ids);
    p->alt_ntok = calloc(m, sizeof *p->alt_ntok);
    p->alt_src = calloc(m, sizeof *p->alt_src);
    if (!p->alt_ids || !p->alt_ntok || !p->alt_src) {
      snprintf(c->why[i], sizeof c->why[i], "out of memory");
      return;
    }
    char why[256];
    for (int k = 0; k < it->n_alt_texts; k++) {
      if (!it->alt_texts[k] ||
          tokenize_caption(c, it->alt_texts[k], &p->alt_ids[p->nalt],
                           &p->alt_ntok[p->nalt], why, sizeof why))
        continue;
      p->alt_src[p->nalt++] = k;
    }
  }
  /* image */
  if (read_file(it->image, &data, &len)) {
    snprintf(c->why[i], sizeof c->why[i], "%s", vlm_errmsg());
    return;
  }
  vlm__sha256 sh;
  vlm__sha256_init(&sh);
  vlm__sha256_update(&sh, data, len);
  vlm__sha256_final(&sh, c->sha[i], NULL);
  if (cfg->eval) {
    vlm__preprocess_cfg pc;
    family_preprocess(&pc, cfg->family, cfg->image_size);
    pc.alpha = cfg->alpha_white ? VLM_ALPHA_WHITE : VLM_ALPHA_DROP;
    memcpy(pc.mean, cfg->mean, sizeof pc.mean);
    memcpy(pc.std, cfg->std, sizeof pc.std);
    size_t S = (size_t)cfg->image_size;
    p->pixels = malloc(sizeof(float) * 3 * S * S);
    if (!p->pixels || vlm__preprocess(&pc, data, len, p->pixels)) {
      snprintf(c->why[i], sizeof c->why[i], "%s",
               p->pixels ? vlm_errmsg() : "out of memory");
      goto done;
    }
  } else {
    vlm_clip_options dopt = {0};
    dopt.alpha = cfg->alpha_white ? VLM_ALPHA_WHITE : VLM_ALPHA_DROP;
    /* the stored pixels, as the eval path's preprocessing sees them */
    dopt.orientation = cfg->family == VLM__FAMILY_CLIP ? VLM_ORIENT_IGNORE
                                                       : VLM_ORIENT_APPLY;
    if (vlm_image_decode(data, len, &dopt, &img)) {
      snprintf(c->why[i], sizeof c->why[i], "%s: %s", it->image,
               vlm_errmsg());
      goto done;
    }
    vlm_image small = {0};
    if (reduce(&img, 2 * cfg->image_size, &small)) {
      snprintf(c->why[i], sizeof c->why[i], "%s", vlm_errmsg());
      goto done;
    }
    long long bytes = (long long)small.w * small.h * 3;
    if (atomic_fetch_add(&c->cached_bytes, bytes) + bytes <=
        cfg->cache_bytes) {
      p->img = small;
    } else {
      vlm_image_free(&small);
      p->path = strdup(it->image);
      if (!p->path) {
        snprintf(c->why[i], sizeof c->why[i], "out of memory");
        goto done;
      }
    }
  }
  c->ok[i] = 1;
done:
  vlm_image_free(&img);
  free(data);
}

static void *prep_main(void *arg) {
  prep_ctx *c = arg;
  for (;;) {
    int i = atomic_fetch_add(&c->next, 1);
    if (i >= c->n)
      break;
    prep_one(c, i);
  }
  return NULL;
}

static void pair_free(pair *p) {
  free(p->ids);
  for (int k = 0; k < p->nalt; k++)
    free(p->alt_ids[k]);
  free(p->alt_ids);
  free(p->alt_ntok);
  free(p->alt_src);
  vlm_image_free(&p->img);
  free(p->pixels);
  free(p->path);
}

static void loader_stop(vlm__tdata *d);

void vlm__tdata_free(vlm__tdata *d) {
  if (!d)
    return;
  loader_stop(d);
  for (int i = 0; i < d->n; i++)
    pair_free(&d->pairs[i]);
  free(d->pairs);
  pthread_mutex_destroy(&d->mu);
  pthread_cond_destroy(&d->cv);
  free(d);
}

int vlm__tdata_open(const vlm__tdata_cfg *cfg, const vlm_train_item *items,
                    int n, const vlm__tokenizer *tok, vlm__tdata **out) {
  *out = NULL;
  int rc = 0;
  vlm__tdata *d = calloc(1, sizeof *d);
  prep_ctx c = {0};
  pthread_t *th = NULL;
  if (!d)
    return vlm_seterr(VLM_ENOMEM, "training data");
  pthread_mutex_init(&d->mu, NULL);
  pthread_cond_init(&d->cv, NULL);
  d->cfg = *cfg;
  if (n <= 0) {
    rc = vlm_seterr(VLM_EINVAL, "no image-text pairs");
    goto fail;
  }
  c.d = d;
  c.items = items;
  c.tok = tok;
  if ((rc = vlm__tdata_empty_ids(cfg, tok, &c.empty_ids)))
    goto fail;
  c.n = n;
  c.ok = calloc((size_t)n, sizeof *c.ok);
  c.why = calloc((size_t)n, sizeof *c.why);
  c.sha = calloc((size_t)n, sizeof *c.sha);
  c.tmp = calloc((size_t)n, sizeof *c.tmp);
  int T = cfg->threads < 1 ? 1 : cfg->threads;
  th = calloc((size_t)T, sizeof *th);
  if (!c.ok || !c.why || !c.sha || !c.tmp || !th) {
    rc = vlm_seterr(VLM_ENOMEM, "training data: %d pairs", n);
    goto fail;
  }
  int started = 0;
  for (int t = 1; t < T; t++)
    if (pthread_create(&th[t], NULL, prep_main, &c) == 0)
      started = t;
    else
      break;
  prep_main(&c);
  for (int t = 1; t <= started; t++)
    pthread_join(th[t], NULL);
  /* keep the good pairs, in order; digest them */
  d->pairs = calloc((size_t)n, sizeof *d->pairs);
  if (!d->pairs) {
    rc = vlm_seterr(VLM_ENOMEM, "training data");
    goto fail;
  }
  vlm__sha256 sh;
  vlm__sha256_init(&sh);
  for (int i = 0; i < n; i++) {
    if (!c.ok[i]) {
      d->skipped++;
      if (cfg->log)
        fprintf(cfg->log, "vlmdb train: skipping pair %d (%s): %s\n", i + 1,
                items[i].key ? items[i].key : "?", c.why[i]);
      pair_free(&c.tmp[i]);
      continue;
    }
    d->pairs[d->n++] = c.tmp[i];
    const char *key = items[i].key ? items[i].key : "";
    vlm__sha256_update(&sh, key, strlen(key) + 1);
    vlm__sha256_update(&sh, items[i].text, strlen(items[i].text) + 1);
    vlm__sha256_update(&sh, c.sha[i], 32);
    const pair *p = &d->pairs[d->n - 1];
    if (p->weight != 1) { /* likewise */
      vlm__sha256_update(&sh, "weight", 7);
      vlm__sha256_update(&sh, &p->weight, sizeof p->weight);
    }
    if (p->silhouette > 0) { /* likewise */
      vlm__sha256_update(&sh, "silhouette", 11);
      vlm__sha256_update(&sh, &p->silhouette, sizeof p->silhouette);
    }
    if (p->nalt > 0) { /* absent ones leave older digests as they were */
      vlm__sha256_update(&sh, "alt", 4);
      for (int k = 0; k < p->nalt; k++) {
        const char *a = items[i].alt_texts[p->alt_src[k]];
        vlm__sha256_update(&sh, a, strlen(a) + 1);
      }
    }
  }
  double wsum = 0, cap = 0;
  for (int i = 0; i < d->n; i++) {
    wsum += d->pairs[i].weight;
    cap += ceil(d->pairs[i].weight);
  }
  double maxw = 1;
  for (int i = 0; i < d->n; i++)
    if (d->pairs[i].weight > maxw)
      maxw = d->pairs[i].weight;
  if (wsum > INT_MAX / 2 || cap > INT_MAX / 2 ||
      ceil(maxw) * d->n > INT_MAX) {
    rc = vlm_seterr(VLM_EINVAL, "the weights add up to %.0f draws per epoch",
                    wsum);
    goto fail;
  }
  d->draws = (int)llround(wsum);
  if (d->draws < 1)
    d->draws = 1;
  d->list_cap = (int)cap > d->draws ? (int)cap : d->draws;
  uint8_t dig[32];
  vlm__sha256_final(&sh, dig, d->digest);
  if (d->n == 0) {
    rc = vlm_seterr(VLM_EINVAL, "none of the %d pairs is usable (first: %s)",
                    n, c.why[0]);
    goto fail;
  }
  free(c.ok); free(c.why); free(c.sha); free(c.tmp); free(th);
  *out = d;
  return 0;
fail:
  if (c.tmp && !d->pairs)
    for (int i = 0; i < n; i++)
      pair_free(&c.tmp[i]);
  free(c.ok); free(c.why); free(c.sha); free(c.tmp); free(th);
  vlm__tdata_free(d);
  return rc;
}

/* ---- augmentation ------------------------------------------------------- */

/* torchvision's RandomResizedCrop.get_params: an integer box of area
 * scale in [smin, 1] and aspect ratio in [3/4, 4/3], else the centered
 * box of the nearest allowed ratio. */
static void crop_box(int w, int h, double smin, uint64_t *rs, int box[4]) {
  double area = (double)w * h, lo = log(3.0 / 4), hi = log(4.0 / 3);
  for (int attempt = 0; attempt < 10; attempt++) {
    double target = area * (smin + (1 - smin) * uniform(rs));
    double ratio = exp(lo + (hi - lo) * uniform(rs));
    int cw = (int)lround(sqrt(target * ratio));
    int ch = (int)lround(sqrt(target / ratio));
    if (cw > 0 && ch > 0 && cw <= w && ch <= h) {
      box[0] = (int)(uniform(rs) * (w - cw + 1));
      box[1] = (int)(uniform(rs) * (h - ch + 1));
      box[2] = cw;
      box[3] = ch;
      return;
    }
  }
  double in_ratio = (double)w / h;
  int cw = w, ch = h;
  if (in_ratio < 3.0 / 4)
    ch = (int)lround(w / (3.0 / 4));
  else if (in_ratio > 4.0 / 3)
    cw = (int)lround(h * (4.0 / 3));
  if (ch > h)
    ch = h;
  if (cw > w)
    cw = w;
  box[0] = (w - cw) / 2;
  box[1] = (h - ch) / 2;
  box[2] = cw;
  box[3] = ch;
}

/* Silhouette: S x S RGB in [0, 1] becomes its negated luminance (light
 * on dark), reduced to 28 x 28 and enlarged back (Pillow bicubic both
 * ways): what a small grayscale scan of a product on black looks like. */
static int silhouette(float *px, int S) {
  enum { L = 28 };
  int n = S * S, rc;
  vlm_image g = {.w = S, .h = S, .rgb = malloc((size_t)n * 3)}, lo = {0},
            back = {0};
  if (!g.rgb)
    return VLM_ENOMEM;
  for (int k = 0; k < n; k++) {
    float *v = px + k * 3;
    float y = 1 - (0.299f * v[0] + 0.587f * v[1] + 0.114f * v[2]);
    uint8_t b = (uint8_t)lrintf(255 * (y < 0 ? 0 : y > 1 ? 1 : y));
    g.rgb[k * 3] = g.rgb[k * 3 + 1] = g.rgb[k * 3 + 2] = b;
  }
  if (!(rc = vlm__image_resize(&g, L, L, &lo)) &&
      !(rc = vlm__image_resize(&lo, S, S, &back)))
    for (int k = 0; k < n * 3; k++)
      px[k] = back.rgb[k] * (1.0f / 255);
  vlm_image_free(&g);
  vlm_image_free(&lo);
  vlm_image_free(&back);
  return rc;
}

/* The training pixels of pair i in epoch e: a random resized crop of the
 * reduced image to S x S (Pillow bicubic), colour jitter (brightness,
 * contrast, saturation, as torchvision's ColorJitter), a silhouette for
 * the item's share of draws, an optional horizontal flip, normalized
 * CHW.  Without augmentation: the centered
 * square. */
static int augment(const vlm__tdata *d, int draw, int64_t epoch, float *out) {
  const vlm__tdata_cfg *cfg = &d->cfg;
  const pair *p = &d->pairs[draw % d->n];
  epoch = draw_epoch(d, draw, epoch);
  int S = cfg->image_size, rc = 0;
  vlm_image own = {0}, crop = {0}, res = {0};
  const vlm_image *src = &p->img;
  float *tmp = NULL;
  if (!src->rgb) { /* not cached: decode again, reduce the same way */
    uint8_t *data;
    size_t len;
    vlm_image img = {0};
    rc = read_file(p->path, &data, &len);
    if (!rc) {
      vlm_clip_options dopt = {0};
      dopt.alpha = cfg->alpha_white ? VLM_ALPHA_WHITE : VLM_ALPHA_DROP;
      dopt.orientation = cfg->family == VLM__FAMILY_CLIP ? VLM_ORIENT_IGNORE
                                                       : VLM_ORIENT_APPLY;
      rc = vlm_image_decode(data, len, &dopt, &img);
      free(data);
    }
    if (!rc) {
      rc = reduce(&img, 2 * S, &own);
      vlm_image_free(&img);
    }
    if (rc)
      return rc;
    src = &own;
  }
  uint64_t rs = stream_seed(cfg->seed, (uint64_t)epoch, (uint64_t)p->item,
                            0x61756731ull);
  int w = src->w, h = src->h, mn = w < h ? w : h;
  int box[4] = {(w - mn) / 2, (h - mn) / 2, mn, mn};
  if (cfg->augment)
    crop_box(w, h, cfg->crop_scale_min, &rs, box);
  if ((rc = vlm__image_crop(src, box[0], box[1], box[2], box[3], &crop)) ||
      (rc = vlm__image_resize(&crop, S, S, &res)))
    goto done;
  int n = S * S;
  tmp = malloc(sizeof(float) * (size_t)n * 3);
  if (!tmp) {
    rc = VLM_ENOMEM;
    goto done;
  }
  for (int k = 0; k < n * 3; k++)
    tmp[k] = res.rgb[k] * (1.0f / 255);
  if (cfg->augment && cfg->jitter > 0) {
    float j = cfg->jitter;
    float bright = 1 + j * (float)(2 * uniform(&rs) - 1);
    float contrast = 1 + j * (float)(2 * uniform(&rs) - 1);
    float sat = 1 + j * (float)(2 * uniform(&rs) - 1);
    double gmean = 0;
    for (int k = 0; k < n; k++) {
      float *px = tmp + k * 3;
      for (int c = 0; c < 3; c++) {
        float v = px[c] * bright;
        px[c] = v < 0 ? 0 : v > 1 ? 1 : v;
      }
      gmean += 0.299f * px[0] + 0.587f * px[1] + 0.114f * px[2];
    }
    float gm = (float)(gmean / n);
    for (int k = 0; k < n; k++) {
      float *px = tmp + k * 3;
      for (int c = 0; c < 3; c++) {
        float v = (px[c] - gm) * contrast + gm;
        px[c] = v < 0 ? 0 : v > 1 ? 1 : v;
      }
      float gray = 0.299f * px[0] + 0.587f * px[1] + 0.114f * px[2];
      for (int c = 0; c < 3; c++) {
        float v = (px[c] - gray) * sat + gray;
        px[c] = v < 0 ? 0 : v > 1 ? 1 : v;
      }
    }
  }
  if (cfg->augment && p->silhouette > 0) { /* its own stream: others keep
                                              their draws */
    uint64_t ss = stream_seed(cfg->seed, (uint64_t)epoch, (uint64_t)p->item,
                              0x73696c68ull);
    if (uniform(&ss) < p->silhouette && (rc = silhouette(tmp, S)))
      goto done;
  }
  int flip = cfg->augment && cfg->hflip && uniform(&rs) < 0.5;
  for (int c = 0; c < 3; c++) {
    float m = cfg->mean[c], is = 1 / cfg->std[c];
    for (int y = 0; y < S; y++)
      for (int x = 0; x < S; x++) {
        int sx = flip ? S - 1 - x : x;
        out[((size_t)c * S + y) * S + x] =
            (tmp[((size_t)y * S + sx) * 3 + c] - m) * is;
      }
  }
done:
  free(tmp);
  vlm_image_free(&own);
  vlm_image_free(&crop);
  vlm_image_free(&res);
  return rc;
}

/* The pairs of epoch e in order, d->draws of them: pair i appears
 * floor(w) times plus once more with probability frac(w), drawn from
 * (seed, e, pair); the list is shuffled (Fisher-Yates from (seed, e)) and
 * cut or cycled to d->draws.  With every weight 1 it is a permutation.
 * list has room for d->list_cap. */
static void epoch_list(const vlm__tdata *d, int64_t epoch, int *list) {
  int m = 0;
  for (int i = 0; i < d->n; i++) {
    double w = d->pairs[i].weight;
    int reps = (int)w;
    if (w != reps) {
      uint64_t ws = stream_seed(d->cfg.seed, (uint64_t)epoch,
                                (uint64_t)d->pairs[i].item, 0x77676874ull);
      reps += uniform(&ws) < w - reps;
    }
    for (int r = 0; r < reps; r++)
      list[m++] = i + r * d->n; /* a draw: pair i's r-th of the epoch */
  }
  uint64_t rs = stream_seed(d->cfg.seed, (uint64_t)epoch, 0, 0x7065726dull);
  for (int i = m - 1; i > 0; i--) {
    int j = (int)(uniform(&rs) * (i + 1));
    int t = list[i];
    list[i] = list[j];
    list[j] = t;
  }
  if (m == 0) /* every weight drew nothing: the pairs in order */
    for (; m < d->n && m < d->draws; m++)
      list[m] = m;
  for (int i = m; i < d->draws; i++)
    list[i] = list[i % m];
}

static int build(const vlm__tdata *d, int batch, int64_t step, float *pixels,
                 int *pairs, int *perm) {
  int spe = d->draws / batch;
  int64_t epoch = step / spe;
  int k = (int)(step % spe);
  epoch_list(d, epoch, perm);
  size_t per = (size_t)3 * d->cfg.image_size * d->cfg.image_size;
  for (int b = 0; b < batch; b++) {
    pairs[b] = perm[k * batch + b];
    int rc = augment(d, pairs[b], epoch, pixels + b * per);
    if (rc)
      return rc;
  }
  return 0;
}

void vlm__tdata_build(const vlm__tdata *d, int batch, int64_t step,
                      float *pixels, int *pairs) {
  int *perm = malloc(sizeof(int) * (size_t)d->list_cap);
  if (perm)
    build(d, batch, step, pixels, pairs, perm);
  free(perm);
}

/* ---- loader threads ----------------------------------------------------- */

static void *loader_main(void *arg) {
  vlm__tdata *d = arg;
  int *perm = malloc(sizeof(int) * (size_t)d->list_cap);
  pthread_mutex_lock(&d->mu);
  while (!d->quit) {
    int64_t s = d->next_build;
    slot *sl = s < d->end_step ? &d->slots[s % d->nslots] : NULL;
    if (!sl || sl->state != 0) {
      pthread_cond_wait(&d->cv, &d->mu);
      continue;
    }
    d->next_build++;
    sl->step = s;
    sl->state = 1;
    pthread_mutex_unlock(&d->mu);
    int rc = perm ? build(d, d->batch, s, sl->pixels, sl->pairs, perm)
                  : VLM_ENOMEM;
    pthread_mutex_lock(&d->mu);
    if (rc && !d->load_error)
      d->load_error = rc;
    sl->state = 2;
    pthread_cond_broadcast(&d->cv);
  }
  pthread_mutex_unlock(&d->mu);
  free(perm);
  return NULL;
}

static void loader_stop(vlm__tdata *d) {
  if (d->started) {
    pthread_mutex_lock(&d->mu);
    d->quit = 1;
    pthread_cond_broadcast(&d->cv);
    pthread_mutex_unlock(&d->mu);
    for (int t = 0; t < d->nthreads; t++)
      pthread_join(d->threads[t], NULL);
    d->started = 0;
  }
  if (d->slots)
    for (int i = 0; i < d->nslots; i++) {
      free(d->slots[i].pixels);
      free(d->slots[i].pairs);
    }
  free(d->slots);
  free(d->threads);
  d->slots = NULL;
  d->threads = NULL;
}

int vlm__tdata_start(vlm__tdata *d, int batch, int64_t first_step,
                     int64_t end_step) {
  loader_stop(d);
  if (batch < 1 || batch > d->draws)
    return vlm_seterr(VLM_EINVAL, "batch %d with %d draws per epoch", batch,
                      d->draws);
  d->batch = batch;
  d->spe = d->draws / batch;
  d->next_build = first_step;
  d->end_step = end_step;
  d->quit = 0;
  d->load_error = 0;
  d->nthreads = d->cfg.loader_threads < 1 ? 1 : d->cfg.loader_threads;
  d->nslots = d->nthreads + 1;
  d->slots = calloc((size_t)d->nslots, sizeof *d->slots);
  d->threads = calloc((size_t)d->nthreads, sizeof *d->threads);
  if (!d->slots || !d->threads)
    goto nomem;
  size_t per = (size_t)3 * d->cfg.image_size * d->cfg.image_size;
  for (int i = 0; i < d->nslots; i++) {
    d->slots[i].step = -1;
    d->slots[i].pixels = malloc(sizeof(float) * per * batch);
    d->slots[i].pairs = malloc(sizeof(int) * batch);
    if (!d->slots[i].pixels || !d->slots[i].pairs)
      goto nomem;
  }
  for (int t = 0; t < d->nthreads; t++) {
    if (pthread_create(&d->threads[t], NULL, loader_main, d)) {
      d->nthreads = t;
      d->started = t > 0;
      if (t == 0)
        goto nomem;
      break;
    }
  }
  d->started = 1;
  return 0;
nomem:
  loader_stop(d);
  return vlm_seterr(VLM_ENOMEM, "batch loader");
}

int vlm__tdata_next(vlm__tdata *d, int64_t step, const float **pixels,
                    const int **pairs) {
  if (!d->started || step >= d->end_step)
    return vlm_seterr(VLM_ESTATE, "batch loader: step %lld not scheduled",
                      (long long)step);
  slot *sl = &d->slots[step % d->nslots];
  pthread_mutex_lock(&d->mu);
  while (!(sl->step == step && sl->state == 2) && !d->load_error)
    pthread_cond_wait(&d->cv, &d->mu);
  int rc = d->load_error;
  if (!rc)
    sl->state = 3;
  pthread_mutex_unlock(&d->mu);
  if (rc)
    return vlm_seterr(rc, "batch loader: an image could not be read again "
                          "(changed on disk?)");
  *pixels = sl->pixels;
  *pairs = sl->pairs;
  return 0;
}

void vlm__tdata_release(vlm__tdata *d, int64_t step) {
  slot *sl = &d->slots[step % d->nslots];
  pthread_mutex_lock(&d->mu);
  if (sl->step == step)
    sl->state = 0;
  pthread_cond_broadcast(&d->cv);
  pthread_mutex_unlock(&d->mu);
}
