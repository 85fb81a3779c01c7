/**
 * deeplock for the web: unlock deeplock v2 models (safetensors, TensorFlow.js) in browsers and Node >= 18 with
 * WebCrypto. No runtime dependencies.
 */

export * from "./errors.js";
export { importKey, keyFromHex, type KeyInput } from "./crypto.js";
export type { Progress } from "./auth.js";
export * as safetensors from "./safetensors.js";
export * as tfjs from "./tfjs.js";
export * as onnx from "./onnx.js";
export { WebGpuUnlocker, webGpuUnlocker, type Backend, type GpuLike, type GpuOption } from "./webgpu.js";
/** The primitives, for tests and other front ends. */
export * as scheme from "./scheme.js";
