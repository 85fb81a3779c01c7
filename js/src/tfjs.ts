/**
 * Locked TensorFlow.js models (docs/SPEC.md, "TensorFlow.js"): `io(url, key)` is a TF.js
 * `IOHandler` for `tf.loadLayersModel` and `tf.loadGraphModel` that fetches a locked
 * `model.json` and its weight files, checks every v2 tag and hands TF.js the model in
 * the clear; `unlock(modelJson, files, key)` does the same from bytes in memory.
 *
 * Nothing of TF.js is imported: the few types below are TF.js's own, structurally.
 */

import { type Entry, type RecordV2, unlockEntry, verifyHeader, verifyTensors } from "./auth.js";
import { masterKey, sha256, toHex, utf8, type KeyInput } from "./crypto.js";
import { BadFileError, DeeplockError, MissingFileError, NotLockedError } from "./errors.js";
import { asIndex, type Json, JsonError, parseJson } from "./json.js";
import { checkLocked, readRecord, RECORD_KEYS } from "./record.js";

/** One weight of a `weightsManifest` group (TF.js's `WeightsManifestEntry`). */
export interface WeightsManifestEntry {
  name: string;
  shape: number[];
  dtype: "float32" | "int32" | "bool" | "complex64";
  group?: "model" | "optimizer";
  quantization?: { scale?: number; min?: number; dtype: "uint16" | "uint8" | "float16" };
}

/** TF.js's `TrainingConfig`. */
export interface TrainingConfig {
  optimizer_config: {};
  loss: string | string[] | { [key: string]: string };
  metrics?: string[] | { [key: string]: string };
  weighted_metrics?: string[];
  sample_weight_mode?: string;
  loss_weights?: number[] | { [key: string]: number };
}

/** What {@link unlock} and an {@link io} handler's `load` return (TF.js's `ModelArtifacts`). */
export interface ModelArtifacts {
  modelTopology?: {};
  trainingConfig?: TrainingConfig;
  /** Every group's weights, in manifest order. */
  weightSpecs?: WeightsManifestEntry[];
  /** Every weight file's bytes in the clear, concatenated in manifest order. */
  weightData?: ArrayBuffer;
  format?: string;
  generatedBy?: string;
  convertedBy?: string | null;
  signature?: {};
  userDefinedMetadata?: { [key: string]: {} };
  modelInitializer?: {};
  initializerSignature?: {};
}

/** The part of TF.js's `IOHandler` a loader needs. */
export interface IOHandler {
  load(): Promise<ModelArtifacts>;
}

/** Weight files by path (relative to `model.json`, as the manifest names them), or a function reading one. */
export type Files = Map<string, Uint8Array> | ((path: string) => Promise<Uint8Array>);

/** Options of {@link unlock}. */
export interface UnlockOptions {
  /** The name messages give the model (default `"model.json"`). */
  name?: string;
  /** Told the fraction done, from 0 to 1 (1 once the model is verified and unlocked). */
  onProgress?: (fraction: number) => void;
}

/** Options of {@link io}. */
export interface IoOptions {
  /** Told the fraction done, from 0 to 1: downloads up to 0.5, then verifying and unlocking. */
  onProgress?: (fraction: number) => void;
  /** The `fetch` to use (default: the global one). */
  fetch?: typeof fetch;
  /** Passed to every `fetch` (credentials, headers, ...). */
  requestInit?: RequestInit;
}

/** The member that holds the record, and the metadata entry `T_H` binds `model.json` by. */
const MEMBER = "deeplock";
const MODEL_DIGEST = "deeplock.tfjs.model";
const MAX_MODEL_JSON = 256 << 20;
const FETCHES = 6;

/** Stored types of the manifest (docs/SPEC.md): safetensors dtype and bytes per element. */
const DTYPES: Readonly<Record<string, readonly [string, number]>> = {
  float32: ["F32", 4], int32: ["I32", 4], bool: ["BOOL", 1], complex64: ["C64", 8],
};
const QUANTIZED: Readonly<Record<string, readonly [string, number]>> = {
  uint8: ["U8", 1], uint16: ["U16", 2], float16: ["F16", 2],
};

/** A weight group: its files and the bytes its weights take. */
interface Group {
  paths: string[];
  length: number;
}

/** A locked `model.json`, read: `J`, the record, the tensors and the groups. */
interface LockedModel {
  original: Uint8Array;
  record: RecordV2;
  entries: Entry[];
  groups: Group[];
}

const isWs = (c: number) => c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d;

/** The manifest's tensors, with their offsets in `D`, and its groups. */
function readManifest(manifest: Json | undefined, what: string): { entries: Entry[]; groups: Group[] } {
  const bad = (reason: string): never => {
    throw new BadFileError(what, `not a valid TF.js model.json: ${reason}`);
  };
  if (!Array.isArray(manifest)) return bad("weightsManifest is not an array");
  const entries: Entry[] = [];
  const groups: Group[] = [];
  const paths = new Set<string>();
  const names = new Set<string>();
  let at = 0;
  manifest.forEach((g, gi) => {
    if (!(g instanceof Map)) return bad(`weightsManifest[${gi}] is not an object`);
    const ps = g.get("paths");
    const ws = g.get("weights");
    if (!Array.isArray(ps) || !Array.isArray(ws)) return bad(`weightsManifest[${gi}] needs "paths" and "weights" arrays`);
    const group: Group = { paths: [], length: 0 };
    for (const p of ps) {
      if (
        typeof p !== "string" || p === "" || p.startsWith("/") || /[\\?#%]/.test(p) ||
        p.split("/").some((c) => c === "" || c === "." || c === "..")
      ) {
        return bad(`weight file path ${JSON.stringify(p)} is not a plain relative path (/-separated, no empty, . or .. component, no \\ ? # %)`);
      }
      if (paths.has(p)) return bad(`weight file ${JSON.stringify(p)} is named twice`);
      paths.add(p);
      group.paths.push(p);
    }
    ws.forEach((w, wi) => {
      const where = `weightsManifest[${gi}].weights[${wi}]`;
      if (!(w instanceof Map)) return bad(`${where} is not an object`);
      const name = w.get("name");
      if (typeof name !== "string") return bad(`${where} has no name`);
      if (names.has(name)) return bad(`weight ${JSON.stringify(name)} is named twice`);
      names.add(name);
      const dtype = w.get("dtype");
      const plain = typeof dtype === "string" ? DTYPES[dtype] : undefined;
      if (plain === undefined) {
        return bad(`weight ${JSON.stringify(name)} has dtype ${JSON.stringify(dtype ?? null)}; deeplock reads float32, int32, bool and complex64`);
      }
      let stored = plain;
      const q = w.get("quantization");
      if (q !== undefined && q !== null) {
        const qd = q instanceof Map ? q.get("dtype") : undefined;
        const t = typeof qd === "string" ? QUANTIZED[qd] : undefined;
        if (t === undefined) return bad(`weight ${JSON.stringify(name)} has an unknown quantization (uint8, uint16 and float16 are known)`);
        stored = t;
      }
      const shapeJ = w.get("shape");
      if (!Array.isArray(shapeJ)) return bad(`weight ${JSON.stringify(name)} has no shape`);
      const shape: number[] = [];
      let length = BigInt(stored[1]);
      for (const d of shapeJ) {
        const x = asIndex(d);
        if (x === undefined) return bad(`weight ${JSON.stringify(name)} has an invalid dimension`);
        shape.push(x);
        length *= BigInt(x);
      }
      if (length > BigInt(Number.MAX_SAFE_INTEGER - at)) return bad(`weight ${JSON.stringify(name)} is too large`);
      const n = Number(length);
      entries.push({ name, dtype: stored[0], shape, start: at, end: at + n });
      at += n;
      group.length += n;
    });
    groups.push(group);
  });
  return { entries, groups };
}

/**
 * Reads a locked `model.json`: checks it is a TF.js model, finds the record where lock
 * writes it (the object's last member, `,"deeplock":R` right before the closing `}`,
 * `R` exactly as lock serializes it) and cuts it out, giving back `J`.
 */
function readLocked(bytes: Uint8Array, what: string): LockedModel {
  const bad = (reason: string): never => {
    throw new BadFileError(what, reason);
  };
  if (bytes.length > MAX_MODEL_JSON) bad(`model.json of ${bytes.length} bytes, over the limit of ${MAX_MODEL_JSON}`);
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(bytes);
  } catch {
    return bad("not a TF.js model.json: it is not UTF-8 text");
  }
  if (text.trimStart()[0] !== "{" || !text.includes('"weightsManifest"')) {
    bad("not a TF.js model.json (no JSON object with a weightsManifest); pass the model.json of a TF.js model locked by deeplock");
  }
  let json: Json;
  try {
    json = parseJson(text);
  } catch (e) {
    if (e instanceof JsonError) return bad(`not a valid TF.js model.json: ${e.message}`);
    throw e;
  }
  if (!(json instanceof Map) || !json.has("weightsManifest")) {
    return bad("not a TF.js model.json (no weightsManifest in its top-level object)");
  }
  const { entries, groups } = readManifest(json.get("weightsManifest"), what);
  const member = json.get(MEMBER);
  if (member === undefined) throw new NotLockedError(what);
  const damaged = (reason: string): never =>
    bad(`damaged lock record: ${reason} (an edited or re-saved model.json); get the locked model again from where it came from`);
  if (!(member instanceof Map)) return damaged(`"${MEMBER}" is not an object`);
  const keys = [...member.keys()];
  if (keys.length !== RECORD_KEYS.length || keys.some((k, i) => k !== RECORD_KEYS[i])) {
    return damaged(`"${MEMBER}" must hold exactly ${RECORD_KEYS.join(", ")}, in that order`);
  }
  const meta = new Map<string, string>();
  for (const [k, v] of member) {
    if (typeof v !== "string") return damaged(`${k} is not a string`);
    meta.set(k, v);
  }
  const r = utf8(`,${JSON.stringify(MEMBER)}:{${[...meta].map(([k, v]) => `${JSON.stringify(k)}:${JSON.stringify(v)}`).join(",")}}`);
  let p = bytes.length;
  while (p > 0 && isWs(bytes[p - 1]!)) p--;
  p--; // the closing brace: the text parsed as one object
  const start = p - r.length;
  if (start < 0 || !bytes.subarray(start, p).every((b, i) => b === r[i])) {
    return damaged(`the record is not the last member of model.json, as deeplock writes it`);
  }
  const original = new Uint8Array(bytes.length - r.length);
  original.set(bytes.subarray(0, start), 0);
  original.set(bytes.subarray(p), start);
  const record = readRecord(meta, entries.length, what);
  checkLocked(record, entries, what);
  return { original, record, entries, groups };
}

/** The fields of TF.js's `ModelArtifacts` that `model.json` holds, as in TF.js's own loaders. */
const FIELDS = [
  "modelTopology", "format", "generatedBy", "convertedBy", "trainingConfig", "signature",
  "userDefinedMetadata", "modelInitializer", "initializerSignature",
] as const;

/** Reads one weight file: its bytes, telling `onBytes` of each part as it arrives. */
type Reader = (path: string, onBytes: (n: number) => void) => Promise<Uint8Array>;

async function unlockWith(
  modelJson: Uint8Array,
  read: Reader,
  key: KeyInput,
  what: string,
  onProgress: ((fraction: number) => void) | undefined,
): Promise<ModelArtifacts> {
  const master = await masterKey(key);
  const m = readLocked(modelJson, what);
  const digest = toHex(await sha256(m.original));
  // KCV2 and the header tag, before a single weight file is fetched.
  const h = await verifyHeader(master, what, m.entries, m.record, [[MODEL_DIGEST, digest]]);

  const total = m.groups.reduce((s, g) => s + g.length, 0);
  let fraction = 0;
  const report = (f: number) => {
    fraction = Math.max(fraction, Math.min(f, 1));
    onProgress?.(fraction);
  };
  report(0);
  let received = 0;
  const onBytes = (n: number) => {
    received += n;
    if (received > total) {
      throw new BadFileError(what, `its weight files hold more than the ${total} bytes its weights need: a weight file was extended or replaced; get the locked model again from where it came from`);
    }
    if (total > 0) report((0.5 * received) / total);
  };
  const paths = m.groups.flatMap((g) => g.paths);
  const files: Uint8Array[] = new Array<Uint8Array>(paths.length);
  let next = 0;
  let failed = false;
  const worker = async () => {
    while (next < paths.length && !failed) {
      const i = next++;
      try {
        files[i] = await read(paths[i]!, onBytes);
      } catch (e) {
        failed = true;
        throw e;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(FETCHES, paths.length) }, worker));

  const data = new Uint8Array(total);
  let at = 0;
  let f = 0;
  for (const [gi, g] of m.groups.entries()) {
    const held = g.paths.reduce((s, _, k) => s + files[f + k]!.length, 0);
    if (held !== g.length) {
      throw new BadFileError(
        what,
        `the weight files of group ${gi + 1} (${g.paths.join(", ")}) hold ${held} bytes, its weights need ${g.length}: a weight file was ${held < g.length ? "truncated" : "extended"} or replaced; get the locked model again from where it came from`,
      );
    }
    for (const _ of g.paths) {
      data.set(files[f]!, at);
      at += files[f]!.length;
      f++;
    }
  }
  files.length = 0;

  let done = 0;
  const step = (length: number) => {
    done += length;
    if (total > 0) report(0.5 + (0.5 * done) / (2 * total));
  };
  const bytes = (i: number) => data.subarray(m.entries[i]!.start, m.entries[i]!.end);
  // Every tag, before a single byte is unlocked.
  await verifyTensors(h, bytes, step);
  await Promise.all(
    m.entries.map(async (e, i) => {
      await unlockEntry(h, i, bytes(i));
      step(e.end - e.start);
    }),
  );

  // `J` is what `T_H` bound; TF.js gets exactly its fields.
  const model = JSON.parse(new TextDecoder().decode(m.original)) as Record<string, unknown>;
  const out: Record<string, unknown> = {};
  for (const k of FIELDS) if (model[k] !== undefined && model[k] !== null) out[k] = model[k];
  if (model["convertedBy"] === null) out["convertedBy"] = null;
  const manifest = model["weightsManifest"] as { weights: WeightsManifestEntry[] }[];
  out["weightSpecs"] = manifest.flatMap((g) => g.weights);
  out["weightData"] = data.buffer;
  report(1);
  return out as ModelArtifacts;
}

/**
 * Verifies and unlocks a locked TF.js model held in memory: `modelJson` the locked
 * `model.json`'s bytes, `files` its weight files by the paths its manifest names.
 * Every tag is checked before anything is returned. Throws
 * {@link WrongKeyError}, {@link TamperedError}, {@link NotLockedError},
 * {@link MissingFileError}, {@link BadFileError} or {@link BadKeyError}.
 */
export async function unlock(
  modelJson: Uint8Array,
  files: Files,
  key: KeyInput,
  options: UnlockOptions = {},
): Promise<ModelArtifacts> {
  const what = options.name ?? "model.json";
  const read: Reader = async (path, onBytes) => {
    let b: Uint8Array | undefined;
    if (files instanceof Map) {
      b = files.get(path);
      if (b === undefined) throw new MissingFileError(what, `weight file ${JSON.stringify(path)}`, "not among the files given");
    } else {
      try {
        b = await files(path);
      } catch (e) {
        if (e instanceof DeeplockError) throw e;
        throw new MissingFileError(what, `weight file ${JSON.stringify(path)}`, e instanceof Error ? e.message : String(e));
      }
      if (!(b instanceof Uint8Array)) throw new MissingFileError(what, `weight file ${JSON.stringify(path)}`, "the reader returned no bytes");
    }
    onBytes(b.length);
    return b;
  };
  return unlockWith(modelJson, read, key, what, options.onProgress);
}

/** Fetches `url` whole, telling `onBytes` of each part as it arrives. */
async function get(
  doFetch: typeof fetch,
  init: RequestInit | undefined,
  url: URL,
  what: string,
  file: string,
  onBytes: (n: number) => void,
): Promise<Uint8Array> {
  let res: Response;
  try {
    res = await doFetch(url.href, init);
  } catch (e) {
    throw new MissingFileError(what, file, `network error fetching ${url.href}: ${e instanceof Error ? e.message : String(e)}`);
  }
  if (!res.ok) throw new MissingFileError(what, file, `HTTP ${res.status} ${res.statusText} at ${url.href}`.replace("  ", " "));
  if (res.body === null) {
    const b = new Uint8Array(await res.arrayBuffer());
    onBytes(b.length);
    return b;
  }
  const reader = res.body.getReader();
  const parts: Uint8Array[] = [];
  let length = 0;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      parts.push(value);
      length += value.length;
      onBytes(value.length);
    }
  } catch (e) {
    void reader.cancel().catch(() => {});
    if (e instanceof DeeplockError) throw e;
    throw new MissingFileError(what, file, `network error reading ${url.href}: ${e instanceof Error ? e.message : String(e)}`);
  }
  if (parts.length === 1) return parts[0]!;
  const out = new Uint8Array(length);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/**
 * A TF.js `IOHandler` that loads the locked model whose `model.json` is at `url`
 * (relative URLs resolve against the page), its weight files at their paths relative to
 * it, with `key`: `tf.loadLayersModel(tfjs.io(url, key))` or
 * `tf.loadGraphModel(tfjs.io(url, key))`. `load()` checks the key and the header tag
 * before fetching any weight file, every tensor's tag before unlocking, and returns
 * nothing unverified. Throws as {@link unlock} does.
 */
export function io(url: string, key: KeyInput, options: IoOptions = {}): IOHandler {
  return {
    load: async () => {
      const doFetch = options.fetch ?? globalThis.fetch.bind(globalThis);
      const page = (globalThis as { location?: { href?: string } }).location?.href;
      let base: URL;
      try {
        base = new URL(url, page);
      } catch {
        throw new MissingFileError(url, "model.json", "not an absolute URL, and there is no page to resolve it against");
      }
      const shown = new URL(base.href);
      shown.search = "";
      shown.hash = "";
      const what = shown.href;
      let size = 0;
      const modelJson = await get(doFetch, options.requestInit, base, what, "model.json", (n) => {
        size += n;
        if (size > MAX_MODEL_JSON) throw new BadFileError(what, `model.json is over the limit of ${MAX_MODEL_JSON} bytes`);
      });
      const read: Reader = (path, onBytes) =>
        get(doFetch, options.requestInit, new URL(path, base), what, `weight file ${JSON.stringify(path)}`, onBytes);
      return unlockWith(modelJson, read, key, what, options.onProgress);
    },
  };
}
