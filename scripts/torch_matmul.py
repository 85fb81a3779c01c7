#!/usr/bin/env python3
"""cuBLAS (through PyTorch) on the shapes of `deeplock bench --matmul`, for comparison
with the plain WGSL kernels on the same GPU.

Y = X · Wᵀ for the cases of `MatmulCase::defaults()` (src/bench/matmul.rs). For each
case, kernel time by CUDA events, median of 20 runs after 3 warm-ups:

- `torch_f32_ms`: X and W in f32 with TF32 off: the same arithmetic as the WGSL
  kernels (which decode BF16 weights to f32 and multiply in f32);
- `torch_native_ms`: what PyTorch would do with such weights by default: f32 with TF32
  allowed for F32 weights, X and W in bf16 (tensor cores) for BF16 weights.

Prints one JSON object {"device": ..., "torch": ..., "cases": [...]}; exits 2 with a
one-line reason when PyTorch or a CUDA device is missing.
"""

import json
import statistics
import sys

CASES = [(1, 4096, 4096), (64, 4096, 4096), (512, 4096, 4096), (1, 512, 2304), (64, 512, 2304)]
DTYPES = ["F32", "BF16"]
WARMUP, RUNS = 3, 20


def time_ms(torch, fn):
    for _ in range(WARMUP):
        fn()
    times = []
    for _ in range(RUNS):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main():
    try:
        import torch
    except ImportError:
        print("torch_matmul.py: PyTorch is not installed here", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("torch_matmul.py: PyTorch sees no CUDA device", file=sys.stderr)
        return 2
    gen = torch.Generator(device="cuda").manual_seed(0)
    cases = []
    for dtype in DTYPES:
        for m, n, k in CASES:
            x = torch.rand(m, k, device="cuda", generator=gen) * 2 - 1
            w = torch.rand(n, k, device="cuda", generator=gen) * 2 - 1
            if dtype == "BF16":
                w = w.to(torch.bfloat16).float()  # the values a BF16 weight holds
            torch.backends.cuda.matmul.allow_tf32 = False
            f32 = time_ms(torch, lambda: torch.matmul(x, w.T))
            if dtype == "BF16":
                xb, wb = x.to(torch.bfloat16), w.to(torch.bfloat16)
                native = time_ms(torch, lambda: torch.matmul(xb, wb.T))
            else:
                torch.backends.cuda.matmul.allow_tf32 = True
                native = time_ms(torch, lambda: torch.matmul(x, w.T))
                torch.backends.cuda.matmul.allow_tf32 = False
            flops = 2 * m * n * k
            cases.append({
                "m": m, "n": n, "k": k, "dtype": dtype,
                "torch_f32_ms": f32,
                "torch_native_ms": native,
                "gflops_f32": flops / f32 / 1e6,
                "gflops_native": flops / native / 1e6,
            })
    print(json.dumps({
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "runs": RUNS,
        "cases": cases,
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
