#!/usr/bin/env python3
"""Whole-file and whole-directory lock and unlock against `cp`, `cp -r` and
`openssl enc -aes-128-ctr`, side by side in one run: the yardsticks of the streaming
goals (a 1 GiB file within 1.25x `cp`; an 8-shard 4 GiB directory within 1.25x `cp -r`;
on disk with a warm page cache no slower than openssl; peak memory under 512 MiB).

The model files are random F32 tensors (`scripts/random_model.py`), written
into --dir (default /dev/shm, so the disk is not measured; pass a directory on a disk to
measure it with a warm page cache: the disk is synced and each command's input read
through, untimed, just before it runs). Every command runs --runs times, the commands
interleaved; the table gives median seconds, the ratio to the yardstick and the peak
resident memory of the command (from GNU time). Outputs are removed after each
run; everything is removed at the end.

    python3 scripts/compare_stream.py [--bin target/release/deeplock] [--gib 1]
        [--shards 8] [--shard-gib 0.5] [--runs 5] [--dir DIR] [--cold] [--json]

--cold drops the page cache (sync, then /proc/sys/vm/drop_caches: root only) before
every command, so each reads its input from the disk; the drop is not timed.

openssl gets a throwaway random key on its command line (it has no other way); deeplock
reads its key from a file, as always.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from random_model import write_model

TENSORS_PER_FILE = 64
GNU_TIME = "/usr/bin/time"
DROP_CACHES = "/proc/sys/vm/drop_caches"


def run(cmd: list[str]) -> tuple[float, int]:
    """Seconds and peak resident bytes of one command. The peak comes from GNU time,
    whose own footprint is small: a child's ru_maxrss read here would include this
    interpreter's, which Linux carries across the exec."""
    with tempfile.NamedTemporaryFile("r") as peak:
        start = time.perf_counter()
        proc = subprocess.run(
            [GNU_TIME, "-f", "%M", "-o", peak.name, *cmd],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            check=False,
        )
        took = time.perf_counter() - start
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip()
            sys.exit(f"compare_stream: {' '.join(cmd)} failed: {err}")
        return took, int(peak.read().split()[-1]) * 1024


def drop_page_cache() -> None:
    """Writes dirty pages back, then drops the clean ones, so that the next command reads
    its input from the disk."""
    os.sync()
    with open(DROP_CACHES, "w") as f:
        f.write("3\n")


def warm(paths: list[str]) -> None:
    """Reads `paths` (files, or directories of them) through, untimed, so that the command
    after finds its input in the page cache whatever the commands before it evicted."""
    for path in paths:
        files = (
            [os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs]
            if os.path.isdir(path)
            else [path]
        )
        for name in files:
            with open(name, "rb", buffering=0) as f:
                while f.read(1 << 24):
                    pass


def remove(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default="target/release/deeplock")
    ap.add_argument("--gib", type=float, default=1.0, help="size of the single file")
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--shard-gib", type=float, default=0.5)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dir", default="/dev/shm" if os.path.isdir("/dev/shm") else None)
    ap.add_argument("--json", action="store_true")
    ap.add_argument(
        "--cold",
        action="store_true",
        help="drop the page cache before every command (root, and --dir on a disk)",
    )
    args = ap.parse_args()
    deeplock = os.path.abspath(args.bin)
    if not os.access(deeplock, os.X_OK):
        sys.exit(
            f"compare_stream: no deeplock binary at {args.bin}; run `cargo build --release` or pass --bin"
        )
    if not os.access(GNU_TIME, os.X_OK):
        sys.exit("compare_stream: GNU time is not installed (it measures peak memory); apt-get install time")
    if shutil.which("openssl") is None:
        sys.exit("compare_stream: openssl is not installed; apt-get install openssl")
    if args.cold and not os.access(DROP_CACHES, os.W_OK):
        sys.exit(f"compare_stream: --cold needs to write {DROP_CACHES}: run as root")
    if args.cold and args.dir and os.path.realpath(args.dir).startswith("/dev/shm"):
        sys.exit("compare_stream: --cold measures a disk; pass --dir on one (tmpfs has no cache to drop)")

    with tempfile.TemporaryDirectory(dir=args.dir, prefix="deeplock-stream-") as d:
        key = os.path.join(d, "model.key")
        run([deeplock, "keygen", "-o", key])
        one = os.path.join(d, "model.safetensors")
        write_model(one, int(args.gib * (1 << 30)), TENSORS_PER_FILE)
        ckpt = os.path.join(d, "ckpt")
        os.mkdir(ckpt)
        for s in range(args.shards):
            name = f"model-{s + 1:05d}-of-{args.shards:05d}.safetensors"
            write_model(os.path.join(ckpt, name), int(args.shard_gib * (1 << 30)), TENSORS_PER_FILE)
        locked, locked_dir = os.path.join(d, "one.locked"), os.path.join(d, "ckpt.locked")
        run([deeplock, "lock", one, "-o", locked, "--key-file", key])
        run([deeplock, "lock", ckpt, "-o", locked_dir, "--key-file", key])
        out = os.path.join(d, "out")
        aes_key, iv = os.urandom(16).hex(), os.urandom(16).hex()
        k = ["--key-file", key, "--device", "cpu"]
        # Each group's first command is the yardstick the others are measured against.
        cases = [
            ("file:cp", ["cp", one, out]),
            (
                "file:openssl aes-128-ctr",
                ["openssl", "enc", "-aes-128-ctr", "-K", aes_key, "-iv", iv, "-in", one, "-out", out],
            ),
            # deeplock syncs its output once before renaming it into place; these two
            # show what the same durability costs the yardsticks.
            ("file:cp, sync", ["sh", "-c", 'cp "$0" "$1" && sync "$1"', one, out]),
            (
                "file:openssl, sync",
                [
                    "sh",
                    "-c",
                    'openssl enc -aes-128-ctr -K "$2" -iv "$3" -in "$0" -out "$1" && sync "$1"',
                    one,
                    out,
                    aes_key,
                    iv,
                ],
            ),
            ("file:deeplock lock", [deeplock, "lock", one, "-o", out, *k]),
            ("file:deeplock unlock", [deeplock, "unlock", locked, "-o", out, *k]),
            ("file:deeplock verify", [deeplock, "verify", locked, "--key-file", key]),
            ("dir:cp -r", ["cp", "-r", ckpt, out]),
            ("dir:cp -r, sync", ["sh", "-c", 'cp -r "$0" "$1" && sync "$1"/*', ckpt, out]),
            ("dir:deeplock lock", [deeplock, "lock", ckpt, "-o", out, *k]),
            ("dir:deeplock unlock", [deeplock, "unlock", locked_dir, "-o", out, *k]),
        ]
        times: dict[str, list[float]] = {label: [] for label, _ in cases}
        peaks = dict.fromkeys(times, 0)
        for _ in range(args.runs):
            for label, cmd in cases:
                if args.cold:
                    drop_page_cache()
                else:
                    # The last command's output, still being written back, would slow
                    # this one down: everything is on the disk before it starts.
                    os.sync()
                    warm([a for a in cmd if a in (one, locked, ckpt, locked_dir)])
                took, peak = run(cmd)
                times[label].append(took)
                peaks[label] = max(peaks[label], peak)
                remove(out)

    rows, base = [], {}
    for label, _ in cases:
        med = statistics.median(times[label])
        yardstick = base.setdefault(label.split(":")[0], med)
        rows.append(
            {
                "what": label,
                "median_s": med,
                "vs_cp": med / yardstick,
                "peak_bytes": peaks[label],
                "seconds": times[label],
            }
        )
    if args.json:
        print(
            json.dumps(
                {
                    "dir": args.dir,
                    "file_gib": args.gib,
                    "shards": args.shards,
                    "shard_gib": args.shard_gib,
                    "runs": args.runs,
                    "rows": rows,
                },
                indent=1,
            )
        )
        return
    print(f"{'what':<30} {'median s':>9} {'vs cp':>7} {'peak MiB':>9}")
    for r in rows:
        print(
            f"{r['what']:<30} {r['median_s']:>9.3f} {r['vs_cp']:>6.2f}x {r['peak_bytes'] / (1 << 20):>9.0f}"
        )


if __name__ == "__main__":
    main()
