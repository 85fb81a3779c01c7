// TF.js models for the tests, built with @tensorflow/tfjs itself (no downloads): a layers
// model saved by TF.js, a graph model written by hand as tfjs-converter writes one, both
// written as a model.json and weight files split into shards (weights straddle files),
// and an HTTP server for a directory.
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import { extname, join, normalize, sep } from "node:path";
import * as tf from "@tensorflow/tfjs";

export { tf };

/** Uniform floats in [-1, 1) from the test's generator. */
export function floats(r, n) {
  return Float32Array.from({ length: n }, () => r.int(1 << 30) / (1 << 29) - 1);
}

/** IEEE half-precision bits of `x`, rounded to nearest even (as numpy's astype(float16)). */
export function f16bits(x) {
  const u = new Uint32Array(new Float32Array([x]).buffer)[0];
  const sign = (u >>> 16) & 0x8000;
  const exp = (u >>> 23) & 0xff;
  let mant = u & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  let shift = 13;
  let h;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    shift = 14 - e;
    h = mant >>> shift;
  } else {
    h = (e << 10) | (mant >>> 13);
  }
  const rem = mant & ((1 << shift) - 1);
  const half = 1 << (shift - 1);
  if (rem > half || (rem === half && h & 1)) h++;
  return sign | h;
}

/**
 * Stores `values` (float32) as tfjs-converter does for `quantization`: `uint8`/`uint16`
 * affine (q = round((w - min) / scale)) or `float16`. Returns the bytes and the entry.
 */
export function quantize(values, dtype) {
  if (dtype === "float16") {
    return { bytes: new Uint8Array(Uint16Array.from(values, f16bits).buffer), quantization: { dtype } };
  }
  const levels = dtype === "uint8" ? 255 : 65535;
  let min = Infinity;
  let max = -Infinity;
  for (const v of values) {
    min = Math.min(min, v);
    max = Math.max(max, v);
  }
  const scale = (max - min) / levels || 1;
  const q = (dtype === "uint8" ? Uint8Array : Uint16Array).from(values, (v) => Math.round((v - min) / scale));
  return { bytes: new Uint8Array(q.buffer), quantization: { dtype, scale, min } };
}

/**
 * Writes `model` (a model.json object without weightsManifest) into `dir`: `groups` is
 * a list of [{ spec, bytes }] (one list per manifest group), each group's bytes split
 * into files of `shard` bytes, named as tfjs-converter names them. Returns the files'
 * paths and the model.json text.
 */
export function writeModel(dir, model, groups, shard, { indent } = {}) {
  mkdirSync(dir, { recursive: true });
  const manifest = [];
  const files = [];
  groups.forEach((weights, g) => {
    const data = Buffer.concat(weights.map((w) => Buffer.from(w.bytes)));
    const n = Math.max(1, Math.ceil(data.length / shard));
    const paths = [];
    for (let i = 0; i < n; i++) {
      const path = `group${g + 1}-shard${i + 1}of${n}.bin`;
      writeFileSync(join(dir, path), data.subarray(i * shard, (i + 1) * shard));
      paths.push(path);
      files.push(path);
    }
    manifest.push({ paths, weights: weights.map((w) => w.spec) });
  });
  const text = JSON.stringify({ ...model, weightsManifest: manifest }, null, indent) + (indent ? "\n" : "");
  writeFileSync(join(dir, "model.json"), text);
  return { files, text };
}

/** The artifacts TF.js loads from a model directory (any: original or locked). */
export function readArtifacts(dir) {
  const json = JSON.parse(readFileSync(join(dir, "model.json"), "utf8"));
  const paths = json.weightsManifest.flatMap((g) => g.paths);
  const data = Buffer.concat(paths.map((p) => readFileSync(join(dir, p))));
  const { weightsManifest, ...rest } = json;
  return {
    ...rest,
    weightSpecs: weightsManifest.flatMap((g) => g.weights),
    weightData: data.buffer.slice(data.byteOffset, data.byteOffset + data.length),
  };
}

/** A small CNN + MLP: Conv2D, Flatten, two Dense; its weights set from `r`. */
export function layersModel(r) {
  const m = tf.sequential();
  m.add(tf.layers.conv2d({ inputShape: [8, 8, 1], filters: 4, kernelSize: 3, activation: "relu", name: "conv" }));
  m.add(tf.layers.flatten({ name: "flat" }));
  m.add(tf.layers.dense({ units: 16, activation: "relu", name: "hidden" }));
  m.add(tf.layers.dense({ units: 3, name: "out" }));
  m.setWeights(m.getWeights().map((w) => tf.tensor(floats(r, w.size), w.shape)));
  return m;
}

/** What `model.save` gives: { modelTopology, weightSpecs, weightData, format, ... }. */
export async function saveArtifacts(model) {
  let saved;
  await model.save(
    tf.io.withSaveHandler(async (a) => {
      saved = a;
      return { modelArtifactsInfo: { dateSaved: new Date(), modelTopologyType: "JSON" } };
    }),
  );
  return saved;
}

/**
 * Writes the layers model `m` to `dir` in two manifest groups of `shard`-byte files;
 * `quantized` stores some weights as uint8, uint16 and float16 as tfjs-converter does.
 */
export async function writeLayersModel(dir, m, { shard = 1000, quantized = false, indent } = {}) {
  const a = await saveArtifacts(m);
  const data = new Uint8Array(a.weightData);
  let at = 0;
  const kinds = { "conv/kernel": "float16", "hidden/kernel": "uint8", "hidden/bias": "uint16" };
  const weights = a.weightSpecs.map((spec) => {
    const n = spec.shape.reduce((x, y) => x * y, 1);
    const bytes = data.slice(at, at + 4 * n);
    at += 4 * n;
    const q = quantized ? kinds[spec.name] : undefined;
    if (q === undefined) return { spec, bytes };
    const { bytes: qb, quantization } = quantize(new Float32Array(bytes.buffer), q);
    return { spec: { ...spec, quantization }, bytes: qb };
  });
  const { weightData, weightSpecs, ...model } = a;
  model.userDefinedMetadata = { note: "deeplock test", classes: ["a", "b", "c"] };
  return writeModel(dir, model, [weights.slice(0, 3), weights.slice(3)], shard, { indent });
}

const dim = (shape) => ({ dim: shape.map((s) => ({ size: String(s) })) });
const fl = { type: "DT_FLOAT" };
const constNode = (name, dtype, shape) => ({
  name,
  op: "Const",
  attr: { value: { tensor: { dtype, tensorShape: dim(shape) } }, dtype: { type: dtype } },
});

/**
 * A graph model as tfjs-converter writes one (format "graph-model", a GraphDef in JSON):
 * out = Reshape(SelectV2(mask, y, -y), [-1, 4]) with y = Relu(x W1 + b1) W2 + b2; W2
 * stored uint8-quantized, mask a bool weight (left clear), the shape an int32 weight.
 */
export function writeGraphModel(dir, r, { shard = 100 } = {}) {
  const model = {
    format: "graph-model",
    generatedBy: "2.15.0",
    convertedBy: "TensorFlow.js Converter v4.22.0",
    signature: {
      inputs: { "x:0": { name: "x:0", dtype: "DT_FLOAT", tensorShape: dim([-1, 6]) } },
      outputs: { "out:0": { name: "out:0", dtype: "DT_FLOAT", tensorShape: dim([-1, 4]) } },
    },
    modelTopology: {
      node: [
        { name: "x", op: "Placeholder", attr: { dtype: fl, shape: { shape: dim([-1, 6]) } } },
        constNode("w1", "DT_FLOAT", [6, 10]),
        constNode("b1", "DT_FLOAT", [10]),
        constNode("w2", "DT_FLOAT", [10, 4]),
        constNode("b2", "DT_FLOAT", [4]),
        constNode("mask", "DT_BOOL", [4]),
        constNode("shape", "DT_INT32", [2]),
        { name: "mm1", op: "MatMul", input: ["x", "w1"], attr: { transpose_a: { b: false }, transpose_b: { b: false }, T: fl } },
        { name: "ba1", op: "BiasAdd", input: ["mm1", "b1"], attr: { T: fl, data_format: { s: "TkhXQw==" } } },
        { name: "r1", op: "Relu", input: ["ba1"], attr: { T: fl } },
        { name: "mm2", op: "MatMul", input: ["r1", "w2"], attr: { transpose_a: { b: false }, transpose_b: { b: false }, T: fl } },
        { name: "y", op: "AddV2", input: ["mm2", "b2"], attr: { T: fl } },
        { name: "neg", op: "Neg", input: ["y"], attr: { T: fl } },
        { name: "sel", op: "SelectV2", input: ["mask", "y", "neg"], attr: { T: fl } },
        { name: "out", op: "Reshape", input: ["sel", "shape"], attr: { T: fl, Tshape: { type: "DT_INT32" } } },
      ],
      library: {},
      versions: { producer: 1482 },
    },
  };
  const f32 = (name, shape) => ({
    spec: { name, shape, dtype: "float32" },
    bytes: new Uint8Array(floats(r, shape.reduce((x, y) => x * y, 1)).buffer),
  });
  const w2 = quantize(floats(r, 40), "uint8");
  const groups = [
    [
      f32("w1", [6, 10]),
      f32("b1", [10]),
      { spec: { name: "w2", shape: [10, 4], dtype: "float32", quantization: w2.quantization }, bytes: w2.bytes },
      f32("b2", [4]),
    ],
    [
      { spec: { name: "mask", shape: [4], dtype: "bool" }, bytes: new Uint8Array([1, 0, 1, 1]) },
      { spec: { name: "shape", shape: [2], dtype: "int32" }, bytes: new Uint8Array(new Int32Array([-1, 4]).buffer) },
    ],
  ];
  return writeModel(dir, model, groups, shard);
}

/** Predictions of `model` (layers or graph) on `x` ({ data, shape }) as a Float32Array. */
export function predict(model, x) {
  return tf.tidy(() => model.predict(tf.tensor(x.data, x.shape)).dataSync().slice());
}

/** Whether two Float32Arrays hold the same bits. */
export const sameBits = (a, b) => Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));

const TYPES = { ".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".json": "application/json", ".css": "text/css" };

/**
 * Serves `routes` ({ "/prefix/": directory }, plus exact paths mapped to functions that
 * answer (req, res)) on 127.0.0.1; returns { url, requests, close }.
 */
export async function serve(routes) {
  const requests = [];
  const server = createServer((req, res) => {
    const path = decodeURIComponent(new URL(req.url, "http://x").pathname);
    requests.push(path);
    const route = routes[path];
    if (typeof route === "function") return route(req, res);
    for (const [prefix, dir] of Object.entries(routes)) {
      if (typeof dir !== "string" || !path.startsWith(prefix)) continue;
      const file = normalize(join(dir, path.slice(prefix.length)));
      if (!file.startsWith(normalize(dir) + sep) && file !== normalize(dir)) break;
      try {
        const body = readFileSync(file);
        res.writeHead(200, { "content-type": TYPES[extname(file)] ?? "application/octet-stream" });
        return res.end(body);
      } catch {
        break;
      }
    }
    res.writeHead(404, { "content-type": "text/plain" });
    res.end("not found");
  });
  await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
  const url = `http://127.0.0.1:${server.address().port}`;
  return { url, requests, close: () => new Promise((ok) => { server.closeAllConnections(); server.close(ok); }) };
}
