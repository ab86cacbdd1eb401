/* kernels.h - the numeric kernels of the CLIP towers (internal to embed/).
 *
 * Plain loops over GCC/Clang vector extensions (one code path the compiler
 * lowers for any target) or OpenBLAS calls.  Output first; every buffer is
 * row-major float32; shapes are given as [rows, cols].  No kernel
 * allocates, locks or keeps state, so any thread may run any kernel. */
#ifndef VLM_KERNELS_H
#define VLM_KERNELS_H

#include <stddef.h>
#include <stdint.h>

/* out[M, N] (row stride ldo) = in[M, K] (stride ldi) · w[N, K]ᵀ (stride ldw)
 * + bias[N] (NULL: none); accumulate != 0 adds to what out holds instead.
 * This is a Linear layer with Hugging Face's [out, in] weight layout. */
void vlm__matmul(float *out, int ldo, const float *in, int ldi,
                 const float *w, int ldw, const float *bias, int M, int N,
                 int K, int accumulate);

/* Linear layers for a few rows at a time (a text query), where sgemm
 * would spend more time packing the weight matrix than multiplying.  The
 * weights are packed once at load into panels of VLM__PANEL output
 * columns, [ceil(N / VLM__PANEL)][K][VLM__PANEL], as IEEE half or
 * bfloat16 (exactly the checkpoint's values; columns past N are zero), and
 * widened on the fly, so a product reads half the bytes an F32 one would.
 * Only built where the CPU has AVX-512 (vlm__panels_supported). */
#define VLM__PANEL 32
int vlm__panels_supported(void);

/* Pack w (N rows of K 16-bit values; row n at rows[n]) into panels. */
void vlm__panel_pack(uint16_t *panels, const uint16_t *const *rows, int N,
                     int K);

/* out[M, n0:n1] (stride ldo) = in[M, K] · w[n0:n1, K]ᵀ + bias[n0:n1] (NULL:
 * none), accumulating into out when accumulate != 0, then act (NULL: none)
 * applied in place to each row's n0:n1, a few rows at a time while they are
 * still in cache.  n0 is a multiple of VLM__PANEL; n1 <= N.  bf16: the
 * panels hold bfloat16, else half. */
void vlm__matmul_panels(float *out, int ldo, const float *in, int ldi,
                        const uint16_t *panels, int bf16, const float *bias,
                        int M, int n0, int n1, int K, int accumulate,
                        void (*act)(float *x, size_t n));

/* out[rows, C] = layer_norm(in[rows, C]) * w[C] + b[C]; rows of both are
 * stride ld_out / ld_in.  out may equal in. */
void vlm__layernorm(float *out, int ld_out, const float *in, int ld_in,
                    const float *w, const float *b, int rows, int C,
                    float eps);

/* In place on x[n]: x * sigmoid(1.702 x) (CLIP's quick_gelu) or
 * 0.5 x (1 + erf(x / sqrt 2)) (exact GELU). */
void vlm__quick_gelu(float *x, size_t n);
void vlm__gelu(float *x, size_t n);
/* In place on x[n]: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
 * (gelu_pytorch_tanh, SigLIP's activation). */
void vlm__gelu_tanh(float *x, size_t n);

/* In place on x[n]: exp(x - max) / sum.  n >= 1. */
void vlm__softmax(float *x, int n);

/* Self-attention of one head over T positions, for the queries q0..q1-1.
 * q, k, v: [T, hd] with row stride ld_qkv; out: [q1 - q0, hd] with row
 * stride ld_out (query i in row i - q0); scratch: at least
 * vlm__attention_scratch(T, hd) floats.  causal: position i attends to
 * positions 0..i only. */
size_t vlm__attention_scratch(int T, int hd);
void vlm__attention(float *out, int ld_out, const float *q, const float *k,
                    const float *v, int ld_qkv, int T, int hd, int causal,
                    int q0, int q1, float *scratch);

/* x[n] /= ||x[n]||₂ (a zero vector stays zero). */
void vlm__l2_normalize(float *x, int n);

/* out[n] = in[n] widened from IEEE half / bfloat16 (bit patterns, host
 * order, as read from a little-endian file on a little-endian host). */
void vlm__f16_to_f32(float *out, const uint16_t *in, size_t n);
void vlm__bf16_to_f32(float *out, const uint16_t *in, size_t n);

/* Vector exp of x[n] into out[n] (relative error about 2 ulp; inputs
 * clamped to about [-87, 88]).  Exposed for tests. */
void vlm__exp(float *out, const float *x, size_t n);

#endif
