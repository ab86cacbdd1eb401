/* merge.c - walking items in id order, and shard offsets (merge.h). */
#include "merge.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vlm_error.h"

int vlm_cli_walk_ids(vlm_db *db, unsigned flags, vlm_cli_item_fn fn,
                     void *arg) {
  uint64_t cursor = 0;
  do {
    char **keys = NULL;
    int n = 0, rc;
    uint64_t next = 0;
    if ((rc = vlm_db_scan(db, cursor, 512, &keys, &n, &next)))
      return rc;
    for (int i = 0; i < n && rc == 0; i++) {
      vlm_record *rec = NULL;
      rc = vlm_db_get2(db, keys[i], flags, &rec);
      if (rc == VLM_ENOTFOUND) { /* deleted since the scan */
        rc = 0;
        continue;
      }
      if (rc == 0)
        rc = fn(rec, arg);
      vlm_record_free(rec);
    }
    vlm_db_keys_free(keys, n);
    if (rc)
      return rc;
    cursor = next;
  } while (cursor != 0);
  return 0;
}

int vlm_cli_shard_offsets(int n, const int *shard, const uint64_t *id_space,
                          int *order, int64_t *offsets, char *why,
                          size_t whylen) {
  int shards = 0;
  for (int i = 0; i < n; i++) {
    order[i] = i;
    shards += shard[i] >= 0;
  }
  if (shards != 0 && shards != n) {
    snprintf(why, whylen, "some inputs are shards of a cluster and some "
             "are not");
    return -1;
  }
  if (shards) {
    /* insertion sort by shard index (n is small) */
    for (int i = 1; i < n; i++)
      for (int j = i; j > 0 && shard[order[j]] < shard[order[j - 1]]; j--) {
        int t = order[j];
        order[j] = order[j - 1];
        order[j - 1] = t;
      }
    for (int i = 1; i < n; i++)
      if (shard[order[i]] == shard[order[i - 1]]) {
        snprintf(why, whylen, "shard %d is given twice", shard[order[i]]);
        return -1;
      }
  }
  uint64_t offset = 0;
  for (int k = 0; k < n; k++) {
    int i = order[k];
    offsets[i] = (int64_t)offset;
    if (id_space[i] > (uint64_t)INT64_MAX / 2 - offset) {
      snprintf(why, whylen, "the id spaces add up past 2^62");
      return -1;
    }
    offset += id_space[i];
  }
  return 0;
}
