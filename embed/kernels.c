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

#if defined(__F16C__) || defined(__FMA__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#define VL 16 /* vset spells out 16 lanes */
typedef float vf __attribute__((vector_size(VL * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(VL * sizeof(int32_t))));

static inline vf vload(const float *p) {
  vf v;
  memcpy(&v, p, sizeof v);
  return v;
}
static inline void vstore(float *p, vf v) { memcpy(p, &v, sizeof v); }
/* A broadcast: (vf){0} + x would cost an add, which strict float
 * semantics keep (it turns -0 into +0). */
static inline vf vset(float x) {
  return (vf){x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x};
}
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

/* 1 / x: the 14-bit reciprocal estimate and one Newton step (relative
 * error about 2^-27) where AVX-512 has it, a division elsewhere.  A
 * division of 16 floats costs more than the exp polynomial beside it. */
static inline vf vrecip(vf x) {
#if defined(__AVX512F__)
  vf r = (vf)_mm512_rcp14_ps((__m512)x);
  return r * (2.0f - x * r);
#else
  return 1.0f / x;
#endif
}

static inline vf vquick_gelu(vf x) {
  return x * vrecip(1.0f + vexp(x * -1.702f));
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
  vf t = vrecip(1.0f + 0.3275911f * az);
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
  return x * vrecip(1.0f + vexp(u * -2.0f));
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

/* x[i] = exp(x[i] - max x) in place; returns their sum. */
static float softmax_exp(float *x, int n) {
  int i = 0;
  float mx = x[0];
  if (n >= VL) {
    vf m = vload(x);
    for (i = VL; i + VL <= n; i += VL)
      m = vmax(m, vload(x + i));
    for (int l = 0; l < VL; l++)
      mx = m[l] > mx ? m[l] : mx;
  }
  for (; i < n; i++)
    mx = x[i] > mx ? x[i] : mx;
  vf vmx = vset(mx), acc = {0};
  for (i = 0; i + VL <= n; i += VL) {
    vf e = vexp(vload(x + i) - vmx);
    vstore(x + i, e);
    acc += e;
  }
  float sum = vsum(acc);
  for (; i < n; i++) {
    x[i] = sexp(x[i] - mx);
    sum += x[i];
  }
  return sum;
}

void vlm__softmax(float *x, int n) {
  const float inv = 1.0f / softmax_exp(x, n);
  const vf vinv = vset(inv);
  int i = 0;
  for (; i + VL <= n; i += VL)
    vstore(x + i, vload(x + i) * vinv);
  for (; i < n; i++)
    x[i] *= inv;
}

/* a·b + c, fused where the target has FMA (the project's -std=c11 turns
 * off contraction, so the compiler never fuses on its own). */
static inline vf vfma(vf a, vf b, vf c) {
#if defined(__AVX512F__)
  return (vf)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
#elif defined(__FMA__)
  vf r;
  __m256 lo = _mm256_fmadd_ps(_mm256_loadu_ps((const float *)&a),
                              _mm256_loadu_ps((const float *)&b),
                              _mm256_loadu_ps((const float *)&c));
  __m256 hi = _mm256_fmadd_ps(_mm256_loadu_ps((const float *)&a + 8),
                              _mm256_loadu_ps((const float *)&b + 8),
                              _mm256_loadu_ps((const float *)&c + 8));
  _mm256_storeu_ps((float *)&r, lo);
  _mm256_storeu_ps((float *)&r + 8, hi);
  return r;
#else
  return a * b + c;
#endif
}

/* Queries are handled QB at a time, so that every key or value vector
 * loaded serves QB rows: the scores of QB queries against 64 keys are 16
 * accumulators, and so are their weighted sums over 64 value columns. */
#define QB 4
#define KB (4 * VL)

static inline int round_vl(int n) { return (n + VL - 1) / VL * VL; }

size_t vlm__attention_scratch(int T, int hd) {
  size_t Tp = (size_t)round_vl(T);
  return (size_t)QB * Tp + 2 * (size_t)hd * Tp + (size_t)QB * (size_t)hd;
}

/* The micro-kernels below keep their QB x 4 accumulators in named
 * variables: GCC -O2 leaves an array of vectors in memory.  IN_REGS pins
 * the four vectors loaded per step in registers: otherwise GCC folds the
 * load into each of the QB multiply-adds that use it, QB loads instead of
 * one. */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define IN_REGS(a, b, c, d) __asm__("" : "+v"(a), "+v"(b), "+v"(c), "+v"(d))
#else
#define IN_REGS(a, b, c, d) ((void)0)
#endif
#define ROW4(X) X(0) X(1) X(2) X(3)

/* sc[r][j] = q[r] · kt[:, j] for QB rows and keys j < np (a multiple of
 * VL); kt is [hd, Tp]. */
__attribute__((noinline)) static void attention_scores(
    float *sc, int Tp, const float *const q[QB], const float *kt, int np,
    int hd) {
  const float *q0 = q[0], *q1 = q[1], *q2 = q[2], *q3 = q[3];
  int jb = 0;
  for (; jb + KB <= np; jb += KB) {
#define DECL(r) vf s##r##0 = {0}, s##r##1 = {0}, s##r##2 = {0}, s##r##3 = {0};
    ROW4(DECL)
#undef DECL
    const float *col = kt + jb;
    for (int d = 0; d < hd; d++, col += Tp) {
      vf k0 = vload(col), k1 = vload(col + VL), k2 = vload(col + 2 * VL),
         k3 = vload(col + 3 * VL);
      IN_REGS(k0, k1, k2, k3);
#define STEP(r)                                                                \
  {                                                                            \
    const vf qd = vset(q##r[d]);                                               \
    s##r##0 = vfma(qd, k0, s##r##0);                                           \
    s##r##1 = vfma(qd, k1, s##r##1);                                           \
    s##r##2 = vfma(qd, k2, s##r##2);                                           \
    s##r##3 = vfma(qd, k3, s##r##3);                                           \
  }
      ROW4(STEP)
#undef STEP
    }
#define STORE(r)                                                               \
  vstore(sc + (size_t)r * Tp + jb, s##r##0);                                   \
  vstore(sc + (size_t)r * Tp + jb + VL, s##r##1);                              \
  vstore(sc + (size_t)r * Tp + jb + 2 * VL, s##r##2);                          \
  vstore(sc + (size_t)r * Tp + jb + 3 * VL, s##r##3);
    ROW4(STORE)
#undef STORE
  }
  for (; jb < np; jb += VL) {
    vf s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};
    const float *col = kt + jb;
    for (int d = 0; d < hd; d++, col += Tp) {
      const vf k0 = vload(col);
      s0 = vfma(vset(q0[d]), k0, s0);
      s1 = vfma(vset(q1[d]), k0, s1);
      s2 = vfma(vset(q2[d]), k0, s2);
      s3 = vfma(vset(q3[d]), k0, s3);
    }
    vstore(sc + jb, s0);
    vstore(sc + (size_t)Tp + jb, s1);
    vstore(sc + (size_t)2 * Tp + jb, s2);
    vstore(sc + (size_t)3 * Tp + jb, s3);
  }
}

/* o[r] = inv[r] · Σ_j sc[r][j] · v[j] for QB rows over keys j < n. */
__attribute__((noinline)) static void attention_values(
    float *const o[QB], const float inv[QB], const float *sc, int Tp,
    const float *v, int ld_qkv, int n, int hd) {
  const float *p0 = sc, *p1 = sc + Tp, *p2 = sc + 2 * (size_t)Tp,
              *p3 = sc + 3 * (size_t)Tp;
  int d = 0;
  for (; d + KB <= hd; d += KB) {
#define DECL(r) vf a##r##0 = {0}, a##r##1 = {0}, a##r##2 = {0}, a##r##3 = {0};
    ROW4(DECL)
#undef DECL
    for (int j = 0; j < n; j++) {
      const float *vj = v + (size_t)j * ld_qkv + d;
      vf v0 = vload(vj), v1 = vload(vj + VL), v2 = vload(vj + 2 * VL),
         v3 = vload(vj + 3 * VL);
      IN_REGS(v0, v1, v2, v3);
#define STEP(r)                                                                \
  {                                                                            \
    const vf p = vset(p##r[j]);                                                \
    a##r##0 = vfma(p, v0, a##r##0);                                            \
    a##r##1 = vfma(p, v1, a##r##1);                                            \
    a##r##2 = vfma(p, v2, a##r##2);                                            \
    a##r##3 = vfma(p, v3, a##r##3);                                            \
  }
      ROW4(STEP)
#undef STEP
    }
#define STORE(r)                                                               \
  vstore(o[r] + d, a##r##0 * inv[r]);                                          \
  vstore(o[r] + d + VL, a##r##1 * inv[r]);                                     \
  vstore(o[r] + d + 2 * VL, a##r##2 * inv[r]);                                 \
  vstore(o[r] + d + 3 * VL, a##r##3 * inv[r]);
    ROW4(STORE)
#undef STORE
  }
  for (; d + VL <= hd; d += VL) {
    vf a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
    for (int j = 0; j < n; j++) {
      const vf v0 = vload(v + (size_t)j * ld_qkv + d);
      a0 = vfma(vset(p0[j]), v0, a0);
      a1 = vfma(vset(p1[j]), v0, a1);
      a2 = vfma(vset(p2[j]), v0, a2);
      a3 = vfma(vset(p3[j]), v0, a3);
    }
    vstore(o[0] + d, a0 * inv[0]);
    vstore(o[1] + d, a1 * inv[1]);
    vstore(o[2] + d, a2 * inv[2]);
    vstore(o[3] + d, a3 * inv[3]);
  }
  for (; d < hd; d++)
    for (int r = 0; r < QB; r++) {
      float a = 0;
      for (int j = 0; j < n; j++)
        a += sc[(size_t)r * Tp + j] * v[(size_t)j * ld_qkv + d];
      o[r][d] = a * inv[r];
    }
}
#undef ROW4
#undef IN_REGS

/* The keys are transposed once per head ([hd, T], scaled by 1/√hd, padded
 * with zeros to whole vectors) so that the scores are sums of
 * broadcast-multiplies kept in registers, with no horizontal sums.  The
 * values are copied next to each other too: in place, each row of a head
 * is a qkv row (9 KB at width 768) from the last, a page and a TLB entry
 * per row.  A
 * group with fewer than QB queries repeats its last one; each row's
 * arithmetic is the same whatever group it falls in, so any range of
 * queries gives the same rows bit for bit. */
void vlm__attention(float *out, int ld_out, const float *q, const float *k,
                    const float *v, int ld_qkv, int T, int hd, int causal,
                    int q0, int q1, float *scratch) {
  const float scale = 1.0f / sqrtf((float)hd);
  const int Tp = round_vl(T);
  float *sc = scratch, *kt = scratch + (size_t)QB * Tp;
  float *vc = kt + (size_t)hd * Tp; /* the values, rows adjacent */
  float *spare = vc + (size_t)hd * Tp; /* output rows of repeated queries */
  const int kn = causal ? q1 : T; /* keys any query of the range sees */
  const int knp = round_vl(kn);
  for (int j = 0; j < kn; j++) {
    const float *kj = k + (size_t)j * ld_qkv;
    for (int d = 0; d < hd; d++)
      kt[(size_t)d * Tp + j] = kj[d] * scale;
    memcpy(vc + (size_t)j * hd, v + (size_t)j * ld_qkv,
           (size_t)hd * sizeof *vc);
  }
  for (int d = 0; d < hd; d++)
    for (int j = kn; j < knp; j++)
      kt[(size_t)d * Tp + j] = 0;
  for (int i0 = q0; i0 < q1; i0 += QB) {
    const float *qr[QB];
    float *orow[QB];
    int last = i0 + QB <= q1 ? i0 + QB - 1 : q1 - 1;
    for (int r = 0; r < QB; r++) {
      int i = i0 + r <= last ? i0 + r : last;
      qr[r] = q + (size_t)i * ld_qkv;
      orow[r] = i0 + r <= last ? out + (size_t)(i - q0) * ld_out
                              : spare + (size_t)r * hd;
    }
    /* keys the group sees: all, or (causal) up to its last query */
    const int n = causal ? last + 1 : T;
    attention_scores(sc, Tp, qr, kt, round_vl(n), hd);
    float inv[QB]; /* each row's 1 / Σ exp, applied to its output */
    for (int r = 0; r < QB; r++) {
      int i = i0 + r <= last ? i0 + r : last;
      int ni = causal ? i + 1 : T;
      float *row = sc + (size_t)r * Tp;
      inv[r] = 1.0f / softmax_exp(row, ni);
      for (int j = ni; j < n; j++)
        row[j] = 0;
    }
    attention_values(orow, inv, sc, Tp, vc, hd, n, hd);
  }
}
#undef KB
#undef QB

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
                        int M, int n0, int n1, int K, int accumulate,
                        void (*act)(float *x, size_t n)) {
  /* Blocks of rows (their inputs stay in L2) against every panel of the
   * range (a panel is K * 64 bytes, read from L1/L2 by each 7-row group). */
  const int RB = 8 * ROWS;
  for (int mb = 0; mb < M; mb += RB) {
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
  if (act)
    for (int m = mb; m < M && m < mb + RB; m++)
      act(out + (size_t)m * ldo + n0, (size_t)(n1 - n0));
  }
}
#undef ROWS

#else

int vlm__panels_supported(void) { return 0; }

void vlm__matmul_panels(float *out, int ldo, const float *in, int ldi,
                        const uint16_t *panels, int bf16, const float *bias,
                        int M, int n0, int n1, int K, int accumulate,
                        void (*act)(float *x, size_t n)) {
  /* Never called: panels are only built where they are supported. */
  (void)out, (void)ldo, (void)in, (void)ldi, (void)panels, (void)bf16;
  (void)bias, (void)M, (void)n0, (void)n1, (void)K, (void)accumulate;
  (void)act;
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
