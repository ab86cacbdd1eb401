/* vector.c - the arithmetic of stored vectors: the dot product searches
 * score with, the overflow-safe normalization every stored and query
 * vector goes through, and the finiteness check of stored ones. */
#include "db_int.h"

#include <cblas.h>
#include <float.h>
#include <math.h>
#include <string.h>

float vlm__dot(const float *a, const void *b, int dim) {
  return cblas_sdot(dim, a, 1, (const float *)b, 1);
}

int vlm__normalize(const float *in, float *out, int dim, const char *what) {
  /* Scaled by the largest magnitude before squaring, so neither tiny nor
   * huge elements overflow or underflow the sum; the norm itself must be
   * a normal float, since 1/norm of a denormal-scale vector overflows a
   * float and would store infinities. */
  double amax = 0;
  for (int i = 0; i < dim; i++) {
    if (!isfinite(in[i]))
      return vlm_seterr(VLM_ENUMERIC, "%s: element %d is not finite", what,
                        i);
    double a = fabs((double)in[i]);
    if (a > amax)
      amax = a;
  }
  double ss = 0;
  if (amax > 0)
    for (int i = 0; i < dim; i++) {
      double x = in[i] / amax;
      ss += x * x;
    }
  double norm = amax * sqrt(ss);
  if (!(norm >= FLT_MIN) || !isfinite(norm))
    return vlm_seterr(VLM_EINVAL,
                      "%s: vector length %g is zero or too small to "
                      "normalize (at least %g)", what, norm, (double)FLT_MIN);
  /* Unit vectors (to float precision) are kept bit for bit, so what is
   * stored is exactly what the caller gave. */
  if (fabs(norm - 1.0) <= 5e-6) {
    if (out != in)
      memcpy(out, in, (size_t)dim * sizeof *out);
    return 0;
  }
  for (int i = 0; i < dim; i++)
    out[i] = (float)(in[i] / norm);
  return 0;
}

int vlm__vec_finite(const void *vec_unaligned, int dim) {
  const unsigned char *p = vec_unaligned;
  for (int i = 0; i < dim; i++) {
    float x;
    memcpy(&x, p + (size_t)i * 4, 4);
    if (!isfinite(x))
      return 0;
  }
  return 1;
}
