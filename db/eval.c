/* eval.c - Recall@K evaluation of a database (see vlm_eval.h for the
 * metric and the rank rule). */
#include "vlm_eval.h"
#include "vlm_error.h"

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------- metrics */

int64_t vlm_eval_rank(const float *scores, int64_t nc, const int64_t *gt,
                      int ngt) {
  float best = scores[gt[0]];
  for (int i = 1; i < ngt; i++)
    if (scores[gt[i]] > best)
      best = scores[gt[i]];
  /* Everything scoring >= best is ahead, except the ground truth itself. */
  int64_t ahead = 0;
  for (int64_t c = 0; c < nc; c++)
    ahead += scores[c] >= best;
  for (int i = 0; i < ngt; i++)
    ahead -= scores[gt[i]] >= best;
  return 1 + ahead;
}

static int cmp_i64(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x > y) - (x < y);
}

void vlm_eval_summarize(const int64_t *ranks, int64_t n, const int *ks,
                        int nks, double *recall, double *median_rank,
                        double *mean_rank) {
  int64_t *sorted = malloc((size_t)n * sizeof *sorted);
  double sum = 0;
  for (int i = 0; i < nks; i++)
    recall[i] = 0;
  for (int64_t q = 0; q < n; q++) {
    sum += (double)ranks[q];
    for (int i = 0; i < nks; i++)
      recall[i] += ranks[q] <= ks[i];
  }
  for (int i = 0; i < nks; i++)
    recall[i] /= (double)n;
  *mean_rank = sum / (double)n;
  if (sorted) {
    memcpy(sorted, ranks, (size_t)n * sizeof *sorted);
    qsort(sorted, (size_t)n, sizeof *sorted, cmp_i64);
    *median_rank = n % 2 ? (double)sorted[n / 2]
                         : ((double)sorted[n / 2 - 1] + (double)sorted[n / 2]) / 2;
    free(sorted);
  } else {
    *median_rank = -1;
  }
}

double vlm_eval_overlap(const char *const *approx, int napprox,
                        const char *const *exact, int nexact, int k) {
  int ne = nexact < k ? nexact : k;
  int na = napprox < k ? napprox : k;
  if (ne <= 0)
    return 1.0;
  int common = 0;
  for (int i = 0; i < na; i++)
    for (int j = 0; j < ne; j++)
      if (!strcmp(approx[i], exact[j])) {
        common++;
        break;
      }
  return (double)common / ne;
}

/* ----------------------------------------------------------- pairs file */

void vlm_eval_pairs_free(vlm_eval_pair *pairs, int npairs) {
  (void)npairs; /* the strings live in the same allocation */
  free(pairs);
}

typedef struct {
  char *image;
  char *text;
} pair_strings;

int vlm_eval_pairs_load(const char *path, vlm_eval_pair **pairs,
                        int *npairs) {
  *pairs = NULL;
  *npairs = 0;
  FILE *f = fopen(path, "r");
  if (!f)
    return vlm_seterr(errno == ENOENT ? VLM_ENOTFOUND : VLM_EIO, "%s: %s",
                      path, strerror(errno));
  pair_strings *list = NULL;
  size_t n = 0, cap = 0, bytes = 0;
  char *line = NULL;
  size_t linecap = 0;
  long lineno = 0;
  int rc = 0;
  json_t *obj = NULL;
  while (getline(&line, &linecap, f) >= 0) {
    lineno++;
    char *s = line + strspn(line, " \t\r\n");
    if (!*s)
      continue;
    json_error_t jerr;
    obj = json_loads(s, 0, &jerr);
    if (!obj) {
      rc = vlm_seterr(VLM_EFORMAT, "%s:%ld: bad JSON: %s", path, lineno,
                      jerr.text);
      goto done;
    }
    json_t *img = json_object_get(obj, "image");
    json_t *txt = json_object_get(obj, "text");
    if (!json_is_string(img) || !(json_is_string(txt) || json_is_array(txt))) {
      rc = vlm_seterr(VLM_EFORMAT,
                      "%s:%ld: expected {\"image\": KEY, \"text\": KEY or "
                      "[KEY, ...]}",
                      path, lineno);
      goto done;
    }
    size_t ntext = json_is_array(txt) ? json_array_size(txt) : 1;
    for (size_t i = 0; i < ntext; i++) {
      json_t *t = json_is_array(txt) ? json_array_get(txt, i) : txt;
      if (!json_is_string(t)) {
        rc = vlm_seterr(VLM_EFORMAT, "%s:%ld: \"text\"[%zu] is not a string",
                        path, lineno, i);
        goto done;
      }
      if (n == cap) {
        cap = cap ? cap * 2 : 64;
        pair_strings *p = realloc(list, cap * sizeof *p);
        if (!p) {
          rc = VLM_ENOMEM;
          goto done;
        }
        list = p;
      }
      list[n].image = strdup(json_string_value(img));
      list[n].text = strdup(json_string_value(t));
      n++;
      if (!list[n - 1].image || !list[n - 1].text) {
        rc = VLM_ENOMEM;
        goto done;
      }
      bytes += strlen(list[n - 1].image) + strlen(list[n - 1].text) + 2;
    }
    json_decref(obj);
    obj = NULL;
  }
  if (ferror(f)) {
    rc = vlm_seterr(VLM_EIO, "%s: read error", path);
    goto done;
  }
  if (n > (size_t)INT32_MAX) {
    rc = vlm_seterr(VLM_ETOOBIG, "%s: too many pairs", path);
    goto done;
  }
  /* One allocation: the pair array, then the strings. */
  vlm_eval_pair *out = malloc(n * sizeof *out + bytes + 1);
  if (!out) {
    rc = VLM_ENOMEM;
    goto done;
  }
  char *strings = (char *)(out + n);
  for (size_t i = 0; i < n; i++) {
    size_t a = strlen(list[i].image) + 1, b = strlen(list[i].text) + 1;
    memcpy(strings, list[i].image, a);
    out[i].image_key = strings;
    strings += a;
    memcpy(strings, list[i].text, b);
    out[i].text_key = strings;
    strings += b;
  }
  *pairs = out;
  *npairs = (int)n;
done:
  json_decref(obj);
  for (size_t i = 0; i < n; i++) {
    free(list[i].image);
    free(list[i].text);
  }
  free(list);
  free(line);
  fclose(f);
  return rc;
}
