/* collapse.c - near-duplicate collapse: the greedy walk that folds a
 * ranking's near-identical images into the best of them.  One walk serves
 * a search with collapse (the planner reads the image vectors from its
 * LMDB snapshot) and a cluster coordinator (the shards send them), so the
 * two fold alike, bit for bit: the same vectors, the same dot product, the
 * same order. */
#include "db_int.h"

#include <stdlib.h>
#include <string.h>

/* the most candidates a collapsed search ranks */
#define VLM__COLLAPSE_DEPTH VLM_DB_MAX_K

int vlm_collapse_depth(int want) {
  /* room for the near-duplicates that fold away: eight candidates a
   * result, at least 100 */
  int depth = want < 13 ? 100 : want * 8;
  return depth > VLM__COLLAPSE_DEPTH ? VLM__COLLAPSE_DEPTH : depth;
}

int vlm__collapse_near(int n, int dim, int k, float thr,
                       vlm__image_vec_fn image_vec, void *arg, int *keep,
                       int *similar) {
  int rows = k < n ? k : n, kept = 0, nkv = 0, rc = 0;
  float *kv = NULL; /* the image vectors kept, one row each */
  int *kslot = NULL; /* kv row -> its place among the kept */
  if (rows <= 0)
    return 0;
  if (!(kv = malloc((size_t)rows * dim * sizeof *kv)) ||
      !(kslot = malloc((size_t)rows * sizeof *kslot))) {
    rc = vlm_seterr(VLM_ENOMEM, "search: collapse");
    goto done;
  }
  for (int i = 0; i < n && kept < k; i++) {
    const void *iv = NULL;
    if ((rc = image_vec(arg, i, &iv)))
      goto done;
    if (iv && !vlm__vec_finite(iv, dim))
      iv = NULL; /* a damaged stored vector folds nothing */
    int into = -1;
    for (int j = 0; iv && j < nkv && into < 0; j++)
      if (vlm__dot(kv + (size_t)j * dim, iv, dim) >= thr)
        into = kslot[j];
    if (into >= 0) {
      similar[into]++;
      continue;
    }
    if (iv) {
      memcpy(kv + (size_t)nkv * dim, iv, (size_t)dim * sizeof *kv);
      kslot[nkv++] = kept;
    }
    similar[kept] = 0;
    keep[kept++] = i;
  }
  rc = kept;
done:
  free(kv);
  free(kslot);
  return rc;
}

typedef struct {
  const float *const *vecs;
} vec_array;

static int array_image_vec(void *arg, int i, const void **vec) {
  *vec = ((const vec_array *)arg)->vecs[i];
  return 0;
}

int vlm_collapse_near(const float *const *image_vecs, int n, int dim, int k,
                      float threshold, int *keep, int *similar) {
  if (n < 0 || (n > 0 && !image_vecs) || dim < 1 || k < 1 || !keep ||
      !similar || !(threshold > 0 && threshold <= 1))
    return vlm_seterr(VLM_EINVAL, "collapse: bad arguments");
  vec_array a = {image_vecs};
  return vlm__collapse_near(n, dim, k, threshold, array_image_vec, &a, keep,
                            similar);
}
