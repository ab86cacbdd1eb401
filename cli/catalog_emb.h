/* catalog_emb.h - embeddings as files: clip-retrieval's output layout,
 * read as a catalog (catalog.c) and written by `vlmdb embed --out`.
 *
 *   DIR/img_emb/img_emb_{i}.npy      image vectors, rows x dim
 *   DIR/text_emb/text_emb_{i}.npy    text vectors, rows x dim
 *   DIR/metadata/metadata_{i}.jsonl  one JSON object per row
 *
 * Partition i (clip-retrieval zero-pads it to the digits of its partition
 * count) is the rows of metadata_{i}.jsonl, line n going with row n of
 * each .npy of the same i; either .npy may be absent (no vectors of that
 * kind).  A row of all zeros is an absent vector (vlmdb writes one for an
 * item without an image or a text).  The metadata object: "key" (else
 * "image_path" is the key), "caption", "image_path" (recorded as the
 * source, else "source" or "url"), and "meta", an object, or else every
 * other member (clip-retrieval flattens its metadata into columns).
 * clip-retrieval writes metadata as Parquet; vlmdb reads and writes the
 * same rows as JSONL.
 */
#ifndef VLM_CATALOG_EMB_H
#define VLM_CATALOG_EMB_H

#include <jansson.h>

#include "catalog.h"

typedef struct vlm__emb vlm__emb;

/* 1 when dir holds the layout (a metadata/ directory with at least one
 * metadata_*.jsonl), else 0. */
int vlm__emb_is_layout(const char *dir);

/* Open the layout in dir; every partition is checked first: each .npy's
 * header, rows equal to its metadata's lines, dimensions equal (and dim
 * when > 0), no .npy without its metadata file.  VLM_EFORMAT /
 * VLM_EUNSUPPORTED naming the file and the problem. */
int vlm__emb_open(const char *dir, int dim, vlm__emb **out);
void vlm__emb_close(vlm__emb *e); /* accepts NULL */
long vlm__emb_count(const vlm__emb *e);

/* The next row: 1 with either *obj (a new object with "key", "caption",
 * "source", "meta" as a JSONL catalog row has them) and *image_vec /
 * *text_vec (malloc'd dim floats, or NULL when absent), or row->error set
 * (a bad line or vector: row->line and row->message name it); 0 at the
 * end; negative VLM_E* on a read error. */
int vlm__emb_next(vlm__emb *e, vlm_catalog_row *row, json_t **obj,
                  float **image_vec, float **text_vec, int *dim);

/* `vlmdb embed --out`: one partition's three files.  name is the
 * partition's suffix ("0", "03").  Files are written under temporary
 * names and renamed by finish (the metadata last); abort removes them. */
typedef struct vlm__emb_writer vlm__emb_writer;
int vlm__emb_writer_open(const char *dir, const char *name, int dim,
                         int f16, vlm__emb_writer **out);
/* One row: vectors may be NULL (written as zeros); meta is the row's
 * metadata object (not consumed). */
int vlm__emb_writer_add(vlm__emb_writer *w, const float *image_vec,
                        const float *text_vec, json_t *meta);
int vlm__emb_writer_finish(vlm__emb_writer *w); /* frees w */
void vlm__emb_writer_abort(vlm__emb_writer *w); /* accepts NULL */

#endif
