/* files.c - see files.h. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "files.h"

#include "kernels.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

uint8_t *vlm_test_slurp(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f)
    fail_msg("%s: cannot open", path);
  fseek(f, 0, SEEK_END);
  *len = (size_t)ftell(f);
  fseek(f, 0, SEEK_SET);
  uint8_t *b = malloc(*len ? *len : 1);
  assert_non_null(b);
  assert_int_equal(fread(b, 1, *len, f), *len);
  fclose(f);
  return b;
}

void vlm_test_spit(const char *path, const void *data, size_t len) {
  FILE *f = fopen(path, "wb");
  if (!f)
    fail_msg("%s: cannot create", path);
  assert_int_equal(fwrite(data, 1, len, f), len);
  assert_int_equal(fclose(f), 0);
}

void vlm_test_ckpt_read(const char *path, vlm_test_ckpt *c) {
  size_t len;
  uint8_t *b = vlm_test_slurp(path, &len);
  assert_true(len >= 8);
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; i--)
    hlen = hlen << 8 | b[i];
  assert_true(hlen <= len - 8);
  json_error_t err;
  c->header = json_loadb((const char *)b + 8, (size_t)hlen, 0, &err);
  if (!c->header)
    fail_msg("%s: header: %s", path, err.text);
  c->data_len = len - 8 - hlen;
  c->data = malloc(c->data_len ? c->data_len : 1);
  assert_non_null(c->data);
  memcpy(c->data, b + 8 + hlen, c->data_len);
  free(b);
}

void vlm_test_ckpt_write(const vlm_test_ckpt *c, const char *path) {
  char *h = json_dumps(c->header, JSON_COMPACT);
  assert_non_null(h);
  size_t text = strlen(h), hlen = (text + 7) & ~(size_t)7;
  size_t len = 8 + hlen + c->data_len;
  uint8_t *b = malloc(len);
  assert_non_null(b);
  for (int i = 0; i < 8; i++)
    b[i] = (uint8_t)((uint64_t)hlen >> (8 * i));
  memcpy(b + 8, h, text);
  memset(b + 8 + text, ' ', hlen - text);
  memcpy(b + 8 + hlen, c->data, c->data_len);
  vlm_test_spit(path, b, len);
  free(b);
  free(h);
}

void vlm_test_ckpt_free(vlm_test_ckpt *c) {
  json_decref(c->header);
  free(c->data);
}

void vlm_test_ckpt_convert(const char *src, const char *dst, int mode) {
  vlm_test_ckpt c;
  vlm_test_ckpt_read(src, &c);
  const char *key;
  json_t *v;
  size_t cap = c.data_len * 2 + 64, used = 0;
  uint8_t *out = calloc(1, cap);
  assert_non_null(out);
  json_object_foreach(c.header, key, v) {
    if (!strcmp(key, "__metadata__"))
      continue;
    json_t *off = json_object_get(v, "data_offsets");
    size_t b = (size_t)json_integer_value(json_array_get(off, 0));
    size_t e = (size_t)json_integer_value(json_array_get(off, 1));
    size_t n = (e - b) / 2;
    used = (used + 3) & ~(size_t)3;
    size_t start = used;
    for (size_t i = 0; i < n; i++) {
      uint16_t h = (uint16_t)(c.data[b + 2 * i] | c.data[b + 2 * i + 1] << 8);
      float f;
      vlm__f16_to_f32(&f, &h, 1);
      uint32_t bits;
      memcpy(&bits, &f, 4);
      if (mode == VLM_TEST_BF16) {
        uint16_t hi = (uint16_t)(bits >> 16);
        memcpy(out + used, &hi, 2);
        used += 2;
      } else {
        if (mode == VLM_TEST_F32_OF_BF16)
          bits &= 0xffff0000u;
        memcpy(out + used, &bits, 4);
        used += 4;
      }
    }
    json_object_set_new(v, "dtype",
                        json_string(mode == VLM_TEST_BF16 ? "BF16" : "F32"));
    json_array_set_new(off, 0, json_integer((json_int_t)start));
    json_array_set_new(off, 1, json_integer((json_int_t)used));
  }
  free(c.data);
  c.data = out;
  c.data_len = used;
  vlm_test_ckpt_write(&c, dst);
  vlm_test_ckpt_free(&c);
}
