/* opts.h - helpers shared by the database commands: numbers from flags,
 * opening a database and loading the model it was made with. */
#ifndef VLM_CLI_OPTS_H
#define VLM_CLI_OPTS_H

#include "vlm_clip.h"
#include "vlmdb.h"

/* Parse a decimal integer in [min, max] given to flag.  Prints a usage
 * error and returns -1 when it is not one. */
int vlm_cli_parse_long(const char *cmd, const char *flag, const char *text,
                       long min, long max, long *out);

/* --target image|text|any and --collapse T (a cosine in (0, 1]), as
 * search and sheet take them.  Print a usage error and return -1 when the
 * value is not one. */
int vlm_cli_parse_target(const char *cmd, const char *text, vlm_target *out);
int vlm_cli_parse_collapse(const char *cmd, const char *text, float *out);

/* Print "vlmdb CMD: message" and a pointer to --help; returns
 * VLM_EXIT_USAGE. */
int vlm_cli_usage_error(const char *cmd, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* After getopt_long returned '?': it has already said what was wrong
 * (unknown option, missing value); point to --help.  Returns
 * VLM_EXIT_USAGE. */
int vlm_cli_getopt_failed(const char *cmd);

/* Open the database in dir, printing the error if it fails.  0 or -1. */
int vlm_cli_open_db(const char *cmd, const char *dir, int readonly,
                    vlm_db **out);

/* Load the model a database was made with: model_dir if given, else the
 * directory the database recorded, else vlm_cli_default_model().  Refuses
 * (prints why, returns -1) a model whose identity differs from the
 * database's.  threads: compute threads (0 = all cores). */
/* "model", "apply" or "ignore" (an --exif argument or a database's
 * record) as vlm_clip_options.orientation; -1 for anything else. */
int vlm_cli_orientation(const char *name);

/* The options a database's model is loaded with: threads, and the image
 * orientation the database records (it enters the model id when it
 * applies, so every load must use it). */
vlm_clip_options vlm_cli_db_model_options(const vlm_db_info *info,
                                          int threads);

int vlm_cli_load_model(const char *cmd, vlm_db *db, const char *model_dir,
                       int threads, vlm_clip **out);

/* Print that the model in model_dir is not the one the database (db_dir,
 * or NULL to leave it unnamed) was made with, naming the directory the
 * database recorded. */
void vlm_cli_model_mismatch(const char *cmd, const char *model_dir,
                            const char *db_dir, const vlm_db_info *info);

/* Reset getopt so a command can be run more than once in one process. */
void vlm_cli_getopt_reset(void);

#endif
