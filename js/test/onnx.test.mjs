// ONNX models built here by hand (protobuf encoded in test/onnx-model.mjs), locked by the
// Rust CLI, unlocked in JS: byte for byte the original, with the tensors and names the
// CLI sees (`inspect --json`); onnxruntime-web runs the unlocked bytes as it runs the
// original. Wrong keys, every tamper and bad files are refused with the CLI's messages.
import assert from "node:assert/strict";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import * as ort from "onnxruntime-web";
import {
  BadFileError, DeeplockError, importKey, NotLockedError, onnx, TamperedError, WrongKeyError,
} from "../dist/index.js";
import { cli, cliOk, keygen, rng, tempDir } from "./helpers.mjs";
import * as M from "./onnx-model.mjs";

ort.env.wasm.numThreads = 1;

const f32 = (r, n) => {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = (r.int(2001) - 1000) / 1000;
  return a;
};
const bytesOf = (a) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

/**
 * An MLP, `y = Relu(Reshape(x) · W1 + B1) · W2 + B2`, of random sizes: W1, W2 and B1 FLOAT
 * raw_data, B2 float_data (packed), the Reshape's shape INT64 int64_data (left clear),
 * and two side outputs, a FLOAT16 and an INT8 initializer (raw_data) through Identity.
 * Sometimes W1 is over 1 MiB (several GMAC chunks).
 */
function mlp(r, dims = {}) {
  const d0 = dims.d0 ?? 1 + r.int(24);
  const d1 = dims.d1 ?? (r.int(4) === 0 ? 300 + r.int(900) : 1 + r.int(40));
  const d2 = dims.d2 ?? 1 + r.int(10);
  const n16 = 1 + r.int(50);
  const n8 = 1 + r.int(70);
  const weights = {
    w1: f32(r, d0 * d1), b1: f32(r, d1), w2: f32(r, d1 * d2), b2: f32(r, d2),
    h: r.bytes(2 * n16).map((b, i) => (i % 2 ? b & 0x3b : b)), // finite halves
    q: r.bytes(n8),
  };
  const g = M.graph({
    name: "mlp",
    nodes: [
      M.node("Reshape", ["x", "shape"], ["x2"], "reshape"),
      M.node("MatMul", ["x2", "w1"], ["h1"], "mm1"),
      M.node("Add", ["h1", "b1"], ["h2"], "add1"),
      M.node("Relu", ["h2"], ["h3"], "relu"),
      M.node("MatMul", ["h3", "w2"], ["h4"], "mm2"),
      M.node("Add", ["h4", "b2"], ["y"], "add2"),
      M.node("Identity", ["h"], ["y16"], "id16"),
      M.node("Identity", ["q"], ["y8"], "id8"),
    ],
    inits: [
      M.tensor("w1", M.FLOAT, [d0, d1], { raw: bytesOf(weights.w1) }),
      M.tensor("b1", M.FLOAT, [d1], { raw: bytesOf(weights.b1) }),
      M.tensor("shape", M.INT64, [2], { int64: [-1, d0] }),
      M.tensor("w2", M.FLOAT, [d1, d2], { raw: bytesOf(weights.w2) }),
      M.tensor("b2", M.FLOAT, [d2], { floats: weights.b2 }),
      M.tensor("h", M.FLOAT16, [n16], { raw: weights.h }),
      M.tensor("q", M.INT8, [n8], { raw: weights.q }),
    ],
    inputs: [M.valueInfo("x", M.FLOAT, ["batch", d0])],
    outputs: [M.valueInfo("y", M.FLOAT, ["batch", d2]), M.valueInfo("y16", M.FLOAT16, [n16]), M.valueInfo("y8", M.INT8, [n8])],
  });
  return { bytes: M.model(g, { metadata: [["author", "deeplock"], ["note", "été"]] }), d0, d2 };
}

/**
 * A model whose initializers sit in an If node's branches, in a function's node's
 * subgraph and in training_info, beside a BOOL mask, a Constant's tensor attribute and a
 * DOUBLE initializer as double_data.
 */
function nested(r) {
  const branch = (name, w) => M.graph({ name, nodes: [M.node("Identity", ["w"], ["o"])], inits: [M.tensor("w", M.FLOAT, [w.length / 4], { raw: w })] });
  const ifNode = (name) =>
    M.node("If", ["c"], ["y"], name, [M.graphAttr("then_branch", branch("then", r.bytes(20))), M.graphAttr("else_branch", branch("else", r.bytes(12)))]);
  const constant = M.node("Constant", [], ["k"], "", [M.tensorAttr("value", M.tensor("kv", M.FLOAT, [2], { raw: r.bytes(8) }))]);
  const g = M.graph({
    nodes: [constant, ifNode("cond")],
    inits: [
      M.tensor("mask", M.BOOL, [3], { raw: Uint8Array.from([1, 0, 1]) }),
      M.tensor("d", M.DOUBLE, [3], { doubles: new Float64Array([0.5, -1, 2]) }),
      M.tensor("u", M.UINT8, [5], { raw: r.bytes(5) }),
    ],
  });
  const fn = M.message(M.bytes(1, "f"), M.bytes(4, "c"), M.bytes(5, "y"), M.bytes(7, M.node("If", ["c"], ["y"], "", [M.graphAttr("then_branch", branch("t", r.bytes(8)))])), M.bytes(10, "custom"));
  const training = M.message(M.bytes(1, M.graph({ name: "init", inits: [M.tensor("step", M.FLOAT, [1], { raw: r.bytes(4) })] })));
  return M.model(g, { extra: [M.bytes(20, training), M.bytes(25, fn)] });
}

function lock(dir, key, bytes, name = "model.onnx") {
  writeFileSync(join(dir, name), bytes);
  cliOk(["lock", name, "-o", "locked.onnx", "--key-file", key.path], dir);
  return new Uint8Array(readFileSync(join(dir, "locked.onnx")));
}

/** What `deeplock inspect --json` says of a file: its tensors and what it leaves clear. */
function inspect(dir, file) {
  const f = JSON.parse(cliOk(["inspect", file, "--json"], dir).stdout).files[0];
  return {
    tensors: f.tensors.map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape, start: t.data_offsets[0], end: t.data_offsets[1] })),
    clear: f.left_clear,
  };
}

async function run(session, d0, batch) {
  const x = new Float32Array(batch * d0).map((_, i) => Math.sin(i + 1));
  const out = await session.run({ x: new ort.Tensor("float32", x, [batch, d0]) });
  return Object.fromEntries(Object.entries(out).map(([k, v]) => [k, [...v.data]]));
}

test("CLI-locked MLPs unlock byte for byte and run in onnxruntime-web as the original", async (t) => {
  const r = rng(t);
  for (let round = 0; round < 4; round++) {
    const dir = tempDir(t);
    const key = keygen(dir);
    const { bytes: original, d0 } = mlp(r);
    const locked = lock(dir, key, original);
    const parsed = await onnx.parse(locked);
    for (const x of parsed.tensors) {
      const was = Buffer.from(original.subarray(x.start, x.end));
      if (was.length >= 4) assert.ok(!Buffer.from(locked.subarray(x.start, x.end)).equals(was), `${x.name} was locked`);
    }
    assert.deepEqual({ tensors: parsed.tensors, clear: parsed.clear }, inspect(dir, "locked.onnx"));
    assert.deepEqual(parsed.tensors.map((x) => x.name).sort(), ["b1", "b2", "h", "q", "w1", "w2"]);
    assert.deepEqual(parsed.clear.map((c) => c.name), ["shape"]);
    const k = round % 2 ? key.bytes : await importKey(key.bytes);
    const out = await onnx.unlock(locked, k);
    assert.ok(Buffer.from(out).equals(Buffer.from(original)), "unlocked byte for byte");
    // The CLI's own unlock gives the same bytes.
    cliOk(["unlock", "locked.onnx", "-o", "cli.onnx", "--key-file", key.path], dir);
    assert.ok(readFileSync(join(dir, "cli.onnx")).equals(Buffer.from(out)));
    if (round < 2) {
      const want = await run(await ort.InferenceSession.create(original), d0, 2);
      assert.deepEqual(await run(await ort.InferenceSession.create(out), d0, 2), want);
      // The locked model loads too, with garbage weights: other outputs.
      assert.notDeepEqual(await run(await ort.InferenceSession.create(locked), d0, 2), want);
    }
  }
});

test("initializers in If branches, functions and training_info: named and unlocked as the CLI does", async (t) => {
  const r = rng(t);
  const dir = tempDir(t);
  const key = keygen(dir);
  const original = nested(r);
  const locked = lock(dir, key, original);
  const parsed = await onnx.parse(locked);
  assert.deepEqual({ tensors: parsed.tensors, clear: parsed.clear }, inspect(dir, "locked.onnx"));
  assert.deepEqual(parsed.tensors.map((x) => x.name).sort(), [
    "cond/else_branch/w", "cond/then_branch/w", "d", "function:custom:f/#3/then_branch/w", "mask", "training_info[4]/initialization/step", "u",
  ]);
  assert.deepEqual(parsed.clear.map((c) => c.name), ["#0/value"]);
  assert.deepEqual(JSON.parse(parsed.record.get("deeplock.locked")), [
    "cond/else_branch/w", "cond/then_branch/w", "d", "function:custom:f/#3/then_branch/w", "training_info[4]/initialization/step", "u",
  ]);
  const out = await onnx.unlock(locked, key.bytes);
  assert.ok(Buffer.from(out).equals(Buffer.from(original)));
});

async function refuses(bytes, key, cls, text) {
  await assert.rejects(onnx.unlock(bytes, key, { name: "m.onnx" }), (e) => {
    assert.ok(e instanceof cls, `${e.name}: ${e.message}, expected ${cls.name}`);
    assert.ok(e instanceof DeeplockError);
    assert.ok(e.message.includes(text), `${e.message}\nexpected: ${text}`);
    return true;
  });
}

/** The CLI's verdict on `bytes`: refused, with this text in its message. */
function cliRefuses(dir, bytes, text) {
  writeFileSync(join(dir, "m.onnx"), bytes);
  const o = cli(["verify", "m.onnx", "--key-file", "model.key"], dir);
  assert.notEqual(o.status, 0, "the CLI refuses it too");
  assert.ok(o.stderr.includes(text), o.stderr);
}

test("wrong key, every tamper, truncation and bad files are refused with the CLI's messages", async (t) => {
  const r = rng(t);
  const dir = tempDir(t);
  const key = keygen(dir);
  const other = keygen(dir, "other.key");
  const { bytes: original } = mlp(r, { d0: 3, d1: 5 });
  const locked = lock(dir, key, original);
  const parsed = await onnx.parse(locked);
  const text = (s) => new TextEncoder().encode(s);
  const edit = (at, to) => {
    const b = locked.slice();
    b[at] = to;
    return b;
  };

  await refuses(locked, other.bytes, WrongKeyError, "wrong key: m.onnx was locked with a different key");
  // A flipped bit in each locked tensor names it, as the CLI does.
  for (const x of parsed.tensors) {
    const b = locked.slice();
    b[x.start + r.int(x.end - x.start)] ^= 1 << r.int(8);
    const said = `tensor "${x.name}" in m.onnx was modified after locking`;
    await refuses(b, key.bytes, TamperedError, said);
    cliRefuses(dir, b, said);
  }
  // The skeleton, each edit keeping the protobuf valid: w1's dims [3, 5] -> [5, 3], its
  // data_type FLOAT -> INT32, the producer's name, a node's name, the user's metadata,
  // the clear int64 shape's second value.
  const w1 = M.find(locked, [0x08, 3, 0x08, 5, 0x10, 1, 0x42, 2, 0x77, 0x31]);
  const swapped = edit(w1 + 1, 5);
  swapped[w1 + 3] = 3;
  const shape = M.find(locked, [0x08, 2, 0x10, 7, 0x42, 5, ...text("shape"), 0x3a, 11]) + 13 + 10;
  assert.equal(locked[shape], 3);
  const header = "the header in m.onnx was modified after locking";
  for (const b of [
    swapped,
    edit(w1 + 5, 6),
    edit(M.find(locked, text("deeplock-js-test")), 0x44),
    edit(M.find(locked, text("relu")), 0x52),
    edit(M.find(locked, text("été")), 0xc4),
    edit(shape, 4),
  ]) {
    await refuses(b, key.bytes, TamperedError, header);
    cliRefuses(dir, b, header);
  }

  // The record's values: the header tag's hex, a tensor tag, the salt, the locked list.
  const valueAt = (k) => {
    let p = M.find(locked, text(k)) + k.length;
    assert.equal(locked[p++], 0x12);
    while (locked[p] & 0x80) p++;
    return p + 1;
  };
  const flipHex = (at) => edit(at, locked[at] === 0x30 ? 0x31 : 0x30);
  await refuses(flipHex(valueAt("deeplock.mac")), key.bytes, TamperedError, "the header in m.onnx");
  const tags = valueAt("deeplock.tags");
  await refuses(flipHex(tags + 2), key.bytes, TamperedError, "the header in m.onnx");
  await refuses(flipHex(valueAt("deeplock.salt")), key.bytes, WrongKeyError, "wrong key");
  await refuses(flipHex(valueAt("deeplock.kcv")), key.bytes, WrongKeyError, "wrong key");
  // "w2" -> "z2": still sorted, but no such tensor.
  await refuses(edit(M.find(locked, text('"w2"]')) + 1, 0x7a), key.bytes, BadFileError, "corrupt deeplock metadata");
  await refuses(edit(M.find(locked, text('"b1"')) + 1, 0x7a), key.bytes, BadFileError, "deeplock.locked must be sorted");
  await refuses(edit(valueAt("deeplock.version"), 0x33), key.bytes, BadFileError, "damaged or unknown lock record");
  await refuses(edit(valueAt("deeplock.scheme") + 3, 0x39), key.bytes, BadFileError, "damaged or unknown lock record");

  // Cut: in the record, in a tensor, in the graph.
  await refuses(locked.subarray(0, locked.length - 1), key.bytes, BadFileError, "not a valid ONNX file");
  cliRefuses(dir, locked.subarray(0, locked.length - 1), "not a valid ONNX file");
  await refuses(locked.subarray(0, parsed.tensors[0].start + 3), key.bytes, BadFileError, "not a valid ONNX file");
  await refuses(locked.subarray(0, 40), key.bytes, BadFileError, "not a valid ONNX file");
  // A field after the record; a record entry given twice.
  await refuses(new Uint8Array([...locked, 0x28, 1]), key.bytes, BadFileError, "other fields follow the lock record");
  const first = M.find(locked, text("deeplock.version")) - 4;
  const entry = locked.subarray(first, first + 2 + locked[first + 1]);
  await refuses(new Uint8Array([...locked, ...entry]), key.bytes, BadFileError, "deeplock.version appears twice");
  await refuses(original, key.bytes, NotLockedError, "m.onnx is not locked");
  await refuses(new Uint8Array([0x08, 8]), key.bytes, BadFileError, "the ModelProto has no graph");
  await refuses(new Uint8Array([0x0b, 8]), key.bytes, BadFileError, "wire type 3, which ONNX never uses");
  // No message holds the key.
  const hexKey = Buffer.from(key.bytes).toString("hex");
  for (const k of [other.bytes, key.bytes]) {
    await onnx.unlock(swapped, k).catch((e) => assert.ok(!e.message.includes(hexKey)));
  }
});

test("a tensor field twice, a length past its message, a bad varint: refused, as the CLI refuses them", async (t) => {
  const dir = tempDir(t);
  keygen(dir);
  const w = (extra) => M.model(M.graph({ inits: [M.message(M.int(1, 2), M.int(2, M.UINT8), M.bytes(8, "w"), M.bytes(9, Uint8Array.from([1, 2])), extra)] }));
  const cases = [
    [w(M.bytes(9, Uint8Array.from([3, 4]))), "raw_data twice"],
    [w(M.bytes(8, "v")), "a name twice"],
    [w(M.int(2, 3)), "data_type twice"],
    [w(M.int(1, 5)), "holds 2 bytes, but its shape and type need 10"],
    [w(M.bytes(4, new Uint8Array(4))), "holds both raw_data and typed data"],
    [new Uint8Array([0x08, 8, 0x3a, 5, 1, 2]), "past the end of its message"],
    [new Uint8Array([0x08, 8, 0x3a, 0, 0x10, ...new Array(10).fill(0xff), 1]), "a bad or cut varint at byte 5"],
    // A varint that runs past the graph holding it (into the bytes after).
    [new Uint8Array([0x08, 8, 0x3a, 2, 0x08, 0x80, 0x10, 0x01]), "a bad or cut varint at byte 5"],
  ];
  for (const [bytes, text] of cases) {
    await refuses(bytes, new Uint8Array(16), BadFileError, text);
    writeFileSync(join(dir, "m.onnx"), bytes);
    const o = cli(["lock", "m.onnx", "-o", "l.onnx", "--key-file", "model.key"], dir);
    assert.notEqual(o.status, 0);
    assert.ok(o.stderr.includes(text), `${text}: ${o.stderr}`);
  }
});

test("a model with external data, locked by the CLI, is refused with a message that says where to unlock it", async (t) => {
  const dir = tempDir(t);
  const key = keygen(dir);
  const external = M.message(
    M.int(1, 4), M.int(2, M.FLOAT), M.bytes(8, "w"),
    M.bytes(13, M.message(M.bytes(1, "location"), M.bytes(2, "w.data"))), M.int(14, 1),
  );
  writeFileSync(join(dir, "w.data"), new Uint8Array(16).fill(7));
  writeFileSync(join(dir, "m.onnx"), M.model(M.graph({ inits: [external] })));
  mkdirSync(join(dir, "l"));
  cliOk(["lock", join(dir, "m.onnx"), "-o", join(dir, "l", "m.onnx"), "--key-file", key.path]);
  await assert.rejects(
    onnx.unlock(readFileSync(join(dir, "l", "m.onnx")), key.bytes),
    (e) => e instanceof BadFileError && /external data files, which this package does not read/.test(e.message),
  );
});
