/* vlm_utf8.h - the one UTF-8 check of vlmdb: keys, captions and sources
 * on write, catalog cells on read and stored records in verify all hold
 * text to the same rule. */
#ifndef VLM_UTF8_H
#define VLM_UTF8_H

#include <stddef.h>

/* 1 if the n bytes at s are well-formed UTF-8 (no overlong forms, no
 * surrogates, nothing above U+10FFFF) without a NUL byte, else 0. */
int vlm_utf8_valid(const void *s, size_t n);

#endif
