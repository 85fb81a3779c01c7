// Unlock throughput of one locked safetensors model (several F32 tensors, 64 MiB by
// default, locked by the CLI, on tmpfs): the JS package in Node (WebCrypto; WebGPU on
// each adapter dawn.node finds) and in headless Chromium (WebCrypto; WebGPU where the
// page has an adapter), and the native `deeplock unlock` of the same file, in one run.
// Median of several runs; every path's output is checked against the original.
//
//   DEEPLOCK_CLI=/path/to/deeplock node js/bench/unlock.mjs [--mib 64] [--runs 5]
//     [--gpu-runs 3] [--no-chromium] [--webgpu gles,vulkan,swiftshader]
//
// SwiftShader (Node's Vulkan one and Chromium's) runs this kernel at about 1 MB/s, so
// its WebGPU paths time one run on `--slow-mib` MiB of the model (default 4) unless
// `--slow-mib` is set to the model's size.
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import { cpus } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { safetensors } from "../dist/index.js";
import { gpus } from "../test/gpu.mjs";

const JS = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const ROOT = resolve(JS, "..");
const arg = (name, def) => {
  const i = process.argv.indexOf(`--${name}`);
  return i < 0 ? def : process.argv[i + 1];
};
const MIB = Number(arg("mib", 64));
const RUNS = Number(arg("runs", 5));
const GPU_RUNS = Number(arg("gpu-runs", 3));
const SLOW_MIB = Number(arg("slow-mib", 4));
const CLI = process.env.DEEPLOCK_CLI ? resolve(process.env.DEEPLOCK_CLI) : join(ROOT, "target/release/deeplock");

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const mibs = (bytes, ms) => bytes / (1 << 20) / (ms / 1000);
const run = (args, opts) => {
  const r = spawnSync(CLI, args, { encoding: "utf8", ...opts });
  if (r.status !== 0) throw new Error(`deeplock ${args.join(" ")}: ${r.stderr}`);
  return r;
};

// The model: tensors of 16 MiB (the last one the rest), random F32 bits.
const dir = mkdtempSync("/dev/shm/deeplock-bench-");
process.on("exit", () => rmSync(dir, { recursive: true, force: true }));
const total = MIB << 20;
const tensors = [];
for (let at = 0, i = 0; at < total; i++) {
  const n = Math.min(16 << 20, total - at);
  const data = new Uint8Array(n);
  for (let j = 0; j < n; j += 65536) crypto.getRandomValues(data.subarray(j, j + 65536));
  tensors.push({ name: `layers.${i}.weight`, data });
  at += n;
}
const header = {};
let off = 0;
for (const t of tensors) {
  header[t.name] = { dtype: "F32", shape: [t.data.length / 4], data_offsets: [off, off + t.data.length] };
  off += t.data.length;
}
let json = Buffer.from(JSON.stringify(header));
json = Buffer.concat([json, Buffer.alloc((8 - (json.length % 8)) % 8, 0x20)]);
const len = Buffer.alloc(8);
len.writeBigUInt64LE(BigInt(json.length));
const original = join(dir, "model.safetensors");
writeFileSync(original, Buffer.concat([len, json, ...tensors.map((t) => t.data)]));
const keyFile = join(dir, "model.key");
run(["keygen", "-o", keyFile]);
const lockedPath = join(dir, "locked.safetensors");
run(["lock", original, "-o", lockedPath, "--key-file", keyFile]);
const keyHex = readFileSync(keyFile, "utf8").trim();
const key = Uint8Array.from(Buffer.from(keyHex, "hex"));
const locked = new Uint8Array(readFileSync(lockedPath));
const check = (got, what) => {
  for (const [i, t] of got.entries()) {
    if (!Buffer.from(t).equals(Buffer.from(tensors[i].data.subarray(0, t.length)))) throw new Error(`${what}: tensor ${i} differs`);
  }
};

const rows = [];
const row = (path, where, ms, bytes, runs, note = "") => {
  rows.push({ path, where, ms: +ms.toFixed(1), mibs: +mibs(bytes, ms).toFixed(1), bytes, runs, note });
  console.error(`${path} | ${where} | ${ms.toFixed(1)} ms | ${mibs(bytes, ms).toFixed(1)} MiB/s${note ? ` | ${note}` : ""}`);
};

// Native: `deeplock unlock` of the same file, tmpfs to tmpfs, wall time of the process.
{
  const times = [];
  for (let i = 0; i < RUNS; i++) {
    const out = join(dir, `out${i}.safetensors`);
    const t0 = performance.now();
    run(["unlock", lockedPath, "-o", out, "--key-file", keyFile]);
    times.push(performance.now() - t0);
    if (i === 0 && !readFileSync(out).equals(readFileSync(original))) throw new Error("native unlock differs");
    rmSync(out);
  }
  row("native CLI `deeplock unlock`", "process, tmpfs", median(times), total, RUNS, `${cpus().length} threads available`);
}

// Node, WebCrypto.
{
  const times = [];
  for (let i = 0; i < RUNS; i++) {
    const t0 = performance.now();
    const m = await safetensors.load(locked, key);
    times.push(performance.now() - t0);
    if (i === 0) check(m.tensors.map((t) => t.bytes), "node webcrypto");
  }
  row("JS `safetensors.load`, WebCrypto", `Node ${process.version}`, median(times), total, RUNS);
}

/** A locked file of the first `mib` MiB of the model, for the slow adapters. */
const smallerCache = new Map();
function smaller(mib) {
  if (mib >= MIB) return { bytes: locked, size: total };
  if (!smallerCache.has(mib)) smallerCache.set(mib, makeSmaller(mib));
  return smallerCache.get(mib);
}
function makeSmaller(mib) {
  const sub = join(dir, `model-${mib}.safetensors`);
  const head = { "layers.0.weight": { dtype: "F32", shape: [(mib << 20) / 4], data_offsets: [0, mib << 20] } };
  let j = Buffer.from(JSON.stringify(head));
  j = Buffer.concat([j, Buffer.alloc((8 - (j.length % 8)) % 8, 0x20)]);
  const l = Buffer.alloc(8);
  l.writeBigUInt64LE(BigInt(j.length));
  writeFileSync(sub, Buffer.concat([l, j, tensors[0].data.subarray(0, mib << 20)]));
  run(["lock", sub, "-o", `${sub}.locked`, "--key-file", keyFile]);
  return { bytes: new Uint8Array(readFileSync(`${sub}.locked`)), size: mib << 20 };
}

// Node, WebGPU on each adapter.
const adapters = [];
const diag = { diagnostic: (s) => console.error(`webgpu: ${s}`) };
if (process.argv.includes("--webgpu")) process.env.DEEPLOCK_WEBGPU = arg("webgpu", "");
for (const { label, gpu } of await gpus(diag)) {
  const slow = label === "swiftshader";
  const { bytes, size } = slow ? smaller(SLOW_MIB) : { bytes: locked, size: total };
  let adapter = "";
  const opts = { gpu, onBackend: (b) => (adapter = b.detail) };
  check((await safetensors.load(bytes, key, opts)).tensors.map((t) => t.bytes), `node webgpu ${label}`); // warm: device, pipeline
  if (!adapter || !opts.gpu) throw new Error("no GPU path");
  const runs = slow ? 1 : GPU_RUNS;
  const times = [];
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    await safetensors.load(bytes, key, opts);
    times.push(performance.now() - t0);
  }
  adapters.push(`Node/dawn.node ${label}: ${adapter}`);
  row(`JS \`safetensors.load\`, WebGPU (${label})`, `Node ${process.version}, dawn.node`, median(times), size, runs, adapter);
}

// Headless Chromium: the same package, served over HTTP (WebGPU needs a secure context).
let browser = "";
if (!process.argv.includes("--no-chromium")) {
  const { chromium } = await import("playwright-core");
  const slowFile = smaller(SLOW_MIB);
  const files = { "/model": locked, "/slow": slowFile.bytes };
  const srv = http.createServer((q, s) => {
    if (files[q.url]) return s.end(Buffer.from(files[q.url]));
    if (q.url === "/") return s.end("<!doctype html><title>bench</title>");
    try {
      const body = readFileSync(join(JS, q.url));
      s.setHeader("content-type", q.url.endsWith(".js") ? "text/javascript" : "application/octet-stream");
      s.end(body);
    } catch {
      s.statusCode = 404;
      s.end();
    }
  });
  await new Promise((r) => srv.listen(0, "127.0.0.1", r));
  const b = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: ["--no-sandbox", "--enable-unsafe-webgpu", "--enable-features=Vulkan", "--use-vulkan=swiftshader", "--use-webgpu-adapter=swiftshader"],
  });
  browser = `Chromium ${b.version()} (headless, playwright-core)`;
  const page = await b.newPage();
  await page.goto(`http://127.0.0.1:${srv.address().port}/`);
  const res = await page.evaluate(async ({ keyHex, runs, gpuRuns }) => {
    const { safetensors, WebGpuUnlocker } = await import("/dist/index.js");
    const key = Uint8Array.from(keyHex.match(/../g).map((h) => parseInt(h, 16)));
    const model = new Uint8Array(await (await fetch("/model")).arrayBuffer());
    const slow = new Uint8Array(await (await fetch("/slow")).arrayBuffer());
    const time = async (bytes, opts, n) => {
      const t = [];
      for (let i = 0; i < n; i++) {
        const t0 = performance.now();
        await safetensors.load(bytes, key, opts);
        t.push(performance.now() - t0);
      }
      return t;
    };
    const first = async (bytes, opts) => {
      const m = await safetensors.load(bytes, key, opts);
      return Array.from(m.tensors[0].bytes.subarray(0, 64));
    };
    const out = { webcrypto: await time(model, {}, runs), head: await first(model, {}), ua: navigator.userAgent };
    const u = navigator.gpu ? await WebGpuUnlocker.create("auto") : undefined;
    if (u) {
      out.adapter = u.adapter;
      const opts = { gpu: "auto" };
      out.gpuHead = await first(slow, opts);
      out.gpu = await time(slow, opts, 1);
    } else {
      out.adapter = navigator.gpu ? "no adapter" : "no navigator.gpu";
    }
    return out;
  }, { keyHex, runs: RUNS, gpuRuns: GPU_RUNS });
  await b.close();
  srv.close();
  const want = Array.from(tensors[0].data.subarray(0, 64));
  if (JSON.stringify(res.head) !== JSON.stringify(want)) throw new Error("chromium webcrypto differs");
  row("JS `safetensors.load`, WebCrypto", browser, median(res.webcrypto), total, RUNS);
  if (res.gpu) {
    if (JSON.stringify(res.gpuHead) !== JSON.stringify(want)) throw new Error("chromium webgpu differs");
    adapters.push(`Chromium: ${res.adapter}`);
    row("JS `safetensors.load`, WebGPU", browser, median(res.gpu), slowFile.size, res.gpu.length, res.adapter);
  } else {
    adapters.push(`Chromium: ${res.adapter}`);
  }
}

const cpu = spawnSync("lscpu", [], { encoding: "utf8" }).stdout.match(/Model name:\s*(.*)/)?.[1] ?? cpus()[0].model;
const native = rows[0].ms;
console.log(`Machine: ${cpu}, ${cpus().length} cores; ${process.version}; ${browser || "no Chromium"}`);
console.log(`Adapters: ${adapters.join("; ") || "none"}`);
console.log(`Model: ${MIB} MiB safetensors, ${tensors.length} F32 tensors, locked by the CLI, on tmpfs; median of ${RUNS} runs (WebGPU: ${GPU_RUNS}; SwiftShader: 1 run of ${SLOW_MIB} MiB)\n`);
console.log("| path | where | MiB | runs | median ms | MiB/s | vs native |");
console.log("| --- | --- | --- | --- | --- | --- | --- |");
for (const r of rows) {
  const ratio = r.bytes === total ? `${(r.ms / native).toFixed(1)}x the time` : "(smaller input)";
  console.log(`| ${r.path} | ${r.where} | ${r.bytes >> 20} | ${r.runs} | ${r.ms} | ${r.mibs} | ${r === rows[0] ? "1" : ratio} |`);
}
