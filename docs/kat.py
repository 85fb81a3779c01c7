#!/usr/bin/env python3
"""An independent implementation of deeplock v1 in Python (with the `cryptography`
package's AES), used to produce the known-answer vectors in docs/SPEC.md. The Rust test
tests/spec.rs checks the crate against those vectors, so the two implementations agree.
Run: python3 docs/kat.py"""
import hashlib
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes


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

if __name__ == "__main__":
    print("key | salt | name | offset | plaintext | nonce | locked")
    for k, s, name, off, pt in CASES:
        key, salt, p = bytes.fromhex(k), bytes.fromhex(s), bytes.fromhex(pt)
        c = lock(key, salt, name, off, p)
        assert unlock(key, salt, name, off, c) == p
        print(f"{k} | {s} | {name} | {off} | {pt} | {nonce(salt, name).hex()} | {c.hex()}")
    for k in sorted({c[0] for c in CASES}):
        print(f"kcv {k} {kcv(bytes.fromhex(k)).hex()}")
