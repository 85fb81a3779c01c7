"""The deeplock CLI as the Python tests run it: files locked by the CLI must load in
Python, and files written from Python must unlock and verify with the CLI."""

import os
import pathlib
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[2]


def cli_path() -> str:
    """The CLI under test: `DEEPLOCK_CLI`, else the workspace's debug build."""
    path = os.environ.get("DEEPLOCK_CLI") or str(ROOT / "target" / "debug" / "deeplock")
    if not os.access(path, os.X_OK):
        raise RuntimeError(
            f"deeplock CLI not found at {path}: run `cargo build` or set DEEPLOCK_CLI"
        )
    return path


def run(*args, check: bool = True) -> subprocess.CompletedProcess:
    """Runs `deeplock ARGS...`; with `check`, a non-zero exit fails with its stderr."""
    proc = subprocess.run(
        [cli_path(), *map(str, args)], capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    if check and proc.returncode != 0:
        command = " ".join(map(str, args))
        raise AssertionError(f"deeplock {command} exited {proc.returncode}: {proc.stderr}")
    return proc


def keygen(path) -> pathlib.Path:
    """A new key file at `path`, made by the CLI."""
    run("keygen", "-o", path)
    return pathlib.Path(path)
