"""FLOPs per image of each spec's model against what this machine can do: the physical reference.

For every training spec: forward FLOPs per 32x32 image (torch.utils.flop_counter, convs and
matmuls), training FLOPs per image (about 3x forward: forward, input gradient, weight gradient),
the measured training images/s of its latest full-protocol run in ARTIFACTS, and the achieved
fraction of this machine's measured throughput: a large fp32 matmul and a Table-1-sized conv
(channels_last), each timed here. Prints a Markdown table.

Usage: python bench/flops.py [ARTIFACTS] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runner.artifacts import latest_run, read_summary  # noqa: E402
from runner.nets.architecture import forward_flops  # noqa: E402
from runner.plugin_host.catalogue import Catalogue  # noqa: E402
from runner.spec.loading import load  # noqa: E402
from runner.training.builders import build_model  # noqa: E402


def timed(fn, repeats: int, device) -> float:
    fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / repeats


def machine_throughput(device) -> dict[str, float]:
    """Measured GFLOP/s of a 2048^3 fp32 matmul and of a batch-100 5x5 conv (32->32 channels, 32x32)."""
    n = 2048
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    matmul = 2 * n ** 3 / timed(lambda: a @ b, 5, device) / 1e9
    conv = torch.nn.Conv2d(32, 32, 5, padding=2).to(device, memory_format=torch.channels_last)
    x = torch.randn(100, 32, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    flops = 2 * 100 * 32 * 32 * 32 * 32 * 25
    with torch.no_grad():
        conv_rate = flops / timed(lambda: conv(x), 5, device) / 1e9
    return {"matmul": matmul, "conv": conv_rate}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifacts", nargs="?", default=str(ROOT / "artifacts"))
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args()
    device = torch.device(args.device)
    catalogue = Catalogue.default()
    peak = machine_throughput(device)
    print(f"{device} with {torch.get_num_threads()} threads: fp32 matmul {peak['matmul']:.0f} GFLOP/s, "
          f"Table-1 conv (channels_last) {peak['conv']:.0f} GFLOP/s\n")
    print("| spec | forward MFLOP/image | training MFLOP/image | images/s (latest run) | achieved GFLOP/s "
          "| of matmul | of conv |")
    print("|---|---|---|---|---|---|---|")
    for path in sorted((ROOT / "specs").glob("p[12]_*.toml")):
        spec = load(path, catalogue)
        forward = forward_flops(build_model(spec, catalogue), device)
        training = 3 * forward
        run_dir = latest_run(args.artifacts, spec.name, quick=False)
        speed = read_summary(run_dir).get("images_per_second") if run_dir else None
        if speed:
            achieved = training * speed / 1e9
            tail = f"{speed:,.0f} | {achieved:.1f} | {achieved / peak['matmul']:.0%} | {achieved / peak['conv']:.0%}"
        else:
            tail = "– | – | – | –"
        print(f"| {spec.name} | {forward / 1e6:.1f} | {training / 1e6:.1f} | {tail} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
