// Files locked by the Rust CLI unlock in JS byte for byte (random dtypes, sizes, odd
// offsets, several 1 MiB chunks); wrong keys, tampers and bad files are refused with the
// right exception, before anything is returned.
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import {
  BadFileError, BadKeyError, DeeplockError, importKey, keyFromHex, NotLockedError, safetensors,
  TamperedError, UnauthenticatedError, WrongKeyError,
} from "../dist/index.js";
import { cli, cliOk, keygen, rng, safetensorsFile, tempDir } from "./helpers.mjs";

const DTYPES = { F32: 4, F16: 2, BF16: 2, F64: 8, I64: 8, I32: 4, U16: 2, I8: 1, U8: 1, F8_E4M3: 1, BOOL: 1 };

function randomModel(r) {
  const names = Object.keys(DTYPES);
  const tensors = [];
  const n = 1 + r.int(7);
  for (let i = 0; i < n; i++) {
    const dtype = names[r.int(names.length)];
    const big = r.int(5) === 0;
    const count = big ? (1 << 19) + r.int(1 << 19) : r.int(300);
    const shape = count % 3 === 0 && count > 0 ? [3, count / 3] : [count];
    let data = r.bytes(count * DTYPES[dtype]);
    if (dtype === "BOOL") data = data.map((b) => b & 1);
    tensors.push({ name: `layer.${i}.${dtype.toLowerCase()}`, dtype, shape, data });
  }
  return tensors;
}

function lock(dir, key, tensors, metadata) {
  writeFileSync(join(dir, "model.safetensors"), safetensorsFile(tensors, metadata));
  cliOk(["lock", "model.safetensors", "-o", "locked.safetensors", "--key-file", key.path], dir);
  return new Uint8Array(readFileSync(join(dir, "locked.safetensors")));
}

test("CLI-locked files unlock byte for byte, with raw bytes and a non-extractable CryptoKey", async (t) => {
  const r = rng(t);
  for (let round = 0; round < 4; round++) {
    const dir = tempDir(t);
    const key = keygen(dir);
    const tensors = randomModel(r);
    const locked = lock(dir, key, tensors, round % 2 ? { format: "pt", note: "été" } : undefined);
    const k = round % 2 ? key.bytes : await importKey(key.bytes);
    if (round === 0) assert.equal(k.extractable, false);
    const out = await safetensors.load(locked, k);
    assert.deepEqual(out.tensors.map((x) => [x.name, x.dtype, x.shape]), tensors.map((x) => [x.name, x.dtype, x.shape]));
    for (const [i, x] of out.tensors.entries()) {
      assert.ok(Buffer.from(x.bytes).equals(Buffer.from(tensors[i].data)), `${x.name} unlocked byte for byte`);
      assert.equal(x.data.byteLength, tensors[i].data.length);
    }
    assert.deepEqual(out.metadata, round % 2 ? { format: "pt", note: "été" } : {});
    // The locked bytes differ from the original (a lock happened).
    const lockedTensor = tensors.find((x) => x.dtype !== "BOOL" && x.data.length >= 16);
    if (lockedTensor) assert.ok(!Buffer.from(locked).includes(Buffer.from(lockedTensor.data)));
  }
});

test("typed arrays match the dtype", async (t) => {
  const dir = tempDir(t);
  const key = keygen(dir);
  const f = new Float32Array([1.5, -2, 3.25]);
  const i64 = new BigInt64Array([-5n, 7n]);
  const out = await safetensors.load(
    lock(dir, key, [
      { name: "f", dtype: "F32", shape: [3], data: new Uint8Array(f.buffer) },
      { name: "odd", dtype: "U8", shape: [1], data: new Uint8Array([9]) },
      { name: "i", dtype: "I64", shape: [2], data: new Uint8Array(i64.buffer) },
    ]),
    key.bytes,
  );
  assert.ok(out.tensors[0].data instanceof Float32Array);
  assert.deepEqual([...out.tensors[0].data], [1.5, -2, 3.25]);
  assert.deepEqual([...out.tensors[2].data], [-5n, 7n]);
});

async function refuses(bytes, key, cls, text) {
  await assert.rejects(safetensors.load(bytes, key, { name: "m.safetensors" }), (e) => {
    assert.ok(e instanceof cls, `${e.name}: ${e.message}, expected ${cls.name}`);
    assert.ok(e instanceof DeeplockError);
    assert.ok(e.message.includes(text), e.message);
    return true;
  });
}

test("wrong key, every tamper, not locked, v1 and bad files are refused with the right error", async (t) => {
  const r = rng(t);
  const dir = tempDir(t);
  const key = keygen(dir);
  const other = keygen(dir, "other.key");
  const tensors = [
    { name: "a", dtype: "F32", shape: [5000], data: r.bytes(20000) },
    { name: "b", dtype: "U8", shape: [7], data: r.bytes(7) },
    { name: "m", dtype: "BOOL", shape: [4], data: new Uint8Array([0, 1, 1, 0]) },
  ];
  const locked = lock(dir, key, tensors, { format: "pt" });
  const hdr = Number(new DataView(locked.buffer).getBigUint64(0, true));
  const text = new TextDecoder().decode(locked.subarray(8, 8 + hdr));
  const edit = (from, to) => {
    const i = text.indexOf(from);
    assert.ok(i >= 0, from);
    const b = locked.slice();
    b.set(new TextEncoder().encode(to), 8 + i);
    return b;
  };

  await refuses(locked, other.bytes, WrongKeyError, "wrong key: m.safetensors was locked with a different key");
  const messages = [];
  for (const at of [8 + hdr, 8 + hdr + 12345, 8 + hdr + 20003, locked.length - 1]) {
    const b = locked.slice();
    b[at] ^= 1 << r.int(8);
    await refuses(b, key.bytes, TamperedError, "was modified after locking");
    messages.push(b);
  }
  await refuses(edit('"pt"', '"px"'), key.bytes, TamperedError, "the header in m.safetensors was modified");
  // The salt's first hex digit changed (to one it is not: a random salt may start with
  // any digit).
  const salt0 = text[text.indexOf('"deeplock.salt":"') + 17];
  const other0 = salt0 === "f" ? "e" : "f";
  await refuses(edit('"deeplock.salt":"', `"deeplock.salt":"${other0}`), key.bytes, WrongKeyError, "wrong key");
  await refuses(locked.subarray(0, locked.length - 1), key.bytes, BadFileError, "not a valid safetensors file");
  await refuses(locked.subarray(0, 5), key.bytes, BadFileError, "shorter than the 8-byte header length");
  // A metadata key renamed (same length, still valid JSON): the header tag fails.
  await refuses(edit('"format"', '"formax"'), key.bytes, TamperedError, "the header");
  await refuses(new Uint8Array(safetensorsFile(tensors)), key.bytes, NotLockedError, "m.safetensors is not locked");
  const v1 = edit('"deeplock.version":"2"', '"deeplock.version":"1"');
  await refuses(v1, key.bytes, BadFileError, "damaged or unknown lock record");
  await refuses(locked, new Uint8Array(15), BadKeyError, "16 bytes");
  assert.throws(() => keyFromHex("xyz"), BadKeyError);
  assert.deepEqual(keyFromHex(readFileSync(key.path, "utf8")), key.bytes);
  // No message holds the key.
  const hexKey = Buffer.from(key.bytes).toString("hex");
  for (const k of [other.bytes, key.bytes]) {
    try { await safetensors.load(messages[0], k); } catch (e) { assert.ok(!e.message.includes(hexKey)); }
  }
});

test("a duplicate JSON key is refused, at any depth", async (t) => {
  const dir = tempDir(t);
  const key = keygen(dir);
  const locked = lock(dir, key, [{ name: "a", dtype: "U8", shape: [2], data: new Uint8Array([1, 2]) }], { aa: "1", bb: "2" });
  const hdr = Number(new DataView(locked.buffer).getBigUint64(0, true));
  const text = new TextDecoder().decode(locked.subarray(8, 8 + hdr));
  const b = locked.slice();
  b.set(new TextEncoder().encode('"aa"'), 8 + text.indexOf('"bb"'));
  await refuses(b, key.bytes, BadFileError, 'duplicate key "aa"');
});

test("the CLI's verify agrees: what JS accepts the CLI accepts", (t) => {
  const dir = tempDir(t);
  const key = keygen(dir);
  lock(dir, key, [{ name: "a", dtype: "F32", shape: [1], data: new Uint8Array(4) }]);
  assert.equal(cli(["verify", "locked.safetensors", "--key-file", key.path], dir).status, 0);
});
