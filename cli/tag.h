/* tag.h - zero-shot tagging of a database's items (vlmdb tag, and
 * vlmdb ingest --tag-field): the model's text vectors of labels, prompt
 * ensembled, against the stored image vectors. */
#ifndef VLM_CLI_TAG_H
#define VLM_CLI_TAG_H

#include "vlm_clip.h"
#include "vlmdb.h"

#define VLM_CLI_TAG_MAX_TEMPLATES 64
#define VLM_CLI_TAG_MAX_LABELS 100000

typedef struct {
  const char *field;       /* declared text field for the label */
  const char *score_field; /* declared real field for its probability, or
                              NULL */
  const char *const *templates; /* with "{}"; none: "a photo of a {}." */
  int ntemplates;
  double min_score;        /* below it the item stays untagged */
  int retag;               /* redo items that have the field already */
  int batch;               /* items per vlm_db_write (0 = 256) */
  int quiet;               /* no progress */
  /* the labels (vlm_cli_tag_read_labels fills them) */
  char **labels;
  int nlabels;
} vlm_cli_tag_options;

typedef struct {
  long tagged, uncertain, already, no_vector;
  double seconds;
} vlm_cli_tag_result;

/* One label a line (trimmed; blank lines and lines starting with # are
 * skipped); VLM_EINVAL when there are none or a line is too long, or one
 * is repeated. */
int vlm_cli_tag_read_labels(const char *path, vlm_cli_tag_options *o);
void vlm_cli_tag_options_free(vlm_cli_tag_options *o);

/* The prompt-ensembled, normalized label vectors, out[nlabels * dim]
 * (malloc'd). */
int vlm_cli_tag_label_vectors(const vlm_clip *clip,
                              const vlm_cli_tag_options *o, float **out);

/* Tag the database.  VLM_EINVAL: a field that is not declared with the
 * right type. */
int vlm_cli_tag_run(vlm_db *db, const vlm_clip *clip,
                    const vlm_cli_tag_options *o, vlm_cli_tag_result *res);

#endif
