/* kernels_q8.c - int8 (vpdpbusd) and bf16 (vdpbf16ps) Linear products
 * (quant.h).
 *
 * The AVX-512 kernels are compiled with target attributes, whatever the
 * build's -march, and chosen at run time by the CPU's features; the
 * reference kernels are plain C of the same arithmetic.  Activation
 * quantization uses vector extensions (any target) and rounds with the
 * 1.5 * 2^23 trick, so it gives the same integers on every path. */
#include "quant.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "vlm_error.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_X86 1
#endif

#define VL 16
typedef float vf __attribute__((vector_size(VL * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(VL * sizeof(int32_t))));
typedef uint8_t vb __attribute__((vector_size(VL)));

static inline vf vload(const float *p) {
  vf v;
  memcpy(&v, p, sizeof v);
  return v;
}
static inline vf vset(float x) {
  return (vf){x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x};
}
static inline vf vsel(vi mask, vf a, vf b) {
  return (vf)(((vi)a & mask) | ((vi)b & ~mask));
}

#define MAGIC 12582912.0f /* 1.5 * 2^23: x + MAGIC - MAGIC rounds to even */

static inline float round_even(float x) { return (x + MAGIC) - MAGIC; }

uint16_t vlm__f32_to_bf16(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) /* NaN: keep it a quiet NaN */
    return (uint16_t)((x >> 16) | 0x40u);
  x += 0x7fffu + ((x >> 16) & 1u);
  return (uint16_t)(x >> 16);
}

/* ---- CPU features --------------------------------------------------------- */

static int features_detect(void) {
  int f = 0;
#if HAVE_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")) {
    if (__builtin_cpu_supports("avx512vnni"))
      f |= VLM__CPU_VNNI;
    if (__builtin_cpu_supports("avx512bf16"))
      f |= VLM__CPU_BF16;
  }
#endif
  /* VLMDB_CPU_FEATURES: a comma list of -vnni / -bf16 turning them off
   * (the fallback's tests); features the CPU lacks cannot be turned on. */
  const char *env = getenv("VLMDB_CPU_FEATURES");
  if (env) {
    if (strstr(env, "-vnni"))
      f &= ~VLM__CPU_VNNI;
    if (strstr(env, "-bf16"))
      f &= ~VLM__CPU_BF16;
  }
  return f;
}

/* Read at each layer's packing, so tests can change the variable between
 * loads. */
int vlm__cpu_features(void) { return features_detect(); }

/* ---- weights -------------------------------------------------------------- */

float vlm__q8_quantize_row(int8_t *q, const float *w, int K) {
  float amax = 0;
  for (int k = 0; k < K; k++) {
    float a = w[k] < 0 ? -w[k] : w[k];
    if (a > amax)
      amax = a;
  }
  float scale = amax > 0 ? amax / 127.0f : 1.0f;
  float inv = 1.0f / scale;
  for (int k = 0; k < K; k++) {
    float v = round_even(w[k] * inv);
    v = v > 127.0f ? 127.0f : v < -127.0f ? -127.0f : v;
    q[k] = (int8_t)(v == v ? v : 0); /* NaN weights become 0 */
  }
  return scale;
}

static int q_alloc(vlm__qlinear *q, vlm__compute mode, const float *bias,
                   int N, int K) {
  memset(q, 0, sizeof *q);
  q->mode = mode;
  q->N = N;
  q->K = K;
  q->Kp = (K + 3) & ~3;
  int feat = vlm__cpu_features();
  q->simd = mode == VLM__COMPUTE_INT8 ? !!(feat & VLM__CPU_VNNI)
                                      : !!(feat & VLM__CPU_BF16);
  size_t np = (size_t)(N + VLM__QPANEL - 1) / VLM__QPANEL;
  size_t esize = mode == VLM__COMPUTE_INT8 ? 1 : 2;
  size_t bytes = np * VLM__QPANEL * (size_t)q->Kp * esize;
  q->panels = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
  if (bias)
    q->bias = malloc((size_t)N * sizeof(float));
  if (mode == VLM__COMPUTE_INT8) {
    /* padded to whole panels: the kernel reads 16 at a time */
    q->scale = calloc(np * VLM__QPANEL, sizeof(float));
    q->colsum = calloc(np * VLM__QPANEL, sizeof(int32_t));
  }
  if (!q->panels || (bias && !q->bias) ||
      (mode == VLM__COMPUTE_INT8 && (!q->scale || !q->colsum))) {
    vlm__qlinear_free(q);
    return vlm_seterr(VLM_ENOMEM, "out of memory packing a %d x %d layer", N,
                      K);
  }
  memset(q->panels, 0, bytes);
  if (bias)
    memcpy(q->bias, bias, (size_t)N * sizeof(float));
  return 0;
}

int vlm__qlinear_init_int8(vlm__qlinear *q, const int8_t *const *rows8,
                           const float *scale, const float *bias, int N,
                           int K) {
  int rc = q_alloc(q, VLM__COMPUTE_INT8, bias, N, K);
  if (rc)
    return rc;
  int8_t *p8 = q->panels;
  for (int n = 0; n < N; n++) {
    int8_t *dst = p8 + (size_t)(n / VLM__QPANEL) * VLM__QPANEL * q->Kp +
                  (size_t)(n % VLM__QPANEL) * 4;
    int32_t sum = 0;
    for (int k = 0; k < K; k++) {
      dst[(size_t)(k / 4) * VLM__QPANEL * 4 + k % 4] = rows8[n][k];
      sum += rows8[n][k];
    }
    q->colsum[n] = sum;
    q->scale[n] = scale[n];
  }
  return 0;
}

int vlm__qlinear_init_bf16(vlm__qlinear *q, const float *const *rowsf,
                           const float *bias, int N, int K) {
  int rc = q_alloc(q, VLM__COMPUTE_BF16, bias, N, K);
  if (rc)
    return rc;
  uint16_t *p16 = q->panels;
  for (int n = 0; n < N; n++) {
    uint16_t *dst = p16 + (size_t)(n / VLM__QPANEL) * VLM__QPANEL * q->Kp +
                    (size_t)(n % VLM__QPANEL) * 2;
    for (int k = 0; k < K; k++)
      dst[(size_t)(k / 2) * VLM__QPANEL * 2 + k % 2] =
          vlm__f32_to_bf16(rowsf[n][k]);
  }
  return 0;
}

void vlm__qlinear_free(vlm__qlinear *q) {
  if (!q)
    return;
  free(q->ismooth);
  free(q->amax);
  free(q->panels);
  free(q->scale);
  free(q->colsum);
  free(q->bias);
  memset(q, 0, sizeof *q);
}

/* ---- activations ---------------------------------------------------------- */

size_t vlm__qact_bytes(vlm__compute mode, int M, int K, int *ld) {
  int Kp = (K + 3) & ~3;
  int l = mode == VLM__COMPUTE_INT8 ? Kp : 2 * Kp;
  l = (l + 63) & ~63; /* rows on their own cache lines */
  if (ld)
    *ld = l;
  return (size_t)M * (size_t)l;
}

/* One row to u8 with its scale and zero point: the range [min, max] of
 * the row (widened to hold 0, so 0 is exact) over 255 steps. */
static void q8_row(uint8_t *dst, float *xs, int32_t *xz, const float *x,
                   int K) {
  vf mn = vset(0), mx = vset(0);
  int k = 0;
  for (; k + VL <= K; k += VL) {
    vf v = vload(x + k);
    mn = vsel(v < mn, v, mn);
    mx = vsel(v > mx, v, mx);
  }
  float lo = 0, hi = 0;
  for (int i = 0; i < VL; i++) {
    lo = mn[i] < lo ? mn[i] : lo;
    hi = mx[i] > hi ? mx[i] : hi;
  }
  for (; k < K; k++) {
    lo = x[k] < lo ? x[k] : lo;
    hi = x[k] > hi ? x[k] : hi;
  }
  float s = (hi - lo) / 255.0f;
  if (!(s > 0) || s > 1e30f) /* all zero, or NaN / inf in the row */
    s = 1.0f;
  float inv = 1.0f / s;
  float z = round_even(-lo * inv);
  z = z < 0 ? 0 : z > 255 ? 255 : z;
  *xs = s;
  *xz = (int32_t)z;
  const vf vinv = vset(inv), vz = vset(z), v0 = vset(0), v255 = vset(255);
  for (k = 0; k + VL <= K; k += VL) {
    vf v = ((vload(x + k) * vinv + MAGIC) - MAGIC) + vz;
    v = vsel(v > v0, v, v0); /* NaN goes to 0 here */
    v = vsel(v < v255, v, v255);
    vb b = __builtin_convertvector(__builtin_convertvector(v, vi), vb);
    memcpy(dst + k, &b, VL);
  }
  for (; k < K; k++) {
    float v = round_even(x[k] * inv) + z;
    v = v > 0 ? v : 0;
    v = v < 255 ? v : 255;
    dst[k] = (uint8_t)v;
  }
}

/* amax[k] = max(amax[k], |x[k]|), safe against other threads recording
 * into the same layer (non-negative floats order as their bits). */
static void amax_note(float *amax, const float *x, int K) {
  for (int k = 0; k < K; k++) {
    float a = fabsf(x[k]);
    if (!(a <= 3.0e38f))
      continue; /* NaN, inf: no scale comes from them */
    uint32_t bits, old;
    memcpy(&bits, &a, 4);
    uint32_t *p = (uint32_t *)(void *)&amax[k];
    old = __atomic_load_n(p, __ATOMIC_RELAXED);
    while (bits > old &&
           !__atomic_compare_exchange_n(p, &old, bits, 1, __ATOMIC_RELAXED,
                                        __ATOMIC_RELAXED))
      ;
  }
}

void vlm__qact_rows(vlm__compute mode, uint8_t *qa, int ld, float *xs,
                    int32_t *xz, const float *in, int ldi, int r0, int r1,
                    int K, const vlm__qlinear *ql) {
  const int Kp = (K + 3) & ~3;
  const float *ism = ql && mode == VLM__COMPUTE_INT8 ? ql->ismooth : NULL;
  float row[VLM__QSMOOTH_MAX_K]; /* the loader keeps smoothed K below it */
  for (int m = r0; m < r1; m++) {
    const float *x = in + (size_t)m * ldi;
    uint8_t *dst = qa + (size_t)m * ld;
    if (ql && ql->amax)
      amax_note(ql->amax, x, K);
    if (ism) {
      for (int k = 0; k < K; k++)
        row[k] = x[k] * ism[k];
      x = row;
    }
    if (mode == VLM__COMPUTE_INT8) {
      q8_row(dst, &xs[m], &xz[m], x, K);
      memset(dst + K, (int)xz[m], (size_t)(Kp - K)); /* zero weights there */
    } else {
      uint16_t *d = (uint16_t *)(void *)dst;
      for (int k = 0; k < K; k++)
        d[k] = vlm__f32_to_bf16(x[k]);
      for (int k = K; k < Kp; k++)
        d[k] = 0;
    }
  }
}

/* ---- products: reference ------------------------------------------------- */

static void q8_ref(float *out, int ldo, const uint8_t *qa, int ld,
                   const float *xs, const int32_t *xz, const vlm__qlinear *q,
                   int M, int n0, int n1, int accumulate) {
  const int8_t *p8 = q->panels;
  for (int m = 0; m < M; m++) {
    const uint8_t *a = qa + (size_t)m * ld;
    float *o = out + (size_t)m * ldo;
    for (int n = n0; n < n1; n++) {
      const int8_t *w = p8 + (size_t)(n / VLM__QPANEL) * VLM__QPANEL * q->Kp +
                        (size_t)(n % VLM__QPANEL) * 4;
      int32_t acc = 0;
      for (int k = 0; k < q->Kp; k++)
        acc += (int32_t)a[k] * w[(size_t)(k / 4) * VLM__QPANEL * 4 + k % 4];
      float v = (float)(acc - xz[m] * q->colsum[n]);
      v = v * (xs[m] * q->scale[n]);
      if (q->bias)
        v = v + q->bias[n];
      o[n] = accumulate ? o[n] + v : v;
    }
  }
}

static inline float bf16_f32(uint16_t h) {
  uint32_t x = (uint32_t)h << 16;
  float f;
  memcpy(&f, &x, 4);
  return f;
}

static void bf16_ref(float *out, int ldo, const uint8_t *qa, int ld,
                     const vlm__qlinear *q, int M, int n0, int n1,
                     int accumulate) {
  const uint16_t *p16 = q->panels;
  for (int m = 0; m < M; m++) {
    const uint16_t *a = (const uint16_t *)(const void *)(qa + (size_t)m * ld);
    float *o = out + (size_t)m * ldo;
    for (int n = n0; n < n1; n++) {
      const uint16_t *w = p16 +
                          (size_t)(n / VLM__QPANEL) * VLM__QPANEL * q->Kp +
                          (size_t)(n % VLM__QPANEL) * 2;
      float acc = 0;
      for (int k = 0; k < q->Kp; k += 2) {
        const uint16_t *wk = w + (size_t)(k / 2) * VLM__QPANEL * 2;
        acc += bf16_f32(a[k]) * bf16_f32(wk[0]) +
               bf16_f32(a[k + 1]) * bf16_f32(wk[1]);
      }
      float v = q->bias ? acc + q->bias[n] : acc;
      o[n] = accumulate ? o[n] + v : v;
    }
  }
}

/* ---- products: AVX-512 ----------------------------------------------------- */

#if HAVE_X86
#define ROWS 8

static inline __attribute__((always_inline)) __mmask16 col_mask(int ncols,
                                                                int half) {
  int c = ncols - 16 * half;
  return (__mmask16)(c >= 16 ? 0xffff : c <= 0 ? 0 : (1u << c) - 1);
}

#define DECL_ACC(zero)                                                         \
  __m512i a00 = zero, a01 = zero, a10 = zero, a11 = zero, a20 = zero,         \
          a21 = zero, a30 = zero, a31 = zero, a40 = zero, a41 = zero,          \
          a50 = zero, a51 = zero, a60 = zero, a61 = zero, a70 = zero,          \
          a71 = zero

/* Up to 8 rows against one int8 panel: 16 int32 accumulators in
 * registers; per 4 k, two weight vectors feed 16 vpdpbusd. */
__attribute__((target("avx512f,avx512bw,avx512vnni"))) static void
q8_panel_rows(float *out, int ldo, const uint8_t *qa, int ld, const float *xs,
              const int32_t *xz, const vlm__qlinear *q, const int8_t *panel,
              int n, int rows, int ncols, int accumulate) {
  const uint8_t *r[ROWS];
  for (int m = 0; m < ROWS; m++)
    r[m] = qa + (size_t)(m < rows ? m : 0) * ld;
  const __m512i z = _mm512_setzero_si512();
  DECL_ACC(z);
  const int8_t *w = panel;
  const int KQ = q->Kp / 4;
  for (int kq = 0; kq < KQ; kq++, w += 4 * VLM__QPANEL) {
    __m512i w0 = _mm512_loadu_si512(w), w1 = _mm512_loadu_si512(w + 64), x;
    int32_t v;
#define ROW(m)                                                                 \
  memcpy(&v, r[m] + 4 * kq, 4);                                                \
  x = _mm512_set1_epi32(v);                                                    \
  a##m##0 = _mm512_dpbusd_epi32(a##m##0, x, w0);                               \
  a##m##1 = _mm512_dpbusd_epi32(a##m##1, x, w1);
    ROW(0) ROW(1) ROW(2) ROW(3) ROW(4) ROW(5) ROW(6) ROW(7)
#undef ROW
  }
  __m512i acc[ROWS][2] = {{a00, a01}, {a10, a11}, {a20, a21}, {a30, a31},
                          {a40, a41}, {a50, a51}, {a60, a61}, {a70, a71}};
  for (int h = 0; h < 2; h++) {
    __mmask16 k = col_mask(ncols, h);
    if (!k)
      break;
    int c = n + 16 * h;
    __m512i cs = _mm512_loadu_si512(q->colsum + c);
    __m512 sc = _mm512_loadu_ps(q->scale + c);
    __m512 b = q->bias ? _mm512_maskz_loadu_ps(k, q->bias + c)
                       : _mm512_setzero_ps();
    for (int m = 0; m < rows; m++) {
      float *o = out + (size_t)m * ldo + c;
      __m512i t = _mm512_sub_epi32(
          acc[m][h], _mm512_mullo_epi32(_mm512_set1_epi32(xz[m]), cs));
      __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(t),
                               _mm512_mul_ps(_mm512_set1_ps(xs[m]), sc));
      if (q->bias)
        v = _mm512_add_ps(v, b);
      if (accumulate)
        v = _mm512_add_ps(_mm512_maskz_loadu_ps(k, o), v);
      _mm512_mask_storeu_ps(o, k, v);
    }
  }
}

/* The same for bf16: per 2 k, two weight vectors feed 16 vdpbf16ps. */
__attribute__((target("avx512f,avx512bw,avx512bf16"))) static void
bf16_panel_rows(float *out, int ldo, const uint8_t *qa, int ld,
                const vlm__qlinear *q, const uint16_t *panel, int n, int rows,
                int ncols, int accumulate) {
  const uint8_t *r[ROWS];
  for (int m = 0; m < ROWS; m++)
    r[m] = qa + (size_t)(m < rows ? m : 0) * ld;
  __m512 a00 = _mm512_setzero_ps(), a01 = a00, a10 = a00, a11 = a00,
         a20 = a00, a21 = a00, a30 = a00, a31 = a00, a40 = a00, a41 = a00,
         a50 = a00, a51 = a00, a60 = a00, a61 = a00, a70 = a00, a71 = a00;
  const uint16_t *w = panel;
  const int KP2 = q->Kp / 2;
  for (int kp = 0; kp < KP2; kp++, w += 2 * VLM__QPANEL) {
    __m512bh w0 = (__m512bh)_mm512_loadu_si512(w),
             w1 = (__m512bh)_mm512_loadu_si512(w + 32), x;
    int32_t v;
#define ROW(m)                                                                 \
  memcpy(&v, r[m] + 4 * kp, 4);                                                \
  x = (__m512bh)_mm512_set1_epi32(v);                                          \
  a##m##0 = _mm512_dpbf16_ps(a##m##0, x, w0);                                  \
  a##m##1 = _mm512_dpbf16_ps(a##m##1, x, w1);
    ROW(0) ROW(1) ROW(2) ROW(3) ROW(4) ROW(5) ROW(6) ROW(7)
#undef ROW
  }
  __m512 acc[ROWS][2] = {{a00, a01}, {a10, a11}, {a20, a21}, {a30, a31},
                         {a40, a41}, {a50, a51}, {a60, a61}, {a70, a71}};
  for (int h = 0; h < 2; h++) {
    __mmask16 k = col_mask(ncols, h);
    if (!k)
      break;
    int c = n + 16 * h;
    __m512 b = q->bias ? _mm512_maskz_loadu_ps(k, q->bias + c)
                       : _mm512_setzero_ps();
    for (int m = 0; m < rows; m++) {
      float *o = out + (size_t)m * ldo + c;
      __m512 v = acc[m][h];
      if (q->bias)
        v = _mm512_add_ps(v, b);
      if (accumulate)
        v = _mm512_add_ps(_mm512_maskz_loadu_ps(k, o), v);
      _mm512_mask_storeu_ps(o, k, v);
    }
  }
}
#endif

void vlm__qmatmul(float *out, int ldo, const uint8_t *qa, int ld,
                  const float *xs, const int32_t *xz, const vlm__qlinear *q,
                  int M, int n0, int n1, int accumulate,
                  void (*act)(float *x, size_t n)) {
  if (M <= 0 || n1 <= n0)
    return;
  const int fast = q->simd;
  /* Blocks of rows (their quantized inputs stay in L1/L2) against every
   * panel of the range, then the activation while the rows are in cache. */
  const int RB = 32;
  for (int mb = 0; mb < M; mb += RB) {
    int mend = mb + RB < M ? mb + RB : M;
    if (!fast) {
      if (q->mode == VLM__COMPUTE_INT8)
        q8_ref(out + (size_t)mb * ldo, ldo, qa + (size_t)mb * ld, ld,
               xs + mb, xz + mb, q, mend - mb, n0, n1, accumulate);
      else
        bf16_ref(out + (size_t)mb * ldo, ldo, qa + (size_t)mb * ld, ld, q,
                 mend - mb, n0, n1, accumulate);
    }
#if HAVE_X86
    for (int n = n0; fast && n < n1; n += VLM__QPANEL) {
      int ncols = n1 - n < VLM__QPANEL ? n1 - n : VLM__QPANEL;
      size_t p = (size_t)(n / VLM__QPANEL) * VLM__QPANEL * q->Kp;
      for (int m = mb; m < mend; m += ROWS) {
        int rows = mend - m < ROWS ? mend - m : ROWS;
        if (q->mode == VLM__COMPUTE_INT8)
          q8_panel_rows(out + (size_t)m * ldo, ldo, qa + (size_t)m * ld, ld,
                        xs + m, xz + m, q, (const int8_t *)q->panels + p, n,
                        rows, ncols, accumulate);
        else
          bf16_panel_rows(out + (size_t)m * ldo, ldo, qa + (size_t)m * ld,
                          ld, q, (const uint16_t *)q->panels + p, n, rows,
                          ncols, accumulate);
      }
    }
#endif
    if (act)
      for (int m = mb; m < mend; m++)
        act(out + (size_t)m * ldo + n0, (size_t)(n1 - n0));
  }
}
