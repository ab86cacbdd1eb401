/* quant.c - vlm_clip_quantize: a model directory written again with its
 * transformer-block Linear weights as int8 (+ per-row F32 scales) or as
 * bfloat16, and the compute mode recorded in the file's metadata.
 *
 * Which tensors are quantized is what the loader says: the model is
 * loaded with int8 compute, and every file tensor a block's q/k/v, out,
 * fc1 or fc2 weight comes from (named tensors the loader keeps lazy) is
 * one.  So every family and both layouts the loader reads are covered by
 * the same rule, and the file holds exactly what the loader would
 * quantize on its own (vlm__q8_quantize_row), so a quantized file gives
 * the same vectors as its source loaded with the same compute mode.
 *
 * The file: tensors contiguous, widest element first, down to 1-byte
 * ones (so each starts aligned without gaps between them, as strict
 * readers require), the header padded with spaces to 8 bytes. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "clip_int.h"
#include "kernels.h"
#include "quant.h"
#include "vlm_error.h"
#include "vlm_file.h"

typedef struct {
  const vlm__st_tensor *src;
  const char *dtype;   /* written dtype */
  char name[512];
  int ndim;
  int64_t shape[VLM__ST_MAX_DIMS];
  const void *data;
  uint64_t nbytes;
  void *owned;         /* data, when made here */
  int align;
} out_tensor;

/* The source tensor t (F32, F16 or BF16) as F32, malloc'd. */
static float *to_f32(const vlm__st_tensor *t) {
  float *f = malloc((size_t)(t->numel ? t->numel : 1) * sizeof *f);
  if (!f)
    return NULL;
  if (t->dtype == VLM__DT_F32)
    memcpy(f, t->data, (size_t)t->numel * sizeof *f);
  else if (t->dtype == VLM__DT_F16)
    vlm__f16_to_f32(f, t->data, (size_t)t->numel);
  else
    vlm__bf16_to_f32(f, t->data, (size_t)t->numel);
  return f;
}

/* An owned F32 vector written beside tensor name as name + suffix. */
static void f32_beside(out_tensor *v, const char *name, const char *suffix,
                       float *data, int64_t len) {
  snprintf(v->name, sizeof v->name, "%s%s", name, suffix);
  v->dtype = "F32";
  v->ndim = 1;
  v->shape[0] = len;
  v->data = v->owned = data;
  v->nbytes = (uint64_t)len * 4;
  v->align = 4;
}

/* The quantized forms of one block weight: name (I8) + name_scale (F32)
 * (+ name_smooth (F32 [K]) with the columns multiplied by it first, when
 * smooth is given), or name (BF16). */
static int quantize_tensor(const vlm__st_tensor *t, vlm_compute_mode mode,
                           const float *smooth_in, out_tensor *o, int *n) {
  if (t->ndim != 2 || (t->dtype != VLM__DT_F32 && t->dtype != VLM__DT_F16 &&
                       t->dtype != VLM__DT_BF16))
    return vlm_seterr(VLM_EUNSUPPORTED, "%s: %s %s cannot be quantized",
                      t->name, vlm__dtype_name(t->dtype),
                      t->ndim == 2 ? "tensor" : "non-matrix");
  float *f = to_f32(t);
  if (!f)
    return vlm_seterr(VLM_ENOMEM, "out of memory quantizing %s", t->name);
  const int64_t rows = t->shape[0], K = t->shape[1];
  out_tensor *w = &o[(*n)++];
  snprintf(w->name, sizeof w->name, "%s", t->name);
  w->src = t;
  w->ndim = 2;
  w->shape[0] = rows;
  w->shape[1] = K;
  float *smooth = NULL;
  if (mode == VLM_COMPUTE_INT8 && smooth_in) {
    if (!(smooth = malloc((size_t)(K ? K : 1) * sizeof *smooth))) {
      free(f);
      return vlm_seterr(VLM_ENOMEM, "out of memory quantizing %s", t->name);
    }
    memcpy(smooth, smooth_in, (size_t)K * sizeof *smooth);
    for (int64_t r = 0; r < rows; r++)
      for (int64_t k = 0; k < K; k++)
        f[r * K + k] *= smooth[k];
  }
  if (mode == VLM_COMPUTE_INT8) {
    int8_t *q = malloc((size_t)(rows * K > 0 ? rows * K : 1));
    float *scale = malloc((size_t)(rows ? rows : 1) * sizeof *scale);
    if (!q || !scale) {
      free(q);
      free(scale);
      free(f);
      free(smooth);
      return vlm_seterr(VLM_ENOMEM, "out of memory quantizing %s", t->name);
    }
    for (int64_t r = 0; r < rows; r++)
      scale[r] = vlm__q8_quantize_row(q + r * K, f + r * K, (int)K);
    w->dtype = "I8";
    w->data = w->owned = q;
    w->nbytes = (uint64_t)(rows * K);
    w->align = 1;
    f32_beside(&o[(*n)++], t->name, "_scale", scale, rows);
    if (smooth)
      f32_beside(&o[(*n)++], t->name, "_smooth", smooth, K);
  } else {
    uint16_t *h = malloc((size_t)(rows * K > 0 ? rows * K : 1) * 2);
    if (!h) {
      free(f);
      return vlm_seterr(VLM_ENOMEM, "out of memory quantizing %s", t->name);
    }
    for (int64_t i = 0; i < rows * K; i++)
      h[i] = vlm__f32_to_bf16(f[i]);
    w->dtype = "BF16";
    w->data = w->owned = h;
    w->nbytes = (uint64_t)(rows * K) * 2;
    w->align = 2;
  }
  free(f);
  return 0;
}

static int by_align(const void *a, const void *b) {
  const out_tensor *x = a, *y = b;
  if (x->align != y->align)
    return y->align - x->align;
  return strcmp(x->name, y->name);
}

/* Write path (via path.tmp, fsync, rename). */
static int write_file(const char *path, out_tensor *o, int n,
                      const char *mode_name) {
  qsort(o, (size_t)n, sizeof *o, by_align);
  json_t *h = json_object(), *meta = json_object();
  int rc = 0, fd = -1;
  char *text = NULL, tmp[PATH_MAX];
  if (!h || !meta)
    goto nomem;
  json_object_set_new(meta, "format", json_string("pt"));
  json_object_set_new(meta, "vlmdb.quantization", json_string(mode_name));
  json_object_set_new(h, "__metadata__", meta);
  meta = NULL;
  uint64_t off = 0;
  for (int i = 0; i < n; i++) {
    json_t *t = json_object(), *shape = json_array(), *offs = json_array();
    if (!t || !shape || !offs) {
      json_decref(t);
      json_decref(shape);
      json_decref(offs);
      goto nomem;
    }
    for (int d = 0; d < o[i].ndim; d++)
      json_array_append_new(shape, json_integer(o[i].shape[d]));
    json_array_append_new(offs, json_integer((json_int_t)off));
    json_array_append_new(offs, json_integer((json_int_t)(off + o[i].nbytes)));
    off += o[i].nbytes;
    json_object_set_new(t, "dtype", json_string(o[i].dtype));
    json_object_set_new(t, "shape", shape);
    json_object_set_new(t, "data_offsets", offs);
    if (json_object_set_new(h, o[i].name, t))
      goto nomem;
  }
  text = json_dumps(h, JSON_COMPACT | JSON_PRESERVE_ORDER);
  if (!text)
    goto nomem;
  size_t len = strlen(text), padded = (len + 7) & ~(size_t)7;
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    rc = vlm_seterr(VLM_EIO, "%s: %s", tmp, strerror(errno));
    goto done;
  }
  uint8_t len8[8];
  for (int i = 0; i < 8; i++)
    len8[i] = (uint8_t)((uint64_t)padded >> (8 * i));
  int bad = vlm_write_all(fd, len8, 8) || vlm_write_all(fd, text, len);
  for (size_t i = len; i < padded && !bad; i++)
    bad = vlm_write_all(fd, " ", 1);
  for (int i = 0; i < n && !bad; i++)
    bad = vlm_write_all(fd, o[i].data, (size_t)o[i].nbytes);
  if (bad || fsync(fd)) {
    int e = errno;
    rc = vlm_seterr(e == ENOSPC ? VLM_ENOSPACE : VLM_EIO, "%s: %s", tmp,
                    strerror(e));
    goto done;
  }
  if (close(fd)) {
    fd = -1;
    rc = vlm_seterr(VLM_EIO, "%s: %s", tmp, strerror(errno));
    goto done;
  }
  fd = -1;
  if (rename(tmp, path))
    rc = vlm_seterr(VLM_EIO, "%s: %s", path, strerror(errno));
  goto done;
nomem:
  rc = vlm_seterr(VLM_ENOMEM, "%s: out of memory writing the header", path);
done:
  if (fd >= 0)
    close(fd);
  if (rc)
    unlink(tmp);
  json_decref(meta);
  json_decref(h);
  free(text);
  return rc;
}

static int copy_file(const char *from, const char *to) {
  int in = open(from, O_RDONLY | O_CLOEXEC), out = -1, rc = 0;
  char buf[1 << 16];
  if (in < 0)
    return vlm_seterr(VLM_EIO, "%s: %s", from, strerror(errno));
  out = open(to, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (out < 0) {
    rc = vlm_seterr(VLM_EIO, "%s: %s", to, strerror(errno));
    goto done;
  }
  for (;;) {
    ssize_t r = read(in, buf, sizeof buf);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0) {
      rc = vlm_seterr(VLM_EIO, "%s: %s", from, strerror(errno));
      goto done;
    }
    if (r == 0)
      break;
    if (vlm_write_all(out, buf, (size_t)r)) {
      rc = vlm_seterr(errno == ENOSPC ? VLM_ENOSPACE : VLM_EIO, "%s: %s", to,
                      strerror(errno));
      goto done;
    }
  }
done:
  if (out >= 0 && close(out) && !rc)
    rc = vlm_seterr(VLM_EIO, "%s: %s", to, strerror(errno));
  close(in);
  return rc;
}

static int ends_with(const char *s, const char *suffix) {
  size_t a = strlen(s), b = strlen(suffix);
  return a >= b && !strcmp(s + a - b, suffix);
}

/* Every regular file of in_dir but the checkpoints, into out_dir. */
static int copy_others(const char *in_dir, const char *out_dir) {
  DIR *d = opendir(in_dir);
  if (!d)
    return vlm_seterr(VLM_EIO, "%s: %s", in_dir, strerror(errno));
  int rc = 0;
  struct dirent *e;
  char from[PATH_MAX], to[PATH_MAX];
  while (!rc && (e = readdir(d))) {
    struct stat st;
    if (e->d_name[0] == '.' || ends_with(e->d_name, ".safetensors") ||
        ends_with(e->d_name, ".tmp"))
      continue;
    snprintf(from, sizeof from, "%s/%s", in_dir, e->d_name);
    snprintf(to, sizeof to, "%s/%s", out_dir, e->d_name);
    if (stat(from, &st) || !S_ISREG(st.st_mode))
      continue;
    rc = copy_file(from, to);
  }
  closedir(d);
  return rc;
}

/* The calibration run: the model in bf16 compute (its activations are
 * the exact model's to about three digits, where int8's would be skewed
 * by the very outliers being measured), every block Linear recording its
 * inputs' magnitudes.  *amax: one [K] array per layer of the model's
 * qlin order (*n of them). */
static int calibrate(const char *in_dir, const vlm_quant_calib *cal,
                     float ***amax, int *n) {
  vlm_clip_options opts = {.threads = cal->threads,
                           .compute = VLM_COMPUTE_BF16};
  vlm_clip *clip = NULL;
  float *out = NULL;
  *amax = NULL;
  *n = 0;
  int rc = vlm_clip_load(in_dir, &opts, &clip);
  if (rc)
    return rc;
  for (int i = 0; i < clip->n_qlin && !rc; i++)
    if (!(clip->qlin[i].amax = calloc((size_t)clip->qlin[i].K, sizeof(float))))
      rc = vlm_seterr(VLM_ENOMEM, "out of memory calibrating");
  const int D = vlm_clip_dim(clip), S = vlm_clip_image_size(clip), B = 16;
  if (!rc && !(out = malloc((size_t)B * D * sizeof *out)))
    rc = vlm_seterr(VLM_ENOMEM, "out of memory calibrating");
  for (int i = 0; !rc && i < cal->ntexts; i += B)
    rc = vlm_clip_encode_texts(clip, cal->texts + i,
                               cal->ntexts - i < B ? cal->ntexts - i : B,
                               VLM_CLIP_RAW, out);
  for (int i = 0; !rc && i < cal->nimages; i += B)
    rc = vlm_clip_encode_pixels(clip, cal->pixels + (size_t)i * 3 * S * S,
                                cal->nimages - i < B ? cal->nimages - i : B,
                                VLM_CLIP_RAW, out);
  free(out);
  if (!rc && !(*amax = calloc((size_t)clip->n_qlin, sizeof **amax)))
    rc = vlm_seterr(VLM_ENOMEM, "out of memory calibrating");
  if (!rc) {
    *n = clip->n_qlin;
    for (int i = 0; i < clip->n_qlin; i++) { /* taken from the layers */
      (*amax)[i] = clip->qlin[i].amax;
      clip->qlin[i].amax = NULL;
    }
  }
  vlm_clip_free(clip);
  return rc;
}

int vlm_clip_quantize(const char *in_dir, const char *out_dir,
                      vlm_compute_mode mode) {
  return vlm_clip_quantize_ex(in_dir, out_dir, mode, NULL, NULL);
}

/* Layer q's smoothing from its inputs' magnitudes amax: s[k] =
 * amax[k]^alpha / max|w[:,k]|^(1 - alpha), the weight maximum over all of
 * the layer's rows (q, k and v share their input, so one s); a channel
 * never seen, or a zero column, keeps 1; clamped to [1e-4, 1e4]. */
static int layer_smoothing(const vlm_clip *clip, int q, const float *amax,
                           float alpha, float **out) {
  const int K = clip->qlin[q].K;
  float *wmax = calloc((size_t)K, sizeof *wmax);
  float *s = malloc((size_t)K * sizeof *s);
  *out = NULL;
  if (!wmax || !s) {
    free(wmax);
    free(s);
    return vlm_seterr(VLM_ENOMEM, "out of memory quantizing");
  }
  for (int p = 0; p < 3; p++) {
    const vlm__st_tensor *t = clip->qlin_src[q][p];
    if (!t || (p > 0 && t == clip->qlin_src[q][p - 1]))
      continue; /* none, or a stacked tensor already read whole */
    float *f = to_f32(t);
    if (!f) {
      free(wmax);
      free(s);
      return vlm_seterr(VLM_ENOMEM, "out of memory quantizing %s", t->name);
    }
    for (int64_t r = 0; r < t->shape[0]; r++)
      for (int k = 0; k < K; k++) {
        float a = fabsf(f[r * K + k]);
        wmax[k] = a > wmax[k] ? a : wmax[k];
      }
    free(f);
  }
  for (int k = 0; k < K; k++) {
    double sk = 1;
    if (amax[k] > 0 && wmax[k] > 0)
      sk = pow(amax[k], alpha) / pow(wmax[k], 1 - alpha);
    s[k] = (float)(sk < 1e-4 ? 1e-4 : sk > 1e4 ? 1e4 : sk);
  }
  free(wmax);
  *out = s;
  return 0;
}

int vlm_clip_quantize_ex(const char *in_dir, const char *out_dir,
                         vlm_compute_mode mode, const vlm_quant_calib *cal,
                         const vlm_quant_mixed *mixed) {
  if (!in_dir || !out_dir)
    return vlm_seterr(VLM_EINVAL, "vlm_clip_quantize: NULL argument");
  if (mode != VLM_COMPUTE_INT8 && mode != VLM_COMPUTE_BF16)
    return vlm_seterr(VLM_EINVAL, "vlm_clip_quantize: mode %d (int8 or "
                      "bf16)", (int)mode);
  if (mode != VLM_COMPUTE_INT8) {
    cal = NULL; /* bf16 has no activation outliers to move */
    mixed = NULL;
  }
  float alpha = cal && cal->alpha > 0 ? cal->alpha : 0.5f;
  if (cal && ((cal->ntexts <= 0 && cal->nimages <= 0) ||
              (cal->ntexts > 0 && !cal->texts) ||
              (cal->nimages > 0 && !cal->pixels) || !(alpha < 1)))
    return vlm_seterr(VLM_EINVAL, "vlm_clip_quantize: calibration needs "
                      "texts or images, and alpha in (0, 1)");
  float **amax = NULL, **smooth = NULL;
  int namax = 0;
  if (cal) {
    int crc = calibrate(in_dir, cal, &amax, &namax);
    if (crc)
      return crc;
  }
  /* The loader's view of the model: with int8 compute, the block weights
   * are the lazy named tensors. */
  vlm_clip_options opts = {.threads = 1, .compute = VLM_COMPUTE_INT8};
  vlm_clip *clip = NULL;
  out_tensor *o = NULL;
  int n = 0, rc = vlm__clip_load_towers(in_dir, &opts, &clip);
  if (rc)
    goto done;
  if (amax && namax != clip->n_qlin) {
    rc = vlm_seterr(VLM_EINVAL, "internal: %d calibrated layers, %d in the "
                    "model", namax, clip->n_qlin);
    goto done;
  }
  if (amax && !(smooth = calloc((size_t)namax, sizeof *smooth))) {
    rc = vlm_seterr(VLM_ENOMEM, "out of memory quantizing");
    goto done;
  }
  for (int q = 0; smooth && q < namax && !rc; q++)
    if (clip->qlin[q].K <= VLM__QSMOOTH_MAX_K) /* wider ones: unsmoothed */
      rc = layer_smoothing(clip, q, amax[q], alpha, &smooth[q]);
  if (rc)
    goto done;
  const vlm__safetensors *st = clip->st;
  if (st->quantization) {
    rc = vlm_seterr(VLM_EINVAL, "%s: already quantized (vlmdb.quantization "
                    "\"%s\")", clip->weights_path, st->quantization);
    goto done;
  }
  o = calloc((size_t)st->n_tensors * 3 + 1, sizeof *o);
  if (!o) {
    rc = vlm_seterr(VLM_ENOMEM, "out of memory");
    goto done;
  }
  for (int i = 0; i < st->n_tensors && !rc; i++) {
    const vlm__st_tensor *t = &st->tensors[i];
    int block = 0;
    for (int j = 0; j < clip->n_named && !block; j++)
      block = clip->named[j].lazy && clip->named[j].src == t;
    if (block) {
      /* the layer whose rows come from t: its smoothing, and whether its
       * block stays in BF16 */
      const float *sm = NULL;
      vlm_compute_mode tm = mode;
      int found = 0;
      for (int q = 0; q < clip->n_qlin && !found; q++)
        for (int p = 0; p < 3 && !found; p++)
          if (clip->qlin_src[q][p] == t) {
            found = 1;
            sm = smooth ? smooth[q] : NULL;
            if (clip->qlin[q].K != t->shape[1])
              rc = vlm_seterr(VLM_EINVAL, "internal: %s has %lld columns, "
                              "its layer %d inputs", t->name,
                              (long long)t->shape[1], clip->qlin[q].K);
            int tl = clip->cfg.text_layers, tower = q / 4 >= tl;
            int b = q / 4 - (tower ? tl : 0);
            if (mixed && b >= mixed->bf16_from[tower] &&
                b < mixed->bf16_to[tower]) {
              tm = VLM_COMPUTE_BF16;
              sm = NULL;
            }
          }
      if (!rc)
        rc = quantize_tensor(t, tm, sm, o, &n);
      continue;
    }
    out_tensor *c = &o[n++];
    snprintf(c->name, sizeof c->name, "%s", t->name);
    c->src = t;
    c->dtype = vlm__dtype_name(t->dtype);
    c->ndim = t->ndim;
    memcpy(c->shape, t->shape, sizeof c->shape);
    c->data = t->data;
    c->nbytes = t->nbytes;
    c->align = vlm__dtype_size(t->dtype);
  }
  if (rc)
    goto done;
  if (mkdir(out_dir, 0755) && errno != EEXIST) {
    rc = vlm_seterr(VLM_EIO, "%s: %s", out_dir, strerror(errno));
    goto done;
  }
  /* writing into the source directory would truncate what is read */
  char real_in[PATH_MAX], real_out[PATH_MAX];
  if (realpath(in_dir, real_in) && realpath(out_dir, real_out) &&
      !strcmp(real_in, real_out)) {
    rc = vlm_seterr(VLM_EINVAL, "%s: the output directory is the model's "
                    "own", out_dir);
    goto done;
  }
  const char *base = strrchr(clip->weights_path, '/');
  base = base ? base + 1 : clip->weights_path;
  char path[PATH_MAX];
  snprintf(path, sizeof path, "%s/%s", out_dir, base);
  if ((rc = copy_others(in_dir, out_dir)))
    goto done;
  rc = write_file(path, o, n, mode == VLM_COMPUTE_INT8 ? "int8" : "bf16");
done:
  for (int i = 0; o && i < n; i++)
    free(o[i].owned);
  free(o);
  for (int i = 0; i < namax; i++) {
    free(amax[i]);
    free(smooth ? smooth[i] : NULL);
  }
  free(amax);
  free(smooth);
  vlm_clip_free(clip);
  return rc;
}
