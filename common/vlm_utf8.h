/* vlm_utf8.h - the one UTF-8 check of vlmdb: keys, captions and sources
 * on write, catalog cells on read and stored records in verify all hold
 * text to the same rule. */
#ifndef VLM_UTF8_H
#define VLM_UTF8_H

#include <stddef.h>
#include <stdint.h>

/* 1 if the n bytes at s are well-formed UTF-8 (no overlong forms, no
 * surrogates, nothing above U+10FFFF) without a NUL byte, else 0. */
int vlm_utf8_valid(const void *s, size_t n);

/* One strictly valid UTF-8 sequence at s[0..len) (len >= 1): its length
 * (1..4) and *cp, or 0 where the bytes are not (overlong forms,
 * surrogates, > U+10FFFF, a bad or missing continuation).  For the
 * tokenizers, which walk text code point by code point. */
size_t vlm_utf8_next(const void *s, size_t len, uint32_t *cp);

/* Write code point cp (<= U+10FFFF) as UTF-8 into out: 1..4 bytes. */
size_t vlm_utf8_put(char *out, uint32_t cp);

#endif
