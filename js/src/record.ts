/** The lock record's fields (docs/SPEC.md), read from a format's string map. */

import { type Entry, SCHEME_V1, SCHEME_V2, type RecordV2 } from "./auth.js";
import { fromHex } from "./crypto.js";
import { BadFileError, NotLockedError, UnauthenticatedError } from "./errors.js";
import { JsonError, parseJson } from "./json.js";

/** The seven keys of a v2 record. */
export const RECORD_KEYS = [
  "deeplock.version",
  "deeplock.scheme",
  "deeplock.salt",
  "deeplock.kcv",
  "deeplock.locked",
  "deeplock.tags",
  "deeplock.mac",
] as const;

/** Written by lock when the input's metadata was present but empty; removed by unlock. */
export const METADATA_KEY = "deeplock.metadata";

function hexField(meta: Map<string, string>, key: string, bytes: number, what: string): Uint8Array {
  const v = meta.get(key);
  if (v === undefined || !new RegExp(`^[0-9a-f]{${2 * bytes}}$`).test(v)) {
    throw new BadFileError(what, `damaged lock record: ${key} must be ${2 * bytes} lowercase hex characters`);
  }
  return fromHex(v);
}

function stringArray(meta: Map<string, string>, key: string, what: string): string[] {
  const v = meta.get(key);
  let parsed;
  try {
    parsed = v === undefined ? undefined : parseJson(v);
  } catch (e) {
    if (!(e instanceof JsonError)) throw e;
  }
  if (!Array.isArray(parsed) || !parsed.every((x) => typeof x === "string")) {
    throw new BadFileError(what, `damaged lock record: ${key} must be a JSON array of strings`);
  }
  return parsed as string[];
}

/**
 * The v2 record of a file whose metadata is `meta`: {@link NotLockedError} if it has
 * none, {@link UnauthenticatedError} for v1, {@link BadFileError} if it is damaged.
 * `tensors` is the number of tensors it must tag.
 */
export function readRecord(meta: Map<string, string>, tensors: number, what: string): RecordV2 {
  if (![...RECORD_KEYS, METADATA_KEY].some((k) => meta.has(k))) throw new NotLockedError(what);
  const version = meta.get("deeplock.version");
  const scheme = meta.get("deeplock.scheme");
  if (version === "1" && scheme === SCHEME_V1 && !meta.has("deeplock.tags") && !meta.has("deeplock.mac")) {
    throw new UnauthenticatedError(what);
  }
  if (version !== "2" || scheme !== SCHEME_V2) {
    throw new BadFileError(
      what,
      `damaged or unknown lock record (deeplock.version ${JSON.stringify(version ?? null)}, scheme ${JSON.stringify(scheme ?? null)}); this reader knows version 2, ${SCHEME_V2}`,
    );
  }
  const salt = hexField(meta, "deeplock.salt", 16, what);
  const kcv = hexField(meta, "deeplock.kcv", 8, what);
  const mac = hexField(meta, "deeplock.mac", 16, what);
  const locked = stringArray(meta, "deeplock.locked", what);
  for (let i = 1; i < locked.length; i++) {
    if (compareUtf8(locked[i - 1]!, locked[i]!) >= 0) {
      throw new BadFileError(what, "damaged lock record: deeplock.locked must be sorted, each name once");
    }
  }
  const tagText = stringArray(meta, "deeplock.tags", what);
  if (tagText.length !== tensors || !tagText.every((t) => /^[0-9a-f]{32}$/.test(t))) {
    throw new BadFileError(what, `damaged lock record: deeplock.tags must hold one 32-hex-character tag per tensor (${tensors})`);
  }
  return { version, scheme, salt, kcv, locked, tags: tagText.map(fromHex), mac };
}

/**
 * Refuses a record whose `deeplock.locked` names a tensor `entries` lacks or a `BOOL`
 * one (booleans stay in the clear).
 */
export function checkLocked(record: RecordV2, entries: readonly Entry[], what: string): void {
  const names = new Map(entries.map((e) => [e.name, e]));
  for (const l of record.locked) {
    const e = names.get(l);
    if (e === undefined || e.dtype === "BOOL") {
      throw new BadFileError(what, `damaged lock record: deeplock.locked names ${JSON.stringify(l)}, which is not a lockable tensor`);
    }
  }
}

const enc = new TextEncoder();
function compareUtf8(a: string, b: string): number {
  const x = enc.encode(a);
  const y = enc.encode(b);
  const n = Math.min(x.length, y.length);
  for (let i = 0; i < n; i++) if (x[i] !== y[i]) return x[i]! - y[i]!;
  return x.length - y.length;
}
