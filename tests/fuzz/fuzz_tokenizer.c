/* fuzz_tokenizer.c - libFuzzer target: any bytes as text through the CLIP
 * tokenizer.  Run from the repository root (loads the clip-tiny vocab).
 * Checks: no crash, invalid UTF-8 only as VLM_EFORMAT, and on success
 * start token first, end token last, every id in the vocabulary, the
 * truncated ids a prefix of the untruncated ones. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer.h"
#include "vlm_error.h"

static vlm__tokenizer *tok;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  if (vlm__tokenizer_load("tests/fixtures/clip-tiny/vocab.json",
                          "tests/fixtures/clip-tiny/merges.txt", &tok) != 0) {
    fprintf(stderr, "fuzz_tokenizer: %s (run from the repository root)\n", vlm_errmsg());
    exit(1);
  }
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char *text = malloc(size + 1);
  memcpy(text, data, size);
  text[size] = 0;
  enum { BIG = 2048 };
  static __thread int32_t full[BIG], ids[77];
  int nfull = 0, n = 0;
  int rc = vlm__tokenize(tok, text, BIG, full, BIG, &nfull);
  int rc2 = vlm__tokenize(tok, text, 77, ids, 77, &n);
  if (rc != rc2) abort();
  if (rc != 0 && rc != VLM_EFORMAT) abort();
  if (rc == 0) {
    int32_t bos = vlm__tokenizer_bos(tok), eos = vlm__tokenizer_eos(tok);
    int vocab = vlm__tokenizer_vocab_size(tok);
    if (n < 2 || n > 77 || ids[0] != bos || ids[n - 1] != eos) abort();
    if (nfull < n || full[0] != bos || full[nfull - 1] != eos) abort();
    for (int i = 0; i < nfull; i++)
      if (full[i] < 0 || full[i] >= vocab) abort();
    for (int i = 1; i < n - 1; i++)
      if (ids[i] != full[i]) abort();
    if (nfull < BIG && nfull <= 77 && (n != nfull || memcmp(ids, full, sizeof *ids * n)))
      abort();
  }
  free(text);
  return 0;
}
