/* vlm_eval.h - cross-modal retrieval quality of a vlmdb database:
 * Recall@K for text->image and image->text, median and mean rank, and how
 * much the ANN index loses against exact search.
 *
 * Ground truth is a set of (image key, text key) pairs: the image vector of
 * the first key belongs with the text vector of the second.  Without pairs,
 * every item that has both vectors is paired with itself.  A key may
 * appear in several pairs (COCO: five captions per image); a query's hit is
 * then any of its partners.
 *
 * Rank rule (ties count against the ground truth): for a query q with
 * ground-truth set G over the candidate set C (every stored vector of the
 * other modality),
 *     best    = max over g in G of score(q, g)
 *     rank(q) = 1 + #{ c in C \ G : score(q, c) >= best }
 * and q is a hit at K when rank(q) <= K.  A model that scores everything
 * alike therefore gets no credit.  Scores are cosine similarities
 * (inner products of the stored unit vectors), computed exactly.
 *
 * The model's own score.  The ranks above depend only on the order of the
 * cosines, which every family's score keeps (logit = exp(logit_scale) *
 * cosine + logit_bias), so they are the same under the model's logits.
 * What the family changes is how sure the model is: given the model's
 * probabilities (opts->probabilities, vlm_clip_probabilities of the loaded
 * model: SigLIP's sigmoid of each pair's logit, CLIP's and Chinese-CLIP's
 * softmax over all candidates), each query's ground-truth probability is
 * the probability of its best-scoring partner, and gt_probability is its
 * mean over the queries.
 *
 * The index columns run the database's own search (vlm_db_search) per
 * query: recall_index is Recall@K when the ranking comes from the ANN index
 * instead of exact scores, and index_recall is |ANN top K n exact top K| /
 * |exact top K|, the classic ANN recall.
 *
 * Thread safety: vlm_db_eval only reads the database and may run beside
 * other readers and a writer (it sees the items as they are while it runs).
 */
#ifndef VLM_EVAL_H
#define VLM_EVAL_H

#include <stddef.h>
#include <stdint.h>

#include "vlmdb.h"

#define VLM_EVAL_T2I 1u    /* text queries, image candidates */
#define VLM_EVAL_I2T 2u    /* image queries, text candidates */
#define VLM_EVAL_MAX_KS 16

typedef struct {
  const char *image_key;
  const char *text_key;
} vlm_eval_pair;

typedef struct {
  const int *ks;          /* cut-offs, each 1..VLM_DB_MAX_K; NULL = {1, 5, 10} */
  int nks;                /* at most VLM_EVAL_MAX_KS */
  unsigned directions;    /* VLM_EVAL_T2I | VLM_EVAL_I2T; 0 = both */
  const vlm_eval_pair *pairs; /* NULL = items with both vectors */
  int npairs;
  int sample;             /* evaluate a random sample of this many queries
                             per direction; 0 = all */
  uint64_t seed;          /* for the sample */
  int ef_search;          /* index search parameters; 0 = defaults */
  int nprobe;
  int skip_index;         /* 1 = exact ranks only (no per-query searches) */
  /* The model's probabilities for one query's cosines to n candidates,
   * into probs[n] (0 or a negative VLM_E* code); NULL = gt_probability is
   * not measured.  Called from the evaluating thread with
   * probabilities_arg. */
  int (*probabilities)(void *arg, const float *cosines, int n, float *probs);
  void *probabilities_arg;
} vlm_eval_options;

typedef struct {
  int k;
  double recall;          /* Recall@K from exact scores */
  double recall_index;    /* Recall@K from the ANN index's ranking */
  double index_recall;    /* ANN top K vs exact top K */
} vlm_eval_at;

/* The rank histogram's buckets: rank_hist[i] counts the queries whose
 * ground truth ranked at most vlm_eval_rank_bounds[i] (and above the
 * bound before it); the last bucket, ranks above the last bound. */
#define VLM_EVAL_RANK_BUCKETS 12
extern const int vlm_eval_rank_bounds[VLM_EVAL_RANK_BUCKETS - 1];

typedef struct {
  int64_t queries;        /* queries evaluated */
  int64_t candidates;     /* vectors ranked per query */
  int nks;
  vlm_eval_at at[VLM_EVAL_MAX_KS];
  double median_rank;
  double mean_rank;
  double index_ms_per_query; /* vlm_db_search with the index */
  double exact_ms_per_query; /* vlm_db_search with exact = 1 */
  double gt_probability;  /* mean ground-truth probability under the
                             model's own score; -1 when not measured */
  int64_t rank_hist[VLM_EVAL_RANK_BUCKETS]; /* exact ranks, bucketed */
} vlm_eval_direction;

typedef struct {
  unsigned directions;    /* the directions that were evaluated */
  int64_t pairs;          /* usable pairs */
  int64_t skipped_pairs;  /* pairs naming a missing key or vector */
  vlm_eval_direction t2i;
  vlm_eval_direction i2t;
} vlm_eval_result;

/* Evaluate db.  VLM_EINVAL for bad options, VLM_ENOTFOUND when no pair is
 * usable, else errors from the database. */
int vlm_db_eval(vlm_db *db, const vlm_eval_options *opts,
                vlm_eval_result *out);

/* Read a pairs file: JSONL, one object a line,
 *   {"image": "IMAGE_KEY", "text": "TEXT_KEY"}   or
 *   {"image": "IMAGE_KEY", "text": ["TEXT_KEY", ...]}
 * Blank lines are skipped.  VLM_EFORMAT names the line at fault.  The
 * strings live in one allocation: free with vlm_eval_pairs_free. */
int vlm_eval_pairs_load(const char *path, vlm_eval_pair **pairs, int *npairs);
void vlm_eval_pairs_free(vlm_eval_pair *pairs, int npairs); /* accepts NULL */

/* ---- the metric as pure functions (used by vlm_db_eval; testable alone) */

/* Rank of the ground truth for one query (see the rule above).
 * scores[nc]: the query's score for each candidate; gt[ngt]: distinct
 * candidate indices of its ground truth (ngt >= 1). */
int64_t vlm_eval_rank(const float *scores, int64_t nc, const int64_t *gt,
                      int ngt);

/* Recall@K for each K (recall[i] for ks[i]), median rank (the mean of the
 * two middle ranks when n is even) and mean rank of n ranks.  n >= 1. */
void vlm_eval_summarize(const int64_t *ranks, int64_t n, const int *ks,
                        int nks, double *recall, double *median_rank,
                        double *mean_rank);

/* |approx[0..min(k,na)) n exact[0..min(k,ne))| / min(k, ne) over keys;
 * 1 when exact is empty. */
double vlm_eval_overlap(const char *const *approx, int napprox,
                        const char *const *exact, int nexact, int k);

#endif
