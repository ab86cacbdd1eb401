/* fuzz_wordpiece.c - libFuzzer target: any bytes as text through BERT's
 * WordPiece tokenizer (chinese-clip-tiny's vocab.txt).  Run from the
 * repository root.  Checks: no crash, invalid UTF-8 only as VLM_EFORMAT,
 * and on success [CLS] first and [SEP] last, every id in the vocabulary,
 * at most max_len ids, the truncated ids a prefix of the untruncated
 * ones. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer_wp.h"
#include "vlm_error.h"

static vlm__wp_tok *tok;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  if (vlm__wp_tok_load("tests/fixtures/chinese-clip-tiny", &tok) != 0) {
    fprintf(stderr, "fuzz_wordpiece: %s (run from the repository root)\n", vlm_errmsg());
    exit(1);
  }
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char *text = malloc(size + 1);
  if (!text) return 0;
  memcpy(text, data, size);
  text[size] = 0;
  enum { BIG = 2048, SMALL = 12 };
  static __thread int32_t full[BIG], ids[SMALL];
  int nfull = 0, n = 0;
  int rc = vlm__wp_tokenize(tok, text, BIG, full, BIG, &nfull);
  int rc2 = vlm__wp_tokenize(tok, text, SMALL, ids, SMALL, &n);
  if (rc != rc2) abort();
  if (rc != 0 && rc != VLM_EFORMAT) abort();
  if (rc == 0) {
    int32_t cls = vlm__wp_tok_cls(tok), sep = vlm__wp_tok_sep(tok);
    int vocab = vlm__wp_tok_vocab_size(tok);
    if (n < 2 || n > SMALL || ids[0] != cls || ids[n - 1] != sep) abort();
    if (nfull < n || full[0] != cls || full[nfull - 1] != sep) abort();
    for (int i = 0; i < nfull; i++)
      if (full[i] < 0 || full[i] >= vocab) abort();
    for (int i = 1; i < n - 1; i++)
      if (ids[i] != full[i]) abort();
    if (nfull < SMALL && (n != nfull || memcmp(ids, full, sizeof *ids * (size_t)n))) abort();
  }
  free(text);
  return 0;
}
