/** The scheme's building blocks (docs/SPEC.md), exposed for known-answer tests and other front ends. */
export {
  aesBlock, fileKeys, gmac, INV_SBOX, masterKey, SBOX, sha256, tensorNonce, unlockInPlace, toHex, fromHex,
} from "./crypto.js";
export { CHUNK, headerMessage, indexOrder, tensorTag, verifyAndUnlock, type Entry, type RecordV2 } from "./auth.js";
export { parseJson, JsonNumber, JsonError } from "./json.js";
