// js_peers.mjs - LanceDB and usearch (npm) on the peer benchmark's data.
//
//   node bench/peers/js_peers.mjs lancedb|usearch DATA WORK OUT.json
//
// Run from the directory npm installed them into (run.sh copies this file
// there).  Reads DATA/*.npy (gen.py), keeps its files in WORK (run.sh
// measures their size), writes one JSON result (the fields report.py
// reads).  A measurement stops after SECONDS_PER_POINT (default 3) or all
// queries; recall@10 is over the queries it ran.
import { createRequire } from "node:module";
import { readFileSync, writeFileSync, mkdirSync } from "node:fs";
import { join } from "node:path";

const require = createRequire(join(process.cwd(), "package.json"));
// (not require(): some packages do not export their package.json)
const versionOf = (pkg) => JSON.parse(readFileSync(
  join(process.cwd(), "node_modules", pkg, "package.json"), "utf8")).version;
const K = 10;
const EFFORTS = [16, 32, 64, 128, 256, 512];
const SECONDS = Number(process.env.SECONDS_PER_POINT || 3);
const [system, data, work, out] = process.argv.slice(2);
if (!out) {
  console.error("usage: js_peers.mjs lancedb|usearch DATA WORK OUT.json");
  process.exit(2);
}
mkdirSync(work, { recursive: true });

// A version 1 .npy of '<f4' or '<i4' in C order: {shape, data}.
function npy(name) {
  const buf = readFileSync(join(data, name));
  if (buf.toString("latin1", 0, 6) !== "\x93NUMPY" || buf[6] !== 1)
    throw new Error(`${name}: not a version 1 .npy file`);
  const hl = buf.readUInt16LE(8);
  const hdr = buf.toString("latin1", 10, 10 + hl);
  const shape = hdr.match(/'shape': \(([^)]*)\)/)[1].split(",")
    .filter((s) => s.trim()).map(Number);
  // a view, not a copy (peak RSS should hold the vectors once, as the
  // other systems' processes do); numpy pads the header so the values
  // start 64-byte aligned, and a whole-file read starts a fresh buffer
  const off = buf.byteOffset + 10 + hl, count = (buf.length - 10 - hl) / 4;
  const view = (T) => (off % 4 === 0 ? new T(buf.buffer, off, count)
    : new T(buf.buffer.slice(off, off + count * 4)));
  if (hdr.includes("'<f4'")) return { shape, data: view(Float32Array) };
  if (hdr.includes("'<i4'")) return { shape, data: view(Int32Array) };
  throw new Error(`${name}: neither <f4 nor <i4`);
}

const base = npy("base.npy"), queries = npy("queries.npy");
const sel = npy("sel.npy").data, gt = npy("gt.npy").data;
const [n, D] = base.shape, nq = queries.shape[0];
const qv = (j) => queries.data.subarray(j * D, (j + 1) * D);

function recall(got, truth, done) {
  let found = 0, want = 0;
  for (let j = 0; j < done; j++) {
    const g = new Set(got[j]);
    for (let a = 0; a < K; a++) {
      const t = truth[j * K + a];
      if (t < 0) continue;
      want++;
      if (g.has(t)) found++;
    }
  }
  return want ? found / want : 1;
}

// one(j) -> Promise<ids> or ids; `conc` queries in flight at once.
async function measure(one, truth, conc) {
  const got = new Array(nq);
  let next = 0;
  const t0 = performance.now();
  const lane = async () => {
    while (performance.now() - t0 < SECONDS * 1e3) {
      const j = next++;
      if (j >= nq) break;
      got[j] = await one(j);
    }
  };
  await Promise.all(Array.from({ length: conc }, lane));
  const dt = (performance.now() - t0) / 1e3;
  const done = Math.min(next, nq);
  return { recall: recall(got, truth, done), qps: done / dt };
}

// the fastest setting reaching recall 0.99 on one thread (else the best)
function pickFastest(sweep) {
  const one = sweep.filter((p) => p.threads === 1);
  const ok = one.filter((p) => p.recall >= 0.99);
  if (ok.length) return ok.reduce((a, b) => (b.qps > a.qps ? b : a)).effort;
  return one.reduce((a, b) => (b.recall > a.recall ? b : a)).effort;
}

async function runLancedb() {
  process.env.RUST_LOG ??= "error"; // one deprecation warning per query
  const lancedb = require("@lancedb/lancedb");
  const arrow = require("apache-arrow");
  const version = versionOf("@lancedb/lancedb");
  const res = { system: "lancedb", version: `${version} (npm)` };
  const db = await lancedb.connect(join(work, "lance"));
  const fields = [
    new arrow.Field("id", new arrow.Int32(), false),
    new arrow.Field("vector", new arrow.FixedSizeList(D,
      new arrow.Field("item", new arrow.Float32(), true)), false),
    new arrow.Field("sel", new arrow.Int32(), false),
  ];
  const schema = new arrow.Schema(fields);
  const batchOf = (a, m) => {
    const ids = new Int32Array(m);
    for (let i = 0; i < m; i++) ids[i] = a + i;
    const child = arrow.makeData({ type: new arrow.Float32(), length: m * D,
      data: base.data.subarray(a * D, (a + m) * D) });
    const vec = arrow.makeData({ type: fields[1].type, length: m, nullCount: 0, child });
    const st = arrow.makeData({ type: new arrow.Struct(fields), length: m, nullCount: 0,
      children: [
        arrow.makeData({ type: new arrow.Int32(), length: m, data: ids }),
        vec,
        arrow.makeData({ type: new arrow.Int32(), length: m, data: sel.subarray(a, a + m) }),
      ] });
    return new arrow.Table(new arrow.RecordBatch(schema, st));
  };
  const STEP = 10000;
  let t0 = performance.now();
  let table = null;
  for (let a = 0; a < n; a += STEP) {
    const b = batchOf(a, Math.min(STEP, n - a));
    if (!table) table = await db.createTable("items", b);
    else await table.add(b);
  }
  res.ingest_ips = n / ((performance.now() - t0) / 1e3);
  res.ingest_note = "createTable + add, 10,000 rows per call (Arrow batches)";
  t0 = performance.now();
  const opts = { distanceType: "cosine", numPartitions: 1 };
  await table.createIndex("vector", { config: lancedb.Index.hnswSq(opts) });
  await table.createIndex("sel", { config: lancedb.Index.btree() });
  res.build_s = (performance.now() - t0) / 1e3;
  res.index = "IVF_HNSW_SQ, 1 partition, cosine, default m/efConstruction; btree on sel";
  res.effort_name = "ef";
  // effort: ef, or "ef+rF" = ef with refineFactor F (re-ranks with the
  // full vectors: SQ alone stops short of recall 0.99)
  const search = (j, effort, where) => {
    const [ef, rf] = String(effort).split("+r").map(Number);
    // a copy: a subarray's offset into the shared buffer is not honoured
    let q = table.vectorSearch(qv(j).slice()).distanceType("cosine").limit(K).ef(ef)
      .select(["id"]);
    if (rf) q = q.refineFactor(rf);
    if (where) q = q.where(where);
    return q.toArray().then((rows) => rows.map((r) => r.id));
  };
  res.sweep = [];
  for (const threads of [1, 2])
    for (const ef of [...EFFORTS, "64+r4", "128+r4", "256+r4"]) {
      const r = await measure((j) => search(j, ef), gt, threads);
      res.sweep.push({ threads, effort: ef, ...r });
    }
  const ef = pickFastest(res.sweep);
  res.filtered = {};
  for (const s of [1, 10, 50]) {
    const truth = npy(`gt_f${s}.npy`).data;
    res.filtered[s] = await measure((j) => search(j, ef, `sel < ${s}`), truth, 1);
  }
  res.filtered_note = `where('sel < S') (prefilter), ef ${ef}, 1 query in flight`;
  res.threads_note = "threads = queries in flight (Lance's own pool uses every core)";
  return res;
}

async function runUsearch() {
  const usearch = require("usearch");
  const version = versionOf("usearch");
  const M = 32, EFC = 40;
  const res = { system: "usearch", version: `${version} (npm)`,
    index: `HNSW connectivity ${M}, expansion_add ${EFC}, f32, ip` };
  const make = (efs) => new usearch.Index({ dimensions: D, metric: usearch.MetricKind.IP,
    quantization: usearch.ScalarKind.F32, connectivity: M, expansion_add: EFC,
    expansion_search: efs });
  let index = make(64);
  const keys = new BigUint64Array(n);
  for (let i = 0; i < n; i++) keys[i] = BigInt(i);
  let t0 = performance.now();
  index.add(keys, base.data, 2);
  res.build_s = (performance.now() - t0) / 1e3;
  res.ingest_ips = n / res.build_s;
  res.ingest_note = "ingest = HNSW build, 2 threads";
  const path = join(work, "usearch.index");
  index.save(path);
  res.effort_name = "expansion_search";
  res.sweep = [];
  const CH = 50;
  for (const threads of [1, 2])
    for (const ef of EFFORTS) {
      // expansion_search is fixed at construction: a new handle per value
      index = make(ef);
      index.load(path);
      const got = [];
      let done = 0;
      const t1 = performance.now();
      while (done < nq && performance.now() - t1 < SECONDS * 1e3) {
        const m = Math.min(CH, nq - done);
        const r = index.search(queries.data.subarray(done * D, (done + m) * D), K, threads);
        for (let j = 0; j < m; j++)
          got.push(Array.from(r.keys.subarray(j * K, j * K + Number(r.counts[j])), Number));
        done += m;
      }
      const dt = (performance.now() - t1) / 1e3;
      res.sweep.push({ threads, effort: ef, recall: recall(got, gt, done), qps: done / dt });
    }
  res.filtered = "n/a: usearch's JavaScript binding has no filtered search";
  return res;
}

let res;
try {
  res = system === "lancedb" ? await runLancedb()
    : system === "usearch" ? await runUsearch() : null;
} catch (e) {
  console.error(`js_peers: ${system}: ${String(e.message || e).split("\n")[0]}`);
  process.exit(1);
}
if (!res) {
  console.error(`js_peers: unknown system ${system}`);
  process.exit(2);
}
res.n = n;
writeFileSync(out, JSON.stringify(res, null, 1));
