/* fuzz_npy.c - libFuzzer target: any bytes as a .npy file.
 *
 * The header parser (common/vlm_npy.c) must accept or refuse every input
 * with a code and a message, never crash or read past the buffer.  When
 * it accepts, the header's promise must hold: the values start inside
 * the buffer, rows * cols * dtype bytes fill it exactly, and every value
 * can be widened to float32; the same bytes written to a file read back
 * through vlm_npy_open / vlm_npy_read_rows equal, and writing the matrix
 * again as float32 and reading it gives the same floats bit for bit
 * (NaNs aside).  The seed corpus holds the files NumPy wrote for the
 * tests (tests/fixtures/npy).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vlm_error.h"
#include "vlm_npy.h"

static char dir[64] = "/tmp/vlm-fuzz-npy-XXXXXX";

static void cleanup(void) {
  char path[128];
  snprintf(path, sizeof path, "%s/in.npy", dir);
  unlink(path);
  snprintf(path, sizeof path, "%s/out.npy", dir);
  unlink(path);
  rmdir(dir);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static int ready;
  if (!ready) {
    if (!mkdtemp(dir))
      abort();
    atexit(cleanup);
    ready = 1;
  }
  vlm_npy_header h;
  int rc = vlm_npy_parse_header(data, size, size, "fuzz", &h);
  if (rc) {
    if (rc >= 0 || !vlm_errmsg()[0])
      abort(); /* a refusal is a code with a message */
    return 0;
  }
  if (h.data_offset > size || h.rows < 0 || h.cols < 0 ||
      (h.dtype != VLM_NPY_F16 && h.dtype != VLM_NPY_F32))
    abort();
  size_t n = (size_t)h.rows * (size_t)h.cols;
  if (h.cols && (size_t)h.rows > (size - h.data_offset) / (size_t)h.cols)
    abort();
  if (n * (size_t)h.dtype != size - h.data_offset)
    abort(); /* exactly the rest of the file */
  if (n > (1u << 20))
    return 0; /* valid, but too big to round-trip quickly */
  float *a = malloc((n + 1) * sizeof *a), *b = malloc((n + 1) * sizeof *b);
  if (!a || !b)
    abort();
  vlm_npy_to_f32(a, data + h.data_offset, h.dtype, n);
  char in[128], out[128];
  snprintf(in, sizeof in, "%s/in.npy", dir);
  snprintf(out, sizeof out, "%s/out.npy", dir);
  FILE *f = fopen(in, "wb");
  if (!f || fwrite(data, 1, size, f) != size || fclose(f))
    abort();
  vlm_npy *npy;
  if (vlm_npy_open(in, &npy))
    abort(); /* the file parses as the buffer did */
  if (vlm_npy_read_rows(npy, 0, h.rows, b))
    abort();
  vlm_npy_close(npy);
  if (n && memcmp(a, b, n * sizeof *a))
    abort();
  if (vlm_npy_write(out, a, h.rows, h.cols, VLM_NPY_F32))
    abort();
  if (vlm_npy_open(out, &npy) || vlm_npy_info(npy)->rows != h.rows ||
      vlm_npy_info(npy)->cols != h.cols ||
      vlm_npy_read_rows(npy, 0, h.rows, b))
    abort();
  vlm_npy_close(npy);
  for (size_t i = 0; i < n; i++)
    if (memcmp(&a[i], &b[i], sizeof a[i]) && !(isnan(a[i]) && isnan(b[i])))
      abort();
  free(a);
  free(b);
  return 0;
}
