/* files.h - file helpers the test programs share: whole files in and out,
 * and safetensors checkpoints taken apart (header JSON + data region) to
 * be edited and written back.  Failures fail the running cmocka test.
 *
 * Include after <cmocka.h>. */
#ifndef VLM_TEST_FILES_H
#define VLM_TEST_FILES_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

/* The whole file (malloc'd; *len its size). */
uint8_t *vlm_test_slurp(const char *path, size_t *len);
/* Write len bytes as the whole file. */
void vlm_test_spit(const char *path, const void *data, size_t len);

/* A safetensors checkpoint as header JSON + data region. */
typedef struct {
  json_t *header;
  uint8_t *data;
  size_t data_len;
} vlm_test_ckpt;

void vlm_test_ckpt_read(const char *path, vlm_test_ckpt *c);
/* The header padded with spaces to a multiple of 8, as the reference
 * writer does, so the data region starts aligned. */
void vlm_test_ckpt_write(const vlm_test_ckpt *c, const char *path);
void vlm_test_ckpt_free(vlm_test_ckpt *c);

/* An F16 checkpoint re-encoded, each tensor laid out again at a multiple
 * of its element size: F32 (exact), BF16 (each F16 value truncated to
 * BF16; F16's 11-bit mantissas are not all BF16-exact), or F32 holding
 * the BF16-truncated values. */
enum { VLM_TEST_F32 = 0, VLM_TEST_BF16 = 1, VLM_TEST_F32_OF_BF16 = 2 };
void vlm_test_ckpt_convert(const char *src, const char *dst, int mode);

#endif
