/* fuzz_spm.c - libFuzzer target: any bytes as text through the SigLIP
 * (siglip-tiny) and Gemma (gemma-tiny) SentencePiece tokenizers.  Run
 * from the repository root.  Checks: no crash, invalid UTF-8 only as
 * VLM_EFORMAT, and on success every id in the vocabulary, at most max_len
 * ids, SigLIP's last id </s>, Gemma's first <bos>, and the truncated ids a
 * prefix of the untruncated ones (but for the last). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer_spm.h"
#include "vlm_error.h"

static vlm__spm_tok *siglip, *gemma;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  if (vlm__spm_tok_load("tests/fixtures/siglip-tiny", &siglip) != 0 ||
      vlm__spm_tok_load("tests/fixtures/gemma-tiny", &gemma) != 0) {
    fprintf(stderr, "fuzz_spm: %s (run from the repository root)\n", vlm_errmsg());
    exit(1);
  }
  return 0;
}

static void check(const vlm__spm_tok *tok, const char *text, int is_gemma) {
  enum { BIG = 2048, SMALL = 16 };
  static __thread int32_t full[BIG], ids[SMALL];
  int nfull = 0, n = 0;
  int rc = vlm__spm_tokenize(tok, text, BIG, full, BIG, &nfull);
  int rc2 = vlm__spm_tokenize(tok, text, SMALL, ids, SMALL, &n);
  if (rc != rc2) abort();
  if (rc != 0 && rc != VLM_EFORMAT) abort();
  if (rc != 0) return;
  int vocab = vlm__spm_tok_vocab_size(tok);
  if (n < 1 || n > SMALL || nfull < n) abort();
  for (int i = 0; i < nfull; i++)
    if (full[i] < 0 || full[i] >= vocab) abort();
  if (is_gemma) {
    if (ids[0] != 2 || full[0] != 2) abort(); /* add_bos_token */
    for (int i = 0; i < n; i++)
      if (ids[i] != full[i]) abort();
  } else {
    int32_t eos = vlm__spm_tok_eos(tok);
    if (ids[n - 1] != eos || full[nfull - 1] != eos) abort();
    for (int i = 0; i < n - 1; i++)
      if (ids[i] != full[i]) abort();
  }
  if (nfull < SMALL && (n != nfull || memcmp(ids, full, sizeof *ids * (size_t)n))) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char *text = malloc(size + 1);
  if (!text) return 0;
  memcpy(text, data, size);
  text[size] = 0;
  check(siglip, text, 0);
  check(gemma, text, 1);
  free(text);
  return 0;
}
