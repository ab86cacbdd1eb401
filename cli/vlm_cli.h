/* vlm_cli.h - the `vlmdb` command's subcommands and their shared helpers.
 *
 * Each subcommand is `int cmd_<name>(int argc, char **argv)` with argv[0]
 * the subcommand name; it returns the process exit status:
 * VLM_EXIT_OK, VLM_EXIT_RUNTIME (the work failed) or VLM_EXIT_USAGE (bad
 * flags).  Results go to stdout, progress and errors to stderr.
 */
#ifndef VLM_CLI_H
#define VLM_CLI_H

#include <stdio.h>

enum { VLM_EXIT_OK = 0, VLM_EXIT_RUNTIME = 1, VLM_EXIT_USAGE = 2 };

typedef int (*vlm_cmd_fn)(int argc, char **argv);

/* Subcommands, one file each in cli/. */
int cmd_init(int argc, char **argv);
int cmd_ingest(int argc, char **argv);
int cmd_search(int argc, char **argv);
int cmd_sheet(int argc, char **argv);
int cmd_verify(int argc, char **argv);
int cmd_recover(int argc, char **argv);
int cmd_salvage(int argc, char **argv);
int cmd_backup(int argc, char **argv);
int cmd_update(int argc, char **argv);
int cmd_config(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_get(int argc, char **argv);
int cmd_delete(int argc, char **argv);
int cmd_export(int argc, char **argv);
int cmd_reindex(int argc, char **argv);
int cmd_reembed(int argc, char **argv);
int cmd_embed(int argc, char **argv);
/* `vlmdb embed --catalog ... --out DIR` (cmd_embed_files.c): cmd_embed
 * hands its arguments over when --catalog is among them. */
int cmd_embed_files(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_quantize(int argc, char **argv);
int cmd_split(int argc, char **argv);
int cmd_cluster(int argc, char **argv);
/* `vlmdb cluster move` (cmd_cluster_move.c): cmd_cluster hands it argv
 * from the subcommand on. */
int cmd_cluster_move(int argc, char **argv);
int cmd_index(int argc, char **argv);
int cmd_merge(int argc, char **argv);
int cmd_explain(int argc, char **argv);
int cmd_tag(int argc, char **argv);

/* Print "vlmdb <cmd>: <message>\n" to stderr (printf format). */
void vlm_cli_error(const char *cmd, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Print a library error (code and vlm_errmsg() detail) for cmd. */
void vlm_cli_liberror(const char *cmd, int err);

/* The default model directory: $VLMDB_MODEL, else models/default beside
 * the binary's source tree, else the installed share directory. */
const char *vlm_cli_default_model(void);

/* Write s as a JSON string literal (quotes and escapes) to f. */
void vlm_cli_json_string(FILE *f, const char *s);

/* Crash points for the kill tests.  A command that writes in steps calls
 * vlm_cli_crash_point between them, naming the point ("created",
 * "switched", "copy:2" for its second batch of copy...).  The hook is NULL
 * in the vlmdb binary, so nothing outside a test (no flag, no
 * environment variable) can make a command stop there; the tests run the
 * command in a child process of their own with the hook set. */
extern void (*vlm_cli_crash_hook)(const char *point);
void vlm_cli_crash_point(const char *point);

#endif
