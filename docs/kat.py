#!/usr/bin/env python3
"""An independent implementation of deeplock v1 and v2 in Python (with the `cryptography`
package's AES and AES-GCM), used to produce the known-answer vectors in docs/SPEC.md.
The Rust tests tests/spec.rs (v1) and tests/spec_v2.rs (v2) check the crate against
those vectors, so the two implementations agree.
Run: python3 docs/kat.py (v1 block), python3 docs/kat.py v2 (v2 block);
python3 docs/kat.py check LOCKED KEYHEX OUT verifies a v2 file deeplock wrote, as the
spec says, and writes its unlocked data section to OUT (tests/spec_v2.rs runs it)."""
import hashlib
import sys
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


def sbox():
    def mul(a, b):
        p = 0
        while b:
            if b & 1:
                p ^= a
            a = ((a << 1) ^ (0x1B if a & 0x80 else 0)) & 0xFF
            b >>= 1
        return p

    def inv(x):
        return next((y for y in range(256) if mul(x, y) == 1), 0)

    def rotl(b, n):
        return ((b << n) | (b >> (8 - n))) & 0xFF

    s = []
    for x in range(256):
        b = inv(x)
        s.append(b ^ rotl(b, 1) ^ rotl(b, 2) ^ rotl(b, 3) ^ rotl(b, 4) ^ 0x63)
    return s


SBOX = sbox()
INV = [0] * 256
for i, v in enumerate(SBOX):
    INV[v] = i


def aes_ecb(key, block):
    e = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return e.update(block) + e.finalize()


def nonce(salt, name):
    return hashlib.sha256(b"deeplock-v1\0" + salt + name.encode()).digest()[:8]


def keystream(key, n, offset, length):
    first, last = offset // 16, (offset + length + 15) // 16
    ks = b"".join(aes_ecb(key, n + b.to_bytes(8, "big")) for b in range(first, last))
    return ks[offset % 16 : offset % 16 + length]


def lock(key, salt, name, offset, data):
    ks = keystream(key, nonce(salt, name), offset, len(data))
    return bytes(SBOX[p ^ k] for p, k in zip(data, ks))


def unlock(key, salt, name, offset, data):
    ks = keystream(key, nonce(salt, name), offset, len(data))
    return bytes(INV[c] ^ k for c, k in zip(data, ks))


def kcv(key):
    return aes_ecb(key, b"deeplock-v1-kcv\0")[:8]


CASES = [
    # key, salt, tensor name, offset, plaintext
    ("000102030405060708090a0b0c0d0e0f", "01" * 16, "w", 0, "00" * 16),
    ("000102030405060708090a0b0c0d0e0f", "01" * 16, "w", 0, bytes(range(33)).hex()),
    ("000102030405060708090a0b0c0d0e0f", "01" * 16, "w", 5, "ff" * 3),
    ("2b7e151628aed2a6abf7158809cf4f3c", "000102030405060708090a0b0c0d0e0f", "model.layers.0.mlp.up_proj.weight", 4094, "3f800000bf800000" * 2),
    ("2b7e151628aed2a6abf7158809cf4f3c", "ff" * 16, "conv1.bias", 0x1_0000_0000 * 16 - 7, "00112233445566778899aabbccddeeff"),
    ("ffffffffffffffffffffffffffffffff", "00" * 16, "\u00e9t\u00e9", 17, "01"),
]

# ---- v2: authenticated locking ----

CHUNK = 1 << 20
LAST_NONCE = b"\xff" * 12  # the header tag's, and the checkpoint tag's under its own key


def gmac(key, nonce, message):
    """GMAC: AES-128-GCM's tag with an empty plaintext, the message as additional data."""
    return AESGCM(key).encrypt(nonce, b"", message)


def k_file(key, salt):
    return aes_ecb(aes_ecb(key, b"deeplock-v2-auth"), salt)


def k_ckpt(key, salt):
    return aes_ecb(aes_ecb(key, b"deeplock-v2-ckpt"), salt)


def kcv2(key, salt):
    return aes_ecb(k_file(key, salt), b"deeplock-v2-kcv\0")[:8]


def be32(n):
    return n.to_bytes(4, "big")


def be64(n):
    return n.to_bytes(8, "big")


def lp(b):
    """A length-prefixed field: BE64(len) || bytes."""
    return be64(len(b)) + b


def shape_enc(shape):
    return be64(len(shape)) + b"".join(be64(d) for d in shape)


def chunk_tag(kf, t, c, data):
    return gmac(kf, be32(t) + be64(c), data)


def tensor_tag(kf, t, name, dtype, shape, locked, data):
    tags = [chunk_tag(kf, t, i, data[o : o + CHUNK]) for i, o in enumerate(range(0, len(data), CHUNK))]
    msg = (lp(b"deeplock-v2-tensor") + be32(t) + lp(name.encode()) + lp(dtype.encode())
           + shape_enc(shape) + be64(len(data)) + bytes([locked]) + be64(len(tags)) + b"".join(tags))
    return gmac(kf, be32(t) + b"\xff" * 8, msg)


def header_message(version, scheme, salt, kcv, locked, tensors, metadata):
    """tensors: (name, dtype, shape, start, end, tag) in index order; metadata: dict."""
    m = lp(b"deeplock-v2-header") + lp(version.encode()) + lp(scheme.encode()) + salt + kcv
    m += be64(len(locked)) + b"".join(lp(n.encode()) for n in locked)
    m += be64(len(tensors))
    for name, dtype, shape, start, end, tag in tensors:
        m += lp(name.encode()) + lp(dtype.encode()) + shape_enc(shape) + be64(start) + be64(end) + tag
    items = sorted((k.encode(), v.encode()) for k, v in metadata.items())
    return m + be64(len(items)) + b"".join(lp(k) + lp(v) for k, v in items)


def checkpoint_message(shards, indexes):
    """shards: {relative path: header tag}; indexes: {relative path: index file bytes}."""
    m = lp(b"deeplock-v2-checkpoint") + be64(len(shards))
    m += b"".join(lp(n.encode()) + shards[n] for n in sorted(shards, key=str.encode))
    m += be64(len(indexes))
    return m + b"".join(lp(n.encode()) + hashlib.sha256(indexes[n]).digest() for n in sorted(indexes, key=str.encode))


def pattern(n):
    """The tensor bytes of the v2 vectors: byte j is j mod 251."""
    return bytes(j % 251 for j in range(n))


V2_KEYS = [
    ("000102030405060708090a0b0c0d0e0f", "01" * 16),
    ("000102030405060708090a0b0c0d0e0f", "02" + "01" * 15),
    ("2b7e151628aed2a6abf7158809cf4f3c", "000102030405060708090a0b0c0d0e0f"),
]

V2_TENSORS = [
    # index, name, dtype, shape, locked, length (bytes: pattern(length))
    (0, "w", "U8", [0], 1, 0),
    (1, "w", "U8", [1], 1, 1),
    (2, "model.embed_tokens.weight", "BF16", [524287, 1], 1, CHUNK - 2),
    (3, "layers.0.attn.q_proj.weight", "F32", [512, 512], 1, CHUNK),
    (4, "lm_head.weight", "U8", [CHUNK + 1], 0, CHUNK + 1),
    (4294967294, "\u00e9t\u00e9", "F16", [3, CHUNK], 1, 3 * 2 * CHUNK),
]


def v2_block():
    key, salt = bytes.fromhex(V2_KEYS[0][0]), bytes.fromhex(V2_KEYS[0][1])
    kf = k_file(key, salt)
    print("v2 key | salt | K_auth | K_file | kcv2")
    for k, s in V2_KEYS:
        kb, sb = bytes.fromhex(k), bytes.fromhex(s)
        print(f"key {k} | {s} | {aes_ecb(kb, b'deeplock-v2-auth').hex()} | {k_file(kb, sb).hex()} | {kcv2(kb, sb).hex()}")
    print("v2 chunk: index | chunk | bytes | tag   (key and salt of the first key row)")
    for t, c, data in [(0, 0, b""), (0, 0, b"\x00"), (1, 7, bytes(range(33))), (4294967294, (1 << 30) - 1, b"\xff" * 16)]:
        print(f"chunk {t} | {c} | {data.hex()} | {chunk_tag(kf, t, c, data).hex()}")
    print("v2 tensor: index | name | dtype | shape | locked | length | tag   (bytes: j mod 251)")
    for t, name, dtype, shape, locked, n in V2_TENSORS:
        tag = tensor_tag(kf, t, name, dtype, shape, locked, pattern(n))
        print(f"tensor {t} | {name} | {dtype} | {','.join(map(str, shape))} | {locked} | {n} | {tag.hex()}")
    # The example header of SPEC.md: "bias" F32 [4] and "mask" BOOL [3] (clear), "w" F32
    # [2,2] locked, "empty" F32 [0]; its tensor tags are those of the bytes pattern(n).
    tensors = [("empty", "F32", [0], 0, 0), ("bias", "F32", [4], 0, 16), ("w", "F32", [2, 2], 16, 32), ("mask", "BOOL", [3], 32, 35)]
    locked = ["bias", "w"]
    tagged = []
    for t, (name, dtype, shape, start, end) in enumerate(tensors):
        tagged.append((name, dtype, shape, start, end, tensor_tag(kf, t, name, dtype, shape, int(name in locked), pattern(end - start))))
    msg = header_message("2", "aes128-ctr-sbox-gmac", salt, kcv2(key, salt), locked, tagged, {"format": "pt", "deeplock.note": "x"})
    print("v2 header: the example header's encoding | its header tag")
    print(f"header {msg.hex()} | {gmac(kf, LAST_NONCE, msg).hex()}")
    ck_salt = bytes.fromhex("0f" * 16)
    shards = {"model-00002-of-00002.safetensors": bytes.fromhex("11" * 16), "model-00001-of-00002.safetensors": bytes.fromhex("22" * 16)}
    indexes = {"model.safetensors.index.json": b'{"weight_map":{}}\n'}
    msg = checkpoint_message(shards, indexes)
    print(f"v2 checkpoint: checkpoint salt {ck_salt.hex()}: K_c | the example record's encoding | its tag")
    print(f"checkpoint {k_ckpt(key, ck_salt).hex()} | {msg.hex()} | {gmac(k_ckpt(key, ck_salt), LAST_NONCE, msg).hex()}")


def v1_block():
    print("key | salt | name | offset | plaintext | nonce | locked")
    for k, s, name, off, pt in CASES:
        key, salt, p = bytes.fromhex(k), bytes.fromhex(s), bytes.fromhex(pt)
        c = lock(key, salt, name, off, p)
        assert unlock(key, salt, name, off, c) == p
        print(f"{k} | {s} | {name} | {off} | {pt} | {nonce(salt, name).hex()} | {c.hex()}")
    for k in sorted({c[0] for c in CASES}):
        print(f"kcv {k} {kcv(bytes.fromhex(k)).hex()}")


RECORD_KEYS = {"deeplock.version", "deeplock.scheme", "deeplock.salt", "deeplock.kcv",
               "deeplock.locked", "deeplock.tags", "deeplock.mac"}


def check_file(path, key_hex, out_path):
    """Verifies the v2-locked safetensors file at `path` under the key, as SPEC.md says
    (KCV2, header tag, every tensor tag), then writes its unlocked data section (the
    tensors' bytes in file order) to `out_path`. Exits non-zero on any mismatch."""
    import json
    key = bytes.fromhex(key_hex)
    raw = open(path, "rb").read()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    data = raw[8 + n :]
    meta = header.pop("__metadata__")
    assert (meta["deeplock.version"], meta["deeplock.scheme"]) == ("2", "aes128-ctr-sbox-gmac")
    salt, kcv = bytes.fromhex(meta["deeplock.salt"]), bytes.fromhex(meta["deeplock.kcv"])
    assert kcv2(key, salt) == kcv, "key check value"
    kf = k_file(key, salt)
    locked = json.loads(meta["deeplock.locked"])
    tags = [bytes.fromhex(t) for t in json.loads(meta["deeplock.tags"])]
    order = sorted(header, key=lambda t: (*header[t]["data_offsets"], t.encode()))
    entries = [(t, header[t]["dtype"], header[t]["shape"], *header[t]["data_offsets"], tags[i])
               for i, t in enumerate(order)]
    others = {k: v for k, v in meta.items() if k not in RECORD_KEYS}
    m = header_message("2", "aes128-ctr-sbox-gmac", salt, kcv, locked, entries, others)
    assert gmac(kf, LAST_NONCE, m) == bytes.fromhex(meta["deeplock.mac"]), "header tag"
    plain = bytearray(data)
    for i, (name, dtype, shape, start, end, tag) in enumerate(entries):
        is_locked = name in locked
        assert tensor_tag(kf, i, name, dtype, shape, int(is_locked), data[start:end]) == tag, name
        if is_locked:
            plain[start:end] = unlock(key, salt, name, 0, data[start:end])
    open(out_path, "wb").write(plain)


if __name__ == "__main__":
    if sys.argv[1:2] == ["check"]:
        check_file(*sys.argv[2:5])
    else:
        v2_block() if sys.argv[1:] == ["v2"] else v1_block()
