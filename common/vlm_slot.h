/* vlm_slot.h - hash slots and cluster maps: which shard holds a key.
 *
 * A key belongs to one of VLM_SLOTS hash slots, exactly as in Redis
 * Cluster: CRC16-XMODEM (polynomial 0x1021, initial value 0, no
 * reflection) of the key mod 16384, where a key holding a "{hash tag}"
 * hashes only the tag: the bytes between its first '{' and the first '}'
 * after it, when that is not empty.  So "{user1000}.following" and
 * "{user1000}.followers" share a slot, and a shard built offline holds
 * exactly the keys a Redis Cluster router sends it.
 *
 * A cluster map (cluster.json, cli/README.md documents it) assigns
 * disjoint slot ranges covering 0..16383 to shards 0..N-1:
 *
 *   {"shards": [{"id": 0, "slots": [[0, 8191]], "addresses": ["h1:7878"]},
 *               {"id": 1, "slots": [[8192, 16383]]}]}
 *
 * Its digest is XXH3-64 of the slot assignment alone (shard ids and their
 * ranges in canonical order), so addresses may change without making the
 * shards built for it look like another cluster's.
 *
 * Thread safety: a loaded vlm_cluster is read-only and may be shared.
 */
#ifndef VLM_SLOT_H
#define VLM_SLOT_H

#include <stddef.h>
#include <stdint.h>

#define VLM_SLOTS 16384
/* The most shards a map may have and the most ranges one shard may hold. */
#define VLM_CLUSTER_MAX_SHARDS 4096
#define VLM_CLUSTER_MAX_RANGES 256
/* The most addresses one shard may list, and the bytes of one. */
#define VLM_CLUSTER_MAX_ADDRESSES 16
#define VLM_CLUSTER_ADDRESS_MAX 255

/* CRC16-XMODEM of len bytes (Redis Cluster's crc16). */
uint16_t vlm_crc16(const void *data, size_t len);

/* The hash slot (0..16383) of a key of len bytes, hash tags honoured. */
int vlm_key_slot(const char *key, size_t len);

typedef struct {
  int first, last; /* inclusive, 0 <= first <= last < VLM_SLOTS */
} vlm_slot_range;

typedef struct {
  int id;                   /* 0..nshards-1 */
  int nranges;
  vlm_slot_range ranges[VLM_CLUSTER_MAX_RANGES]; /* sorted, merged */
  int naddresses;
  char **addresses;         /* "host:port", for routers (may be none) */
} vlm_cluster_shard;

typedef struct {
  int nshards;
  vlm_cluster_shard *shards; /* shards[i].id == i */
  char digest[17];           /* 16 hex digits */
  uint16_t owner[VLM_SLOTS]; /* the shard of each slot */
} vlm_cluster;

/* Parse and validate a cluster map from len bytes of JSON; name (the file
 * name) prefixes messages.  Refused with VLM_EFORMAT and a message naming
 * the problem: bad JSON, unknown members, ids not 0..N-1 once each, a
 * range outside 0..16383 or reversed, ranges that overlap (naming both and
 * their shards), slots no shard holds (naming the first gap). */
typedef void (*vlm_cluster_problem_fn)(void *arg, const char *problem);
/* problem (may be NULL) is called with every problem found, one line
 * each, not only the first (which vlm_errmsg() gives). */
int vlm_cluster_parse(const char *text, size_t len, const char *name,
                      vlm_cluster_problem_fn problem, void *arg,
                      vlm_cluster **out);
/* vlm_cluster_parse of a file (VLM_ENOTFOUND / VLM_EIO naming it). */
int vlm_cluster_load(const char *path, vlm_cluster_problem_fn problem,
                     void *arg, vlm_cluster **out);
void vlm_cluster_free(vlm_cluster *cluster); /* accepts NULL */

/* The shard holding key (len bytes). */
int vlm_cluster_shard_of(const vlm_cluster *cluster, const char *key,
                         size_t len);

/* The digest of a slot assignment: XXH3-64, as 16 hex digits into
 * out[17], of "I:a-b,c-d;" for each shard in id order with its sorted
 * ranges.  What vlm_cluster_parse stores in ->digest. */
void vlm_cluster_digest(const vlm_cluster_shard *shards, int nshards,
                        char out[17]);

/* Write ranges as "0-8191,10000-10010" into buf (cut at cap, always
 * terminated). */
void vlm_slot_ranges_format(const vlm_slot_range *ranges, int n, char *buf,
                            size_t cap);

/* The shard index of a task: text is a decimal index, or "auto" for the
 * first of $SLURM_ARRAY_TASK_ID, $JOB_COMPLETION_INDEX and $VLMDB_SHARD
 * that is set.  It must be in 0..nshards-1.  VLM_EINVAL with a message
 * naming the variable and its value otherwise (none set, not a number,
 * out of range). */
int vlm_shard_index(const char *text, int nshards, int *out);

/* Live moves (`vlmdb cluster move --live`, net/README.md "Moving slots
 * while the nodes serve").  While one is under way, a shard database may
 * hold more slots than the map gives its shard: the destination has taken
 * the range before the map gives it (its items arrive meanwhile), the
 * source still holds it after (until its items are deleted).  Such a
 * database records a marked digest, vlm_cluster_move_mark of the new
 * map's digest (XXH3-64 of "vlmdb-live-move " + digest, 16 hex digits
 * into out[17]), so a database a killed offline move left half-moved
 * (plain digest) is still told apart and refused. */
void vlm_cluster_move_mark(const char *digest, char out[17]);

/* Whether a shard database holding the slots held[0..nheld) under the
 * digest held_digest may be served as shard of map: 0 when it holds
 * exactly the slots the map gives the shard; 1 when it holds them and
 * more, as a live move leaves it (held_digest is the mark of map's digest,
 * or of the digest of map with the extra slots given to shard): a node
 * then serves only the map's slots and hides the items of the others;
 * -1 otherwise (not served).  Thread-safe. */
int vlm_cluster_held_ok(const vlm_cluster *map, int shard,
                        const vlm_slot_range *held, int nheld,
                        const char *held_digest);

#endif
