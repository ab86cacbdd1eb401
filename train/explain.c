/* explain.c - Grad-CAM maps of a text-image score on the vision tower's
 * token grid, through the trainer's backward pass (vlm_train.h), and
 * their rendering as a PNG heat map over the picture. */
#include "vlm_train.h"

#include <math.h>
#include <png.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "model.h"
#include "preprocess.h"
#include "train_model.h"
#include "vlm_error.h"

struct vlm_explainer {
  vlm__tlayout *L;
  vlm__tpool *pool;
  vlm__tmodel_f32 *m;
  int dim, grid, tokens, cls, width, side;
  float *grad; /* [tokens, width] */
};

/* Only the vision tower runs: copy its tensors (and nothing of the text
 * tower, whose parameters stay zero). */
static int is_vision(const char *name) {
  return !strncmp(name, "vision_model.", 13) ||
         !strcmp(name, "visual_projection.weight");
}

int vlm_explainer_create(const vlm_clip *clip, int threads,
                         vlm_explainer **out) {
  int rc;
  if (!clip || !out)
    return vlm_seterr(VLM_EINVAL, "explain: NULL argument");
  *out = NULL;
  const vlm__clip_config *cfg = vlm__clip_get_config(clip);
  if (cfg->vision_layers < 1)
    return vlm_seterr(VLM_EUNSUPPORTED,
                      "explain: the vision tower has no layers");
  vlm_explainer *ex = calloc(1, sizeof *ex);
  if (!ex)
    return vlm_seterr(VLM_ENOMEM, "explain: state");
  if ((rc = vlm__tpool_create(threads > 0 ? threads : 1, &ex->pool)) ||
      (rc = vlm__tlayout_create(cfg, 0, 0, &ex->L)) ||
      (rc = vlm__tmodel_create_f32(ex->L, ex->pool, 1, 1, 1, &ex->m)))
    goto fail;
  float *p = vlm__tmodel_params_f32(ex->m);
  for (int i = 0; i < ex->L->nparams; i++) {
    const vlm__tparam *tp = &ex->L->params[i];
    if (!is_vision(tp->name))
      continue;
    int64_t numel = 0;
    const float *src = vlm__clip_tensor(clip, tp->name, &numel);
    if (!src) {
      rc = vlm_seterr(VLM_ENOTFOUND, "explain: no tensor %s", tp->name);
      goto fail;
    }
    if ((size_t)numel != tp->numel) {
      rc = vlm_seterr(VLM_EMISMATCH, "explain: %s has %lld elements, want %zu",
                      tp->name, (long long)numel, tp->numel);
      goto fail;
    }
    memcpy(p + tp->offset, src, sizeof(float) * tp->numel);
  }
  ex->dim = cfg->projection_dim;
  ex->grid = cfg->image_size / cfg->patch_size;
  ex->tokens = ex->L->vision_tokens;
  ex->cls = ex->L->vision_cls;
  ex->width = cfg->vision_width;
  ex->side = cfg->image_size;
  ex->grad = malloc(sizeof(float) * (size_t)ex->tokens * ex->width);
  if (!ex->grad) {
    rc = vlm_seterr(VLM_ENOMEM, "explain: gradient");
    goto fail;
  }
  *out = ex;
  return 0;
fail:
  vlm_explainer_free(ex);
  return rc;
}

void vlm_explainer_free(vlm_explainer *ex) {
  if (!ex)
    return;
  vlm__tmodel_free_f32(ex->m);
  vlm__tlayout_free(ex->L);
  vlm__tpool_free(ex->pool);
  free(ex->grad);
  free(ex);
}

int vlm_explainer_grid(const vlm_explainer *ex) { return ex ? ex->grid : 0; }

/* A patch's raw value v into map[i], clipped at zero (every method keeps
 * what raises the score), added to *total (NaN once any is not finite). */
static void map_put(float *map, int i, double v, double *total) {
  if (!isfinite(v))
    *total = NAN;
  v = v > 0 ? v : 0;
  map[i] = (float)v;
  *total += v;
}

/* The map normalized to sum 1 (all zero when nothing is positive), and
 * the score. */
static int map_finish(float *map, int np, double total, double s,
                      float *score) {
  if (!isfinite(total) || !isfinite(s))
    return vlm_seterr(VLM_ENUMERIC, "explain: the map is not finite");
  for (int i = 0; i < np; i++)
    map[i] = total > 0 ? (float)(map[i] / total) : 0.0f;
  if (score)
    *score = (float)s;
  return 0;
}

/* The class row of the relevance rollout over the patches, normalized. */
static int relevance_map(vlm_explainer *ex, const float *text_vec, double s,
                         float *map, float *score) {
  int np = ex->grid * ex->grid;
  /* ex->grad holds tokens * width floats: room for the T relevances */
  int rc = vlm__tmodel_image_relevance_f32(ex->m, text_vec, ex->grad);
  if (rc == -2)
    return vlm_seterr(VLM_ENOMEM, "explain: relevance");
  if (rc)
    return vlm_seterr(VLM_EUNSUPPORTED, "explain: no class token");
  double total = 0;
  for (int i = 0; i < np; i++)
    map_put(map, i, ex->grad[ex->cls + i], &total);
  return map_finish(map, np, total, s, score);
}

/* Integrated gradients (Sundararajan, Taly and Yan, ICML 2017) from the
 * all-zero picture (the model's mean colour) to this one, a midpoint sum
 * of IG_STEPS gradients; the convolution is linear in the pixels, so a
 * patch's share is <its convolution output, the mean gradient there>. */
enum { IG_STEPS = 16 };

static int integrated_map(vlm_explainer *ex, const float *pixels,
                          const float *text_vec, double s, float *map,
                          float *score) {
  int np = ex->grid * ex->grid, C = ex->width;
  size_t npx = (size_t)3 * ex->side * ex->side;
  float *conv = malloc(sizeof(float) * (size_t)np * C);
  double *acc = calloc((size_t)np * C, sizeof(double));
  float *scaled = malloc(sizeof(float) * npx);
  if (!conv || !acc || !scaled) {
    free(conv);
    free(acc);
    free(scaled);
    return vlm_seterr(VLM_ENOMEM, "explain: integrated gradients");
  }
  /* the caller's forward left the picture's own convolution output */
  vlm__tmodel_image_patch_grad_f32(ex->m, text_vec, NULL, conv);
  for (int k = 0; k < IG_STEPS; k++) {
    float a = (k + 0.5f) / IG_STEPS;
    for (size_t i = 0; i < npx; i++)
      scaled[i] = a * pixels[i];
    vlm__tmodel_images_f32(ex->m, scaled, 1, NULL);
    vlm__tmodel_image_patch_grad_f32(ex->m, text_vec, ex->grad, NULL);
    for (size_t i = 0; i < (size_t)np * C; i++)
      acc[i] += ex->grad[i];
  }
  double total = 0;
  for (int i = 0; i < np; i++) {
    double v = 0;
    for (int c = 0; c < C; c++)
      v += acc[(size_t)i * C + c] / IG_STEPS * conv[(size_t)i * C + c];
    map_put(map, i, v, &total);
  }
  free(conv);
  free(acc);
  free(scaled);
  return map_finish(map, np, total, s, score);
}

int vlm_explainer_map(vlm_explainer *ex, const float *pixels,
                      const float *text_vec, vlm_explain_method method,
                      float *map, float *score) {
  if (!ex || !pixels || !text_vec || !map)
    return vlm_seterr(VLM_EINVAL, "explain: NULL argument");
  if ((int)method < VLM_EXPLAIN_GRADCAM || (int)method > VLM_EXPLAIN_AUTO)
    return vlm_seterr(VLM_EINVAL, "explain: unknown method %d", (int)method);
  if (method == VLM_EXPLAIN_AUTO)
    method = VLM_EXPLAIN_INTEGRATED;
  if (method == VLM_EXPLAIN_RELEVANCE && !ex->cls)
    return vlm_seterr(VLM_EUNSUPPORTED,
                      "explain: relevance needs a class token (this tower "
                      "pools with an attention head); use gradcam or token");
  float emb[4096];
  float *e = ex->dim <= 4096 ? emb : malloc(sizeof(float) * ex->dim);
  if (!e)
    return vlm_seterr(VLM_ENOMEM, "explain: embedding");
  vlm__tmodel_images_f32(ex->m, pixels, 1, e);
  double s = 0;
  for (int d = 0; d < ex->dim; d++)
    s += (double)e[d] * text_vec[d];
  if (e != emb)
    free(e);
  if (method == VLM_EXPLAIN_RELEVANCE)
    return relevance_map(ex, text_vec, s, map, score);
  if (method == VLM_EXPLAIN_INTEGRATED)
    return integrated_map(ex, pixels, text_vec, s, map, score);
  vlm__tmodel_image_block_grad_f32(ex->m, text_vec, NULL, ex->grad);
  const float *A = vlm__tmodel_image_block_input_f32(ex->m, 1);
  int C = ex->width, np = ex->grid * ex->grid;
  const float *G = ex->grad + (size_t)ex->cls * C;
  A += (size_t)ex->cls * C;
  double *w = NULL;
  if (method == VLM_EXPLAIN_GRADCAM) {
    w = calloc((size_t)C, sizeof(double));
    if (!w)
      return vlm_seterr(VLM_ENOMEM, "explain: weights");
    for (int i = 0; i < np; i++)
      for (int c = 0; c < C; c++)
        w[c] += G[(size_t)i * C + c];
    for (int c = 0; c < C; c++)
      w[c] /= np;
  }
  double total = 0;
  for (int i = 0; i < np; i++) {
    double v = 0;
    for (int c = 0; c < C; c++)
      v += (w ? w[c] : G[(size_t)i * C + c]) * A[(size_t)i * C + c];
    map_put(map, i, v, &total);
  }
  free(w);
  return map_finish(map, np, total, s, score);
}

/* ---- rendering ---------------------------------------------------------- */

/* The "jet" colour map at v in [0, 1]. */
static void jet(double v, uint8_t rgb[3]) {
  double r = 1.5 - fabs(4 * v - 3), g = 1.5 - fabs(4 * v - 2),
         b = 1.5 - fabs(4 * v - 1);
  double c[3] = {r, g, b};
  for (int k = 0; k < 3; k++)
    rgb[k] = (uint8_t)lround(255 * (c[k] < 0 ? 0 : c[k] > 1 ? 1 : c[k]));
}

/* map[grid*grid] at output pixel centre (x, y) of a side x side picture,
 * bilinear with half-pixel centres (PyTorch's align_corners=False). */
static double sample(const float *map, int grid, int side, int x, int y) {
  double gx = (x + 0.5) * grid / side - 0.5, gy = (y + 0.5) * grid / side - 0.5;
  if (gx < 0)
    gx = 0;
  if (gy < 0)
    gy = 0;
  int x0 = (int)gx, y0 = (int)gy;
  if (x0 > grid - 1)
    x0 = grid - 1;
  if (y0 > grid - 1)
    y0 = grid - 1;
  int x1 = x0 + 1 < grid ? x0 + 1 : x0, y1 = y0 + 1 < grid ? y0 + 1 : y0;
  double fx = gx - x0, fy = gy - y0;
  if (fx > 1)
    fx = 1;
  if (fy > 1)
    fy = 1;
  double top = map[y0 * grid + x0] * (1 - fx) + map[y0 * grid + x1] * fx;
  double bot = map[y1 * grid + x0] * (1 - fx) + map[y1 * grid + x1] * fx;
  return top * (1 - fy) + bot * fy;
}

int vlm_explain_png(const vlm_image *img, int squash, const float *map,
                    int grid, int side, uint8_t **png, size_t *len) {
  int rc;
  if (!img || !img->rgb || img->w < 1 || img->h < 1 || !map || grid < 1 ||
      grid > 4096 || side < 16 || side > 4096 || !png || !len)
    return vlm_seterr(VLM_EINVAL, "explain: bad image, map or size");
  *png = NULL;
  *len = 0;
  vlm_image crop = {0}, sq = {0};
  png_image pi;
  memset(&pi, 0, sizeof pi);
  const vlm_image *src = img;
  if (!squash && img->w != img->h) {
    int s = img->w < img->h ? img->w : img->h;
    if ((rc = vlm__image_crop(img, (img->w - s) / 2, (img->h - s) / 2, s, s,
                              &crop)))
      return rc;
    src = &crop;
  }
  if ((rc = vlm__image_resize(src, side, side, &sq)))
    goto done;
  double peak = 0;
  for (int i = 0; i < grid * grid; i++)
    peak = map[i] > peak ? map[i] : peak;
  for (int y = 0; y < side; y++)
    for (int x = 0; x < side; x++) {
      double v = peak > 0 ? sample(map, grid, side, x, y) / peak : 0;
      uint8_t c[3];
      jet(v, c);
      uint8_t *px = sq.rgb + ((size_t)y * side + x) * 3;
      for (int k = 0; k < 3; k++)
        px[k] = (uint8_t)((px[k] + c[k] + 1) / 2);
    }
  pi.version = PNG_IMAGE_VERSION;
  pi.width = (png_uint_32)side;
  pi.height = (png_uint_32)side;
  pi.format = PNG_FORMAT_RGB;
  png_alloc_size_t n = 0;
  if (!png_image_write_to_memory(&pi, NULL, &n, 0, sq.rgb, 0, NULL)) {
    rc = vlm_seterr(VLM_EIO, "explain: PNG encoder: %s", pi.message);
    goto done;
  }
  uint8_t *buf = malloc(n);
  if (!buf) {
    rc = vlm_seterr(VLM_ENOMEM, "explain: PNG of %zu bytes", (size_t)n);
    goto done;
  }
  if (!png_image_write_to_memory(&pi, buf, &n, 0, sq.rgb, 0, NULL)) {
    free(buf);
    rc = vlm_seterr(VLM_EIO, "explain: PNG encoder: %s", pi.message);
    goto done;
  }
  *png = buf;
  *len = n;
  rc = 0;
done:
  png_image_free(&pi);
  vlm_image_free(&crop);
  vlm_image_free(&sq);
  return rc;
}

/* ---- one call: encoded image bytes to map and PNG ------------------------ */

int vlm_explain_image(const vlm_clip *clip, const void *data, size_t len,
                      const float *text_vec, vlm_explain_method method,
                      int side, int threads, vlm_explanation *out) {
  if (!clip || !data || !text_vec || !out)
    return vlm_seterr(VLM_EINVAL, "explain: NULL argument");
  memset(out, 0, sizeof *out);
  int S = vlm_clip_image_size(clip), rc;
  vlm_explainer *ex = NULL;
  vlm_image img = {0};
  float *pixels = malloc(sizeof(float) * 3 * (size_t)S * S);
  if (!pixels)
    return vlm_seterr(VLM_ENOMEM, "explain: pixels");
  if ((rc = vlm_clip_preprocess_image(clip, data, len, pixels, &img)) ||
      (rc = vlm_explainer_create(clip, threads, &ex)))
    goto done;
  int g = vlm_explainer_grid(ex);
  out->grid = g;
  out->map = malloc(sizeof(float) * (size_t)g * g);
  if (!out->map) {
    rc = vlm_seterr(VLM_ENOMEM, "explain: map");
    goto done;
  }
  if ((rc = vlm_explainer_map(ex, pixels, text_vec, method, out->map,
                              &out->score)))
    goto done;
  int squash = vlm__clip_get_config(clip)->family == VLM__FAMILY_SIGLIP;
  rc = vlm_explain_png(&img, squash, out->map, g, side, &out->png,
                       &out->png_len);
done:
  if (rc)
    vlm_explanation_free(out);
  vlm_explainer_free(ex);
  vlm_image_free(&img);
  free(pixels);
  return rc;
}

void vlm_explanation_free(vlm_explanation *e) {
  if (!e)
    return;
  free(e->map);
  free(e->png);
  memset(e, 0, sizeof *e);
}

int vlm_explain_method_parse(const char *name, vlm_explain_method *out) {
  static const char *const names[] = {"gradcam", "token", "relevance",
                                      "integrated", "auto"};
  for (int i = 0; i < 5; i++)
    if (name && !strcasecmp(name, names[i])) {
      *out = (vlm_explain_method)i;
      return 0;
    }
  return vlm_seterr(VLM_EINVAL,
                    "explain: unknown method '%s' (auto, integrated, "
                    "relevance, token or gradcam)",
                    name ? name : "");
}
