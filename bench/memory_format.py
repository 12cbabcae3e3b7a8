"""Seconds per training step of the Table 1 net under each CPU setting, interleaved.

Usage: python bench/memory_format.py [--steps 30] [--rounds 3] [--no-compile]
Prints ms/step for channels_last and the default (NCHW) layout, channels_last on one thread, and
channels_last with torch.compile (compilation excluded: it happens in the warm-up steps),
measured after warm-up, alternating settings so machine noise hits all alike.
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from runner.nets.models import Table1Net


def time_steps(channels_last: bool, steps: int, batch: int, compiled: bool = False, threads: int = 0) -> float:
    torch.manual_seed(0)
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    model = Table1Net()
    x = torch.randint(0, 256, (batch, 3, 32, 32)).float()
    y = torch.randint(0, 10, (batch,))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    forward = torch.compile(model) if compiled else model
    for i in range(steps + 5):
        if i == 5:  # the first steps build oneDNN kernels (and compile)
            started = time.perf_counter()
        loss = F.cross_entropy(forward(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    seconds = (time.perf_counter() - started) / steps
    torch.set_num_threads(before)
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant (slow to build)")
    args = parser.parse_args()
    variants = {"channels_last": {"channels_last": True}, "default": {"channels_last": False},
                "channels_last, 1 thread": {"channels_last": True, "threads": 1}}
    if not args.no_compile:
        variants["channels_last, compiled"] = {"channels_last": True, "compiled": True}
    results = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, options in variants.items():
            results[name].append(time_steps(steps=args.steps, batch=args.batch, **options))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")
    for name, times in results.items():
        print(f"{name:24} median {statistics.median(times) * 1000:7.1f} ms/step  "
              f"(rounds: {', '.join(f'{t * 1000:.1f}' for t in times)})")


if __name__ == "__main__":
    main()
