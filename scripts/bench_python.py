#!/usr/bin/env python3
"""Loading a 1 GiB model into NumPy, side by side in one run: `deeplock.numpy.load_file`
of the locked file, `safetensors.numpy.load_file` of the same model unlocked, and
`cryptotensors.numpy.load_file` of it encrypted with cryptotensors' defaults.

Each load runs in a fresh interpreter, so that its peak memory (VmHWM, less the
interpreter's own before the load) is its own; the times are medians over --runs,
the loaders interleaved. The files are written to --dir (default: a temporary directory
in /dev/shm, so the disk is not measured) and removed afterwards.

    python scripts/bench_python.py [--gib 1] [--runs 5] [--dir DIR] [--json]

Needs the packages of python/requirements-test.txt and `pip install ./python`.
"""

import argparse
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile

CHILD = r"""
import sys, time
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
which, path, extra = sys.argv[1], sys.argv[2], sys.argv[3]
import numpy as np
if which == "deeplock":
    import deeplock, deeplock.numpy
    key = deeplock.Key.from_file(extra)
    load = lambda: deeplock.numpy.load_file(path, key)
elif which == "safetensors":
    import safetensors.numpy
    load = lambda: safetensors.numpy.load_file(path)
else:
    import json, cryptotensors, cryptotensors.numpy
    cryptotensors.register_direct_key_provider(keys=json.load(open(extra)))
    load = lambda: cryptotensors.numpy.load_file(path)
base = hwm()
start = time.perf_counter()
tensors = load()
took = time.perf_counter() - start
total = sum(a.nbytes for a in tensors.values())
print(took, hwm() - base, total)
"""


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dir", default="/dev/shm" if os.path.isdir("/dev/shm") else None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import cryptotensors
    import cryptotensors.numpy
    import numpy as np
    import safetensors.numpy
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    import deeplock
    import deeplock.numpy

    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        n = int(args.gib * (1 << 30)) // (64 * 4)
        tensors = {f"layer{i}.weight": np.full(n, i / 7, dtype=np.float32) for i in range(64)}
        plain, locked, crypt = (os.path.join(d, f) for f in ("plain", "locked", "crypt"))
        safetensors.numpy.save_file(tensors, plain)
        key_path = os.path.join(d, "model.key")
        key = deeplock.Key.generate()
        key.save(key_path)
        deeplock.numpy.save_file(tensors, locked, key)
        sign = Ed25519PrivateKey.generate()
        raw = serialization.Encoding.Raw
        jwks = [
            {"kty": "oct", "alg": "aes256gcm", "kid": "enc", "k": b64(os.urandom(32))},
            {
                "kty": "okp",
                "alg": "ed25519",
                "kid": "sign",
                "x": b64(sign.public_key().public_bytes(raw, serialization.PublicFormat.Raw)),
                "d": b64(
                    sign.private_bytes(
                        raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
                    )
                ),
            },
        ]
        jwks_path = os.path.join(d, "jwks.json")
        with open(jwks_path, "w") as f:
            json.dump(jwks, f)
        cryptotensors.register_direct_key_provider(keys=jwks)
        config = cryptotensors.SerializeCryptoConfig(enc_kid="enc", sign_kid="sign")
        cryptotensors.numpy.save_file(tensors, crypt, config=config.to_dict())
        del tensors

        runs = {
            "deeplock": (locked, key_path),
            "safetensors": (plain, "-"),
            "cryptotensors": (crypt, jwks_path),
        }
        results = {name: [] for name in runs}
        for _ in range(args.runs):
            for name, (path, extra) in runs.items():
                out = subprocess.run(
                    [sys.executable, "-c", CHILD, name, path, extra],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout.split()
                results[name].append((float(out[0]), int(out[1]), int(out[2])))
    summary = {}
    for name, rs in results.items():
        size = rs[0][2]
        summary[name] = {
            "seconds": statistics.median(r[0] for r in rs),
            "peak_over_model": statistics.median(r[1] for r in rs) / size,
            "model_bytes": size,
        }
    ref = summary["safetensors"]["seconds"]
    for s in summary.values():
        s["time_vs_safetensors"] = s["seconds"] / ref
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"{'loader':<15}{'median s':>10}{'vs safetensors':>16}{'peak / model':>14}")
    for name, s in summary.items():
        print(
            f"{name:<15}{s['seconds']:>10.3f}{s['time_vs_safetensors']:>15.2f}x"
            f"{s['peak_over_model']:>13.2f}x"
        )


if __name__ == "__main__":
    main()
