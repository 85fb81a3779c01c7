/**
 * Locked safetensors files read into typed arrays: `load(bytes, key)` checks the v2 tags
 * (docs/SPEC.md) and returns every tensor in the clear, with the user's metadata.
 */

import { type Entry, type Progress, verifyAndUnlock } from "./auth.js";
import { masterKey, type KeyInput } from "./crypto.js";
import { BadFileError } from "./errors.js";
import { asIndex, type Json, JsonError, parseJson } from "./json.js";
import { checkLocked, METADATA_KEY, readRecord, RECORD_KEYS } from "./record.js";
import { type Backend, type GpuOption, gpuUnlockerFor } from "./webgpu.js";

/** Bits per element of every dtype safetensors names. */
export const DTYPE_BITS: Readonly<Record<string, number>> = {
  BOOL: 8, F4: 4, F6_E2M3: 6, F6_E3M2: 6, U8: 8, I8: 8, F8_E5M2: 8, F8_E4M3: 8, F8_E8M0: 8,
  I16: 16, U16: 16, F16: 16, BF16: 16, I32: 32, U32: 32, F32: 32, C64: 64, F64: 64, I64: 64, U64: 64,
};

/** Typed array of a tensor's elements (raw bits for the types JS has no array of). */
export type TensorData =
  | Uint8Array | Int8Array | Uint16Array | Int16Array | Uint32Array | Int32Array
  | Float32Array | Float64Array | BigInt64Array | BigUint64Array;

/** A tensor read from a file. */
export interface Tensor {
  name: string;
  /** The safetensors dtype (`F32`, `BF16`, ...). */
  dtype: string;
  shape: number[];
  /**
   * The elements: Float32Array for F32, Float64Array for F64, (Big)Int/Uint arrays for
   * the integer types, Uint16Array of the bits for F16 and BF16, Float32Array pairs for
   * C64, Uint8Array of the bytes for BOOL, F8 and the sub-byte types.
   */
  data: TensorData;
  /** The same bytes, little-endian as in the file. */
  bytes: Uint8Array;
}

/** What {@link load} returns. */
export interface Loaded {
  tensors: Tensor[];
  /** The user's `__metadata__`, without deeplock's record. */
  metadata: Record<string, string>;
}

/** Options of {@link load}. */
export interface LoadOptions {
  /** The name messages give the file (default `"the model"`). */
  name?: string;
  onProgress?: Progress;
  /**
   * Unlock the tensors' bytes on a WebGPU device (`"auto"`: `navigator.gpu`, where it
   * has an adapter) with the project's WGSL; tags are checked with WebCrypto either way.
   * Falls back to WebCrypto where no adapter is found or the key is a `CryptoKey`.
   */
  gpu?: GpuOption;
  /** Told which path unlocks the bytes (WebGPU and its adapter, or WebCrypto and why). */
  onBackend?: (b: Backend) => void;
}

function typed(dtype: string, b: Uint8Array): TensorData {
  const buf = b.buffer as ArrayBuffer;
  const o = b.byteOffset;
  switch (dtype) {
    case "F32": case "C64": return new Float32Array(buf, o, b.length / 4);
    case "F64": return new Float64Array(buf, o, b.length / 8);
    case "I32": return new Int32Array(buf, o, b.length / 4);
    case "U32": return new Uint32Array(buf, o, b.length / 4);
    case "I16": return new Int16Array(buf, o, b.length / 2);
    case "U16": case "F16": case "BF16": return new Uint16Array(buf, o, b.length / 2);
    case "I64": return new BigInt64Array(buf, o, b.length / 8);
    case "U64": return new BigUint64Array(buf, o, b.length / 8);
    case "I8": return new Int8Array(buf, o, b.length);
    default: return b;
  }
}

/** A parsed safetensors header: entries in header order, metadata, data section start. */
export interface Header {
  entries: Entry[];
  metadata: Map<string, string>;
  dataStart: number;
}

/** Parses and validates a safetensors file's header (every offset checked once, here). */
export function parseHeader(bytes: Uint8Array, what: string): Header {
  const bad = (reason: string): never => {
    throw new BadFileError(what, `not a valid safetensors file: ${reason}`);
  };
  if (bytes.length < 8) bad(`${bytes.length} bytes, shorter than the 8-byte header length`);
  const n64 = new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true);
  if (n64 > 100_000_000n) bad(`header too large: ${n64} bytes declared, the limit is 100000000`);
  const n = Number(n64);
  if (8 + n > bytes.length) bad(`header of ${n} bytes declared, but the file has ${bytes.length - 8} after the length`);
  let json: Json;
  try {
    json = parseJson(new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(8, 8 + n)));
  } catch (e) {
    if (e instanceof JsonError) return bad(`header: ${e.message}`);
    if (e instanceof TypeError) return bad("header is not UTF-8");
    throw e;
  }
  if (!(json instanceof Map)) return bad("header is not a JSON object");
  const metadata = new Map<string, string>();
  const entries: Entry[] = [];
  for (const [name, v] of json) {
    if (name === "__metadata__") {
      if (v === null) continue;
      if (!(v instanceof Map)) return bad("__metadata__ is not an object");
      for (const [k, s] of v) {
        if (typeof s !== "string") return bad(`__metadata__ value of ${JSON.stringify(k)} is not a string`);
        metadata.set(k, s);
      }
      continue;
    }
    if (!(v instanceof Map)) return bad(`entry ${JSON.stringify(name)} is not an object`);
    for (const k of v.keys()) {
      if (k !== "dtype" && k !== "shape" && k !== "data_offsets") bad(`tensor ${JSON.stringify(name)} has unknown field ${JSON.stringify(k)}`);
    }
    const dtype = v.get("dtype");
    if (typeof dtype !== "string" || DTYPE_BITS[dtype] === undefined) return bad(`tensor ${JSON.stringify(name)} has unknown dtype`);
    const shapeJ = v.get("shape");
    if (!Array.isArray(shapeJ)) return bad(`tensor ${JSON.stringify(name)} has no shape`);
    const shape: number[] = [];
    let numel = 1n;
    for (const d of shapeJ) {
      const x = asIndex(d);
      if (x === undefined) return bad(`tensor ${JSON.stringify(name)} has an invalid dimension`);
      shape.push(x);
      numel *= BigInt(x);
    }
    const offs = v.get("data_offsets");
    if (!Array.isArray(offs) || offs.length !== 2) return bad(`tensor ${JSON.stringify(name)} has no data_offsets [start, end]`);
    const start = asIndex(offs[0]);
    const end = asIndex(offs[1]);
    if (start === undefined || end === undefined || end < start) return bad(`tensor ${JSON.stringify(name)} has invalid data_offsets`);
    const bits = numel * BigInt(DTYPE_BITS[dtype]!);
    if (bits % 8n !== 0n || bits / 8n !== BigInt(end - start)) {
      bad(`tensor ${JSON.stringify(name)} holds ${end - start} bytes, its dtype and shape need ${bits / 8n}`);
    }
    entries.push({ name, dtype, shape, start, end });
  }
  const dataStart = 8 + n;
  const dataLen = bytes.length - dataStart;
  const sorted = [...entries].sort((a, b) => a.start - b.start || a.end - b.end);
  let at = 0;
  for (const e of sorted) {
    if (e.start !== at) bad(`tensor ${JSON.stringify(e.name)} starts at ${e.start}, expected ${at} (tensors must cover the data exactly)`);
    at = e.end;
  }
  if (at !== dataLen) bad(`the tensors cover ${at} bytes, the data section holds ${dataLen}`);
  return { entries, metadata, dataStart };
}

/**
 * Verifies and unlocks a deeplock v2 safetensors file held in `bytes` with `key`: every
 * tag is checked before anything is returned. Throws {@link WrongKeyError},
 * {@link TamperedError}, {@link NotLockedError}, {@link UnauthenticatedError} or
 * {@link BadFileError}.
 */
export async function load(bytes: Uint8Array, key: KeyInput, options: LoadOptions = {}): Promise<Loaded> {
  const what = options.name ?? "the model";
  const master = await masterKey(key);
  const h = parseHeader(bytes, what);
  const record = readRecord(h.metadata, h.entries.length, what);
  checkLocked(record, h.entries, what);
  const others: [string, string][] = [...h.metadata].filter(([k]) => !(RECORD_KEYS as readonly string[]).includes(k));
  const unlocker = await gpuUnlockerFor(options.gpu, key, options.onBackend);
  const clear = await verifyAndUnlock(
    master,
    what,
    h.entries,
    record,
    others,
    (i) => bytes.subarray(h.dataStart + h.entries[i]!.start, h.dataStart + h.entries[i]!.end),
    options.onProgress,
    unlocker ? { unlocker } : {},
  );
  const metadata: Record<string, string> = {};
  for (const [k, v] of others) if (k !== METADATA_KEY) metadata[k] = v;
  return {
    tensors: h.entries.map((e, i) => ({ name: e.name, dtype: e.dtype, shape: e.shape, data: typed(e.dtype, clear[i]!), bytes: clear[i]! })),
    metadata,
  };
}
