/* vlm_npy.h - NumPy .npy files of embeddings: a rows x cols matrix of
 * little-endian float32 or float16, C order.
 *
 * The format (numpy.lib.format): the magic "\x93NUMPY", a version byte
 * pair (1.0: a 2-byte little-endian header length; 2.0 and 3.0: 4
 * bytes), then the header, a Python dict literal in ASCII (UTF-8 in 3.0)
 * padded with spaces and ended by '\n' so the data starts at a multiple
 * of 64 bytes:
 *
 *   {'descr': '<f4', 'fortran_order': False, 'shape': (1000, 512), }
 *
 * then rows * cols values.  clip-retrieval writes its img_emb/text_emb
 * files this way with descr '<f2'.
 *
 * The reader is strict: exactly the three keys, descr '<f4' or '<f2'
 * ('|' or '=' byte orders are refused: '=' depends on the writer's
 * machine), fortran_order False, a two-dimensional shape, and a file
 * whose size is exactly the header plus rows * cols values (a truncated
 * or padded file is refused).  Errors are VLM_EFORMAT, or
 * VLM_EUNSUPPORTED for a valid file vlmdb does not read (another dtype,
 * Fortran order, another number of dimensions), with a message naming
 * the file and the problem.
 */
#ifndef VLM_NPY_H
#define VLM_NPY_H

#include <stddef.h>
#include <stdint.h>

typedef enum { VLM_NPY_F16 = 2, VLM_NPY_F32 = 4 } vlm_npy_dtype;

/* The largest header vlmdb reads (numpy's own limit for reading is
 * 10,000 bytes unless told otherwise). */
#define VLM_NPY_MAX_HEADER 65536

typedef struct {
  vlm_npy_dtype dtype;   /* bytes per value, too */
  int64_t rows, cols;
  size_t data_offset;    /* where the values start */
} vlm_npy_header;

/* Parse the header from the first avail bytes of a file of file_size
 * bytes (avail may be less than file_size; VLM_EFORMAT if the header does
 * not fit in it).  name (may be NULL) prefixes messages. */
int vlm_npy_parse_header(const uint8_t *buf, size_t avail,
                         uint64_t file_size, const char *name,
                         vlm_npy_header *out);

/* Values as float32: n values of dtype from src into dst. */
void vlm_npy_to_f32(float *dst, const void *src, vlm_npy_dtype dtype,
                    size_t n);

/* A .npy file opened for reading rows. */
typedef struct vlm_npy vlm_npy;

int vlm_npy_open(const char *path, vlm_npy **out);
const vlm_npy_header *vlm_npy_info(const vlm_npy *npy);
/* Rows [first, first + n) as float32 into out (n * cols floats). */
int vlm_npy_read_rows(vlm_npy *npy, int64_t first, int64_t n, float *out);
void vlm_npy_close(vlm_npy *npy); /* accepts NULL */

/* Writing: float32 rows as a version 1.0 .npy of dtype, byte for byte
 * what numpy 1.24's np.save writes (a 128-byte header; float16 values
 * rounded to nearest, ties to even, out-of-range ones to infinities).
 * The file is written as PATH.tmp, its row count filled in at the end,
 * fsync'd and renamed by finish, so it appears whole or not at all;
 * abort (accepts NULL) removes it.  finish and abort free the writer
 * (finish also when it fails). */
typedef struct vlm_npy_writer vlm_npy_writer;
int vlm_npy_writer_open(const char *path, int64_t cols, vlm_npy_dtype dtype,
                        vlm_npy_writer **out);
int vlm_npy_writer_append(vlm_npy_writer *w, const float *rows, int64_t n);
int vlm_npy_writer_finish(vlm_npy_writer *w);
void vlm_npy_writer_abort(vlm_npy_writer *w);

/* A whole rows x cols matrix through a writer. */
int vlm_npy_write(const char *path, const float *data, int64_t rows,
                  int64_t cols, vlm_npy_dtype dtype);

#endif
