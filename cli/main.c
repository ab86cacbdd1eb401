/* main.c - the `vlmdb` binary: one table of subcommands. */
#include "vlm_cli.h"

#include <string.h>

typedef struct {
  const char *name;
  vlm_cmd_fn fn;
  const char *summary;
} vlm_command;

static const vlm_command commands[] = {
    {"init", cmd_init, "create a database bound to a model"},
    {"ingest", cmd_ingest, "bulk-load a catalog (JSONL, CSV/TSV, directory)"},
    {"search", cmd_search, "search by text, image or stored key"},
    {"sheet", cmd_sheet, "draw search results as a PNG contact sheet"},
    {"explain", cmd_explain, "draw where a picture matches a text (heat map)"},
    {"tag", cmd_tag, "fill a field by zero-shot classification"},
    {"eval", cmd_eval, "measure cross-modal Recall@K"},
    {"info", cmd_info, "show a database's counts and configuration"},
    {"get", cmd_get, "print one item by key"},
    {"delete", cmd_delete, "delete items by key"},
    {"update", cmd_update, "change an item's metadata or source, keep the rest"},
    {"config", cmd_config, "show or change a database's settings (kept images)"},
    {"export", cmd_export, "write the database back out as JSONL"},
    {"reindex", cmd_reindex, "rebuild the vector index with another kind"},
    {"reembed", cmd_reembed, "move a database to another model, atomically"},
    {"verify", cmd_verify, "check that a database's stores agree"},
    {"recover", cmd_recover, "finish crash recovery, rebuild what LMDB can"},
    {"salvage", cmd_salvage, "copy a damaged database's sound records out"},
    {"backup", cmd_backup, "write a consistent copy of a database"},
    {"serve", cmd_serve, "serve a database over TCP (Redis protocol)"},
    {"embed", cmd_embed, "print CLIP embeddings of texts and images"},
    {"tokenize", cmd_tokenize, "print CLIP token ids of texts"},
    {"train", cmd_train, "train or fine-tune a CLIP model"},
    {"quantize", cmd_quantize, "write an int8 or bf16 copy of a model, gated"},
    {"split", cmd_split, "cut a catalog into one catalog per shard"},
    {"cluster", cmd_cluster, "check shard databases against a cluster map"},
    {"index", cmd_index, "train, fill and merge one IVF index across shards"},
    {"merge", cmd_merge, "merge shard databases into one"},
};

#define NCOMMANDS (sizeof commands / sizeof commands[0])

static void usage(FILE *f) {
  fprintf(f, "usage: vlmdb <command> [options]   (vlmdb <command> --help)\n\n"
             "commands:\n");
  for (size_t i = 0; i < NCOMMANDS; i++)
    fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].summary);
  fprintf(f, "  %-10s %s\n", "help", "show this list");
}

int main(int argc, char **argv) {
  if (argc < 2) {
    usage(stderr);
    return VLM_EXIT_USAGE;
  }
  const char *name = argv[1];
  if (!strcmp(name, "help") || !strcmp(name, "--help") || !strcmp(name, "-h")) {
    if (argc > 2) {
      for (size_t i = 0; i < NCOMMANDS; i++)
        if (!strcmp(argv[2], commands[i].name)) {
          char *help_argv[] = {argv[2], "--help", NULL};
          return commands[i].fn(2, help_argv);
        }
    }
    usage(stdout);
    return VLM_EXIT_OK;
  }
  for (size_t i = 0; i < NCOMMANDS; i++)
    if (!strcmp(name, commands[i].name))
      return commands[i].fn(argc - 1, argv + 1);
  fprintf(stderr, "vlmdb: unknown command '%s'\n", name);
  usage(stderr);
  return VLM_EXIT_USAGE;
}
