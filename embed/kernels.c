/* kernels.c - numeric kernels of the CLIP towers.
 *
 * The elementwise kernels use GCC/Clang vector extensions of 16 floats:
 * the compiler lowers them to AVX-512, AVX2 or SSE as the target allows,
 * and there is one code path to test.  Transcendentals are evaluated with
 * polynomials because libm's expf/erff do not vectorize under the
 * project's strict math flags, and a scalar call per element would cost
 * more than the matrix products around it. */
#include "kernels.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

#if defined(__F16C__)
#include <immintrin.h>
#endif

#define VL 16
typedef float vf __attribute__((vector_size(VL * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(VL * sizeof(int32_t))));

static inline vf vload(const float *p) {
  vf v;
  memcpy(&v, p, sizeof v);
  return v;
}
static inline void vstore(float *p, vf v) { memcpy(p, &v, sizeof v); }
static inline vf vset(float x) { return (vf){0} + x; }
static inline vf vsel(vi mask, vf a, vf b) {
  return (vf)(((vi)a & mask) | ((vi)b & ~mask));
}
static inline vf vmax(vf a, vf b) { return vsel(a > b, a, b); }
static inline vf vmin(vf a, vf b) { return vsel(a < b, a, b); }
static inline float vsum(vf v) {
  float s = 0;
  for (int i = 0; i < VL; i++)
    s += v[i];
  return s;
}

/* exp(x), Cephes' single-precision polynomial on x - n ln 2. */
static inline vf vexp(vf x) {
  const vf magic = vset(12582912.0f); /* 1.5 * 2^23: round to nearest */
  x = vmin(vmax(x, vset(-87.33654f)), vset(88.3762626647949f));
  vf n = (x * 1.44269504088896341f + magic) - magic;
  vf r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  vf p = vset(1.9875691500E-4f);
  p = p * r + 1.3981999507E-3f;
  p = p * r + 8.3334519073E-3f;
  p = p * r + 4.1665795894E-2f;
  p = p * r + 1.6666665459E-1f;
  p = p * r + 5.0000001201E-1f;
  p = p * (r * r) + r + 1.0f;
  /* n in [-126, 128]; 2^128 is out of range, so scale in two steps. */
  vi ni = __builtin_convertvector(n, vi);
  vi half = ni >> 1;
  vf s1 = (vf)((half + 127) << 23);
  vf s2 = (vf)((ni - half + 127) << 23);
  return p * s1 * s2;
}

static inline float sexp(float x) {
  vf v = vexp(vset(x));
  return v[0];
}

void vlm__exp(float *out, const float *x, size_t n) {
  size_t i = 0;
  for (; i + VL <= n; i += VL)
    vstore(out + i, vexp(vload(x + i)));
  for (; i < n; i++)
    out[i] = sexp(x[i]);
}

/* ---- matrix products --------------------------------------------------- */

void vlm__matmul(float *out, int ldo, const float *in, int ldi,
                 const float *w, int ldw, const float *bias, int M, int N,
                 int K, int accumulate) {
  if (M <= 0 || N <= 0)
    return;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, in, ldi,
              w, ldw, accumulate ? 1.0f : 0.0f, out, ldo);
  if (!bias)
    return;
  for (int m = 0; m < M; m++) {
    float *row = out + (size_t)m * ldo;
    int n = 0;
    for (; n + VL <= N; n += VL)
      vstore(row + n, vload(row + n) + vload(bias + n));
    for (; n < N; n++)
      row[n] += bias[n];
  }
}

/* ---- normalization and activations ------------------------------------ */

void vlm__layernorm(float *out, int ld_out, const float *in, int ld_in,
                    const float *w, const float *b, int rows, int C,
                    float eps) {
  for (int r = 0; r < rows; r++) {
    const float *x = in + (size_t)r * ld_in;
    float *y = out + (size_t)r * ld_out;
    vf acc = {0};
    int i = 0;
    for (; i + VL <= C; i += VL)
      acc += vload(x + i);
    float sum = vsum(acc);
    for (; i < C; i++)
      sum += x[i];
    float mean = sum / (float)C;
    /* Two passes (mean, then centred squares) as the reference's float32
     * kernels effectively do; one-pass E[x²]-E[x]² loses digits. */
    vf vm = vset(mean);
    acc = (vf){0};
    for (i = 0; i + VL <= C; i += VL) {
      vf d = vload(x + i) - vm;
      acc += d * d;
    }
    float var = vsum(acc);
    for (; i < C; i++)
      var += (x[i] - mean) * (x[i] - mean);
    var /= (float)C;
    float rstd = 1.0f / sqrtf(var + eps);
    vf vr = vset(rstd);
    for (i = 0; i + VL <= C; i += VL)
      vstore(y + i, (vload(x + i) - vm) * vr * vload(w + i) + vload(b + i));
    for (; i < C; i++)
      y[i] = (x[i] - mean) * rstd * w[i] + b[i];
  }
}

static inline vf vquick_gelu(vf x) {
  return x / (1.0f + vexp(x * -1.702f));
}

void vlm__quick_gelu(float *x, size_t n) {
  size_t i = 0;
  for (; i + VL <= n; i += VL)
    vstore(x + i, vquick_gelu(vload(x + i)));
  if (i < n) {
    float tail[VL] = {0};
    memcpy(tail, x + i, (n - i) * sizeof *x);
    vf t = vquick_gelu(vload(tail));
    vstore(tail, t);
    memcpy(x + i, tail, (n - i) * sizeof *x);
  }
}

/* 0.5 x (1 + erf(x / sqrt 2)), erf by Abramowitz & Stegun 7.1.26
 * (absolute error below 1.5e-7). */
static inline vf vgelu(vf x) {
  vf z = x * 0.70710678118654752f;
  vi neg = z < 0;
  vf az = vsel(neg, -z, z);
  vf t = 1.0f / (1.0f + 0.3275911f * az);
  vf p = vset(1.061405429f);
  p = p * t - 1.453152027f;
  p = p * t + 1.421413741f;
  p = p * t - 0.284496736f;
  p = p * t + 0.254829592f;
  p = p * t;
  vf erf_abs = 1.0f - p * vexp(-az * az);
  vf erf = vsel(neg, -erf_abs, erf_abs);
  return 0.5f * x * (1.0f + erf);
}

void vlm__gelu(float *x, size_t n) {
  size_t i = 0;
  for (; i + VL <= n; i += VL)
    vstore(x + i, vgelu(vload(x + i)));
  if (i < n) {
    float tail[VL] = {0};
    memcpy(tail, x + i, (n - i) * sizeof *x);
    vstore(tail, vgelu(vload(tail)));
    memcpy(x + i, tail, (n - i) * sizeof *x);
  }
}

/* 0.5 x (1 + tanh(u)) = x sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3):
 * PyTorch's gelu(approximate="tanh"), written with the vector exp. */
static inline vf vgelu_tanh(vf x) {
  vf u = x * (0.7978845608028654f + 0.035677408136300125f * x * x);
  return x / (1.0f + vexp(u * -2.0f));
}

void vlm__gelu_tanh(float *x, size_t n) {
  size_t i = 0;
  for (; i + VL <= n; i += VL)
    vstore(x + i, vgelu_tanh(vload(x + i)));
  if (i < n) {
    float tail[VL] = {0};
    memcpy(tail, x + i, (n - i) * sizeof *x);
    vstore(tail, vgelu_tanh(vload(tail)));
    memcpy(x + i, tail, (n - i) * sizeof *x);
  }
}

void vlm__softmax(float *x, int n) {
  float mx = x[0];
  for (int i = 1; i < n; i++)
    mx = x[i] > mx ? x[i] : mx;
  vf vmx = vset(mx), acc = {0};
  int i = 0;
  for (; i + VL <= n; i += VL) {
    vf e = vexp(vload(x + i) - vmx);
    vstore(x + i, e);
    acc += e;
  }
  float sum = vsum(acc);
  for (; i < n; i++) {
    x[i] = sexp(x[i] - mx);
    sum += x[i];
  }
  float inv = 1.0f / sum;
  for (i = 0; i < n; i++)
    x[i] *= inv;
}

/* Keys are handled 64 at a time (four vectors of accumulators). */
#define KB (4 * VL)

size_t vlm__attention_scratch(int T, int hd) {
  size_t Tp = ((size_t)T + KB - 1) / KB * KB;
  return Tp + (size_t)hd * Tp;
}

/* The keys are transposed once per head ([hd, T], padded to whole blocks)
 * so that the scores of one query against 64 keys are sums of hd
 * broadcast-multiplies kept in registers, with no horizontal sums; the
 * weighted sum of values likewise keeps 64 output columns in registers. */
void vlm__attention(float *out, int ld_out, const float *q, const float *k,
                    const float *v, int ld_qkv, int T, int hd, int causal,
                    int q0, int q1, float *scratch) {
  const float scale = 1.0f / sqrtf((float)hd);
  const int Tp = (T + KB - 1) / KB * KB;
  float *scores = scratch, *kt = scratch + Tp;
  for (int d = 0; d < hd; d++) {
    float *row = kt + (size_t)d * Tp;
    for (int j = 0; j < T; j++)
      row[j] = k[(size_t)j * ld_qkv + d] * scale;
    for (int j = T; j < Tp; j++)
      row[j] = 0;
  }
  for (int i = q0; i < q1; i++) {
    const float *qi = q + (size_t)i * ld_qkv;
    const int n = causal ? i + 1 : T;
    for (int jb = 0; jb < n; jb += KB) {
      vf s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};
      const float *col = kt + jb;
      for (int d = 0; d < hd; d++, col += Tp) {
        const vf qd = vset(qi[d]);
        s0 += qd * vload(col);
        s1 += qd * vload(col + VL);
        s2 += qd * vload(col + 2 * VL);
        s3 += qd * vload(col + 3 * VL);
      }
      vstore(scores + jb, s0);
      vstore(scores + jb + VL, s1);
      vstore(scores + jb + 2 * VL, s2);
      vstore(scores + jb + 3 * VL, s3);
    }
    vlm__softmax(scores, n);
    float *o = out + (size_t)(i - q0) * ld_out;
    int d = 0;
    for (; d + KB <= hd; d += KB) {
      vf o0 = {0}, o1 = {0}, o2 = {0}, o3 = {0};
      for (int j = 0; j < n; j++) {
        const float *vj = v + (size_t)j * ld_qkv + d;
        const vf p = vset(scores[j]);
        o0 += p * vload(vj);
        o1 += p * vload(vj + VL);
        o2 += p * vload(vj + 2 * VL);
        o3 += p * vload(vj + 3 * VL);
      }
      vstore(o + d, o0);
      vstore(o + d + VL, o1);
      vstore(o + d + 2 * VL, o2);
      vstore(o + d + 3 * VL, o3);
    }
    for (; d + VL <= hd; d += VL) {
      vf o0 = {0};
      for (int j = 0; j < n; j++)
        o0 += vset(scores[j]) * vload(v + (size_t)j * ld_qkv + d);
      vstore(o + d, o0);
    }
    for (; d < hd; d++) {
      float acc = 0;
      for (int j = 0; j < n; j++)
        acc += scores[j] * v[(size_t)j * ld_qkv + d];
      o[d] = acc;
    }
  }
}
#undef KB

void vlm__l2_normalize(float *x, int n) {
  double ss = 0;
  for (int i = 0; i < n; i++)
    ss += (double)x[i] * x[i];
  if (ss <= 0)
    return;
  float inv = (float)(1.0 / sqrt(ss));
  for (int i = 0; i < n; i++)
    x[i] *= inv;
}

/* ---- dtype conversion --------------------------------------------------- */

static float half_to_float(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13); /* inf / nan */
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;
  } else { /* subnormal: renormalize */
    int e = -1;
    do {
      e++;
      mant <<= 1;
    } while (!(mant & 0x400));
    bits = sign | ((uint32_t)(112 - e) << 23) | ((mant & 0x3ff) << 13);
  }
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}

void vlm__f16_to_f32(float *out, const uint16_t *in, size_t n) {
  size_t i = 0;
#if defined(__F16C__)
  for (; i + 8 <= n; i += 8) {
    __m128i h = _mm_loadu_si128((const __m128i *)(const void *)(in + i));
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(h));
  }
#endif
  for (; i < n; i++)
    out[i] = half_to_float(in[i]);
}

void vlm__bf16_to_f32(float *out, const uint16_t *in, size_t n) {
  for (size_t i = 0; i < n; i++) {
    uint32_t bits = (uint32_t)in[i] << 16;
    memcpy(out + i, &bits, sizeof bits);
  }
}

/* ---- panel products for a few rows -------------------------------------- */

#if defined(__AVX512F__)
#include <immintrin.h>

int vlm__panels_supported(void) { return 1; }

static inline __m512 widen(const uint16_t *p, int bf16) {
  __m256i h = _mm256_loadu_si256((const __m256i *)(const void *)p);
  if (bf16)
    return _mm512_castsi512_ps(
        _mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  return _mm512_cvtph_ps(h);
}

/* Up to 7 rows against one panel: 14 accumulators stay in registers, and
 * each widened weight vector feeds 7 FMAs.  Written out row by row so the
 * compiler keeps the accumulators in registers. */
#define ROWS 7
static inline __attribute__((always_inline)) void
panel_rows(float *out, int ldo, const float *in, int ldi,
           const uint16_t *panel, const int bf16, const float *bias, int rows,
           int ncols, int K, int accumulate) {
  const float *r0 = in, *r1 = in + (rows > 1 ? ldi : 0),
              *r2 = in + (size_t)(rows > 2 ? 2 : 0) * ldi,
              *r3 = in + (size_t)(rows > 3 ? 3 : 0) * ldi,
              *r4 = in + (size_t)(rows > 4 ? 4 : 0) * ldi,
              *r5 = in + (size_t)(rows > 5 ? 5 : 0) * ldi,
              *r6 = in + (size_t)(rows > 6 ? 6 : 0) * ldi;
  __m512 a00 = _mm512_setzero_ps(), a01 = a00, a10 = a00, a11 = a00,
         a20 = a00, a21 = a00, a30 = a00, a31 = a00, a40 = a00, a41 = a00,
         a50 = a00, a51 = a00, a60 = a00, a61 = a00;
  const uint16_t *w = panel;
  for (int k = 0; k < K; k++, w += VLM__PANEL) {
    __m512 w0 = widen(w, bf16), w1 = widen(w + 16, bf16), x;
#define ROW(m)                                                                 \
  x = _mm512_set1_ps(r##m[k]);                                                 \
  a##m##0 = _mm512_fmadd_ps(x, w0, a##m##0);                                   \
  a##m##1 = _mm512_fmadd_ps(x, w1, a##m##1);
    ROW(0) ROW(1) ROW(2) ROW(3) ROW(4) ROW(5) ROW(6)
#undef ROW
  }
  __m512 acc[ROWS][2] = {{a00, a01}, {a10, a11}, {a20, a21}, {a30, a31},
                         {a40, a41}, {a50, a51}, {a60, a61}};
  __mmask16 k0 = (__mmask16)(ncols >= 16 ? 0xffff : (1u << ncols) - 1);
  __mmask16 k1 = (__mmask16)(ncols >= 32 ? 0xffff
                             : ncols <= 16 ? 0
                                           : (1u << (ncols - 16)) - 1);
  __m512 b0 = bias ? _mm512_maskz_loadu_ps(k0, bias) : _mm512_setzero_ps();
  __m512 b1 = bias ? _mm512_maskz_loadu_ps(k1, bias + 16) : _mm512_setzero_ps();
  for (int m = 0; m < rows; m++) {
    float *o = out + (size_t)m * ldo;
    __m512 v0 = _mm512_add_ps(acc[m][0], b0), v1 = _mm512_add_ps(acc[m][1], b1);
    if (accumulate) {
      v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(k0, o));
      v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(k1, o + 16));
    }
    _mm512_mask_storeu_ps(o, k0, v0);
    _mm512_mask_storeu_ps(o + 16, k1, v1);
  }
}

void vlm__matmul_panels(float *out, int ldo, const float *in, int ldi,
                        const uint16_t *panels, int bf16, const float *bias,
                        int M, int n0, int n1, int K, int accumulate) {
  /* Blocks of rows (their inputs stay in L2) against every panel of the
   * range (a panel is K * 64 bytes, read from L1/L2 by each 7-row group). */
  const int RB = 8 * ROWS;
  for (int mb = 0; mb < M; mb += RB)
  for (int n = n0; n < n1; n += VLM__PANEL) {
    const uint16_t *panel = panels + (size_t)(n / VLM__PANEL) * K * VLM__PANEL;
    int ncols = n1 - n < VLM__PANEL ? n1 - n : VLM__PANEL;
    int mend = mb + RB < M ? mb + RB : M;
    for (int m = mb; m < mend; m += ROWS) {
      /* Two instances, so the dtype test leaves the inner loop. */
      if (bf16)
        panel_rows(out + (size_t)m * ldo + n, ldo, in + (size_t)m * ldi, ldi,
                   panel, 1, bias ? bias + n : NULL,
                   mend - m < ROWS ? mend - m : ROWS, ncols, K, accumulate);
      else
        panel_rows(out + (size_t)m * ldo + n, ldo, in + (size_t)m * ldi, ldi,
                   panel, 0, bias ? bias + n : NULL,
                   mend - m < ROWS ? mend - m : ROWS, ncols, K, accumulate);
    }
  }
}
#undef ROWS

#else

int vlm__panels_supported(void) { return 0; }

void vlm__matmul_panels(float *out, int ldo, const float *in, int ldi,
                        const uint16_t *panels, int bf16, const float *bias,
                        int M, int n0, int n1, int K, int accumulate) {
  /* Never called: panels are only built where they are supported. */
  (void)out, (void)ldo, (void)in, (void)ldi, (void)panels, (void)bf16;
  (void)bias, (void)M, (void)n0, (void)n1, (void)K, (void)accumulate;
}

#endif

void vlm__panel_pack(uint16_t *panels, const uint16_t *const *rows, int N,
                     int K) {
  int np = (N + VLM__PANEL - 1) / VLM__PANEL;
  for (int p = 0; p < np; p++) {
    uint16_t *dst = panels + (size_t)p * K * VLM__PANEL;
    const uint16_t *src[VLM__PANEL];
    int width = N - p * VLM__PANEL < VLM__PANEL ? N - p * VLM__PANEL
                                                : VLM__PANEL;
    for (int j = 0; j < width; j++)
      src[j] = rows[p * VLM__PANEL + j];
    for (int k = 0; k < K; k++, dst += VLM__PANEL) {
      int j = 0;
      for (; j < width; j++)
        dst[j] = src[j][k];
      for (; j < VLM__PANEL; j++)
        dst[j] = 0;
    }
  }
}
