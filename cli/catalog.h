/* catalog.h - reading the catalogs `vlmdb ingest` loads, and writing the
 * JSONL lines `vlmdb export` produces (which ingest reads back).
 *
 * Formats (cli/README.md documents them for users):
 *   JSONL  one object a line: {"key": "...", "image": "path", "text": "...",
 *          "meta": {...}} plus optional "caption" (stored, not embedded),
 *          "source", "vector" / "image_vector" / "text_vector" (precomputed
 *          vectors), "thumbnail" (base64 JPEG) and "kept_image" (base64:
 *          the image file's bytes, kept with the item and embedded instead
 *          of reading "image"; what `vlmdb export` writes of an item that
 *          keeps them).
 *   CSV    RFC 4180, a header row naming the columns: key, image, text,
 *   TSV    caption, source, vector, image_vector, text_vector, thumbnail,
 *          kept_image, meta.NAME (one per metadata field); TSV is the same
 *          with tabs.
 *   DIR    a directory of .jpg/.jpeg/.png images, key = path relative to the
 *          directory, text from a sidecar NAME.txt (or NAME.jpg.txt).
 *
 * A catalog is read one row at a time.  A row the catalog itself shows to
 * be bad (bad JSON, wrong types, a bad key) comes back with `error` set and
 * a message naming the reason; the caller reports and skips it.  Files are
 * not opened here (a missing image is the ingest pipeline's finding).
 *
 * Not thread safe: one reader per vlm_catalog.
 */
#ifndef VLM_CATALOG_H
#define VLM_CATALOG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "vlmdb.h"

typedef enum {
  VLM_CATALOG_AUTO = 0, /* by extension: .jsonl .ndjson .json .csv .tsv
                           .tab, or a directory */
  VLM_CATALOG_JSONL,
  VLM_CATALOG_CSV,
  VLM_CATALOG_TSV,
  VLM_CATALOG_DIR,
  VLM_CATALOG_EMBEDDINGS /* a directory in clip-retrieval's layout
                            (catalog_emb.h): precomputed vectors; AUTO
                            takes a directory with metadata/ for one */
} vlm_catalog_format;

/* Why a row was skipped; names (vlm_skip_reason_name) appear in the ingest
 * summary and its --json output. */
typedef enum {
  VLM_SKIP_NONE = 0,
  VLM_SKIP_SYNTAX,        /* "bad-syntax": unparsable JSON or CSV record */
  VLM_SKIP_KEY,           /* "bad-key": missing, empty, too long, not UTF-8 */
  VLM_SKIP_TYPE,          /* "wrong-type": a field of the wrong type */
  VLM_SKIP_EMPTY,         /* "no-content": no image, text or vector */
  VLM_SKIP_VECTOR,        /* "bad-vector": wrong dimension or not numbers */
  VLM_SKIP_MISSING_FILE,  /* "missing-file": image not found/readable */
  VLM_SKIP_CORRUPT_IMAGE, /* "corrupt-image": image does not decode */
  VLM_SKIP_DUPLICATE,     /* "duplicate-key": key seen earlier in the run */
  VLM_SKIP_EXISTS,        /* "exists": key already stored (no --upsert) */
  VLM_SKIP_REJECTED,      /* "rejected": the database refused the item */
  VLM_SKIP_OTHER_SHARD,   /* "other-shard": the key's hash slot belongs to
                             another shard of the database's cluster */
  VLM_SKIP_NREASONS
} vlm_skip_reason;

const char *vlm_skip_reason_name(vlm_skip_reason reason);

typedef struct {
  vlm_catalog_format format;
  const char *images_root;  /* base of relative image paths; NULL = the
                               catalog file's directory */
  const vlm_field *fields;  /* declared metadata fields (type checks and
                               CSV value conversion); may be NULL */
  int nfields;
  int dim;                  /* dimension precomputed vectors must have;
                               0 = not checked */
} vlm_catalog_options;

/* The largest "weight" a row may give. */
#define VLM_CATALOG_MAX_WEIGHT 1000

/* One catalog row.  All strings are malloc'd and owned by the row. */
typedef struct {
  long line;            /* line where the record starts (1-based); for a
                           directory, the entry's ordinal */
  char *key;
  char *image;          /* path to read (resolved, absolute) or NULL; a
                           URI (scheme://...) is kept as written */
  char *source;         /* source to record: "source", else image */
  char *text;           /* text to embed, or NULL */
  char *caption;        /* caption to store (the text, or "caption") */
  char *meta_json;      /* compact JSON object, or NULL */
  char **texts;         /* JSONL "texts": other captions of the item
                           (translations, paraphrases), for training */
  int ntexts;
  double weight;        /* JSONL "weight": how often the trainer draws the
                           item, relative to 1; 0 when absent (= 1) */
  float *image_vec;     /* precomputed vectors (dim floats) or NULL */
  float *text_vec;
  int dim;              /* length of the precomputed vectors */
  uint8_t *thumb;       /* decoded "thumbnail", or NULL */
  size_t thumb_len;
  uint8_t *kept;        /* decoded "kept_image" (the item's image file
                           bytes: stored with it, and read instead of the
                           file at image), or NULL */
  size_t kept_len;
  vlm_skip_reason error;/* VLM_SKIP_NONE, or why the row is bad */
  char message[320];    /* the reason in words, when error is set */
} vlm_catalog_row;

typedef struct vlm_catalog vlm_catalog;

/* Open a catalog.  A CSV/TSV header is read here: an unknown column or a
 * missing key column is VLM_EFORMAT.  opts may be NULL. */
int vlm_catalog_open(const char *path, const vlm_catalog_options *opts,
                     vlm_catalog **out);
void vlm_catalog_close(vlm_catalog *cat); /* accepts NULL */

vlm_catalog_format vlm_catalog_get_format(const vlm_catalog *cat);

/* Number of rows, by a separate pass over the file (blank lines and the
 * header not counted); -1 if it cannot be known. */
long vlm_catalog_count(vlm_catalog *cat);

/* Read the next row into *row, which must be zeroed before its first use
 * (what it held is cleared first).  Returns 1 with a row (check
 * row->error), 0 at the end, or a negative VLM_E* code on a read error. */
int vlm_catalog_next(vlm_catalog *cat, vlm_catalog_row *row);

/* Free a row's contents and zero it.  Accepts a zeroed row. */
void vlm_catalog_row_clear(vlm_catalog_row *row);

/* Mark row as skipped for reason, with a message; returns 1 (a row). */
int vlm_catalog_row_error(vlm_catalog_row *row, vlm_skip_reason reason,
                          const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Format a stored item as one JSONL catalog line (no newline), the inverse
 * of reading: with_vectors adds image_vector, text_vector and thumbnail so
 * the line rebuilds the item without its files or the model; a record
 * read with its kept image bytes (VLM_GET_IMAGE) also gets "kept_image".
 * Returns a malloc'd string or NULL (out of memory). */
char *vlm_catalog_format_record(const vlm_record *rec, int with_vectors);

/* Base64 (RFC 4648, with padding).  encode returns a malloc'd string;
 * decode returns 0 or VLM_EFORMAT and a malloc'd buffer. */
char *vlm_base64_encode(const void *data, size_t len);
int vlm_base64_decode(const char *text, uint8_t **data, size_t *len);

/* Join a catalog path onto base (when relative) and make it absolute and
 * lexically normal ("." and ".." removed).  Returns a malloc'd string. */
char *vlm_catalog_resolve_path(const char *base, const char *path);

#endif
