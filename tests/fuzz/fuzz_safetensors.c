/* fuzz_safetensors.c - libFuzzer target: any bytes as a safetensors file.
 *
 * Stage 1, the header parser: no crash; on success every tensor lies in
 * the data region with nbytes = numel * dtype size, tensors are sorted by
 * name and findable, none overlap, and every byte of each can be read.
 * Stage 2, the model loader: a file that parses is loaded as CLIP weights
 * twice, beside a tiny config.json (shapes checked against it) and with no
 * config (original-layout geometry inferred from shapes); either may fail,
 * but only with an error code and message, never a crash or leak.  The
 * seed corpus holds valid tiny checkpoints in both layouts so the fuzzer
 * starts from files that reach the binding code. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "model.h"
#include "safetensors.h"
#include "vlm_error.h"

static char with_config[64] = "/tmp/vlm-fuzz-st-XXXXXX";
static char without_config[64] = "/tmp/vlm-fuzz-st-XXXXXX";
static int memfd = -1;

/* The geometry of the seed files (tests/fuzz/corpus/fuzz_safetensors). */
static const char tiny_config[] =
    "{\"projection_dim\": 4,"
    " \"text_config\": {\"hidden_size\": 8, \"intermediate_size\": 16,"
    "  \"num_hidden_layers\": 1, \"num_attention_heads\": 2,"
    "  \"max_position_embeddings\": 4, \"vocab_size\": 10,"
    "  \"bos_token_id\": 8, \"eos_token_id\": 9},"
    " \"vision_config\": {\"hidden_size\": 8, \"intermediate_size\": 16,"
    "  \"num_hidden_layers\": 1, \"num_attention_heads\": 2,"
    "  \"image_size\": 4, \"patch_size\": 2}}";

static void cleanup(void) {
  char path[128];
  snprintf(path, sizeof path, "%s/config.json", with_config);
  unlink(path);
  rmdir(with_config);
  rmdir(without_config);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  if (!mkdtemp(with_config) || !mkdtemp(without_config)) {
    perror("fuzz_safetensors: mkdtemp");
    exit(1);
  }
  char path[128];
  snprintf(path, sizeof path, "%s/config.json", with_config);
  FILE *f = fopen(path, "w");
  if (!f || fputs(tiny_config, f) < 0 || fclose(f)) {
    perror(path);
    exit(1);
  }
  atexit(cleanup);
  memfd = memfd_create("fuzz-safetensors", 0);
  if (memfd < 0) {
    perror("fuzz_safetensors: memfd_create");
    exit(1);
  }
  return 0;
}

static void check_parsed(const vlm__safetensors *st, const uint8_t *data,
                         size_t size) {
  const uint8_t *end = data + size;
  volatile uint8_t sink = 0;
  for (int i = 0; i < st->n_tensors; i++) {
    const vlm__st_tensor *t = &st->tensors[i];
    const uint8_t *p = t->data;
    if (p < data || p > end || t->nbytes > (uint64_t)(end - p))
      abort();
    if ((uint64_t)t->numel * (uint64_t)vlm__dtype_size(t->dtype) != t->nbytes)
      abort();
    if (t->nbytes) {
      sink ^= p[0];
      sink ^= p[t->nbytes - 1];
    }
    if (i && strcmp(st->tensors[i - 1].name, t->name) >= 0)
      abort();
    if (vlm__st_find(st, t->name) != t)
      abort();
    /* overlaps, checked naively for small files */
    if (st->n_tensors <= 64)
      for (int j = 0; j < i; j++) {
        const vlm__st_tensor *u = &st->tensors[j];
        if (t->nbytes && u->nbytes && t->offset < u->offset + u->nbytes &&
            u->offset < t->offset + t->nbytes)
          abort();
      }
  }
  (void)sink;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  vlm__safetensors *st = NULL;
  int rc = vlm__st_parse(data, size, "fuzz", &st);
  if (rc >= 0 && rc != 0)
    abort();
  if (rc) {
    if (st || !*vlm_errmsg())
      abort();
    return 0;
  }
  check_parsed(st, data, size);
  vlm__st_close(st);

  /* Stage 2: as a model file, through a path. */
  if (ftruncate(memfd, 0) || lseek(memfd, 0, SEEK_SET) != 0 ||
      write(memfd, data, size) != (ssize_t)size)
    return 0;
  char path[64];
  snprintf(path, sizeof path, "/proc/self/fd/%d", memfd);
  const char *dirs[2] = {with_config, without_config};
  for (int d = 0; d < 2; d++) {
    vlm_clip *clip = NULL;
    rc = vlm__clip_load_weights(dirs[d], path, NULL, &clip);
    /* No tokenizer files in the dirs, so a load never fully succeeds;
     * reaching that error means the weights bound cleanly. */
    if (rc == 0 || clip || !*vlm_errmsg())
      abort();
  }
  return 0;
}
