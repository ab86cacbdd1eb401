"""report.py - the peer benchmark's results as one markdown table.

    /usr/bin/python3 bench/peers/report.py RESDIR SYSTEM...

For each SYSTEM reads RESDIR/SYSTEM.json (the result), SYSTEM.time
(/usr/bin/time -v), SYSTEM.disk (bytes under its work directory) or
SYSTEM.fail (one line: why it has no result), and RESDIR/meta.txt
(key=value lines run.sh wrote).  Prints markdown: one column per system,
one row per measure, then the notes and every sweep point.
"""
import json
import os
import re
import sys


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def fmt_int(x):
    return "{:,.0f}".format(x)


def at_recall(res, threads, target):
    pts = [p for p in res["sweep"] if p["threads"] == threads]
    ok = [p for p in pts if p["recall"] >= target]
    if not ok:
        best = max((p["recall"] for p in pts), default=0)
        return "– (best recall %.3f)" % best
    p = max(ok, key=lambda p: p["qps"])
    eff = "" if p["effort"] == 0 else " (%s %s)" % (res.get("effort_name", "effort"), p["effort"])
    return "%s%s" % (fmt_int(p["qps"]), eff)


def main():
    resdir, systems = sys.argv[1], sys.argv[2:]
    meta = {}
    for line in (read(os.path.join(resdir, "meta.txt")) or "").splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            meta[k] = v
    rows = []
    cols = {}
    for s in systems:
        fail = read(os.path.join(resdir, s + ".fail"))
        js = read(os.path.join(resdir, s + ".json"))
        if fail or not js:
            cols[s] = None, (fail or "no result").strip()
            continue
        res = json.loads(js)
        t = read(os.path.join(resdir, s + ".time")) or ""
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", t)
        res["_rss"] = int(m.group(1)) * 1024 if m else None
        d = read(os.path.join(resdir, s + ".disk"))
        res["_disk"] = int(d) if d and d.strip().isdigit() else None
        cols[s] = res, None

    n = int(meta.get("n", "0"))
    raw = n * 512 * 4

    def cell(s, f):
        res, why = cols[s]
        if res is None:
            return "n/a"
        try:
            return f(res)
        except (KeyError, TypeError, ValueError):
            return "n/a"

    def filt(sel):
        def f(res):
            fl = res["filtered"]
            if isinstance(fl, str):
                return "n/a"
            r = fl[str(sel)]
            return "%.3f / %s" % (r["recall"], fmt_int(r["qps"]))
        return f

    def disk(res):
        b = res["_disk"]
        return "%.1f (%.2f×)" % (b / 1e6, b / raw) if raw else "%.1f" % (b / 1e6)

    rows = [
        ("index", lambda r: r["index"]),
        ("ingest, items/s", lambda r: fmt_int(r["ingest_ips"])),
        ("build, s", lambda r: "%.1f" % r["build_s"]),
        ("QPS at recall@10 ≥ 0.95, 1 thread", lambda r: at_recall(r, 1, 0.95)),
        ("QPS at recall@10 ≥ 0.95, 2 threads", lambda r: at_recall(r, 2, 0.95)),
        ("QPS at recall@10 ≥ 0.99, 1 thread", lambda r: at_recall(r, 1, 0.99)),
        ("QPS at recall@10 ≥ 0.99, 2 threads", lambda r: at_recall(r, 2, 0.99)),
        ("filtered 1%: recall@10 / QPS", filt(1)),
        ("filtered 10%: recall@10 / QPS", filt(10)),
        ("filtered 50%: recall@10 / QPS", filt(50)),
        ("disk, MB (× raw vectors)", disk),
        ("peak RSS, MB", lambda r: "%.0f" % (r["_rss"] / 1e6)),
    ]
    out = []
    out.append("Peer benchmark, %s: %s × 512 clustered unit vectors (%s queries, "
               "seed %s), k = 10, recall@10 against exact search; %s; "
               "load average before %s, after %s."
               % (meta.get("date", "?"), fmt_int(n), meta.get("nq", "?"),
                  meta.get("seed", "?"), meta.get("machine", "?"),
                  meta.get("load_before", "?"), meta.get("load_after", "?")))
    out.append("")
    out.append("| | " + " | ".join(systems) + " |")
    out.append("|---|" + "---|" * len(systems))
    out.append("| version | " + " | ".join(
        cols[s][0]["version"] if cols[s][0] else "n/a: " + cols[s][1]
        for s in systems) + " |")
    for name, f in rows:
        out.append("| %s | %s |" % (name, " | ".join(cell(s, f) for s in systems)))
    out.append("")
    out.append("Peak RSS includes the %.0f MB of vectors every process loads "
               "from base.npy; disk is what each system left in its "
               "directory." % (raw / 1e6))
    out.append("")
    out.append("Notes:")
    for s in systems:
        res, why = cols[s]
        if res is None:
            out.append("- %s: n/a: %s" % (s, why))
            continue
        notes = [res.get("ingest_note")]
        if isinstance(res.get("filtered"), str):
            notes.append("filtered: " + res["filtered"])
        else:
            notes.append("filtered: " + res.get("filtered_note", ""))
        notes.append(res.get("threads_note"))
        if res.get("tuned_effort"):
            notes.append("the efSearch vlmdb tuned for this data by itself: %d"
                         % res["tuned_effort"])
        out.append("- %s: %s" % (s, "; ".join(x for x in notes if x)))
    out.append("")
    out.append("Every sweep point (%s: recall@10 / QPS):" % "effort")
    out.append("")
    out.append("| system | threads | points |")
    out.append("|---|---|---|")
    for s in systems:
        res, _ = cols[s]
        if res is None:
            continue
        for t in (1, 2):
            pts = [p for p in res["sweep"] if p["threads"] == t]
            out.append("| %s | %d | %s |" % (s, t, ", ".join(
                "%s: %.3f / %s" % (p["effort"], p["recall"], fmt_int(p["qps"]))
                for p in pts)))
    print("\n".join(out))


if __name__ == "__main__":
    main()
