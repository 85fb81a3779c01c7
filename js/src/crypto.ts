/**
 * The scheme's primitives over WebCrypto (`crypto.subtle`), as docs/SPEC.md defines them:
 * AES-128 of one block (AES-CTR of 16 zero bytes with that block as the counter), the
 * keystream (AES-CTR with a 64-bit big-endian block counter, WebCrypto's `length: 64`),
 * the inverse S-box step, GMAC (AES-GCM with a 96-bit IV, an empty plaintext and the
 * message as additional data) and the v2 key derivation.
 *
 * The master key is only ever used through a non-extractable AES-CTR `CryptoKey`: every
 * AES block the derivations need under it is the keystream of one chosen counter block.
 */

import { BadKeyError } from "./errors.js";

let subtlePromise: Promise<SubtleCrypto> | undefined;

/** WebCrypto's `subtle`: the global one (browsers, Node >= 19), else Node 18's module. */
export function subtle(): Promise<SubtleCrypto> {
  if (subtlePromise === undefined) {
    const g = globalThis as { crypto?: Crypto };
    if (g.crypto?.subtle !== undefined) {
      subtlePromise = Promise.resolve(g.crypto.subtle);
    } else {
      const nodeCrypto = "node:crypto";
      subtlePromise = (import(nodeCrypto) as Promise<{ webcrypto: Crypto }>).then((m) => m.webcrypto.subtle);
    }
  }
  return subtlePromise;
}

/** A key as the caller gives it: 16 raw bytes, or an AES-CTR `CryptoKey` (non-extractable is fine). */
export type KeyInput = Uint8Array | CryptoKey;

/** The 16 bytes of a key's text form (a key file): 32 hex digits, surrounding whitespace ignored. */
export function keyFromHex(text: string): Uint8Array {
  const t = text.trim();
  if (!/^[0-9a-fA-F]{32}$/.test(t)) {
    throw new BadKeyError(`expected 32 hexadecimal characters (a deeplock key file), got ${t.length} characters`);
  }
  return fromHex(t);
}

/**
 * Imports 16 raw key bytes as a non-extractable AES-CTR `CryptoKey`, the form
 * {@link KeyInput} takes without the page keeping the bytes.
 */
export async function importKey(raw: Uint8Array): Promise<CryptoKey> {
  if (raw.length !== 16) {
    throw new BadKeyError(`a deeplock key is 16 bytes (AES-128), got ${raw.length}`);
  }
  const s = await subtle();
  return s.importKey("raw", raw, { name: "AES-CTR" }, false, ["encrypt"]);
}

/** The master key as a `CryptoKey` usable for AES-CTR encryption. */
export async function masterKey(key: KeyInput): Promise<CryptoKey> {
  if (key instanceof Uint8Array) {
    return importKey(key);
  }
  const alg = key.algorithm as { name?: string; length?: number };
  if (alg.name !== "AES-CTR" || alg.length !== 128 || !key.usages.includes("encrypt")) {
    throw new BadKeyError(
      `a CryptoKey must be an AES-CTR 128-bit key with the "encrypt" usage (import it with importKey), got ${alg.name ?? "?"}`,
    );
  }
  return key;
}

/** AES-128 of one block under `key` (an AES-CTR key): the keystream of that counter block. */
export async function aesBlock(key: CryptoKey, block: Uint8Array): Promise<Uint8Array> {
  const s = await subtle();
  const out = await s.encrypt({ name: "AES-CTR", counter: block, length: 64 }, key, new Uint8Array(16));
  return new Uint8Array(out);
}

const SEGMENT = 4 << 20;

/**
 * Unlocks in place `data`, bytes of a tensor whose nonce is `nonce` (8 bytes), starting
 * at byte `offset` of the tensor: `P[j] = INV_SBOX[L[j]] XOR KS[offset + j]`.
 */
export async function unlockInPlace(key: CryptoKey, nonce: Uint8Array, offset: number, data: Uint8Array): Promise<void> {
  const s = await subtle();
  const skip = offset % 16;
  let block = BigInt((offset - skip) / 16);
  let pos = 0;
  let first = true;
  while (pos < data.length) {
    const lead = first ? skip : 0;
    const take = Math.min(SEGMENT - lead, data.length - pos);
    const counter = new Uint8Array(16);
    counter.set(nonce, 0);
    new DataView(counter.buffer).setBigUint64(8, block, false);
    const ks = new Uint8Array(
      await s.encrypt({ name: "AES-CTR", counter, length: 64 }, key, new Uint8Array(lead + take)),
    );
    for (let i = 0; i < take; i++) {
      data[pos + i] = INV_SBOX[data[pos + i]!]! ^ ks[lead + i]!;
    }
    pos += take;
    block += BigInt((lead + take + 15) >> 4);
    first = false;
  }
}

/** The AES S-box and its inverse (FIPS-197 §5.1.1), computed once. */
export const SBOX = new Uint8Array(256);
export const INV_SBOX = new Uint8Array(256);
{
  // Walk the multiplicative group with generator 3 and its inverse 0xf6 together.
  let p = 1;
  let q = 1;
  const rotl = (x: number, n: number) => ((x << n) | (x >> (8 - n))) & 0xff;
  do {
    p = (p ^ ((p << 1) & 0xff) ^ (p & 0x80 ? 0x1b : 0)) & 0xff;
    q ^= q << 1;
    q ^= q << 2;
    q ^= q << 4;
    q &= 0xff;
    if (q & 0x80) q ^= 0x09;
    const x = q ^ rotl(q, 1) ^ rotl(q, 2) ^ rotl(q, 3) ^ rotl(q, 4) ^ 0x63;
    SBOX[p] = x;
  } while (p !== 1);
  SBOX[0] = 0x63;
  for (let i = 0; i < 256; i++) INV_SBOX[SBOX[i]!] = i;
}

/** SHA-256 of `data`. */
export async function sha256(data: Uint8Array): Promise<Uint8Array> {
  const s = await subtle();
  return new Uint8Array(await s.digest("SHA-256", data));
}

const encoder = new TextEncoder();

/** UTF-8 bytes of `s`. */
export function utf8(s: string): Uint8Array {
  return encoder.encode(s);
}

/** `N_t = SHA-256("deeplock-v1" || 00 || S || name)[0..8]`. */
export async function tensorNonce(salt: Uint8Array, name: string): Promise<Uint8Array> {
  const n = utf8(name);
  const m = new Uint8Array(12 + 16 + n.length);
  m.set(utf8("deeplock-v1"), 0);
  m.set(salt, 12);
  m.set(n, 28);
  return (await sha256(m)).subarray(0, 8);
}

/** The v2 keys of one file (salt S) under the master key: GMAC's key and KCV2. */
export interface FileKeys {
  /** `K_file` imported for AES-GCM (GMAC). */
  gcm: CryptoKey;
  /** `KCV2`, 8 bytes. */
  kcv2: Uint8Array;
}

/** `K_auth = AES_K("deeplock-v2-auth")`, `K_file = AES_{K_auth}(S)`, `KCV2 = AES_{K_file}("deeplock-v2-kcv" || 00)[0..8]`. */
export async function fileKeys(master: CryptoKey, salt: Uint8Array): Promise<FileKeys> {
  const s = await subtle();
  const kAuth = await aesBlock(master, utf8("deeplock-v2-auth"));
  const kAuthKey = await s.importKey("raw", kAuth, { name: "AES-CTR" }, false, ["encrypt"]);
  kAuth.fill(0);
  const kFile = await aesBlock(kAuthKey, salt);
  const ctr = await s.importKey("raw", kFile, { name: "AES-CTR" }, false, ["encrypt"]);
  const gcm = await s.importKey("raw", kFile, { name: "AES-GCM" }, false, ["encrypt"]);
  kFile.fill(0);
  const kcvBlock = new Uint8Array(16);
  kcvBlock.set(utf8("deeplock-v2-kcv"), 0);
  const kcv2 = (await aesBlock(ctr, kcvBlock)).slice(0, 8);
  return { gcm, kcv2 };
}

/** `GMAC_K(N, M)`: the AES-128-GCM tag of an empty plaintext with `M` as additional data. */
export async function gmac(key: CryptoKey, nonce: Uint8Array, message: Uint8Array): Promise<Uint8Array> {
  const s = await subtle();
  const tag = await s.encrypt(
    { name: "AES-GCM", iv: nonce, additionalData: message, tagLength: 128 },
    key,
    new Uint8Array(0),
  );
  return new Uint8Array(tag);
}

/** Whether two byte strings are equal, in time that depends on their length only. */
export function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let d = 0;
  for (let i = 0; i < a.length; i++) d |= a[i]! ^ b[i]!;
  return d === 0;
}

/** Lower-case hex of `b`. */
export function toHex(b: Uint8Array): string {
  let s = "";
  for (const x of b) s += x.toString(16).padStart(2, "0");
  return s;
}

/** The bytes of an even-length hex string (validated by the caller). */
export function fromHex(s: string): Uint8Array {
  const out = new Uint8Array(s.length >> 1);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(s.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/** Compares byte strings lexicographically (as Rust compares `&[u8]`). */
export function compareBytes(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    if (a[i] !== b[i]) return a[i]! - b[i]!;
  }
  return a.length - b.length;
}

/** A growable big-endian byte writer for the v2 encodings. */
export class Writer {
  private buf = new Uint8Array(256);
  private len = 0;
  private reserve(n: number): void {
    if (this.len + n <= this.buf.length) return;
    let cap = this.buf.length * 2;
    while (cap < this.len + n) cap *= 2;
    const next = new Uint8Array(cap);
    next.set(this.buf.subarray(0, this.len));
    this.buf = next;
  }
  u8(x: number): this {
    this.reserve(1);
    this.buf[this.len++] = x;
    return this;
  }
  be32(x: number): this {
    this.reserve(4);
    new DataView(this.buf.buffer).setUint32(this.len, x, false);
    this.len += 4;
    return this;
  }
  be64(x: number | bigint): this {
    this.reserve(8);
    new DataView(this.buf.buffer).setBigUint64(this.len, BigInt(x), false);
    this.len += 8;
    return this;
  }
  bytes(b: Uint8Array): this {
    this.reserve(b.length);
    this.buf.set(b, this.len);
    this.len += b.length;
    return this;
  }
  /** `lp(x) = BE64(|x|) || x`. */
  lp(b: Uint8Array | string): this {
    const x = typeof b === "string" ? utf8(b) : b;
    return this.be64(x.length).bytes(x);
  }
  shape(dims: readonly number[]): this {
    this.be64(dims.length);
    for (const d of dims) this.be64(d);
    return this;
  }
  finish(): Uint8Array {
    return this.buf.slice(0, this.len);
  }
}
