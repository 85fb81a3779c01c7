/**
 * Locked ONNX models unlocked in memory (docs/SPEC.md, "ONNX"): `unlock(bytes, key)`
 * parses the `ModelProto` with the checked wire reader, walks its initializers as
 * `src/format/onnx.rs` does (main graph, graphs in node attributes, functions,
 * training_info; the same names, the same tensors locked or left clear), reads the lock
 * record from the trailing `metadata_props` entries, checks the key, the header tag
 * (with the `deeplock.onnx.skeleton` digest) and every tensor's tag, and only then
 * returns the original model, byte for byte what `deeplock unlock` writes: ready for
 * onnxruntime-web's `InferenceSession.create(bytes)`.
 */

import { type Entry, type Progress, verifyAndUnlock } from "./auth.js";
import { masterKey, sha256, toHex, type KeyInput } from "./crypto.js";
import { BadFileError } from "./errors.js";
import { METADATA_KEY, readRecord, RECORD_KEYS } from "./record.js";
import { type Backend, type GpuOption, gpuUnlockerFor } from "./webgpu.js";
import { describe, Reader } from "./wire.js";

/** The metadata entry v2's header tag binds for an ONNX file (never stored). */
export const SKELETON_KEY = "deeplock.onnx.skeleton";

/** Deepest nesting of graphs in graphs (If/Loop bodies) accepted. */
const MAX_DEPTH = 32;

/** `ModelProto.metadata_props`. */
const MODEL_METADATA = 14;

/** The keys a lock writes into `metadata_props` and an unlock removes. */
const OWNED_KEYS: readonly string[] = [...RECORD_KEYS, METADATA_KEY];

/** An initializer left in the clear, and why. */
export interface Clear {
  name: string;
  why: string;
}

/** A parsed ONNX model: its lockable tensors, what is left clear, its record. */
export interface Model {
  /** The tensors whose bytes lie contiguous in the file, sorted by offset. */
  tensors: Entry[];
  clear: Clear[];
  /** The user's `metadata_props` entries, in file order. */
  metadata: [string, string][];
  /** The deeplock entries of the record. */
  record: Map<string, string>;
  /** Where the record's entries begin: the file's length if it has none. */
  recordStart: number;
  /** `deeplock.onnx.skeleton`: hex SHA-256 of the bytes outside the tensors. */
  skeleton: string;
  /** Initializers whose data lie in an external file. */
  external: number;
}

/** The safetensors dtype and bits per element of ONNX `data_type` `t` (`U8` for types safetensors lacks). */
function dataType(t: bigint): [string | undefined, number] | undefined {
  const types: Record<number, [string | undefined, number]> = {
    1: ["F32", 32], 2: ["U8", 8], 3: ["I8", 8], 4: ["U16", 16], 5: ["I16", 16], 6: ["I32", 32],
    7: ["I64", 64], 9: ["BOOL", 8], 10: ["F16", 16], 11: ["F64", 64], 12: ["U32", 32], 13: ["U64", 64],
    14: ["C64", 64], 15: [undefined, 128], 16: ["BF16", 16], 17: ["F8_E4M3", 8], 18: [undefined, 8],
    19: ["F8_E5M2", 8], 20: [undefined, 8], 21: [undefined, 4], 22: [undefined, 4], 23: ["F4", 4],
    24: ["F8_E8M0", 8], 25: [undefined, 2], 26: [undefined, 2],
  };
  return t <= 26n ? types[Number(t)] : undefined;
}

const U64_MAX = (1n << 64n) - 1n;
const I64_MAX = (1n << 63n) - 1n;

class Walk {
  tensors: Entry[] = [];
  clear: Clear[] = [];
  names = new Set<string>();
  external = 0;
  constructor(readonly r: Reader) {}

  /** A `GraphProto` at `s..e`, whose initializers are named `prefix` + their name. */
  graph(s: number, e: number, prefix: string, depth: number): void {
    const r = this.r;
    if (depth > MAX_DEPTH) throw r.bad(`graphs nested over ${MAX_DEPTH} deep`);
    let nodes = 0;
    for (const f of r.fields(s, e)) {
      if (f.number !== 1 && f.number !== 5 && f.number !== 15) continue;
      if (f.wire !== 2) throw r.bad(`GraphProto field ${f.number} of a wrong type`);
      if (f.number === 5) this.tensor(f.from, f.to, prefix);
      else if (f.number === 1) this.node(f.from, f.to, prefix, nodes++, depth);
      else this.clear.push({ name: `${prefix}#sparse@${f.start}`, why: "a sparse initializer (values and indices stay in the clear)" });
    }
  }

  /** A `FunctionProto`: its nodes' subgraphs, under `function:DOMAIN:NAME/`. */
  function(s: number, e: number): void {
    const r = this.r;
    const fields = r.fields(s, e);
    let name = "";
    let domain = "";
    for (const f of fields) {
      if (f.wire !== 2) continue;
      if (f.number === 1) name = r.string(f.from, f.to);
      else if (f.number === 10) domain = r.string(f.from, f.to);
    }
    const prefix = `function:${domain}:${name}/`;
    // As the Rust walk does: a node's index here is its field's position in the function.
    fields.forEach((f, j) => {
      if (f.number === 7 && f.wire === 2) this.node(f.from, f.to, prefix, j, 1);
    });
  }

  /** A `NodeProto` (number `index` of its graph): its attributes' subgraphs. */
  node(s: number, e: number, prefix: string, index: number, depth: number): void {
    const r = this.r;
    const fields = r.fields(s, e);
    let name: string | undefined;
    for (const f of fields) {
      if (f.number === 3 && f.wire === 2) {
        if (name !== undefined) throw r.bad(`the node at byte ${s} has two names`);
        name = r.string(f.from, f.to);
      }
    }
    const label = name !== undefined && name !== "" ? name : `#${index}`;
    for (const f of fields) {
      if (f.number !== 5 || f.wire !== 2) continue;
      const a = f.from;
      const attr = r.fields(f.from, f.to);
      let attrName: string | undefined;
      for (const g of attr) {
        if (g.number === 1 && g.wire === 2) {
          if (attrName !== undefined) throw r.bad(`the attribute at byte ${a} has two names`);
          attrName = r.string(g.from, g.to);
        }
      }
      attrName ??= "";
      let graphs = 0;
      let single = false;
      for (const g of attr) {
        if (g.wire !== 2) continue;
        if (g.number === 6) {
          if (single) throw r.bad(`the attribute at byte ${a} holds two graphs`);
          single = true;
          this.graph(g.from, g.to, `${prefix}${label}/${attrName}/`, depth + 1);
        } else if (g.number === 11) {
          this.graph(g.from, g.to, `${prefix}${label}/${attrName}[${graphs++}]/`, depth + 1);
        } else if (g.number === 5 || g.number === 10) {
          this.clear.push({ name: `${prefix}${label}/${attrName}`, why: "a tensor in a node attribute (a Constant's value)" });
        }
      }
    }
  }

  /** An initializer (`TensorProto`) at `s..e`. */
  tensor(s: number, e: number, prefix: string): void {
    const r = this.r;
    const dims: bigint[] = [];
    let dtype: bigint | undefined;
    let name: string | undefined;
    let raw: [number, number] | undefined;
    let location: bigint | undefined;
    const floatRuns: [number, number][] = [];
    const doubleRuns: [number, number][] = [];
    let unpacked = false;
    let varints = false;
    let strings = false;
    const twice = (what: string) => r.bad(`the tensor at byte ${s} holds ${what} twice`);
    for (const f of r.fields(s, e)) {
      const n = f.number;
      const w = f.wire;
      if (n === 1 && w === 0) dims.push(f.varint);
      else if (n === 1 && w === 2) {
        for (let at = f.from; at < f.to; ) {
          const [v, next] = r.varint(at, f.to);
          dims.push(v);
          at = next;
        }
      } else if (n === 2 && w === 0) {
        if (dtype !== undefined) throw twice("data_type");
        dtype = f.varint;
      } else if (n === 3) {
        throw r.bad(`the tensor at byte ${s} is segmented, which deeplock does not lock`);
      } else if (n === 4 && w === 2) floatRuns.push([f.from, f.to]);
      else if (n === 10 && w === 2) doubleRuns.push([f.from, f.to]);
      else if ((n === 4 && w === 5) || (n === 10 && w === 1)) unpacked = true;
      else if ((n === 5 || n === 7 || n === 11) && (w === 0 || w === 2)) varints = true;
      else if (n === 6 && w === 2) strings = true;
      else if (n === 8 && w === 2) {
        const v = r.string(f.from, f.to);
        if (name !== undefined) throw twice("a name");
        name = v;
      } else if (n === 9 && w === 2) {
        if (raw !== undefined) throw twice("raw_data");
        raw = [f.from, f.to];
      } else if (n === 14 && w === 0) {
        if (location !== undefined) throw twice("data_location");
        location = f.varint;
      } else if ((n >= 1 && n <= 11) || n === 14) {
        throw r.bad(`TensorProto field ${n} at byte ${f.start} holds ${describe(f)}, not its type`);
      }
    }
    if (name === undefined || name === "") throw r.bad(`the initializer at byte ${s} has no name`);
    name = prefix + name;
    const shown = JSON.stringify(name);
    if (this.names.has(name)) throw r.bad(`two initializers are named ${shown}`);
    this.names.add(name);
    const t = dtype ?? 0n;
    const known = dataType(t);
    if (known === undefined) throw r.bad(`initializer ${shown} has data_type ${t}, which holds no fixed-width numbers`);
    const [safeDtype, bits] = known;
    let count = 1n;
    for (const d of dims) {
      if (d > I64_MAX) throw r.bad(`initializer ${shown} has a negative dimension`);
      count *= d;
      if (count > U64_MAX) throw r.bad(`initializer ${shown} has more elements than 2^64`);
    }
    const totalBits = count * BigInt(bits);
    if (totalBits > U64_MAX) throw r.bad(`initializer ${shown} is too large`);
    const want = (totalBits + 7n) / 8n;
    if (location === 1n) {
      this.external++;
      this.clear.push({ name, why: "external data (data_location EXTERNAL), which this package does not read" });
      return;
    }
    const typed = floatRuns.length > 0 || doubleRuns.length > 0 || unpacked || varints || strings;
    let range: [number, number] | undefined;
    if (raw !== undefined) {
      if (typed) throw r.bad(`initializer ${shown} holds both raw_data and typed data`);
      range = raw;
    } else if (unpacked || floatRuns.length + doubleRuns.length > 1) {
      this.clear.push({ name, why: "float_data or double_data not packed in one run: its bytes are not contiguous" });
      return;
    } else if (varints) {
      this.clear.push({ name, why: "int32_data, int64_data or uint64_data: varints, whose bytes cannot be changed in place" });
      return;
    } else if (strings) {
      this.clear.push({ name, why: "string_data" });
      return;
    } else if (floatRuns.length === 1 && (t === 1n || t === 14n)) {
      range = floatRuns[0];
    } else if (doubleRuns.length === 1 && (t === 11n || t === 15n)) {
      range = doubleRuns[0];
    } else if (floatRuns.length > 0 || doubleRuns.length > 0) {
      throw r.bad(`initializer ${shown} of data_type ${t} holds float_data or double_data, which it cannot`);
    }
    if (range === undefined) {
      if (count !== 0n) throw r.bad(`initializer ${shown} holds no data for its ${count} elements`);
      return;
    }
    const [start, end] = range;
    if (BigInt(end - start) !== want) {
      throw r.bad(`initializer ${shown} holds ${end - start} bytes, but its shape and type need ${want}`);
    }
    const shape = safeDtype !== undefined ? dims : [want];
    if (shape.some((d) => d > BigInt(Number.MAX_SAFE_INTEGER))) {
      throw r.bad(`initializer ${shown} is too large for this machine`);
    }
    this.tensors.push({ name, dtype: safeDtype ?? "U8", shape: shape.map(Number), start, end });
  }
}

function corrupt(what: string, reason: string): BadFileError {
  return new BadFileError(what, `corrupt deeplock metadata: ${reason}; the file was damaged or edited after locking`);
}

/** A `StringStringEntryProto` at `s..e`: its key and value. */
function entry(r: Reader, s: number, e: number): [string, string] {
  let key: string | undefined;
  let value: string | undefined;
  for (const f of r.fields(s, e)) {
    if (f.number !== 1 && f.number !== 2) continue;
    if (f.wire !== 2) throw r.bad(`a metadata entry at byte ${s} holds a non-string`);
    if ((f.number === 1 ? key : value) !== undefined) throw r.bad(`a metadata entry at byte ${s} holds a field twice`);
    const text = r.string(f.from, f.to);
    if (f.number === 1) key = text;
    else value = text;
  }
  return [key ?? "", value ?? ""];
}

/**
 * Parses and validates the ONNX model in `bytes` (every length checked, here, once), as
 * the CLI reads it; `what` names it in messages.
 */
export async function parse(bytes: Uint8Array, what = "the model"): Promise<Model> {
  const r = new Reader(bytes, (reason) => new BadFileError(what, `not a valid ONNX file: ${reason} (truncated or damaged?)`));
  const walk = new Walk(r);
  let irVersion = false;
  let graph = false;
  const metadata: [string, string][] = [];
  const record = new Map<string, string>();
  let recordStart: number | undefined;
  r.fields(0, bytes.length).forEach((f, k) => {
    const n = f.number;
    const mine = n === 1 || n === 7 || n === MODEL_METADATA || n === 20 || n === 25;
    if (mine && f.wire !== (n === 1 ? 0 : 2)) throw r.bad(`ModelProto field ${n} holds ${describe(f)}, not its type`);
    if (n === 1) irVersion = true;
    else if (n === 7) {
      if (graph) throw r.bad("the model holds two graphs");
      graph = true;
      walk.graph(f.from, f.to, "", 0);
    } else if (n === MODEL_METADATA) {
      const [key, value] = entry(r, f.from, f.to);
      if (OWNED_KEYS.includes(key)) {
        if (record.has(key)) throw corrupt(what, `${key} appears twice`);
        record.set(key, value);
        recordStart ??= f.start;
      } else {
        if (recordStart !== undefined) throw corrupt(what, "other fields follow the lock record");
        metadata.push([key, value]);
      }
    } else if (n === 20) {
      for (const g of r.fields(f.from, f.to)) {
        if ((g.number === 1 || g.number === 2) && g.wire === 2) {
          const part = g.number === 1 ? "initialization" : "algorithm";
          walk.graph(g.from, g.to, `training_info[${k}]/${part}/`, 1);
        }
      }
    } else if (n === 25) {
      walk.function(f.from, f.to);
    }
    if (recordStart !== undefined && n !== MODEL_METADATA) throw corrupt(what, "other fields follow the lock record");
  });
  if (!irVersion) throw r.bad("the ModelProto has no ir_version");
  if (!graph) throw r.bad("the ModelProto has no graph");
  const end = recordStart ?? bytes.length;
  const tensors = walk.tensors.sort((a, b) => a.start - b.start || a.end - b.end);
  // The skeleton: LE64(gap length) || gap, for the gaps between tensors and up to the
  // record (src/format/onnx.rs hashes the lengths little-endian).
  const gaps: [number, number][] = [];
  let at = 0;
  for (const t of [...tensors, { start: end, end }]) {
    gaps.push([at, t.start]);
    at = t.end;
  }
  const total = gaps.reduce((s, [a, b]) => s + 8 + (b - a), 0);
  const skel = new Uint8Array(total);
  const view = new DataView(skel.buffer);
  let pos = 0;
  for (const [a, b] of gaps) {
    view.setBigUint64(pos, BigInt(b - a), true);
    skel.set(bytes.subarray(a, b), pos + 8);
    pos += 8 + (b - a);
  }
  const skeleton = toHex(await sha256(skel));
  return { tensors, clear: walk.clear, metadata, record, recordStart: end, skeleton, external: walk.external };
}

/** Options of {@link unlock}. */
export interface UnlockOptions {
  /** The name messages give the file (default `"the model"`). */
  name?: string;
  onProgress?: Progress;
  /**
   * Unlock the tensors' bytes on a WebGPU device (`"auto"`: `navigator.gpu`, where it
   * has an adapter), with the project's WGSL; tags are checked with WebCrypto either way.
   * Falls back to WebCrypto where no adapter is found or the key is a `CryptoKey`.
   */
  gpu?: GpuOption;
  /** Told which path unlocks the bytes (WebGPU and its adapter, or WebCrypto and why). */
  onBackend?: (b: Backend) => void;
}

/**
 * Verifies and unlocks a deeplock v2 ONNX model held in `bytes` with `key`: the
 * original model's bytes, byte for byte, once every check passed. Throws
 * {@link WrongKeyError}, {@link TamperedError}, {@link NotLockedError},
 * {@link UnauthenticatedError} or {@link BadFileError}.
 */
export async function unlock(bytes: Uint8Array, key: KeyInput, options: UnlockOptions = {}): Promise<Uint8Array> {
  const what = options.name ?? "the model";
  const master = await masterKey(key);
  const m = await parse(bytes, what);
  if (m.external > 0) {
    throw new BadFileError(
      what,
      `it keeps ${m.external} initializer(s) in external data files, which this package does not read; unlock it with the deeplock CLI or Python package, or save the model with its weights inside`,
    );
  }
  const rec = readRecord(m.record, m.tensors.length, what);
  const names = new Set(m.tensors.map((t) => t.name));
  for (const l of rec.locked) {
    if (!names.has(l)) throw corrupt(what, `deeplock.locked names ${JSON.stringify(l)}, which is not a tensor of the file`);
  }
  const others: [string, string][] = [...m.record].filter(([k]) => !(RECORD_KEYS as readonly string[]).includes(k));
  others.push([SKELETON_KEY, m.skeleton]);
  const out = new Uint8Array(m.recordStart);
  let at = 0;
  for (const t of m.tensors) {
    out.set(bytes.subarray(at, t.start), at);
    at = t.end;
  }
  out.set(bytes.subarray(at, m.recordStart), at);
  const unlocker = await gpuUnlockerFor(options.gpu, key, options.onBackend);
  await verifyAndUnlock(
    master,
    what,
    m.tensors,
    rec,
    others,
    (i) => bytes.subarray(m.tensors[i]!.start, m.tensors[i]!.end),
    options.onProgress,
    { target: (i) => out.subarray(m.tensors[i]!.start, m.tensors[i]!.end), ...(unlocker ? { unlocker } : {}) },
  );
  return out;
}
