// docs/SPEC.md's known-answer vectors (v1 and v2), read from the spec itself, must hold
// for the package's WebCrypto implementation.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { importKey, scheme } from "../dist/index.js";
import { hex, ROOT, toHex } from "./helpers.mjs";

const spec = readFileSync(join(ROOT, "docs/SPEC.md"), "utf8");

function block(begin, end) {
  const a = spec.indexOf(begin);
  const b = spec.indexOf(end);
  assert.ok(a >= 0 && b > a, `block ${begin} in docs/SPEC.md`);
  return spec.slice(a, b).split("\n");
}

const ascii = (s) => new TextEncoder().encode(s);
const pattern = (n) => Uint8Array.from({ length: n }, (_, j) => j % 251);

async function gcmKey(raw) {
  return crypto.subtle.importKey("raw", raw, { name: "AES-GCM" }, false, ["encrypt"]);
}

test("v1 vectors: tensor nonces, unlock at any offset, KCV", async () => {
  const lines = block("<!-- kat:begin -->", "<!-- kat:end -->");
  let rows = 0;
  let kcvs = 0;
  for (const line of lines) {
    const f = line.split(" | ");
    if (f.length === 7 && /^[0-9a-f]{32}$/.test(f[0])) {
      const [k, salt, name, offset, plain, nonce, locked] = f;
      const key = await importKey(hex(k));
      const n = await scheme.tensorNonce(hex(salt), name);
      assert.equal(toHex(n), nonce, `nonce of ${name}`);
      const data = hex(locked);
      await scheme.unlockInPlace(key, n, Number(offset), data);
      assert.equal(toHex(data), plain, `unlock of ${name} at ${offset}`);
      rows++;
    } else if (line.startsWith("kcv ")) {
      const [, k, v] = line.split(" ");
      const block = new Uint8Array(16);
      block.set(ascii("deeplock-v1-kcv"));
      const out = await scheme.aesBlock(await importKey(hex(k)), block);
      assert.equal(toHex(out.subarray(0, 8)), v);
      kcvs++;
    }
  }
  assert.equal(rows, 6);
  assert.equal(kcvs, 3);
});

test("v2 vectors: keys, chunk, tensor, header and checkpoint tags", async () => {
  const rows = block("<!-- kat-v2:begin -->", "<!-- kat-v2:end -->")
    .map((l) => [l.slice(0, l.indexOf(" ")), l.slice(l.indexOf(" ") + 1).split(" | ")])
    .filter(([kind]) => ["key", "chunk", "tensor", "header", "checkpoint"].includes(kind));
  const count = (k) => rows.filter(([kind]) => kind === k).length;
  assert.deepEqual([count("key"), count("chunk"), count("tensor"), count("header"), count("checkpoint")], [3, 4, 6, 1, 1]);
  let first;
  for (const [kind, f] of rows) {
    if (kind === "key") {
      const [k, salt, kAuth, kFile, kcv2] = f;
      const master = await importKey(hex(k));
      assert.equal(toHex(await scheme.aesBlock(master, ascii("deeplock-v2-auth"))), kAuth);
      assert.equal(toHex(await scheme.aesBlock(await importKey(hex(kAuth)), hex(salt))), kFile);
      const fk = await scheme.fileKeys(master, hex(salt));
      assert.equal(toHex(fk.kcv2), kcv2);
      first ??= { master, salt: hex(salt), gcm: fk.gcm, raw: await gcmKey(hex(kFile)), kcv2: fk.kcv2 };
    } else if (kind === "chunk") {
      const [t, c, bytes, tag] = f;
      const nonce = new Uint8Array(12);
      new DataView(nonce.buffer).setUint32(0, Number(t));
      new DataView(nonce.buffer).setBigUint64(4, BigInt(c));
      assert.equal(toHex(await scheme.gmac(first.gcm, nonce, hex(bytes))), tag, `chunk ${t} ${c}`);
      assert.equal(toHex(await scheme.gmac(first.raw, nonce, hex(bytes))), tag);
    } else if (kind === "tensor") {
      const [t, name, dtype, shape, locked, len, tag] = f;
      const e = { name, dtype, shape: shape.split(",").map(Number), start: 0, end: Number(len) };
      const got = await scheme.tensorTag(first.gcm, Number(t), e, locked === "1", pattern(Number(len)));
      assert.equal(toHex(got), tag, `tensor ${t}`);
    } else if (kind === "header") {
      const [encoding, tag] = f;
      // The example header, rebuilt and encoded by the package.
      const entries = [
        { name: "bias", dtype: "F32", shape: [4], start: 0, end: 16, locked: true },
        { name: "w", dtype: "F32", shape: [2, 2], start: 16, end: 32, locked: true },
        { name: "mask", dtype: "BOOL", shape: [3], start: 32, end: 35, locked: false },
        { name: "empty", dtype: "F32", shape: [0], start: 0, end: 0, locked: false },
      ];
      const order = scheme.indexOrder(entries);
      assert.deepEqual(order.map((i) => entries[i].name), ["empty", "bias", "w", "mask"]);
      const tags = [];
      for (const [t, i] of order.entries()) {
        const e = entries[i];
        tags.push(await scheme.tensorTag(first.gcm, t, e, e.locked, pattern(e.end - e.start)));
      }
      const record = { version: "2", scheme: "aes128-ctr-sbox-gmac", salt: first.salt, kcv: first.kcv2, locked: ["bias", "w"], tags, mac: new Uint8Array(16) };
      const m = scheme.headerMessage(record, first.kcv2, order.map((i) => entries[i]), [["format", "pt"], ["deeplock.note", "x"]]);
      assert.equal(toHex(m), encoding);
      const nonce = new Uint8Array(12).fill(0xff);
      assert.equal(toHex(await scheme.gmac(first.gcm, nonce, hex(encoding))), tag);
    } else if (kind === "checkpoint") {
      const [kc, encoding, tag] = f;
      const kCkpt = await scheme.aesBlock(first.master, ascii("deeplock-v2-ckpt"));
      const got = await scheme.aesBlock(await importKey(kCkpt), new Uint8Array(16).fill(0x0f));
      assert.equal(toHex(got), kc.replace(/^checkpoint salt \S+: /, "").trim());
      const nonce = new Uint8Array(12).fill(0xff);
      assert.equal(toHex(await scheme.gmac(await gcmKey(got), nonce, hex(encoding))), tag);
    }
  }
});

test("the S-box is AES's (FIPS-197 spot values) and INV_SBOX its inverse", () => {
  assert.equal(scheme.SBOX[0x00], 0x63);
  assert.equal(scheme.SBOX[0x53], 0xed);
  assert.equal(scheme.SBOX[0xff], 0x16);
  for (let i = 0; i < 256; i++) assert.equal(scheme.INV_SBOX[scheme.SBOX[i]], i);
});

test("unlock of a long run at an odd offset equals unlock of its pieces (keystream segments)", async () => {
  const key = await importKey(hex("2b7e151628aed2a6abf7158809cf4f3c"));
  const nonce = hex("0123456789abcdef");
  const n = (9 << 20) + 13;
  const whole = Uint8Array.from({ length: n }, (_, j) => (j * 7) & 0xff);
  const pieces = whole.slice();
  await scheme.unlockInPlace(key, nonce, 5, whole);
  for (const [a, b] of [[0, 3], [3, 4194301], [4194301, 4194333], [4194333, n]]) {
    await scheme.unlockInPlace(key, nonce, 5 + a, pieces.subarray(a, b));
  }
  assert.ok(Buffer.from(whole).equals(Buffer.from(pieces)));
});
