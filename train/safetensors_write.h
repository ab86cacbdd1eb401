/* safetensors_write.h - writing safetensors files (internal to embed/).
 *
 * The writer of the trainer's outputs: Hugging Face model.safetensors in
 * F32 or F16, and the trainer's own F32 checkpoints.  Files are written
 * to PATH.tmp, flushed to disk and renamed over PATH, so a crash leaves
 * either the old file or the new one, never a torn one.
 */
#ifndef VLM_SAFETENSORS_WRITE_H
#define VLM_SAFETENSORS_WRITE_H

#include <stdint.h>

typedef struct {
  const char *name;      /* ASCII without quotes or backslashes */
  int ndim;              /* 0 for a scalar */
  const int64_t *shape;
  const float *data;     /* product(shape) floats */
} vlm__stw_tensor;

/* Write n tensors in order, each as F16 (f16 = 1, rounded to nearest
 * even; out-of-range values become infinities) or F32.  meta: NULL or
 * key, value, ..., NULL string pairs for "__metadata__" (plain text; JSON
 * escaping is done here).  Errors: VLM_EIO / VLM_ENOSPACE naming path,
 * VLM_EINVAL for a bad name. */
int vlm__safetensors_write(const char *path, const vlm__stw_tensor *t, int n,
                           int f16, const char *const *meta);

/* IEEE binary16 bits of f, round to nearest even. */
uint16_t vlm__f32_to_f16(float f);

#endif
