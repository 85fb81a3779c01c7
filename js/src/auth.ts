/**
 * v2 verification and unlocking of any container (docs/SPEC.md, "deeplock v2"): KCV2,
 * then the header tag, then every tensor's tag, and only then the v1 unlock. Nothing is
 * returned unless every check passed.
 */

import {
  compareBytes,
  equalBytes,
  fileKeys,
  gmac,
  tensorNonce,
  unlockInPlace,
  utf8,
  Writer,
} from "./crypto.js";
import { TamperedError, WrongKeyError } from "./errors.js";

/** The scheme v2 writes. */
export const SCHEME_V2 = "aes128-ctr-sbox-gmac";
/** The scheme v1 wrote. */
export const SCHEME_V1 = "aes128-ctr-sbox";
/** GMAC's chunk, `C = 2^20` bytes. */
export const CHUNK = 1 << 20;

/** A tensor entry as the v2 tags bind it. */
export interface Entry {
  name: string;
  dtype: string;
  shape: number[];
  /** Start and end of its bytes in the container's data (what the header tag binds). */
  start: number;
  end: number;
}

/** A v2 lock record, parsed and validated. */
export interface RecordV2 {
  version: string;
  scheme: string;
  salt: Uint8Array;
  kcv: Uint8Array;
  /** The locked tensors' names, as stored (sorted, each once). */
  locked: string[];
  /** `T_t` of every tensor, in index order. */
  tags: Uint8Array[];
  /** `T_H`. */
  mac: Uint8Array;
}

/** Sorts entries into index order: (start, end, name bytes); returns the permutation. */
export function indexOrder(entries: readonly Entry[]): number[] {
  const names = entries.map((e) => utf8(e.name));
  return entries
    .map((_, i) => i)
    .sort((a, b) => {
      const x = entries[a]!;
      const y = entries[b]!;
      if (x.start !== y.start) return x.start - y.start;
      if (x.end !== y.end) return x.end - y.end;
      return compareBytes(names[a]!, names[b]!);
    });
}

function nonce(t: number, c: number | bigint): Uint8Array {
  const n = new Uint8Array(12);
  const v = new DataView(n.buffer);
  v.setUint32(0, t, false);
  v.setBigUint64(4, BigInt(c), false);
  return n;
}

/** `T_t` of the tensor at index `t` whose stored bytes are `bytes`. */
export async function tensorTag(
  key: CryptoKey,
  t: number,
  e: Entry,
  locked: boolean,
  bytes: Uint8Array,
): Promise<Uint8Array> {
  const n = Math.ceil(bytes.length / CHUNK);
  const chunks: Promise<Uint8Array>[] = [];
  for (let c = 0; c < n; c++) {
    chunks.push(gmac(key, nonce(t, c), bytes.subarray(c * CHUNK, Math.min((c + 1) * CHUNK, bytes.length))));
  }
  const w = new Writer()
    .lp("deeplock-v2-tensor")
    .be32(t)
    .lp(e.name)
    .lp(e.dtype)
    .shape(e.shape)
    .be64(bytes.length)
    .u8(locked ? 1 : 0)
    .be64(n);
  for (const tag of await Promise.all(chunks)) w.bytes(tag);
  return gmac(key, nonce(t, 0xffffffffffffffffn), w.finish());
}

/** `M_H`, the header tag's message. `ordered` are the entries in index order. */
export function headerMessage(
  record: RecordV2,
  kcv2: Uint8Array,
  ordered: readonly Entry[],
  metadata: readonly [string, string][],
): Uint8Array {
  const w = new Writer().lp("deeplock-v2-header").lp(record.version).lp(record.scheme).bytes(record.salt).bytes(kcv2);
  w.be64(record.locked.length);
  for (const name of record.locked) w.lp(name);
  w.be64(ordered.length);
  ordered.forEach((e, t) => {
    w.lp(e.name).lp(e.dtype).shape(e.shape).be64(e.start).be64(e.end).bytes(record.tags[t]!);
  });
  const meta = metadata
    .map(([k, v]) => [utf8(k), utf8(v)] as const)
    .sort((a, b) => compareBytes(a[0], b[0]));
  w.be64(meta.length);
  for (const [k, v] of meta) w.lp(k).lp(v);
  return w.finish();
}

/** Progress of a verification and unlock: bytes done of bytes in all. */
export type Progress = (done: number, total: number) => void;

/** A container whose KCV2 and header tag passed: what its tensor checks need. */
export interface VerifiedHeader {
  master: CryptoKey;
  what: string;
  entries: readonly Entry[];
  record: RecordV2;
  /** `K_file` for GMAC. */
  gcm: CryptoKey;
  /** `order[t]` is the index in `entries` of the tensor at index `t`. */
  order: number[];
  locked: ReadonlySet<string>;
}

/**
 * Steps 2 and 3 of verifying a v2 container, on its header alone: KCV2 (else
 * {@link WrongKeyError}), then the header tag (else {@link TamperedError}). `metadata` is
 * every metadata entry but the seven record keys; `what` names the file in messages.
 */
export async function verifyHeader(
  master: CryptoKey,
  what: string,
  entries: readonly Entry[],
  record: RecordV2,
  metadata: readonly [string, string][],
): Promise<VerifiedHeader> {
  const keys = await fileKeys(master, record.salt);
  if (!equalBytes(keys.kcv2, record.kcv)) throw new WrongKeyError(what);
  const order = indexOrder(entries);
  const mh = headerMessage(record, keys.kcv2, order.map((i) => entries[i]!), metadata);
  const th = await gmac(keys.gcm, nonce(0xffffffff, 0xffffffffffffffffn), mh);
  if (!equalBytes(th, record.mac)) throw new TamperedError("the header", what);
  return { master, what, entries, record, gcm: keys.gcm, order, locked: new Set(record.locked) };
}

/**
 * Step 4: every tensor's tag over `bytes(i)`, its stored bytes (else
 * {@link TamperedError} naming it). `onTensor` is told each tensor's length once its tag
 * passed.
 */
export async function verifyTensors(
  h: VerifiedHeader,
  bytes: (i: number) => Uint8Array,
  onTensor?: (length: number) => void,
): Promise<void> {
  await Promise.all(
    h.order.map(async (i, t) => {
      const e = h.entries[i]!;
      const tag = await tensorTag(h.gcm, t, e, h.locked.has(e.name), bytes(i));
      if (!equalBytes(tag, h.record.tags[t]!)) throw new TamperedError(`tensor ${JSON.stringify(e.name)}`, h.what);
      onTensor?.(e.end - e.start);
    }),
  );
}

/**
 * Unlocks in place `data`, the stored bytes of entry `i` of a verified container (a no-op
 * for a tensor left clear), with `unlocker` (default WebCrypto's {@link unlockInPlace}).
 */
export async function unlockEntry(h: VerifiedHeader, i: number, data: Uint8Array, unlocker?: Unlocker): Promise<void> {
  const e = h.entries[i]!;
  if (!h.locked.has(e.name)) return;
  const n = await tensorNonce(h.record.salt, e.name);
  await (unlocker ? unlocker(n, data) : unlockInPlace(h.master, n, 0, data));
}

/**
 * Unlocks in place `data`, every byte of a locked tensor whose nonce is `nonce`
 * (`P[j] = INV_SBOX[L[j]] XOR KS[j]`): WebCrypto by default, or a GPU.
 */
export type Unlocker = (nonce: Uint8Array, data: Uint8Array) => Promise<void>;

/** How {@link verifyAndUnlock} delivers the clear bytes. */
export interface UnlockTarget {
  /**
   * Where entry `i`'s clear bytes go (its length; default a fresh array): written only
   * after every tag has passed.
   */
  target?: (i: number) => Uint8Array;
  /** The unlock of a locked tensor's bytes (default {@link unlockInPlace} with WebCrypto). */
  unlocker?: Unlocker;
}

/**
 * Checks a v2 container and unlocks it: KCV2 (else {@link WrongKeyError}), the header
 * tag, then each tensor's tag (else {@link TamperedError}); then returns every entry's
 * bytes in the clear, in the order of `entries` (fresh copies, or `into.target`'s;
 * `bytes` is not changed).
 * `metadata` is every metadata entry but the seven record keys; `what` names the file
 * in messages.
 */
export async function verifyAndUnlock(
  master: CryptoKey,
  what: string,
  entries: readonly Entry[],
  record: RecordV2,
  metadata: readonly [string, string][],
  bytes: (i: number) => Uint8Array,
  onProgress?: Progress,
  into: UnlockTarget = {},
): Promise<Uint8Array[]> {
  const h = await verifyHeader(master, what, entries, record, metadata);
  const total = entries.reduce((s, e) => s + (e.end - e.start), 0);
  let done = 0;
  const step = (length: number) => {
    done += length / 2;
    onProgress?.(done, total);
  };
  // Tags first, every one, before a single byte is unlocked.
  await verifyTensors(h, bytes, step);
  return Promise.all(
    entries.map(async (e, i) => {
      const stored = bytes(i);
      const out = into.target?.(i) ?? new Uint8Array(stored.length);
      out.set(stored);
      await unlockEntry(h, i, out, into.unlocker);
      step(e.end - e.start);
      return out;
    }),
  );
}
