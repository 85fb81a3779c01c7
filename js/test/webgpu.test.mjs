// The WebGPU unlock: the project's own WGSL (embedded verbatim from shaders/), run on
// every WebGPU adapter this machine has, gives exactly the WebCrypto unlock, at any size
// and any offset in a tensor; the unlock functions use it when asked and say so, and
// fall back to WebCrypto without an adapter or with a CryptoKey. With
// DEEPLOCK_REQUIRE_GPU=1 a machine without an adapter fails instead of skipping.
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { importKey, onnx, safetensors, scheme, WebGpuUnlocker, webGpuUnlocker } from "../dist/index.js";
import { gpus, requireGpu } from "./gpu.mjs";
import { cliOk, hex, keygen, ROOT, rng, safetensorsFile, tempDir, toHex } from "./helpers.mjs";
import * as M from "./onnx-model.mjs";

test("the embedded WGSL is shaders/aes_ctr.wgsl and shaders/lock.wgsl, verbatim", () => {
  assert.equal(scheme.AES_CTR_WGSL, readFileSync(join(ROOT, "shaders/aes_ctr.wgsl"), "utf8"));
  assert.equal(scheme.LOCK_WGSL, readFileSync(join(ROOT, "shaders/lock.wgsl"), "utf8"));
});

test("host tables and key schedule: FIPS-197, and src/gpu/aes.rs's layout", () => {
  // FIPS-197 A.1: the last round key of 2b7e1516...; src/key_schedule.rs's words_le()[43].
  const rk = scheme.expandKey(hex("2b7e151628aed2a6abf7158809cf4f3c"));
  assert.equal(toHex(rk.subarray(160)), "d014f9a8c9ee2589e13f0cc8b6630ca6");
  assert.equal(new DataView(rk.buffer).getUint32(172, true), 0xa60c63b6);
  const t = scheme.tableWords();
  for (let x = 0; x < 256; x++) {
    assert.equal((t[x] >>> 8) & 0xff, scheme.SBOX[x], "S-box from byte 1 of T0");
    assert.equal((t[256 + (x >> 2)] >>> (8 * (x & 3))) & 0xff, scheme.INV_SBOX[x], "packed inverse S-box");
  }
  // FIPS-197 §5.1.3's MixColumns column db 13 53 45 -> 8e 4d a1 bc through T0's rotations.
  let col = 0;
  [0xdb, 0x13, 0x53, 0x45].forEach((b, row) => {
    const v = t[scheme.INV_SBOX[b]];
    col ^= ((v << (8 * row)) | (v >>> (32 - 8 * row))) >>> 0;
  });
  assert.equal(col >>> 0, 0xbca14d8e);
  assert.deepEqual([0, 1280 * 3, 32 << 10, 48 << 10].map(scheme.tableCopies), [1, 2, 16, 32]);
});

/** The adapters, or a skip (a failure under DEEPLOCK_REQUIRE_GPU=1). */
let cached;
async function adapters(t) {
  cached ??= gpus(t);
  const found = await cached;
  if (found.length === 0) {
    if (requireGpu) assert.fail("DEEPLOCK_REQUIRE_GPU=1 but no WebGPU adapter was found (see the diagnostics)");
    t.skip("no WebGPU adapter on this machine (DEEPLOCK_REQUIRE_GPU=1 makes this a failure)");
  }
  return found;
}

test("GPU unlock equals the WebCrypto unlock: any size, any offset, the spec's vector", async (t) => {
  const r = rng(t);
  for (const { label, gpu } of await adapters(t)) {
    const u = await webGpuUnlocker(gpu);
    assert.ok(u instanceof WebGpuUnlocker, label);
    t.diagnostic(`${label}: ${u.adapter}`);
    // docs/SPEC.md's fifth v1 row: across keystream blocks 2^32 - 1 and 2^32.
    const kat = hex("6475618eb019db85d2bcd328e011be47");
    await u.unlock(hex("2b7e151628aed2a6abf7158809cf4f3c"), hex("49369efd7934ad28"), 68719476729, kat);
    assert.equal(toHex(kat), "00112233445566778899aabbccddeeff", `${label}: the spec's vector`);
    // SwiftShader runs this kernel at well under 1 MB/s: smaller sizes there.
    const big = label === "swiftshader" ? 70_001 : (3 << 20) + 13;
    const sizes = [1, 2, 3, 4, 5, 15, 16, 17, 31, 4095, 65537, big];
    const offsets = [0, 1, 3, 15, 16, 17, 4101, 2 ** 36 - 7, 1e12 + 3];
    for (const n of sizes) {
      const key = r.bytes(16);
      const nonce = r.bytes(8);
      const offset = offsets[r.int(offsets.length)];
      // The tensor's bytes at an odd place of a larger buffer, whose other bytes stay.
      const lead = r.int(8);
      const buf = r.bytes(lead + n + 5);
      const data = buf.subarray(lead, lead + n);
      const want = data.slice();
      await scheme.unlockInPlace(await importKey(key), nonce, offset, want);
      const before = buf.slice();
      await u.unlock(key, nonce, offset, data);
      assert.ok(Buffer.from(data).equals(Buffer.from(want)), `${label}: ${n} bytes at offset ${offset}`);
      assert.ok(Buffer.from(buf.subarray(0, lead)).equals(Buffer.from(before.subarray(0, lead))));
      assert.ok(Buffer.from(buf.subarray(lead + n)).equals(Buffer.from(before.subarray(lead + n))));
    }
    // Calls at once run one after the other, each right.
    const key = r.bytes(16);
    const jobs = [7, 100, 5000].map((n) => ({ n, nonce: r.bytes(8), data: r.bytes(n) }));
    const wants = await Promise.all(jobs.map(async (j) => {
      const w = j.data.slice();
      await scheme.unlockInPlace(await importKey(key), j.nonce, 0, w);
      return w;
    }));
    await Promise.all(jobs.map((j) => u.unlock(key, j.nonce, 0, j.data)));
    jobs.forEach((j, i) => assert.ok(Buffer.from(j.data).equals(Buffer.from(wants[i])), `${label}: concurrent ${j.n}`));
  }
});

test("safetensors.load and onnx.unlock with { gpu }: the same bytes, on the GPU, and WebCrypto without one", async (t) => {
  const r = rng(t);
  const found = await adapters(t);
  const dir = tempDir(t);
  const key = keygen(dir);
  const tensors = [
    { name: "w", dtype: "F32", shape: [3, 1000], data: r.bytes(12000) },
    { name: "b", dtype: "F16", shape: [7], data: r.bytes(14) },
    { name: "m", dtype: "BOOL", shape: [2], data: Uint8Array.from([1, 0]) },
  ];
  writeFileSync(join(dir, "m.safetensors"), safetensorsFile(tensors));
  cliOk(["lock", "m.safetensors", "-o", "l.safetensors", "--key-file", key.path], dir);
  const locked = new Uint8Array(readFileSync(join(dir, "l.safetensors")));
  const model = M.model(M.graph({ inits: [M.tensor("w", M.FLOAT, [501], { raw: r.bytes(2004) }), M.tensor("f", M.FLOAT, [3], { floats: new Float32Array([1, 2, 3]) })] }));
  writeFileSync(join(dir, "m.onnx"), model);
  cliOk(["lock", "m.onnx", "-o", "l.onnx", "--key-file", key.path], dir);
  const lockedOnnx = new Uint8Array(readFileSync(join(dir, "l.onnx")));
  for (const { label, gpu } of found) {
    const said = [];
    const out = await safetensors.load(locked, key.bytes, { gpu, onBackend: (b) => said.push(b) });
    assert.equal(said.length, 1);
    assert.equal(said[0].backend, "webgpu", label);
    out.tensors.forEach((x, i) => assert.ok(Buffer.from(x.bytes).equals(Buffer.from(tensors[i].data)), `${label}: ${x.name}`));
    const o = await onnx.unlock(lockedOnnx, key.bytes, { gpu, onBackend: (b) => said.push(b) });
    assert.equal(said[1].backend, "webgpu", label);
    assert.ok(Buffer.from(o).equals(Buffer.from(model)), `${label}: the ONNX model`);
    // A CryptoKey's bytes cannot reach the GPU: WebCrypto, and why.
    await safetensors.load(locked, await importKey(key.bytes), { gpu, onBackend: (b) => said.push(b) });
    assert.equal(said[2].backend, "webcrypto");
    assert.match(said[2].detail, /CryptoKey/);
  }
  // An entry point without an adapter, and none asked for.
  const said = [];
  const noAdapter = { requestAdapter: async () => null };
  const out = await safetensors.load(locked, key.bytes, { gpu: noAdapter, onBackend: (b) => said.push(b) });
  assert.ok(Buffer.from(out.tensors[0].bytes).equals(Buffer.from(tensors[0].data)));
  await safetensors.load(locked, key.bytes, { onBackend: (b) => said.push(b) });
  assert.deepEqual(said, [{ backend: "webcrypto", detail: "no WebGPU adapter" }, { backend: "webcrypto" }]);
  // Tags still come first: a tampered tensor is refused on the GPU path too.
  if (found.length > 0) {
    const b = locked.slice();
    b[b.length - 20] ^= 4;
    await assert.rejects(safetensors.load(b, key.bytes, { gpu: found[0].gpu }), /tensor "w" in the model was modified/);
  }
});

test.after(async () => {
  // Release the devices so that dawn.node lets the process end.
  for (const { gpu } of (await cached) ?? []) (await webGpuUnlocker(gpu))?.destroy();
});
