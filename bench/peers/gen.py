"""gen.py - the data every system of the peer benchmark reads.

    /usr/bin/python3 bench/peers/gen.py N DIR [NQ] [SEED]

Writes into DIR (all .npy, little-endian, C order):
  base.npy     N x 512 float32 unit vectors around N / 100 random unit
               centres (x = c + g, g ~ N(0, 1.5^2 I / 512), normalised:
               cos(x, c) ~ 0.55, the clustered data of bench/search.c)
  queries.npy  NQ x 512 float32, drawn the same way (default NQ 1000)
  sel.npy      N int32, uniform in 0..99, independent of the vectors:
               `sel < 1`, `sel < 10`, `sel < 50` select 1%, 10%, 50%
  gt.npy       NQ x 10 int32, exact top 10 by inner product (= cosine)
  gt_f1.npy, gt_f10.npy, gt_f50.npy
               NQ x 10 int32, exact top 10 among the items with sel < 1,
               10, 50 (-1 pads where fewer items match)
Item i has id i everywhere.  The same N, NQ and SEED give the same files.
"""
import os
import sys

import numpy as np

D = 512
K = 10
NOISE = 1.5
SELECTIVITIES = (1, 10, 50)


def clustered(rng, n, centres):
    out = np.empty((n, D), dtype=np.float32)
    step = 50000
    for a in range(0, n, step):
        m = min(step, n - a)
        which = rng.integers(0, len(centres), size=m)
        x = centres[which] + rng.standard_normal((m, D), dtype=np.float32) * (
            NOISE / np.sqrt(D))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[a:a + m] = x
    return out


def topk(sims, k):
    """Indices of the k largest per row, best first; -inf entries skipped."""
    k = min(k, sims.shape[1])
    part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(sims, part, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    idx = np.take_along_axis(part, order, axis=1).astype(np.int32)
    vals = np.take_along_axis(vals, order, axis=1)
    idx[~np.isfinite(vals)] = -1
    return idx


def main():
    if len(sys.argv) < 3:
        sys.exit("usage: gen.py N DIR [NQ] [SEED]")
    n, out = int(sys.argv[1]), sys.argv[2]
    nq = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
    seed = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(seed)
    ncentres = max(1, n // 100)
    centres = rng.standard_normal((ncentres, D), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    base = clustered(rng, n, centres)
    queries = clustered(rng, nq, centres)
    sel = rng.integers(0, 100, size=n).astype(np.int32)
    gts = {0: np.empty((nq, K), np.int32)}
    for s in SELECTIVITIES:
        gts[s] = np.empty((nq, K), np.int32)
    masks = {s: sel >= s for s in SELECTIVITIES}
    for a in range(0, nq, 100):
        sims = queries[a:a + 100] @ base.T
        gts[0][a:a + 100] = topk(sims, K)
        for s in SELECTIVITIES:
            f = sims.copy()
            f[:, masks[s]] = -np.inf
            gts[s][a:a + 100] = topk(f, K)
    np.save(os.path.join(out, "base.npy"), base)
    np.save(os.path.join(out, "queries.npy"), queries)
    np.save(os.path.join(out, "sel.npy"), sel)
    np.save(os.path.join(out, "gt.npy"), gts[0])
    for s in SELECTIVITIES:
        np.save(os.path.join(out, "gt_f%d.npy" % s), gts[s])
    print("gen: %d x %d base, %d queries, %d centres, seed %d -> %s"
          % (n, D, nq, ncentres, seed, out), file=sys.stderr)


if __name__ == "__main__":
    main()
