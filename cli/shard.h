/* shard.h - what the commands that build shards share: loading a cluster
 * map, choosing a shard, and atomic publishing (a database built as
 * DIR.tmp and renamed to DIR when it is complete). */
#ifndef VLM_CLI_SHARD_H
#define VLM_CLI_SHARD_H

#include <stddef.h>

#include "vlm_slot.h"

/* Load and validate cluster.json, printing every problem it has as
 * "vlmdb CMD: FILE: problem", one line each.  0, or -1 (printed). */
int vlm_cli_cluster_load(const char *cmd, const char *path,
                         vlm_cluster **out);

/* --shard I|auto against a loaded map: 0 with *shard, or -1 (printed). */
int vlm_cli_shard_choose(const char *cmd, const char *text,
                         const vlm_cluster *cluster, int *shard);

/* DIR.tmp, where a database published as DIR is built (-1: too long,
 * printed). */
int vlm_cli_publish_tmp(const char *cmd, const char *dir, char *buf,
                        size_t cap);

/* Rename tmp onto dir (which must not exist) and make the rename durable
 * (fsync of the parent directory).  0, or -1 (printed). */
int vlm_cli_publish(const char *cmd, const char *tmp, const char *dir);

/* 1 when path exists (anything), 0 when it does not. */
int vlm_cli_exists(const char *path);

#endif
