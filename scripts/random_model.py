#!/usr/bin/env python3
"""A safetensors file of random F32 tensors, written with the standard library alone:
the model the comparison scripts time (`compare_lock.sh`, `compare_stream.py`).

    python3 scripts/random_model.py PATH GIB [TENSORS]
"""

import json
import os
import sys

BLOCK = 1 << 24


def write_model(path: str, total: int, tensors: int) -> None:
    """`tensors` F32 tensors named `layers.{i}.weight`, `total` bytes of random data in
    all (rounded down to whole elements), with `format: pt` metadata, at `path`."""
    size = total // tensors // 4 * 4
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    for i in range(tensors):
        header[f"layers.{i}.weight"] = {
            "dtype": "F32",
            "shape": [size // 4],
            "data_offsets": [i * size, (i + 1) * size],
        }
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text)
        left = size * tensors
        while left:
            n = min(left, BLOCK)
            f.write(os.urandom(n))
            left -= n


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__.strip().splitlines()[-1].strip())
    write_model(
        sys.argv[1], int(float(sys.argv[2]) * (1 << 30)), int(sys.argv[3]) if len(sys.argv) == 4 else 8
    )
