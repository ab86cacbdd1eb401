/* sha256.c - SHA-256 (FIPS 180-4).
 *
 * The model id hashes every weight (hundreds of MB for a real CLIP), so
 * where the CPU has the SHA extensions the block function uses them (about
 * five times the portable speed); the portable one is the reference the
 * tests compare it with. */
#include "sha256.h"

#include <stdio.h>
#include <string.h>

#if defined(__SHA__) && defined(__SSE4_1__)
#include <immintrin.h>
#define HAVE_SHA_NI 1
#endif

static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1,
    0x923f82a4, 0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3,
    0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
    0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147,
    0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
    0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
    0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208,
    0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void blocks_portable(uint32_t h[8], const uint8_t *p, size_t nblocks) {
  for (; nblocks--; p += 64) {
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
      w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
             (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
      uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
      uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5],
             g = h[6], hh = h[7];
    for (int i = 0; i < 64; i++) {
      uint32_t S1 = ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25);
      uint32_t ch = (e & f) ^ (~e & g);
      uint32_t t1 = hh + S1 + ch + K[i] + w[i];
      uint32_t S0 = ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22);
      uint32_t maj = (a & b) ^ (a & c) ^ (b & c);
      uint32_t t2 = S0 + maj;
      hh = g;
      g = f;
      f = e;
      e = d + t1;
      d = c;
      c = b;
      b = a;
      a = t1 + t2;
    }
    h[0] += a, h[1] += b, h[2] += c, h[3] += d;
    h[4] += e, h[5] += f, h[6] += g, h[7] += hh;
  }
}

#ifdef HAVE_SHA_NI
/* The SHA-NI round structure as Intel documents it: state kept as
 * ABEF/CDGH, four rounds per pair of sha256rnds2, message schedule with
 * sha256msg1/msg2. */
static void blocks_shani(uint32_t h[8], const uint8_t *p, size_t nblocks) {
  const __m128i shuf =
      _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
  __m128i tmp = _mm_loadu_si128((const __m128i *)(const void *)&h[0]);
  __m128i st1 = _mm_loadu_si128((const __m128i *)(const void *)&h[4]);
  tmp = _mm_shuffle_epi32(tmp, 0xB1);          /* CDAB */
  st1 = _mm_shuffle_epi32(st1, 0x1B);          /* EFGH */
  __m128i st0 = _mm_alignr_epi8(tmp, st1, 8);  /* ABEF */
  st1 = _mm_blend_epi16(st1, tmp, 0xF0);       /* CDGH */
  for (; nblocks--; p += 64) {
    __m128i save0 = st0, save1 = st1, msg, m[4];
    for (int i = 0; i < 4; i++)
      m[i] = _mm_shuffle_epi8(
          _mm_loadu_si128((const __m128i *)(const void *)(p + 16 * i)), shuf);
    for (int r = 0; r < 16; r++) {
      __m128i cur = m[r & 3];
      msg = _mm_add_epi32(
          cur, _mm_loadu_si128((const __m128i *)(const void *)&K[4 * r]));
      st1 = _mm_sha256rnds2_epu32(st1, st0, msg);
      if (r >= 3 && r < 15) {
        /* m[r+1] = msg2(msg1(m[r+1], m[r+2]) + alignr(m[r], m[r-1]), m[r]) */
        __m128i next = m[(r + 1) & 3];
        __m128i t = _mm_alignr_epi8(cur, m[(r + 3) & 3], 4);
        next = _mm_add_epi32(next, t);
        next = _mm_sha256msg2_epu32(next, cur);
        m[(r + 1) & 3] = next;
      }
      msg = _mm_shuffle_epi32(msg, 0x0E);
      st0 = _mm_sha256rnds2_epu32(st0, st1, msg);
      if (r >= 1 && r < 13)
        m[(r + 3) & 3] = _mm_sha256msg1_epu32(m[(r + 3) & 3], cur);
    }
    st0 = _mm_add_epi32(st0, save0);
    st1 = _mm_add_epi32(st1, save1);
  }
  tmp = _mm_shuffle_epi32(st0, 0x1B);          /* FEBA */
  st1 = _mm_shuffle_epi32(st1, 0xB1);          /* DCHG */
  st0 = _mm_blend_epi16(tmp, st1, 0xF0);       /* DCBA */
  st1 = _mm_alignr_epi8(st1, tmp, 8);          /* ABEF */
  _mm_storeu_si128((__m128i *)(void *)&h[0], st0);
  _mm_storeu_si128((__m128i *)(void *)&h[4], st1);
}
#define BLOCKS blocks_shani
#else
#define BLOCKS blocks_portable
#endif

/* For tests: the portable block function must agree with the fast one. */
void vlm__sha256_blocks_portable(uint32_t h[8], const uint8_t *p, size_t n);
void vlm__sha256_blocks_portable(uint32_t h[8], const uint8_t *p, size_t n) {
  blocks_portable(h, p, n);
}

void vlm__sha256_init(vlm__sha256 *s) {
  static const uint32_t iv[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372,
                                 0xa54ff53a, 0x510e527f, 0x9b05688c,
                                 0x1f83d9ab, 0x5be0cd19};
  memcpy(s->h, iv, sizeof iv);
  s->total = 0;
  s->used = 0;
}

void vlm__sha256_update(vlm__sha256 *s, const void *data, size_t len) {
  const uint8_t *p = data;
  s->total += len;
  if (s->used) {
    size_t take = 64 - s->used < len ? 64 - s->used : len;
    memcpy(s->buf + s->used, p, take);
    s->used += take;
    p += take;
    len -= take;
    if (s->used < 64)
      return;
    BLOCKS(s->h, s->buf, 1);
    s->used = 0;
  }
  if (len >= 64) {
    BLOCKS(s->h, p, len / 64);
    p += len & ~(size_t)63;
    len &= 63;
  }
  memcpy(s->buf, p, len);
  s->used = len;
}

void vlm__sha256_final(vlm__sha256 *s, uint8_t digest[32], char *hex) {
  uint64_t bits = s->total * 8;
  uint8_t pad[72] = {0x80};
  size_t padlen = (s->used < 56 ? 56 : 120) - s->used;
  for (int i = 0; i < 8; i++)
    pad[padlen + i] = (uint8_t)(bits >> (56 - 8 * i));
  uint64_t total = s->total;
  vlm__sha256_update(s, pad, padlen + 8);
  s->total = total;
  for (int i = 0; i < 8; i++) {
    digest[4 * i] = (uint8_t)(s->h[i] >> 24);
    digest[4 * i + 1] = (uint8_t)(s->h[i] >> 16);
    digest[4 * i + 2] = (uint8_t)(s->h[i] >> 8);
    digest[4 * i + 3] = (uint8_t)s->h[i];
  }
  if (hex)
    for (int i = 0; i < 32; i++)
      snprintf(hex + 2 * i, 3, "%02x", digest[i]);
}
