// TF.js models (a layers model, float32 and quantized, and a hand-written graph model,
// their weights in several shards) locked by the Rust CLI load through tfjs.io in real
// TF.js and predict exactly as the originals; wrong keys and every tamper are refused
// with the right error before TF.js gets anything.
import assert from "node:assert/strict";
import { readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import {
  BadFileError, DeeplockError, importKey, MissingFileError, NotLockedError, TamperedError, tfjs, WrongKeyError,
} from "../dist/index.js";
import { cli, cliOk, keygen, rng, tempDir } from "./helpers.mjs";
import {
  floats, layersModel, predict, readArtifacts, sameBits, serve, tf, writeGraphModel, writeLayersModel,
} from "./tfjs-models.mjs";

const RECORD_KEYS = ["deeplock.version", "deeplock.scheme", "deeplock.salt", "deeplock.kcv", "deeplock.locked", "deeplock.tags", "deeplock.mac"];
const STORED_SIZE = { float32: 4, int32: 4, bool: 1, complex64: 8, uint8: 1, uint16: 2, float16: 2 };

/** Writes a model of `kind` ("layers", "quantized", "graph") and locks it with the CLI. */
async function lockedModel(t, r, kind) {
  const dir = tempDir(t);
  const orig = join(dir, "orig");
  const locked = join(dir, "locked");
  let model;
  if (kind === "graph") {
    writeGraphModel(orig, r, { shard: 64 + r.int(100) });
  } else {
    model = layersModel(r);
    await writeLayersModel(orig, model, { quantized: kind === "quantized", shard: kind === "quantized" ? 400 : 1000, indent: kind === "layers" ? 1 : undefined });
  }
  const key = keygen(dir);
  const other = keygen(dir, "other.key");
  cliOk(["lock", orig, "-o", locked, "--key-file", key.path]);
  const input = kind === "graph" ? { data: floats(r, 5 * 6), shape: [5, 6] } : { data: floats(r, 3 * 64), shape: [3, 8, 8, 1] };
  const load = kind === "graph" ? (h) => tf.loadGraphModel(h) : (h) => tf.loadLayersModel(h);
  const original = await load(tf.io.fromMemory(readArtifacts(orig)));
  return { dir, orig, locked, key, other, model, input, load, expected: predict(original, input) };
}

/** The tensors of a model.json's manifest with their offsets in the concatenated weight files. */
function tensorsOf(json) {
  let at = 0;
  return json.weightsManifest.flatMap((g) =>
    g.weights.map((w) => {
      const n = w.shape.reduce((a, b) => a * b, 1) * STORED_SIZE[w.quantization?.dtype ?? w.dtype];
      at += n;
      return { name: w.name, dtype: w.dtype, start: at - n, end: at };
    }),
  );
}

/** The locked model.json is the original with `,"deeplock":R` before its last `}` (docs/SPEC.md), weight files same names and lengths. */
function checkLayout(m) {
  const j = readFileSync(join(m.orig, "model.json"), "utf8");
  const l = readFileSync(join(m.locked, "model.json"), "utf8");
  const record = JSON.parse(l).deeplock;
  assert.deepEqual(Object.keys(record), RECORD_KEYS, "the record's keys, in the SPEC's order");
  const r = `,"deeplock":${JSON.stringify(record)}`;
  const p = j.trimEnd().length - 1;
  assert.equal(l, j.slice(0, p) + r + j.slice(p), "locked model.json = J[0..p] || ,\"deeplock\":R || J[p..]");
  // Same files, plus the directory's checkpoint record naming model.json by its T_H.
  assert.deepEqual(readdirSync(m.locked).sort(), [...readdirSync(m.orig), "deeplock.checkpoint"].sort());
  const checkpoint = JSON.parse(readFileSync(join(m.locked, "deeplock.checkpoint"), "utf8"));
  assert.deepEqual(checkpoint.shards, { "model.json": record["deeplock.mac"] });
  for (const f of readdirSync(m.orig)) {
    if (f === "model.json") continue;
    assert.equal(readFileSync(join(m.locked, f)).length, readFileSync(join(m.orig, f)).length, `${f} keeps its length`);
  }
  return record;
}

async function refuses(promise, cls, text) {
  await assert.rejects(promise, (e) => {
    assert.ok(e instanceof cls, `${e.name}: ${e.message}, expected ${cls.name}`);
    assert.ok(e instanceof DeeplockError);
    assert.ok(e.message.includes(text), `"${e.message}" should say "${text}"`);
    return true;
  });
}

/** The files of a locked directory, in memory. */
function filesOf(dir) {
  return new Map(readdirSync(dir).map((f) => [f, new Uint8Array(readFileSync(join(dir, f)))]));
}

/** unlock() of an in-memory copy of `files`. */
function unlockFiles(files, key, name = "m/model.json") {
  return tfjs.unlock(files.get("model.json"), files, key, { name });
}

for (const kind of ["layers", "quantized"]) {
  test(`a ${kind === "layers" ? "float32" : "quantized"} layers model locked by the CLI loads through tfjs.io over HTTP and predicts exactly as the original`, async (t) => {
    const r = rng(t);
    const m = await lockedModel(t, r, kind);
    const record = checkLayout(m);
    assert.ok(readdirSync(m.locked).length > 6, "weights in several shards");
    assert.equal(cli(["verify", m.locked, "--key-file", m.key.path]).status, 0, "the CLI verifies what it locked");
    const server = await serve({ "/m/": m.locked });
    t.after(server.close);
    const fractions = [];
    // The key as a non-extractable CryptoKey for one, raw bytes for the other.
    const key = kind === "layers" ? await importKey(m.key.bytes) : m.key.bytes;
    if (kind === "layers") assert.equal(key.extractable, false);
    const handler = tfjs.io(`${server.url}/m/model.json`, key, { onProgress: (f) => fractions.push(f) });
    const artifacts = await handler.load();
    const original = readArtifacts(m.orig);
    assert.ok(Buffer.from(artifacts.weightData).equals(Buffer.from(original.weightData)), "every weight unlocked byte for byte");
    assert.deepEqual(artifacts.weightSpecs, original.weightSpecs);
    assert.deepEqual(artifacts.modelTopology, original.modelTopology);
    assert.deepEqual(artifacts.userDefinedMetadata, { note: "deeplock test", classes: ["a", "b", "c"] });
    assert.equal(artifacts.format, "layers-model");
    assert.ok(!("deeplock" in artifacts) && !("weightsManifest" in artifacts));
    assert.equal(fractions.at(-1), 1, "onProgress reaches 1");
    assert.ok(fractions.every((f, i) => f >= 0 && f <= 1 && (i === 0 || f >= fractions[i - 1])), "progress only goes up");
    assert.ok(fractions.some((f) => f > 0 && f < 1), "progress in between");
    const shards = JSON.parse(readFileSync(join(m.orig, "model.json"), "utf8")).weightsManifest.flatMap((g) => g.paths);
    for (const s of shards) assert.ok(server.requests.includes(`/m/${s}`), `${s} fetched next to model.json`);

    const model = await m.load(tfjs.io(`${server.url}/m/model.json`, key));
    const got = predict(model, m.input);
    assert.ok(sameBits(got, m.expected), `predictions ${got} equal the original's ${m.expected}`);
    if (kind === "layers") assert.ok(sameBits(got, predict(m.model, m.input)), "and the model's before it was saved");
    // Every tensor (no bool in a layers model) was locked.
    assert.deepEqual(JSON.parse(record["deeplock.locked"]), original.weightSpecs.map((w) => w.name).sort());
  });
}

test("a graph model locked by the CLI loads through tfjs.io with tf.loadGraphModel; its bool weight stays clear", async (t) => {
  const r = rng(t);
  const m = await lockedModel(t, r, "graph");
  const record = checkLayout(m);
  const json = JSON.parse(readFileSync(join(m.orig, "model.json"), "utf8"));
  const mask = tensorsOf(json).find((e) => e.name === "mask");
  assert.ok(!JSON.parse(record["deeplock.locked"]).includes("mask"), "BOOL weights are not locked");
  const lockedData = new Uint8Array(readArtifacts(m.locked).weightData);
  assert.deepEqual([...lockedData.subarray(mask.start, mask.end)], [1, 0, 1, 1], "the bool weight is in the clear");
  const server = await serve({ "/g/": m.locked });
  t.after(server.close);
  const model = await tf.loadGraphModel(tfjs.io(`${server.url}/g/model.json`, m.key.bytes));
  const got = predict(model, m.input);
  assert.ok(sameBits(got, m.expected), `predictions ${got} equal the original's ${m.expected}`);
  const artifacts = await tfjs.unlock(new Uint8Array(readFileSync(join(m.locked, "model.json"))), filesOf(m.locked), m.key.bytes);
  assert.equal(artifacts.format, "graph-model");
  assert.deepEqual(artifacts.signature, json.signature);
  assert.equal(artifacts.convertedBy, json.convertedBy);
});

test("the locked model is valid TF.js: it loads without deeplock, and predicts garbage", async (t) => {
  const r = rng(t);
  for (const kind of ["layers", "quantized", "graph"]) {
    const m = await lockedModel(t, r, kind);
    const model = await m.load(tf.io.fromMemory(readArtifacts(m.locked)));
    let got;
    try {
      got = predict(model, m.input);
    } catch (e) {
      // The graph's Reshape reads its locked int32 shape: garbage that does not fit.
      assert.equal(kind, "graph", e.message);
      assert.match(e.message, /reshape|shape/i);
      continue;
    }
    assert.equal(got.length, m.expected.length);
    let far = 0;
    for (let i = 0; i < got.length; i++) if (!(Math.abs(got[i] - m.expected[i]) < 1e-2)) far++;
    assert.ok(far >= got.length / 2, `${kind}: ${far} of ${got.length} outputs far from the original's (${got} vs ${m.expected})`);
  }
});

test("a wrong key is refused before any weight file is fetched; no message holds the key", async (t) => {
  const r = rng(t);
  const m = await lockedModel(t, r, "layers");
  const server = await serve({ "/m/": m.locked });
  t.after(server.close);
  const url = `${server.url}/m/model.json`;
  await refuses(tfjs.io(url, m.other.bytes).load(), WrongKeyError, `wrong key: ${url} was locked with a different key`);
  await refuses(tf.loadLayersModel(tfjs.io(url, await importKey(m.other.bytes))), WrongKeyError, "wrong key");
  assert.deepEqual([...new Set(server.requests)], ["/m/model.json"], "no weight file fetched with a wrong key");
  const files = filesOf(m.locked);
  const key = Buffer.from(m.key.bytes).toString("hex");
  const shard = [...files.keys()].find((f) => f.endsWith(".bin"));
  const flipped = new Map(files).set(shard, files.get(shard).map((x, i) => (i === 0 ? x ^ 1 : x)));
  for (const [fs, k] of [[files, m.other.bytes], [flipped, m.key.bytes]]) {
    await assert.rejects(unlockFiles(fs, k), (e) => !e.message.includes(key) && !e.message.includes(key.toUpperCase()));
  }
});

test("every tamper is refused with the error that names it", async (t) => {
  const r = rng(t);
  const m = await lockedModel(t, r, "quantized");
  const files = filesOf(m.locked);
  const text = new TextDecoder().decode(files.get("model.json"));
  const json = JSON.parse(text);
  const tensors = tensorsOf(json);
  const paths = json.weightsManifest.flatMap((g) => g.paths);
  const withFile = (path, bytes) => new Map(files).set(path, bytes);
  const key = m.key.bytes;
  const withJson = (s) => unlockFiles(withFile("model.json", new TextEncoder().encode(s)), key);
  const edit = (from, to) => {
    assert.ok(text.includes(from), from);
    return withJson(text.replace(from, to));
  };

  // It unlocks as it is.
  assert.ok((await unlockFiles(files, key)).weightData.byteLength > 0);

  // A flipped bit in a weight file names the tensor that holds it (weights straddle files).
  for (let round = 0; round < 6; round++) {
    const p = paths[r.int(paths.length)];
    const b = files.get(p).slice();
    const at = r.int(b.length);
    b[at] ^= 1 << r.int(8);
    const offset = paths.slice(0, paths.indexOf(p)).reduce((s, q) => s + files.get(q).length, 0) + at;
    const tensor = tensors.find((e) => e.start <= offset && offset < e.end);
    await refuses(unlockFiles(withFile(p, b), key), TamperedError, `tensor ${JSON.stringify(tensor.name)} in m/model.json was modified after locking`);
  }
  // model.json edited outside the record: a shape (same size), a quantization scale, the topology.
  const w = json.weightsManifest[0].weights[0];
  assert.equal(w.name, "conv/kernel");
  const shape = (s) => `"name":"conv/kernel","shape":${JSON.stringify(s)}`;
  await refuses(edit(shape(w.shape), shape([...w.shape].reverse())), TamperedError, "the header in m/model.json was modified");
  const scale = json.weightsManifest[0].weights.find((x) => x.quantization?.scale).quantization.scale;
  await refuses(edit(`"scale":${scale}`, `"scale":${scale * 2}`), TamperedError, "the header");
  await refuses(edit('"activation":"relu"', '"activation":"elu"'), TamperedError, "the header");
  await refuses(edit('"note":"deeplock test"', '"note":"deeplock tesT"'), TamperedError, "the header");
  // A shape of another size changes the tensors' offsets: still the header that fails.
  await refuses(edit(shape(w.shape), shape([w.shape[0] + 1, ...w.shape.slice(1)])), TamperedError, "the header");
  // The record's values edited.
  const rec = json.deeplock;
  const flip = (h) => (h[0] === "0" ? "1" : "0") + h.slice(1);
  await refuses(edit(rec["deeplock.mac"], flip(rec["deeplock.mac"])), TamperedError, "the header");
  const tag0 = JSON.parse(rec["deeplock.tags"])[0];
  await refuses(edit(tag0, flip(tag0)), TamperedError, "the header");
  await refuses(edit(rec["deeplock.salt"], flip(rec["deeplock.salt"])), WrongKeyError, "wrong key");
  await refuses(edit(rec["deeplock.kcv"], flip(rec["deeplock.kcv"])), WrongKeyError, "wrong key");
  await refuses(edit('"deeplock.version":"2"', '"deeplock.version":"3"'), BadFileError, "damaged or unknown lock record");
  const locked = JSON.parse(rec["deeplock.locked"]);
  const fewer = JSON.stringify(JSON.stringify(locked.slice(1)));
  await refuses(edit(JSON.stringify(rec["deeplock.locked"]), fewer), TamperedError, "the header");
  // The record moved, re-serialized, or not the record lock writes.
  const r0 = text.indexOf(',"deeplock":');
  const rText = text.slice(r0, text.lastIndexOf("}"));
  await refuses(withJson(text.replace(rText, rText.replace('","', '", "'))), BadFileError, "damaged lock record");
  await refuses(withJson(`{"deeplock":${rText.slice(12)},${text.replace(rText, "").slice(1)}`), BadFileError, "damaged lock record");
  await refuses(withJson(text.replace(rText, rText.slice(0, -1) + ',"deeplock.extra":"1"}')), BadFileError, "damaged lock record");
  await refuses(withJson(text.replace(rText, ',"deeplock":7')), BadFileError, "damaged lock record");
  // Record removed: not locked (that is the original model.json).
  const removed = text.replace(rText, "");
  assert.equal(removed, readFileSync(join(m.orig, "model.json"), "utf8"));
  await refuses(withJson(removed), NotLockedError, "m/model.json is not locked");
  await refuses(unlockFiles(filesOf(m.orig), key), NotLockedError, "is not locked");
  // A key twice, at any depth.
  await refuses(edit('"note":"deeplock test"', '"note":"x","note":"deeplock test"'), BadFileError, 'duplicate key "note"');
  await refuses(withJson(text.replace('"deeplock":', '"format":"x","deeplock":')), BadFileError, 'duplicate key "format"');
  // Weight files missing, truncated, extended.
  const shard = paths[1];
  const missing = new Map(files);
  missing.delete(shard);
  await refuses(unlockFiles(missing, key), MissingFileError, `cannot read weight file ${JSON.stringify(shard)}`);
  await refuses(unlockFiles(withFile(shard, files.get(shard).subarray(0, files.get(shard).length - 1)), key), BadFileError, "was truncated or replaced");
  const longer = new Uint8Array(files.get(shard).length + 1);
  longer.set(files.get(shard));
  await refuses(unlockFiles(withFile(shard, longer), key), BadFileError, "extended");
  // A manifest path that would leave the directory, or not a TF.js model.json at all.
  await refuses(edit(`"${paths[0]}"`, `"../${paths[0]}"`), BadFileError, "not a plain relative path");
  await refuses(withJson("[1, 2]"), BadFileError, "not a TF.js model.json");
  await refuses(withJson(text.slice(0, -3)), BadFileError, "not a valid TF.js model.json: invalid JSON");
});

test("tfjs.io refuses a missing weight file, a missing model.json, and tampered files as served", async (t) => {
  const r = rng(t);
  const m = await lockedModel(t, r, "graph");
  const server = await serve({ "/g/": m.locked });
  t.after(server.close);
  const url = `${server.url}/g/model.json`;
  await refuses(tfjs.io(`${server.url}/nothing/model.json`, m.key.bytes).load(), MissingFileError, "cannot read model.json (HTTP 404");
  await refuses(tfjs.io("model.json", m.key.bytes).load(), MissingFileError, "not an absolute URL");
  const json = JSON.parse(readFileSync(join(m.locked, "model.json"), "utf8"));
  const last = json.weightsManifest.at(-1).paths.at(-1);
  // A shard altered on the server; then removed.
  const b = readFileSync(join(m.locked, last));
  b[b.length - 1] ^= 0x80;
  writeFileSync(join(m.locked, last), b);
  await refuses(tfjs.io(url, m.key.bytes).load(), TamperedError, `tensor "shape" in ${url} was modified after locking`);
  rmSync(join(m.locked, last));
  await refuses(tf.loadGraphModel(tfjs.io(url, m.key.bytes)), MissingFileError, `cannot read weight file "${last}" (HTTP 404 Not Found at ${server.url}/g/${last})`);
  // A fetch of the caller's: what it serves is checked the same way.
  const files = filesOf(m.orig);
  const fetchFiles = async (u) => {
    const f = files.get(new URL(u).pathname.split("/").pop());
    return f ? new Response(f) : new Response("no", { status: 404, statusText: "Not Found" });
  };
  await refuses(tfjs.io("http://example.invalid/x/model.json", m.key.bytes, { fetch: fetchFiles }).load(), NotLockedError, "http://example.invalid/x/model.json is not locked");
  const failing = async () => {
    throw new TypeError("fetch failed");
  };
  await refuses(tfjs.io(url, m.key.bytes, { fetch: failing }).load(), MissingFileError, "network error fetching");
});
