/* safetensors.h - a read-only safetensors file (internal to embed/).
 *
 * Format: an 8-byte little-endian header length N, N bytes of JSON
 * {"name": {"dtype": "F16", "shape": [..], "data_offsets": [b, e]}, ...,
 * "__metadata__": {..}}, then the data region; offsets are relative to its
 * start.  Opening validates everything the header claims before any tensor
 * is touched: the header fits in the file, every dtype is known, shapes are
 * non-negative and their byte size equals e - b, offsets lie inside the
 * data region, and no two tensors overlap.  A file that passes can be read
 * through the returned pointers without further checks.
 *
 * The file is memory-mapped; tensor data pointers live until
 * vlm__st_close.  An open file is read-only and may be shared by threads.
 */
#ifndef VLM_SAFETENSORS_H
#define VLM_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
  VLM__DT_F64, VLM__DT_F32, VLM__DT_F16, VLM__DT_BF16,
  VLM__DT_I64, VLM__DT_I32, VLM__DT_I16, VLM__DT_I8,
  VLM__DT_U64, VLM__DT_U32, VLM__DT_U16, VLM__DT_U8,
  VLM__DT_BOOL, VLM__DT_F8_E4M3, VLM__DT_F8_E5M2,
  VLM__DT_COUNT
} vlm__dtype;

#define VLM__ST_MAX_DIMS 8

typedef struct {
  const char *name;      /* owned by the file */
  vlm__dtype dtype;
  int ndim;
  int64_t shape[VLM__ST_MAX_DIMS];
  int64_t numel;
  const void *data;      /* inside the mapping (or the caller's buffer) */
  uint64_t nbytes;
  uint64_t offset;       /* from the start of the data region */
} vlm__st_tensor;

typedef struct vlm__safetensors {
  char *path;            /* for error messages */
  void *map;             /* NULL when parsed from a caller's buffer */
  size_t map_len;
  int n_tensors;
  vlm__st_tensor *tensors; /* sorted by name */
  char *names;           /* one block holding every name */
  char *quantization;    /* __metadata__'s "vlmdb.quantization", or NULL */
} vlm__safetensors;

/* Bytes per element and the file-format name of a dtype. */
int vlm__dtype_size(vlm__dtype dt);
const char *vlm__dtype_name(vlm__dtype dt);

/* Map and validate path.  Errors: VLM_EIO / VLM_ENOTFOUND (cannot open or
 * map), VLM_EFORMAT (bad header JSON or field), VLM_ECORRUPT (lengths or
 * offsets inconsistent with the file), VLM_EUNSUPPORTED (unknown dtype);
 * the message names the file and the tensor. */
int vlm__st_open(const char *path, vlm__safetensors **out);

/* Validate an in-memory image of a file (buf is not copied and must
 * outlive the result).  label names it in error messages.  Used by
 * vlm__st_open and by the fuzz target. */
int vlm__st_parse(const void *buf, size_t len, const char *label,
                  vlm__safetensors **out);

/* The tensor called name, or NULL. */
const vlm__st_tensor *vlm__st_find(const vlm__safetensors *st,
                                   const char *name);

void vlm__st_close(vlm__safetensors *st); /* accepts NULL */

#endif
