/* quant.h - int8 and bf16 compute for the towers' Linear layers (internal
 * to embed/).
 *
 * A quantized Linear layer (vlm__qlinear) holds its weight packed once at
 * load into panels of VLM__QPANEL output columns, its bias, and for int8
 * its per-output-channel scales and column sums.  A product runs in two
 * steps: the input rows are quantized once (vlm__qact_rows: to bfloat16,
 * or per row to asymmetric u8 with a scale and zero point), then any
 * range of output columns is computed from them (vlm__qmatmul).
 *
 *   bf16:  out = Σ_k bf16(x[k]) · bf16(w[n,k])   (products exact, fp32 sums)
 *   int8:  w[n,k] ≈ ws[n] · wq[n,k], wq in [-127, 127] (symmetric per
 *          output channel); x[m,k] ≈ xs[m] · (xq[m,k] − xz[m]), xq in
 *          [0, 255] (asymmetric per row); so
 *          out = xs[m] · ws[n] · (Σ_k xq·wq − xz[m] · Σ_k wq[n,k]) with
 *          exact int32 sums (vpdpbusd is u8 × s8).
 *
 * Kernels: AVX-512 VNNI (vpdpbusd) and AVX-512 BF16 (vdpbf16ps) when the
 * CPU has them (runtime detection), else a plain-C reference of the same
 * arithmetic: for int8 the identical integers (so identical outputs), for
 * bf16 the same products summed in another order.  VLMDB_CPU_FEATURES
 * (e.g. "-vnni,-bf16") turns features off, for tests of the fallback. */
#ifndef VLM_QUANT_H
#define VLM_QUANT_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
  VLM__COMPUTE_EXACT = 0,
  VLM__COMPUTE_BF16 = 1,
  VLM__COMPUTE_INT8 = 2
} vlm__compute;

#define VLM__QPANEL 32
/* The widest input a smoothed layer may have (its divided row is kept on
 * the stack of the thread quantizing it). */
#define VLM__QSMOOTH_MAX_K 8192

/* CPU features the kernels use, after VLMDB_CPU_FEATURES (read when a
 * layer is packed: a loaded model keeps its choice). */
#define VLM__CPU_VNNI 1
#define VLM__CPU_BF16 2
int vlm__cpu_features(void);

typedef struct {
  vlm__compute mode;
  int N, K, Kp;        /* Kp: K rounded up to a multiple of 4 */
  void *panels;        /* [ceil(N/32)][Kp/4][32][4] s8, or
                        * [ceil(N/32)][Kp/2][32][2] bf16 */
  float *scale;        /* int8: [N] weight scale per output channel */
  int32_t *colsum;     /* int8: [N] Σ_k wq[n,k] */
  float *bias;         /* [N] or NULL */
  int simd;            /* the CPU's kernel (VNNI / BF16), else reference */
  /* int8 with smoothing (SmoothQuant): the weights are w[n,k] · s[k] and
   * an input row is x[k] / s[k] before it is quantized; ismooth = 1/s
   * ([K], owned), NULL: none. */
  float *ismooth;       /* K <= VLM__QSMOOTH_MAX_K */
  /* Calibration (vlm_clip_quantize_ex): when set, every input row this
   * layer quantizes raises amax[k] to |x[k]| ([K], owned). */
  float *amax;
} vlm__qlinear;

/* Quantize one weight row w[K] to q[K] (symmetric, round to nearest even,
 * scale = max|w| / 127; an all-zero row gets scale 1).  Returns the scale.
 * This is what `vlmdb quantize` writes and what loading an exact
 * checkpoint with int8 compute does, so both give the same model. */
float vlm__q8_quantize_row(int8_t *q, const float *w, int K);

/* Pack a layer from its rows.  int8: rows8[n] (K values) and scale[n];
 * bf16: rowsf[n] (K floats, rounded to bfloat16 here, nearest even).
 * bias (N floats, NULL: none) is copied.  Errors: VLM_ENOMEM. */
int vlm__qlinear_init_int8(vlm__qlinear *q, const int8_t *const *rows8,
                           const float *scale, const float *bias, int N,
                           int K);
int vlm__qlinear_init_bf16(vlm__qlinear *q, const float *const *rowsf,
                           const float *bias, int N, int K);
void vlm__qlinear_free(vlm__qlinear *q); /* accepts NULL and zeroed */

/* Bytes of quantized input a product over M rows of K needs (ld: row
 * stride in bytes, returned through *ld). */
size_t vlm__qact_bytes(vlm__compute mode, int M, int K, int *ld);

/* Quantize rows r0..r1-1 of in[M, K] (stride ldi) into qa (row stride ld
 * bytes), with xs[m] / xz[m] (int8: scale and zero point per row).  ql
 * (may be NULL): its ismooth divides the rows first (int8), and its amax
 * records their magnitudes. */
void vlm__qact_rows(vlm__compute mode, uint8_t *qa, int ld, float *xs,
                    int32_t *xz, const float *in, int ldi, int r0, int r1,
                    int K, const vlm__qlinear *ql);

/* out[M, n0:n1] (stride ldo) = qa[M] · w[n0:n1]ᵀ + bias, accumulating into
 * out when accumulate != 0, then act (NULL: none) on each row's n0:n1.
 * n0 is a multiple of VLM__QPANEL; n1 <= N. */
void vlm__qmatmul(float *out, int ldo, const uint8_t *qa, int ld,
                  const float *xs, const int32_t *xz, const vlm__qlinear *q,
                  int M, int n0, int n1, int accumulate,
                  void (*act)(float *x, size_t n));

/* bfloat16 bits of f, round to nearest even (NaN kept quiet). */
uint16_t vlm__f32_to_bf16(float f);

#endif
