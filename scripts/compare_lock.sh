#!/usr/bin/env bash
# Whole-file lock time of two deeplock builds on the same file, alternating runs so that
# both see the same machine: `scripts/compare_lock.sh OLD_BIN NEW_BIN [GIB] [OUT_DIR]`.
# Builds a GIB-GiB safetensors file of random F32 tensors (8 of them), locks it RUNS
# times (default 5) with each binary on the CPU, into OUT_DIR (default /dev/shm, so that
# disk write-back does not decide the figure), and prints each run and the medians.
# Used for the v2-against-v1 figure in BENCHMARKS.md: OLD_BIN a build of the last
# commit that wrote v1 (e5ca7e3), NEW_BIN this one.
set -euo pipefail
old=$1 new=$2 gib=${3:-1} out=${4:-/dev/shm} runs=${RUNS:-5}
work=$(mktemp -d)
trap 'rm -rf "$work" "$out"/deeplock-compare-*' EXIT
printf '%s' "$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')" > "$work/key"
chmod 600 "$work/key"
python3 "$(dirname "$0")/random_model.py" "$work/model.safetensors" "$gib" 8
cat "$work/model.safetensors" > /dev/null   # in the page cache for both
declare -A times
for r in $(seq "$runs"); do
    for which in old new; do
        bin=$old; [ "$which" = new ] && bin=$new
        dst="$out/deeplock-compare-$which.safetensors"
        rm -f "$dst"
        s=$(date +%s.%N)
        "$bin" lock "$work/model.safetensors" -o "$dst" --key-file "$work/key" --device cpu >/dev/null
        e=$(date +%s.%N)
        t=$(echo "$e - $s" | bc)
        times[$which]+="$t "
        echo "run $r $which ${t}s"
        rm -f "$dst"
    done
done
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mo=$(echo "${times[old]}" | median) mn=$(echo "${times[new]}" | median)
echo "median old ${mo}s new ${mn}s ratio $(echo "scale=3; $mn / $mo" | bc)"
