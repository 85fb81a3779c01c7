// Shared helpers of the Node tests: the Rust CLI, temporary directories, random bytes.
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
export const CLI = process.env.DEEPLOCK_CLI ? resolve(ROOT, process.env.DEEPLOCK_CLI) : join(ROOT, "target/debug/deeplock");

/** Runs the CLI; returns { status, stdout, stderr }. */
export function cli(args, cwd) {
  const r = spawnSync(CLI, args, { cwd, encoding: "utf8" });
  if (r.error) throw new Error(`cannot run ${CLI} (build it with cargo build): ${r.error.message}`);
  return r;
}

/** Runs the CLI and fails unless it succeeds. */
export function cliOk(args, cwd) {
  const r = cli(args, cwd);
  if (r.status !== 0) throw new Error(`deeplock ${args.join(" ")} failed: ${r.stderr}`);
  return r;
}

/** A fresh directory, removed when the test ends. */
export function tempDir(t) {
  const d = mkdtempSync(join(tmpdir(), "deeplock-js-"));
  t.after(() => rmSync(d, { recursive: true, force: true }));
  return d;
}

/** A key file made by `deeplock keygen` in `dir`: its path and its 16 bytes. */
export function keygen(dir, name = "model.key") {
  const path = join(dir, name);
  cliOk(["keygen", "-o", path]);
  const hex = readFileSync(path, "utf8").trim();
  return { path, bytes: Uint8Array.from(Buffer.from(hex, "hex")) };
}

/** A reproducible generator (SplitMix64), seeded from DEEPLOCK_TEST_SEED or the clock. */
export function rng(t) {
  const seed = BigInt(process.env.DEEPLOCK_TEST_SEED ?? Date.now());
  t.diagnostic(`seed ${seed} (DEEPLOCK_TEST_SEED replays it)`);
  let s = seed;
  const next = () => {
    s = (s + 0x9e3779b97f4a7c15n) & 0xffffffffffffffffn;
    let z = s;
    z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & 0xffffffffffffffffn;
    z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & 0xffffffffffffffffn;
    return z ^ (z >> 31n);
  };
  return {
    int: (n) => Number(next() % BigInt(n)),
    bytes: (n) => {
      const b = new Uint8Array(n);
      for (let i = 0; i < n; i += 8) {
        const x = next();
        for (let j = 0; j < 8 && i + j < n; j++) b[i + j] = Number((x >> BigInt(8 * j)) & 0xffn);
      }
      return b;
    },
  };
}

/** A safetensors file of `tensors` ({name, dtype, shape, data}), in their order, and metadata. */
export function safetensorsFile(tensors, metadata) {
  const header = {};
  if (metadata) header.__metadata__ = metadata;
  let at = 0;
  for (const t of tensors) {
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [at, at + t.data.length] };
    at += t.data.length;
  }
  let json = Buffer.from(JSON.stringify(header));
  const pad = (8 - (json.length % 8)) % 8;
  json = Buffer.concat([json, Buffer.alloc(pad, 0x20)]);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  return Buffer.concat([len, json, ...tensors.map((t) => Buffer.from(t.data))]);
}

export const hex = (s) => Uint8Array.from(Buffer.from(s, "hex"));
export const toHex = (b) => Buffer.from(b).toString("hex");
export { execFileSync };
