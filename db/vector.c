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
  /* The sum of squares in double needs no scaling: a float's square
   * neither overflows a double (FLT_MAX^2 is about 1e77) nor vanishes
   * (the smallest denormal's square is about 2e-90), and neither does a
   * sum of millions of them.  The norm itself must be a normal float,
   * since 1/norm of a denormal-scale vector overflows a float and would
   * store infinities.  Eight partial sums let the loop run in vector
   * registers (one running sum would pin the order of the additions); a
   * non-finite element makes the sum non-finite, and only then are the
   * elements searched for it.  (This replaced a scaled two-pass form that
   * divided every element by the largest magnitude: 8% of an ingest's
   * CPU.) */
  double part[8] = {0, 0, 0, 0, 0, 0, 0, 0}, ss = 0;
  int i = 0;
  for (; i + 8 <= dim; i += 8)
    for (int j = 0; j < 8; j++) {
      double x = in[i + j];
      part[j] += x * x;
    }
  for (; i < dim; i++) {
    double x = in[i];
    ss += x * x;
  }
  for (int j = 0; j < 8; j++)
    ss += part[j];
  if (!isfinite(ss))
    for (i = 0; i < dim; i++)
      if (!isfinite(in[i]))
        return vlm_seterr(VLM_ENUMERIC, "%s: element %d is not finite", what,
                          i);
  double norm = sqrt(ss);
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
  for (i = 0; i < dim; i++)
    out[i] = (float)(in[i] / norm);
  return 0;
}

int vlm__vec_finite(const void *vec_unaligned, int dim) {
  /* An infinity or NaN has every exponent bit set; OR-ing the test over
   * the elements (no early exit) lets the loop run in vector registers. */
  const unsigned char *p = vec_unaligned;
  uint32_t bad = 0;
  for (int i = 0; i < dim; i++) {
    uint32_t b;
    memcpy(&b, p + (size_t)i * 4, 4);
    bad |= (b & 0x7f800000u) == 0x7f800000u;
  }
  return !bad;
}
