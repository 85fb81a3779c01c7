#!/usr/bin/env python3
"""GMAC (AES-128-GCM with an empty plaintext and the data as additional data: what
deeplock v2 tags chunks with) through the system's libcrypto via ctypes, and through the
`cryptography` package (its own bundled OpenSSL), each checked against the other and
timed on 1 MiB, the chunk size (`openssl speed` has no GMAC-only mode). Python's
per-call overhead (a few microseconds) hides the rate of small inputs, so 1 MiB only.
For BENCHMARKS.md, "MAC choice". Run: python3 scripts/gmac_openssl.py"""
import ctypes
import os
import time

from cryptography.hazmat.backends import default_backend
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

EVP_CTRL_GCM_GET_TAG = 0x10
KEY, IV = b"\x42" * 16, b"\0" * 12

lib = ctypes.CDLL("libcrypto.so.3")
lib.EVP_CIPHER_CTX_new.restype = ctypes.c_void_p
lib.EVP_aes_128_gcm.restype = ctypes.c_void_p
lib.OpenSSL_version.restype = ctypes.c_char_p
ctx = ctypes.c_void_p(lib.EVP_CIPHER_CTX_new())
aes_128_gcm = ctypes.c_void_p(lib.EVP_aes_128_gcm())
outl = ctypes.c_int()
tag = ctypes.create_string_buffer(16)
scratch = ctypes.create_string_buffer(16)


def system_gmac(data):
    assert lib.EVP_EncryptInit_ex(ctx, aes_128_gcm, None, KEY, IV) == 1
    assert lib.EVP_EncryptUpdate(ctx, None, ctypes.byref(outl), data, len(data)) == 1
    assert lib.EVP_EncryptFinal_ex(ctx, scratch, ctypes.byref(outl)) == 1
    assert lib.EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, 16, tag) == 1
    return tag.raw


gcm = AESGCM(KEY)


def package_gmac(data):
    return gcm.encrypt(IV, b"", data)


def rate(f, data, total=1 << 30, runs=5):
    """Best of `runs` passes over `total` bytes, in GB/s."""
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        for _ in range(total // len(data)):
            f(data)
        best = min(best, time.perf_counter() - t)
    return total / best / 1e9


data = os.urandom(1 << 20)
assert system_gmac(data) == package_gmac(data)
print(f"{lib.OpenSSL_version(0).decode()} (system): {rate(system_gmac, data):.2f} GB/s")
print(f"{default_backend().openssl_version_text()} (cryptography): {rate(package_gmac, data):.2f} GB/s")
