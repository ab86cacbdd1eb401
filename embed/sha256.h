/* sha256.h - SHA-256 (FIPS 180-4), for model identities (internal). */
#ifndef VLM_SHA256_H
#define VLM_SHA256_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
  uint32_t h[8];
  uint64_t total;       /* bytes hashed so far */
  uint8_t buf[64];
  size_t used;          /* bytes in buf */
} vlm__sha256;

void vlm__sha256_init(vlm__sha256 *s);
void vlm__sha256_update(vlm__sha256 *s, const void *data, size_t len);
/* Finish and write 32 bytes; hex (if not NULL) gets 64 hex digits + NUL. */
void vlm__sha256_final(vlm__sha256 *s, uint8_t digest[32], char *hex);

#endif
