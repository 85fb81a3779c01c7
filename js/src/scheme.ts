/** The scheme's building blocks (docs/SPEC.md), exposed for known-answer tests and other front ends. */
export {
  aesBlock, fileKeys, gmac, INV_SBOX, masterKey, SBOX, sha256, tensorNonce, unlockInPlace, toHex, fromHex,
} from "./crypto.js";
export { CHUNK, headerMessage, indexOrder, tensorTag, verifyAndUnlock, type Entry, type RecordV2, type Unlocker, type UnlockTarget } from "./auth.js";
export { expandKey, tableCopies, tableWords } from "./webgpu.js";
export { AES_CTR_WGSL, LOCK_WGSL } from "./shaders.generated.js";
export { parseJson, JsonNumber, JsonError } from "./json.js";
