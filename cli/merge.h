/* merge.h - what `vlmdb index` and `vlmdb merge` share: walking a
 * database's items in id order, and the global ids of merged shards.
 *
 * Global ids.  Shard I's items keep their own ids moved up by the shard's
 * offset: global id = offset_I + local id, where the shards are ordered by
 * the shard index their manifests record (or as given, for databases that
 * are not shards of a map) and offset_I is the sum of the id spaces
 * (next_id - 1) of the shards before it.  A shard therefore learns its
 * offset only when every shard before it is built, and it never needs to:
 * its index part holds its own ids and records its shard index and id
 * space beside it (PART.json), and `vlmdb index merge` and `vlmdb merge`
 * apply the same offsets when they combine parts and databases.  The ids
 * are dense (1 .. the sum of the id spaces, holes only where a shard
 * deleted or replaced items), as a filtered search's bitmap wants. */
#ifndef VLM_CLI_MERGE_H
#define VLM_CLI_MERGE_H

#include <stdint.h>

#include "vlmdb.h"

/* Visit every live item of db in id order (rec->id increasing), each
 * read with vlm_db_get2's flags (VLM_GET_IMAGE: with its kept image
 * bytes).  A non-zero return from fn stops the walk and is returned; a
 * library error is returned as its VLM_E* code (vlm_errmsg() set). */
typedef int (*vlm_cli_item_fn)(const vlm_record *rec, void *arg);
int vlm_cli_walk_ids(vlm_db *db, unsigned flags, vlm_cli_item_fn fn,
                     void *arg);

/* One shard's place among n: shard indexes (-1 for a database that is
 * not a shard) and id spaces in, the order and offsets out (order[k] is
 * the input position of the k-th shard, offsets[i] the offset of input
 * i).  Shard indexes must be all -1 (the given order is kept) or all
 * distinct and >= 0.  0, or -1 with the reason in why. */
int vlm_cli_shard_offsets(int n, const int *shard, const uint64_t *id_space,
                          int *order, int64_t *offsets, char *why,
                          size_t whylen);

#endif
