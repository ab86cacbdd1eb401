/* fuzz_catalog.c - libFuzzer target for the catalog readers (JSONL, CSV,
 * TSV) and the metadata validation behind them.
 *
 * The first input byte picks the format and the declared fields; the rest
 * is the catalog file.  Every row must come back either good (a key, and
 * strings that are NUL-free and within their limits, vectors of the
 * declared dimension and finite) or with a reason and a message; the
 * reader must end (no row twice at one line), and reading the same file
 * twice must give the same rows.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../cli/catalog.h"

static const vlm_field fields[] = {{"category", VLM_FIELD_TEXT},
                                   {"year", VLM_FIELD_INT},
                                   {"price", VLM_FIELD_REAL}};

static uint64_t fnv(uint64_t h, const void *p, size_t n) {
  const unsigned char *b = p;
  for (size_t i = 0; i < n; i++) {
    h ^= b[i];
    h *= 1099511628211ull;
  }
  return h;
}

static uint64_t fnv_str(uint64_t h, const char *s) {
  return s ? fnv(h, s, strlen(s) + 1) : fnv(h, "\xff", 1);
}

/* Read every row; returns a digest of what came back. */
static uint64_t read_all(const char *path, const vlm_catalog_options *co,
                         long *nrows) {
  vlm_catalog *cat = NULL;
  uint64_t h = 1469598103934665603ull;
  *nrows = 0;
  if (vlm_catalog_open(path, co, &cat) != 0)
    return h ^ 1;
  vlm_catalog_row row = {0};
  int rc;
  long last_line = 0;
  while ((rc = vlm_catalog_next(cat, &row)) == 1) {
    (*nrows)++;
    if (row.line < last_line)
      abort(); /* lines only go forward */
    last_line = row.line;
    if (row.error) {
      if (!row.message[0])
        abort(); /* a bad row always says why */
    } else {
      if (!row.key || !*row.key)
        abort();
      if (row.image_vec || row.text_vec) {
        if (co->dim && row.dim != co->dim)
          abort();
        const float *vs[2] = {row.image_vec, row.text_vec};
        for (int v = 0; v < 2; v++)
          for (int i = 0; vs[v] && i < row.dim; i++)
            if (!isfinite(vs[v][i]))
              abort();
      }
      if (row.weight < 0 || row.weight > VLM_CATALOG_MAX_WEIGHT)
        abort();
    }
    h = fnv(h, &row.error, sizeof row.error);
    h = fnv_str(h, row.key);
    h = fnv_str(h, row.text);
    h = fnv_str(h, row.caption);
    h = fnv_str(h, row.meta_json);
    for (int i = 0; i < row.ntexts; i++)
      h = fnv_str(h, row.texts[i]);
    if (*nrows > 100000)
      break;
  }
  vlm_catalog_row_clear(&row);
  vlm_catalog_close(cat);
  return h ^ (uint64_t)(rc < 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1)
    return 0;
  static const char *ext[] = {".jsonl", ".csv", ".tsv"};
  int fmt = data[0] % 3;
  char path[64];
  snprintf(path, sizeof path, "/tmp/fuzz_catalog_%d%s", (int)getpid(),
           ext[fmt]);
  FILE *f = fopen(path, "wb");
  if (!f)
    return 0;
  fwrite(data + 1, 1, size - 1, f);
  fclose(f);
  vlm_catalog_options co = {0};
  co.images_root = "/nonexistent";
  if (data[0] & 4) {
    co.fields = fields;
    co.nfields = 3;
  }
  co.dim = (data[0] & 8) ? 4 : 0;
  long n1, n2;
  uint64_t a = read_all(path, &co, &n1);
  uint64_t b = read_all(path, &co, &n2);
  unlink(path);
  if (a != b || n1 != n2)
    abort(); /* the same file reads the same way */
  return 0;
}
