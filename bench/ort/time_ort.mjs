// time_ort.mjs - ONNX Runtime (npm onnxruntime-node, CPU, fp32) on the
// vision tower export_vit.py wrote: images/s at batch 1 and 16 with 1 and
// 2 intra-op threads, best and median of REPS runs, and one thread's CPU
// time per image (process CPU time with intraOpNumThreads 1), the number
// to set against bench/embed's "1 thread CPU time" on a busy machine.
//
// usage: node bench/ort/time_ort.mjs MODEL.onnx [REPS]
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";

const require = createRequire(import.meta.url);
const ort = require("onnxruntime-node");
const path = process.argv[2];
const reps = Number(process.argv[3] || 7);
if (!path) {
  console.error("usage: node bench/ort/time_ort.mjs MODEL.onnx [REPS]");
  process.exit(2);
}
// pixels and the PyTorch output, written beside the model by export_vit.py
const px = new Float32Array(readFileSync(path + ".pixels.f32").buffer.slice(0));
const ref = new Float32Array(readFileSync(path + ".embedding.f32").buffer.slice(0));
const S = Math.round(Math.sqrt(px.length / 16 / 3));
const D = ref.length / 16;

function cosine(a, b) {
  let ab = 0, aa = 0, bb = 0;
  for (let i = 0; i < a.length; i++) {
    ab += a[i] * b[i]; aa += a[i] * a[i]; bb += b[i] * b[i];
  }
  return ab / Math.sqrt(aa * bb);
}

const cpuMs = () => { const u = process.cpuUsage(); return (u.user + u.system) / 1e3; };
const stats = (t) => { const s = [...t].sort((x, y) => x - y); return [s[0], s[s.length >> 1]]; };

console.log(`onnxruntime-node ${require("onnxruntime-node/package.json").version}, ` +
            `${path}, ${S} px, dimension ${D}, ${reps} runs per cell (best / median)`);
const rows = [];
for (const threads of [1, 2]) {
  const session = await ort.InferenceSession.create(path, {
    intraOpNumThreads: threads, interOpNumThreads: 1,
    graphOptimizationLevel: "all", executionMode: "sequential",
  });
  for (const batch of [1, 16]) {
    const input = new ort.Tensor("float32", px.slice(0, batch * 3 * S * S), [batch, 3, S, S]);
    let out = await session.run({ pixels: input }); // warm-up
    if (batch === 16 && threads === 1) {
      let low = 1;
      for (let i = 0; i < 16; i++)
        low = Math.min(low, cosine(out.embedding.data.subarray(i * D, (i + 1) * D),
                                   ref.subarray(i * D, (i + 1) * D)));
      console.log(`lowest cosine to PyTorch's output: ${low.toFixed(7)}`);
    }
    const wall = [], cpu = [];
    for (let r = 0; r < reps; r++) {
      const t0 = performance.now(), c0 = cpuMs();
      out = await session.run({ pixels: input });
      wall.push((performance.now() - t0) / batch);
      cpu.push((cpuMs() - c0) / batch);
    }
    const [wb, wm] = stats(wall), [cb] = stats(cpu);
    rows.push({ threads, batch, best: 1e3 / wb, median: 1e3 / wm, cpu: cb });
  }
}
for (const r of rows)
  console.log(`${r.threads} thread${r.threads > 1 ? "s" : " "}, batch ${String(r.batch).padStart(2)}: ` +
              `${r.best.toFixed(1)} / ${r.median.toFixed(1)} images/s` +
              (r.threads === 1 ? `, CPU ${r.cpu.toFixed(1)} ms per image` : ""));
