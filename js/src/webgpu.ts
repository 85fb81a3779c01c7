/**
 * Unlocking on a WebGPU device with the project's own kernels: `shaders/aes_ctr.wgsl`
 * and `shaders/lock.wgsl`, embedded verbatim at build time (src/shaders.generated.ts),
 * bound exactly as the native wgpu path binds them (src/gpu/aes.rs, src/gpu/locker.rs):
 * group 0 the T0 + inverse S-box table (320 words) and the `AesKey` uniform (round keys,
 * nonce), group 1 the data and the `LockParams` uniform, entry point `unlock_main`. The
 * GPU computes the keystream, the inverse S-box and the XOR; tags are checked on the
 * CPU with WebCrypto before a byte is unlocked (src/auth.ts).
 *
 * Where no adapter is found, or the key is a `CryptoKey` (whose bytes, and so the round
 * keys, cannot be read), the unlock functions fall back to WebCrypto.
 */

import type { Unlocker } from "./auth.js";
import { INV_SBOX, SBOX, type KeyInput } from "./crypto.js";
import { BadKeyError } from "./errors.js";
import { AES_CTR_WGSL, LOCK_WGSL } from "./shaders.generated.js";

/**
 * A WebGPU entry point: `navigator.gpu`, or a Node binding's (the `webgpu` package's
 * `create([])`). Typed loosely so that any WebGPU typings are accepted.
 */
export interface GpuLike {
  requestAdapter(options?: any): Promise<unknown>;
}

/**
 * The `gpu` option of the unlock functions: a WebGPU entry point, `"auto"` for
 * `navigator.gpu` where there is one, or nothing (WebCrypto).
 */
export type GpuOption = GpuLike | "auto" | false | undefined;

// The subset of the WebGPU API used here (TypeScript's DOM library has none of it).
interface Adapter {
  readonly limits: Record<string, number>;
  readonly info?: { vendor?: string; architecture?: string; device?: string; description?: string };
  readonly featureLevel?: string;
  requestDevice(d?: { requiredLimits?: Record<string, number> }): Promise<Device>;
}
interface Buffer {
  mapAsync(mode: number): Promise<void>;
  getMappedRange(): ArrayBuffer;
  unmap(): void;
  destroy(): void;
}
interface Pass {
  setPipeline(p: unknown): void;
  setBindGroup(i: number, g: unknown): void;
  dispatchWorkgroups(x: number): void;
  end(): void;
}
interface Encoder {
  beginComputePass(): Pass;
  copyBufferToBuffer(a: Buffer, ao: number, b: Buffer, bo: number, n: number): void;
  clearBuffer(b: Buffer): void;
  finish(): unknown;
}
interface Device {
  readonly limits: Record<string, number>;
  readonly queue: {
    writeBuffer(b: Buffer, offset: number, data: ArrayBufferView, dataOffset?: number, size?: number): void;
    submit(c: unknown[]): void;
  };
  readonly lost: Promise<unknown>;
  createBuffer(d: { size: number; usage: number; mappedAtCreation?: boolean }): Buffer;
  createShaderModule(d: { code: string }): { getCompilationInfo?(): Promise<{ messages: readonly { type: string; message: string; lineNum: number }[] }> };
  createBindGroupLayout(d: { entries: unknown[] }): unknown;
  createPipelineLayout(d: { bindGroupLayouts: unknown[] }): unknown;
  createComputePipelineAsync(d: unknown): Promise<unknown>;
  createBindGroup(d: { layout: unknown; entries: { binding: number; resource: { buffer: Buffer } }[] }): unknown;
  createCommandEncoder(): Encoder;
  pushErrorScope(f: string): void;
  popErrorScope(): Promise<{ message: string } | null>;
  destroy(): void;
}

// GPUBufferUsage, GPUMapMode and GPUShaderStage values (WebGPU spec).
const MAP_READ = 0x1;
const COPY_SRC = 0x4;
const COPY_DST = 0x8;
const UNIFORM = 0x40;
const STORAGE = 0x80;
const COMPUTE = 0x4;

/** Invocations per workgroup, as src/gpu/plan.rs (less where the device allows less). */
const WORKGROUP_SIZE = 256;
/** Most workgroups per dispatch (src/gpu/locker.rs): the kernel's grid-stride loop does the rest. */
const MAX_WORKGROUPS = 4096;
/** Words of the table buffer: T0, then the inverse S-box packed 4 bytes a word. */
const TABLE_WORDS = 320;
/** The `AesKey` uniform's size (11 round keys, the nonce, padding to 16). */
const KEY_UNIFORM = 192;
/** The `LockParams` uniform's size, as bound (24 in WGSL, padded as src/gpu/plan.rs does). */
const PARAMS_UNIFORM = 32;
/** Bytes per round trip (upload, dispatch, read back). */
const PIECE = 32 << 20;

/** The table buffer's words in aes_ctr.wgsl's order (src/gpu/aes.rs `table_words`). */
export function tableWords(): Uint32Array {
  const t = new Uint32Array(TABLE_WORDS);
  for (let x = 0; x < 256; x++) {
    const s = SBOX[x]!;
    const s2 = ((s << 1) ^ (s & 0x80 ? 0x1b : 0)) & 0xff;
    t[x] = (s2 | (s << 8) | (s << 16) | ((s2 ^ s) << 24)) >>> 0;
  }
  for (let w = 0; w < 64; w++) {
    t[256 + w] = (INV_SBOX[4 * w]! | (INV_SBOX[4 * w + 1]! << 8) | (INV_SBOX[4 * w + 2]! << 16) | (INV_SBOX[4 * w + 3]! << 24)) >>> 0;
  }
  return t;
}

/** The AES-128 key schedule of `key` (FIPS-197 §5.2): 11 round keys, 176 bytes. */
export function expandKey(key: Uint8Array): Uint8Array {
  if (key.length !== 16) throw new BadKeyError(`a deeplock key is 16 bytes (AES-128), got ${key.length}`);
  const w = new Uint8Array(176);
  w.set(key);
  let rcon = 1;
  for (let i = 16; i < 176; i += 4) {
    let a = w[i - 4]!;
    let b = w[i - 3]!;
    let c = w[i - 2]!;
    let d = w[i - 1]!;
    if (i % 16 === 0) {
      [a, b, c, d] = [SBOX[b]! ^ rcon, SBOX[c]!, SBOX[d]!, SBOX[a]!];
      rcon = ((rcon << 1) ^ (rcon & 0x80 ? 0x1b : 0)) & 0xff;
    }
    w[i] = w[i - 16]! ^ a;
    w[i + 1] = w[i - 15]! ^ b;
    w[i + 2] = w[i - 14]! ^ c;
    w[i + 3] = w[i - 13]! ^ d;
  }
  return w;
}

/** Copies of the tables a workgroup with `available` bytes keeps (src/gpu/aes.rs `table_copies`). */
export function tableCopies(available: number): number {
  let copies = 32;
  while (copies > 1 && copies * 4 * TABLE_WORDS > available) copies /= 2;
  return copies;
}

/** A device with the unlock kernel compiled: unlocks tensor bytes on the GPU. */
export class WebGpuUnlocker {
  /** What the adapter says it is: vendor, architecture, device, description. */
  readonly adapter: string;
  private queue: Promise<unknown> = Promise.resolve();
  private lostReason: string | undefined;

  private constructor(
    private readonly device: Device,
    private readonly pipeline: unknown,
    private readonly tables: Buffer,
    private readonly workgroupSize: number,
    private readonly piece: number,
    adapter: string,
    // The entry point, held: a Node binding (dawn.node) stops serving its devices once
    // the object `create()` returned is collected.
    readonly gpu: GpuLike,
  ) {
    this.adapter = adapter;
    device.lost.then((info) => {
      this.lostReason = String((info as { message?: string })?.message ?? "lost");
    });
  }

  /**
   * A device of `gpu` (`"auto"`: `navigator.gpu`) with the kernel compiled, or
   * `undefined` where there is no WebGPU or no adapter. Throws if the adapter is there
   * but the kernel does not compile.
   */
  static async create(gpu: GpuLike | "auto" = "auto"): Promise<WebGpuUnlocker | undefined> {
    const entry = gpu === "auto" ? (globalThis as { navigator?: { gpu?: GpuLike } }).navigator?.gpu : gpu;
    if (entry === undefined) return undefined;
    // Core WebGPU, else compatibility mode (OpenGL ES backends): the kernel needs neither's extras.
    let compat = false;
    let adapter = (await entry.requestAdapter()) as Adapter | null | undefined;
    if (adapter === null || adapter === undefined) {
      compat = true;
      adapter = (await entry.requestAdapter({ featureLevel: "compatibility" })) as Adapter | null | undefined;
    }
    if (adapter === null || adapter === undefined) return undefined;
    const want = ["maxComputeWorkgroupStorageSize", "maxComputeInvocationsPerWorkgroup", "maxComputeWorkgroupSizeX", "maxStorageBufferBindingSize", "maxBufferSize"];
    const requiredLimits: Record<string, number> = {};
    for (const k of want) if (typeof adapter.limits[k] === "number") requiredLimits[k] = adapter.limits[k];
    const device = await adapter.requestDevice({ requiredLimits });
    const l = device.limits;
    const workgroupSize = Math.min(WORKGROUP_SIZE, l.maxComputeInvocationsPerWorkgroup ?? 128, l.maxComputeWorkgroupSizeX ?? 128);
    const copies = tableCopies(l.maxComputeWorkgroupStorageSize ?? 16384);
    const piece = Math.min(PIECE, Math.floor((l.maxStorageBufferBindingSize ?? 1 << 27) / 16) * 16 - 16, Math.floor((l.maxBufferSize ?? 1 << 28) / 16) * 16 - 16);
    device.pushErrorScope("validation");
    const module = device.createShaderModule({ code: `${AES_CTR_WGSL}\n${LOCK_WGSL}` });
    const info = await module.getCompilationInfo?.();
    const errors = (info?.messages ?? []).filter((m) => m.type === "error");
    const storage = (binding: number, type: string, minBindingSize: number) => ({ binding, visibility: COMPUTE, buffer: { type, minBindingSize } });
    const layout = device.createPipelineLayout({
      bindGroupLayouts: [
        device.createBindGroupLayout({ entries: [storage(0, "read-only-storage", 4 * TABLE_WORDS), storage(1, "uniform", KEY_UNIFORM)] }),
        device.createBindGroupLayout({ entries: [storage(0, "storage", 4), storage(1, "uniform", 24)] }),
      ],
    });
    let pipeline: unknown;
    try {
      pipeline = await device.createComputePipelineAsync({
        layout,
        compute: { module, entryPoint: "unlock_main", constants: { AES_TABLE_COPIES: copies, WORKGROUP_SIZE: workgroupSize } },
      });
    } catch (e) {
      errors.push({ type: "error", message: String((e as Error).message ?? e), lineNum: 0 });
    }
    const scope = await device.popErrorScope();
    if (errors.length > 0 || scope !== null || pipeline === undefined) {
      device.destroy();
      const text = errors.map((m) => `line ${m.lineNum}: ${m.message}`).concat(scope ? [scope.message] : []).join("; ");
      throw new Error(`the deeplock WGSL kernel does not compile on this WebGPU adapter: ${text}`);
    }
    const words = tableWords();
    const tables = device.createBuffer({ size: words.byteLength, usage: STORAGE | COPY_DST });
    device.queue.writeBuffer(tables, 0, words);
    const i = adapter.info ?? {};
    const name = [i.vendor, i.architecture, i.device, i.description].filter((s) => s !== undefined && s !== "").join(" / ");
    const level = compat || adapter.featureLevel === "compatibility" ? " (compatibility mode)" : "";
    return new WebGpuUnlocker(device, pipeline, tables, workgroupSize, piece, `${name || "unnamed adapter"}${level}`, entry);
  }

  /**
   * Unlocks in place `data`, the bytes of a tensor from its byte `offset`, whose nonce is
   * `nonce` (8 bytes), under the 16-byte master `key`: `P[j] = INV_SBOX[L[j]] XOR
   * KS[offset + j]`, on the GPU. Calls run one after the other.
   */
  unlock(key: Uint8Array, nonce: Uint8Array, offset: number, data: Uint8Array): Promise<void> {
    const run = this.queue.then(() => this.run(key, nonce, offset, data));
    this.queue = run.catch(() => undefined);
    return run;
  }

  private async run(key: Uint8Array, nonce: Uint8Array, offset: number, data: Uint8Array): Promise<void> {
    if (this.lostReason !== undefined) throw new Error(`the WebGPU device was lost: ${this.lostReason}`);
    if (nonce.length !== 8) throw new Error(`a tensor nonce is 8 bytes, got ${nonce.length}`);
    if (!Number.isSafeInteger(offset) || offset < 0) throw new Error(`bad tensor offset ${offset}`);
    if (data.length === 0) return;
    const d = this.device;
    // The AesKey uniform: round keys as little-endian words, then the nonce's two words.
    const uniform = new Uint8Array(KEY_UNIFORM);
    const rk = expandKey(key);
    uniform.set(rk);
    rk.fill(0);
    uniform.set(nonce, 176);
    const keyBuf = d.createBuffer({ size: KEY_UNIFORM, usage: UNIFORM | COPY_DST });
    d.queue.writeBuffer(keyBuf, 0, uniform);
    uniform.fill(0);
    const group0 = d.createBindGroup({
      layout: (this.pipeline as { getBindGroupLayout(i: number): unknown }).getBindGroupLayout(0),
      entries: [{ binding: 0, resource: { buffer: this.tables } }, { binding: 1, resource: { buffer: keyBuf } }],
    });
    try {
      for (let p = 0; p < data.length; p += this.piece) {
        const part = data.subarray(p, Math.min(p + this.piece, data.length));
        await this.piecewise(group0, offset + p, part);
      }
    } finally {
      // Do not leave the round keys in GPU memory.
      const enc = d.createCommandEncoder();
      enc.clearBuffer(keyBuf);
      d.queue.submit([enc.finish()]);
      keyBuf.destroy();
    }
  }

  /** One round trip: `part` holds the tensor's bytes from `at`. */
  private async piecewise(group0: unknown, at: number, part: Uint8Array): Promise<void> {
    const d = this.device;
    // The buffer starts on a keystream block: `lead` bytes before the data, so every
    // 16-byte group of the kernel is one keystream block (shift 0).
    const lead = at % 16;
    const size = Math.ceil((lead + part.length) / 16) * 16;
    const buf = d.createBuffer({ size, usage: STORAGE | COPY_SRC | COPY_DST });
    const read = d.createBuffer({ size, usage: MAP_READ | COPY_DST });
    const params = d.createBuffer({ size: PARAMS_UNIFORM, usage: UNIFORM | COPY_DST });
    try {
      if (lead === 0 && part.length % 4 === 0) {
        d.queue.writeBuffer(buf, 0, part);
      } else {
        const staged = new Uint8Array(size);
        staged.set(part, lead);
        d.queue.writeBuffer(buf, 0, staged);
      }
      const block = BigInt((at - lead) / 16);
      // LockParams: first_block (low, high), shift, byte_lo, byte_hi.
      const p = new Uint32Array(PARAMS_UNIFORM / 4);
      p.set([Number(block & 0xffffffffn), Number(block >> 32n), 0, lead, lead + part.length]);
      d.queue.writeBuffer(params, 0, p);
      const group1 = d.createBindGroup({
        layout: (this.pipeline as { getBindGroupLayout(i: number): unknown }).getBindGroupLayout(1),
        entries: [{ binding: 0, resource: { buffer: buf } }, { binding: 1, resource: { buffer: params } }],
      });
      const groups = size / 16;
      const enc = d.createCommandEncoder();
      const pass = enc.beginComputePass();
      pass.setPipeline(this.pipeline);
      pass.setBindGroup(0, group0);
      pass.setBindGroup(1, group1);
      pass.dispatchWorkgroups(Math.min(Math.ceil(groups / this.workgroupSize), MAX_WORKGROUPS, d.limits.maxComputeWorkgroupsPerDimension ?? 65535));
      pass.end();
      enc.copyBufferToBuffer(buf, 0, read, 0, size);
      d.queue.submit([enc.finish()]);
      await read.mapAsync(MAP_READ);
      part.set(new Uint8Array(read.getMappedRange(), lead, part.length));
      read.unmap();
    } finally {
      buf.destroy();
      read.destroy();
      params.destroy();
    }
  }

  /** Releases the device. */
  destroy(): void {
    this.tables.destroy();
    this.device.destroy();
  }
}

const devices = new WeakMap<object, Promise<WebGpuUnlocker | undefined>>();

/** The (cached) unlocker of `gpu`, or `undefined` where it has no adapter. */
export function webGpuUnlocker(gpu: GpuLike | "auto" = "auto"): Promise<WebGpuUnlocker | undefined> {
  const entry = gpu === "auto" ? (globalThis as { navigator?: { gpu?: GpuLike } }).navigator?.gpu : gpu;
  if (entry === undefined) return Promise.resolve(undefined);
  let p = devices.get(entry);
  if (p === undefined) {
    p = WebGpuUnlocker.create(entry);
    devices.set(entry, p);
    p.catch(() => devices.delete(entry));
  }
  return p;
}

/** Which path unlocked a model's bytes, and, for WebGPU, on which adapter. */
export interface Backend {
  backend: "webgpu" | "webcrypto";
  /** The adapter (WebGPU), or why WebCrypto was used where a GPU was asked for. */
  detail?: string;
}

/**
 * The {@link Unlocker} the `gpu` option asks for under `key`, or `undefined` for the
 * WebCrypto path (no GPU asked for, none found, or a `CryptoKey`); `onBackend` is told
 * which.
 */
export async function gpuUnlockerFor(
  gpu: GpuOption,
  key: KeyInput,
  onBackend?: (b: Backend) => void,
): Promise<Unlocker | undefined> {
  const fallback = (detail?: string) => {
    onBackend?.(detail === undefined ? { backend: "webcrypto" } : { backend: "webcrypto", detail });
    return undefined;
  };
  if (gpu === undefined || gpu === false) return fallback();
  if (!(key instanceof Uint8Array)) return fallback("the key is a CryptoKey, whose bytes the GPU cannot be given");
  const unlocker = await webGpuUnlocker(gpu);
  if (unlocker === undefined) return fallback("no WebGPU adapter");
  onBackend?.({ backend: "webgpu", detail: unlocker.adapter });
  const raw = key.slice();
  return (nonce, data) => unlocker.unlock(raw, nonce, 0, data);
}
