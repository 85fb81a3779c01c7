#!/usr/bin/env bash
# The one command that sets up a fresh machine and runs the whole suite.
#
# Installs what the tests need from Debian's packages when it is missing (Mesa's
# software Vulkan driver, lavapipe, so the GPU tests run on a real wgpu adapter even
# without a GPU; the real Fashion-MNIST for the inference tests), then checks formatting
# and lints, runs every test with DEEPLOCK_REQUIRE_GPU=1 and DEEPLOCK_REQUIRE_DATA=1 (a
# missing adapter or data set fails the tests that need it instead of skipping them),
# and builds the benchmarks.
set -euo pipefail
cd "$(dirname "$0")/.."

# Runs "$@" as root (directly, or through sudo); without either, says what to install.
as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "scripts/test.sh: not root and no sudo: install these Debian packages by hand, then rerun: ${packages[*]}" >&2
        exit 1
    fi
}

# Whether any of the given directories holds a Vulkan driver manifest (ICD).
has_icd() {
    local d
    for d in "$@"; do
        compgen -G "$d/*.json" >/dev/null && return 0
    done
    return 1
}

packages=()
# A Vulkan loader, and at least one Vulkan driver (ICD); lavapipe if there is none.
ldconfig -p 2>/dev/null | grep -q 'libvulkan\.so\.1' || packages+=(libvulkan1)
has_icd /usr/share/vulkan/icd.d /etc/vulkan/icd.d /usr/local/share/vulkan/icd.d ||
    packages+=(mesa-vulkan-drivers)
# EGL and OpenGL ES with Mesa's llvmpipe, so the JS WebGPU tests (dawn.node, npm package
# webgpu) have an adapter without a GPU: Dawn refuses Mesa 22's lavapipe for Vulkan.
ldconfig -p 2>/dev/null | grep -q 'libEGL_mesa\.so\.0' || packages+=(libegl1 libegl-mesa0 libgles2 libgl1-mesa-dri)
# Python's `cryptography`, for docs/kat.py: the independent implementation of the spec
# that checks files the crate locks.
python3 -c 'import cryptography' 2>/dev/null || packages+=(python3-cryptography)
# The real Fashion-MNIST, which the inference tests classify.
[ -e /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] || packages+=(dataset-fashion-mnist)
if [ ${#packages[@]} -gt 0 ]; then
    echo "scripts/test.sh: installing ${packages[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}"
fi

# wgpu's Vulkan loader warns without a runtime dir; give it a private one.
XDG_RUNTIME_DIR="$(mktemp -d)"
export XDG_RUNTIME_DIR
export DEEPLOCK_REQUIRE_GPU="${DEEPLOCK_REQUIRE_GPU:-1}"
# A missing data set fails the tests that need it instead of skipping them.
export DEEPLOCK_REQUIRE_DATA="${DEEPLOCK_REQUIRE_DATA:-1}"
# The same for python3 with `cryptography` (docs/kat.py).
export DEEPLOCK_REQUIRE_PYTHON="${DEEPLOCK_REQUIRE_PYTHON:-1}"

for script in scripts/*.sh .ci/run; do bash -n "$script"; done
if command -v python3 >/dev/null; then
    for script in scripts/*.py docs/*.py; do
        python3 -c 'import ast, sys; ast.parse(open(sys.argv[1]).read(), sys.argv[1])' "$script"
    done
fi
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --all-targets --locked
cargo test --doc --locked
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --locked --quiet
cargo bench --no-run --locked

# The Python package (python/), tested as a user installs it: a virtual environment made
# once and kept as a cache (torch and its CUDA libraries are about 6 GB to download),
# brought up to python/requirements-test.txt's pins each run (a no-op when they are
# met), the package built from this checkout with pip (the dev profile, which is
# optimised here, so it reuses the test build), then pytest from the repository root
# so that the installed package is what is imported.
py_env="${DEEPLOCK_PY_ENV:-$HOME/.cache/deeplock/py}"
if [ ! -x "$py_env/bin/python" ]; then
    echo "scripts/test.sh: creating the Python test environment in $py_env (first run: several GB)"
    python3 -m venv "$py_env"
fi
"$py_env/bin/python" -m pip install -q --disable-pip-version-check -r python/requirements-test.txt
MATURIN_PEP517_ARGS="--profile dev" "$py_env/bin/python" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps ./python
"$py_env/bin/ruff" check python
"$py_env/bin/ruff" format --check python
cargo build --locked --bin deeplock
DEEPLOCK_CLI="$PWD/target/debug/deeplock" KERAS_BACKEND=torch "$py_env/bin/python" -m pytest -q -p no:cacheprovider python/tests

# The npm package (js/): its exact devDependencies from package-lock.json (npm's cache
# kept under ~/.cache/deeplock/npm), compiled strict by tsc, then node --test against
# the compiled dist and the CLI built above, and in chromium.
if ! command -v npm >/dev/null; then
    echo "scripts/test.sh: installing Node.js and npm for js/"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm
fi
# Debian's chromium, for js/test/browser.test.mjs (driven by playwright-core); a missing
# browser fails that test instead of skipping it.
if [ ! -x "${DEEPLOCK_CHROMIUM:-/usr/bin/chromium}" ]; then
    packages=(chromium)
    echo "scripts/test.sh: installing chromium for js/test/browser.test.mjs"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium
fi
export DEEPLOCK_REQUIRE_BROWSER="${DEEPLOCK_REQUIRE_BROWSER:-1}"
npm ci --prefix js --no-audit --no-fund --cache "$HOME/.cache/deeplock/npm"
node js/scripts/embed-shaders.mjs
npx --prefix js tsc -p js
DEEPLOCK_CLI="$PWD/target/debug/deeplock" node --test js/test/*.test.mjs
