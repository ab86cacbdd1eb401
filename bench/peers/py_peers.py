"""py_peers.py - hnswlib, FAISS and sqlite-vec on the peer benchmark's data.

    /usr/bin/python3 bench/peers/py_peers.py SYSTEM DATA WORK OUT.json
        SYSTEM: hnswlib | faiss | sqlite-vec
        (sqlite-vec also needs VEC0 = the path of vec0.so, from npm)

Reads DATA/*.npy (gen.py), keeps its index files in WORK (run.sh measures
their size), writes one JSON result (the fields report.py reads).
Queries go in chunks of 50 through each library's batch call with its own
thread count (1 or 2); a measurement stops after SECONDS (environment,
default 3) or all queries, and recall@10 is over the queries it ran.
"""
import json
import os
import sys
import time

import numpy as np

K = 10
M = 32            # HNSW links per node (FAISS HNSW32: 2M on layer 0)
EF_CONSTRUCTION = 40  # FAISS's default, which vlmdb's HNSW32 uses
EFFORTS = (16, 32, 64, 128, 256, 512)
SECONDS = float(os.environ.get("SECONDS_PER_POINT", "3"))
CHUNK = 50


def recall(got, gt):
    found = want = 0
    for g, t in zip(got, gt):
        t = set(int(x) for x in t if x >= 0)
        want += len(t)
        found += len(t.intersection(int(x) for x in g))
    return found / want if want else 1.0


def measure(search, queries, gt, chunk=CHUNK):
    """search(chunk) -> ids (len(chunk) x K); returns (recall, QPS)."""
    got = []
    done = 0
    t0 = time.perf_counter()
    while done < len(queries):
        ids = search(queries[done:done + chunk])
        got.extend(ids)
        done += len(ids)
        if time.perf_counter() - t0 > SECONDS:
            break
    dt = time.perf_counter() - t0
    return recall(got, gt[:done]), done / dt


def filtered_rows(search_filtered, queries, data, chunk=CHUNK):
    out = {}
    for s in (1, 10, 50):
        gt = np.load(os.path.join(data, "gt_f%d.npy" % s))
        r, q = measure(lambda c: search_filtered(c, s), queries, gt, chunk)
        out[str(s)] = {"recall": r, "qps": q}
    return out


def pick_effort(sweep):
    """The lowest effort reaching recall 0.99 on one thread (else the
    best): what the filtered searches use."""
    one = [p for p in sweep if p["threads"] == 1]
    ok = [p for p in one if p["recall"] >= 0.99]
    return (min(ok, key=lambda p: p["effort"]) if ok
            else max(one, key=lambda p: p["recall"]))["effort"]


def run_hnswlib(data, work, base, queries, gt, sel):
    import hnswlib
    n = len(base)
    res = {"system": "hnswlib", "version": "0.6.2 (Debian python3-hnswlib)",
           "index": "HNSW M=%d efC=%d" % (M, EF_CONSTRUCTION)}
    idx = hnswlib.Index(space="ip", dim=base.shape[1])
    idx.init_index(max_elements=n, M=M, ef_construction=EF_CONSTRUCTION,
                   random_seed=1)
    t0 = time.perf_counter()
    idx.add_items(base, np.arange(n), num_threads=2)
    res["build_s"] = time.perf_counter() - t0
    res["ingest_ips"] = n / res["build_s"]
    res["ingest_note"] = "ingest = HNSW build, 2 threads"
    idx.save_index(os.path.join(work, "hnswlib.bin"))
    sweep = []
    for threads in (1, 2):
        for ef in EFFORTS:
            idx.set_ef(ef)
            r, q = measure(lambda c: idx.knn_query(c, k=K, num_threads=threads)[0],
                           queries, gt)
            sweep.append({"threads": threads, "effort": ef, "recall": r, "qps": q})
    res["sweep"] = sweep
    res["effort_name"] = "ef"
    res["filtered"] = "n/a: hnswlib 0.6.2 (Debian) has no filter in knn_query (0.7 added one)"
    return res


def run_faiss(data, work, base, queries, gt, sel):
    import faiss
    n, d = base.shape
    res = {"system": "faiss", "version": faiss.__version__ + " (Debian python3-faiss)",
           "index": "IndexHNSWFlat M=%d efC=%d" % (M, EF_CONSTRUCTION)}
    faiss.omp_set_num_threads(2)
    idx = faiss.IndexHNSWFlat(d, M, faiss.METRIC_INNER_PRODUCT)
    idx.hnsw.efConstruction = EF_CONSTRUCTION
    t0 = time.perf_counter()
    idx.add(base)
    res["build_s"] = time.perf_counter() - t0
    res["ingest_ips"] = n / res["build_s"]
    res["ingest_note"] = "ingest = HNSW build, 2 threads"
    faiss.write_index(idx, os.path.join(work, "faiss.index"))
    sweep = []
    for threads in (1, 2):
        faiss.omp_set_num_threads(threads)
        for ef in EFFORTS:
            # (1.7.3's SearchParametersHNSW.efSearch gives lower recall
            # than the index's own efSearch at the same value)
            idx.hnsw.efSearch = ef
            r, q = measure(lambda c: idx.search(c, K)[1], queries, gt)
            sweep.append({"threads": threads, "effort": ef, "recall": r, "qps": q})
    res["sweep"] = sweep
    res["effort_name"] = "efSearch"
    ef = pick_effort(sweep)
    faiss.omp_set_num_threads(1)
    idx.hnsw.efSearch = ef
    sels = {}
    for s in (1, 10, 50):
        ids = np.flatnonzero(sel < s).astype(np.int64)
        sels[s] = faiss.IDSelectorBatch(len(ids), faiss.swig_ptr(ids))
        sels[s]._ids = ids  # keep the array alive

    def search_f(c, s):
        p = faiss.SearchParametersHNSW()
        p.efSearch = ef
        p.sel = sels[s]
        return idx.search(c, K, params=p)[1]
    res["filtered"] = filtered_rows(search_f, queries, data)
    res["filtered_note"] = "IDSelectorBatch, efSearch %d, 1 thread" % ef
    return res


def run_sqlite_vec(data, work, base, queries, gt, sel):
    import sqlite3
    from concurrent.futures import ThreadPoolExecutor
    vec0 = os.environ.get("VEC0")
    if not vec0 or not os.path.exists(vec0):
        raise RuntimeError("vec0.so not found (npm sqlite-vec)")
    n, d = base.shape
    path = os.path.join(work, "vec.sqlite")

    def connect():
        c = sqlite3.connect(path, check_same_thread=False)
        c.enable_load_extension(True)
        c.load_extension(vec0[:-3] if vec0.endswith(".so") else vec0)
        c.enable_load_extension(False)
        return c
    con = connect()
    version = con.execute("select vec_version()").fetchone()[0]
    res = {"system": "sqlite-vec", "version": "%s (npm sqlite-vec, SQLite %s)"
           % (version, sqlite3.sqlite_version),
           "index": "vec0, exact scan"}
    con.execute("pragma journal_mode=wal")
    con.execute("pragma synchronous=normal")
    con.execute("create virtual table v using vec0(embedding float[%d] "
                "distance_metric=cosine, sel integer)" % d)
    t0 = time.perf_counter()
    step = 10000
    for a in range(0, n, step):
        with con:
            con.executemany(
                "insert into v(rowid, embedding, sel) values (?, ?, ?)",
                ((i, base[i].tobytes(), int(sel[i]))
                 for i in range(a, min(n, a + step))))
    res["ingest_ips"] = n / (time.perf_counter() - t0)
    res["build_s"] = 0.0
    res["ingest_note"] = "10,000 rows per transaction, WAL"
    conns = [con, connect()]
    q_knn = ("select rowid from v where embedding match ? and k = %d "
             "order by distance" % K)
    q_filt = ("select rowid from v where embedding match ? and k = %d "
              "and sel < ? order by distance" % K)

    def one(i, qv, s=None):
        c = conns[i % 2]
        if s is None:
            rows = c.execute(q_knn, (qv.tobytes(),)).fetchall()
        else:
            rows = c.execute(q_filt, (qv.tobytes(), s)).fetchall()
        return [r[0] for r in rows] + [-1] * (K - len(rows))

    sweep = []
    for threads in (1, 2):
        if threads == 1:
            def search(c):
                return [one(0, qv) for qv in c]
        else:
            pool = ThreadPoolExecutor(2)

            def search(c):
                return list(pool.map(lambda a: one(a[0], a[1]), enumerate(c)))
        # (exact scans are slow: small chunks keep to SECONDS_PER_POINT)
        r, q = measure(search, queries, gt, 10)
        sweep.append({"threads": threads, "effort": 0, "recall": r, "qps": q})
    res["sweep"] = sweep
    res["effort_name"] = "(none: exact)"
    res["filtered"] = filtered_rows(
        lambda c, s: [one(0, qv, s) for qv in c], queries, data, 10)
    res["filtered_note"] = "metadata column in the vec0 KNN query, 1 thread"
    return res


def main():
    if len(sys.argv) != 5:
        sys.exit("usage: py_peers.py hnswlib|faiss|sqlite-vec DATA WORK OUT.json")
    system, data, work, out = sys.argv[1:]
    os.makedirs(work, exist_ok=True)
    base = np.load(os.path.join(data, "base.npy"))
    queries = np.load(os.path.join(data, "queries.npy"))
    gt = np.load(os.path.join(data, "gt.npy"))
    sel = np.load(os.path.join(data, "sel.npy"))
    fn = {"hnswlib": run_hnswlib, "faiss": run_faiss,
          "sqlite-vec": run_sqlite_vec}[system]
    try:
        res = fn(data, work, base, queries, gt, sel)
    except Exception as e:  # the row says why, the others go on
        sys.exit("py_peers: %s: %s: %s" % (system, type(e).__name__,
                                            str(e).splitlines()[0] if str(e) else ""))
    res["n"] = len(base)
    with open(out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
