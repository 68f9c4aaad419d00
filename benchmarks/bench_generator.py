"""Times an FFHQ-1024-shaped StyleGAN2 forward pass (random weights, batch 1) on the CPU: our `Generator` against
`plain_synthesis`, a plain implementation in the upstream design (per-sample modulated weights in a grouped
convolution, transposed conv then a separate blur, reference ops), measured in the same run, interleaved, so that
machine load affects both alike. Prints one JSON line with medians in seconds and their ratio.

    python benchmarks/bench_generator.py [--size 1024] [--reps 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ops  # noqa: E402
from benchmarks.plain_stylegan2 import plain_synthesis  # noqa: E402
from styleclip.models.generator import Generator  # noqa: E402


def build(size: int) -> Generator:
    torch.manual_seed(0)
    g = Generator(size, style_dim=512, n_mlp=8, channel_multiplier=2).eval()
    with torch.no_grad():  # non-zero noise strengths and biases, so every term costs what it costs in a real model
        for name, p in g.named_parameters():
            if name.endswith("noise.weight"):
                p.fill_(0.1)
    return g


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    g = build(args.size)
    w_plus = g.z_to_w_plus(torch.randn(1, 512, generator=torch.Generator().manual_seed(1)))

    def ours() -> torch.Tensor:
        with torch.inference_mode():
            return g.synthesis_w_plus(w_plus)

    def plain() -> torch.Tensor:
        with torch.no_grad():
            return plain_synthesis(g, w_plus)

    a, b = ours(), plain()  # warm-up (weight caches, oneDNN primitives) and a correctness check
    max_diff = float((a - b).abs().max())
    times = {"ours": [], "plain": []}
    for _ in range(args.reps):
        for name, fn in (("ours", ours), ("plain", plain)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({
        "size": args.size, "threads": args.threads, "reps": args.reps,
        "ours_median_s": round(med["ours"], 3), "plain_median_s": round(med["plain"], 3),
        "ratio": round(med["ours"] / med["plain"], 3), "max_abs_diff": max_diff,
        "ours_all_s": [round(t, 3) for t in times["ours"]], "plain_all_s": [round(t, 3) for t in times["plain"]],
        "ops": ops.describe(), "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
    }))


if __name__ == "__main__":
    main()
