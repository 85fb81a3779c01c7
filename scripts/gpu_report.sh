#!/usr/bin/env bash
# Every real-GPU measurement and check of deeplock in one go, for a GPU machine that has
# no Rust toolchain (DEVELOPERS.md "Measuring on a real GPU"; BENCHMARKS.md "Real GPU").
#
#   scripts/gpu_report.sh prepare DIR    here: release binaries (stripped, gzipped), the
#                                        GPU test executables and Fashion-MNIST's test split
#                                        into DIR (about 25 MB)
#   scripts/gpu_report.sh run DIR OUT    there, from the repository root (the tests read
#                                        tests/fixtures): the GPU tests with
#                                        DEEPLOCK_REQUIRE_GPU=1, `deeplock bench` (CPU and
#                                        GPU, up to 1 GiB), the table-layout sweep, the
#                                        fused matmul benchmark, the paper's experiment and,
#                                        where PyTorch has CUDA, cuBLAS on the matmul shapes
#                                        (scripts/torch_matmul.py), each into
#                                        OUT/<step>.{json,txt}, with OUT/summary.txt
#
# `run` goes on past a failing step (and says so in the summary), so one broken step does
# not cost the others; it exits non-zero if any step failed. It needs a Vulkan (or Metal,
# DX12) loader and driver on the machine; WGPU_BACKEND is honoured, SWEEP_MIB sets the
# table-layout sweep's buffer (default 1024).
set -uo pipefail

usage() {
    echo "usage: $0 prepare DIR | $0 run DIR OUT" >&2
    exit 2
}

prepare() {
    local dir=$1 data=/usr/share/datasets/fashion-mnist
    mkdir -p "$dir/tests" "$dir/fashion-mnist" || exit 1
    cargo build --release --bins --examples || exit 1
    local log
    log=$(cargo test --release --no-run --test gpu --test matmul --test infer_gpu 2>&1) || {
        echo "$log" >&2
        exit 1
    }
    local bins=(target/release/deeplock target/release/examples/paper
        target/release/examples/gpu_throughput)
    local t
    for t in $(echo "$log" | grep -o 'target/release/deps/[a-z_]*-[0-9a-f]*'); do
        bins+=("$t")
    done
    local b name
    for b in "${bins[@]}"; do
        name=$(basename "$b")
        case $b in */deps/*) name=tests/${name%-*} ;; esac
        strip -o "$dir/$name" "$b" && gzip -f -9 "$dir/$name" || exit 1
    done
    for f in t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz; do
        cp "$data/$f" "$dir/fashion-mnist/" || {
            echo "Fashion-MNIST is missing: apt-get install dataset-fashion-mnist" >&2
            exit 1
        }
    done
    # Where the test executables and the paper example look for tests/fixtures.
    echo "$PWD" >"$dir/built_in"
    du -sh "$dir"
}

run() {
    local dir=$1 out=$2
    mkdir -p "$out" || exit 1
    local bin
    bin=$(mktemp -d) || exit 1
    mkdir -p "$bin/tests"
    local f rel
    for f in "$dir"/*.gz "$dir"/tests/*.gz; do
        rel=${f#"$dir"/}
        gunzip -c "$f" >"$bin/${rel%.gz}" && chmod +x "$bin/${rel%.gz}" || return 1
    done
    export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)}
    # The test executables find the fixtures through the path they were built in, and the
    # data set where Debian installs it.
    local built
    built=$(cat "$dir/built_in")
    if [ ! -e "$built" ]; then
        mkdir -p "$(dirname "$built")" && ln -s "$PWD" "$built"
    fi
    if [ ! -e /usr/share/datasets/fashion-mnist ]; then
        mkdir -p /usr/share/datasets && cp -r "$dir/fashion-mnist" /usr/share/datasets/
    fi
    local failed=0 summary=$out/summary.txt
    : >"$summary"
    step() {
        local name=$1 file=$2
        shift 2
        local start=$SECONDS
        "$@" >"$out/$file" 2>"$out/$name.err"
        local rc=$?
        echo "$name: rc $rc, $((SECONDS - start)) s: $*" | tee -a "$summary"
        [ $rc -eq 0 ] || failed=1
    }
    step adapter adapter.txt "$bin/deeplock" demo -v
    for t in "$bin"/tests/*; do
        step "test-$(basename "$t")" "test-$(basename "$t").txt" \
            env DEEPLOCK_REQUIRE_GPU=1 DEEPLOCK_REQUIRE_DATA=1 "$t" --test-threads 4
    done
    step bench bench.json "$bin/deeplock" bench --json
    step sweep sweep.txt "$bin/gpu_throughput" "${SWEEP_MIB:-1024}"
    step matmul matmul.json "$bin/deeplock" bench --matmul --json
    step paper paper.json "$bin/paper" --json --data "$dir/fashion-mnist"
    # cuBLAS on the same shapes as `bench --matmul`, where PyTorch and CUDA are there.
    if python3 -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
        step torch torch.json python3 "$(dirname "$0")/torch_matmul.py"
    else
        echo "torch: skipped (no PyTorch with CUDA here)" | tee -a "$summary"
    fi
    return $failed
}

case ${1:-} in
prepare) [ $# -eq 2 ] || usage; prepare "$2" ;;
run) [ $# -eq 3 ] || usage; run "$2" "$3" ;;
*) usage ;;
esac
