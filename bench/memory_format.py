"""Seconds per training step of the Table 1 net in each memory format, interleaved.

Usage: python bench/memory_format.py [--steps 30] [--rounds 3]
Prints ms/step for channels_last and the default (NCHW) layout, measured after warm-up,
alternating formats so machine noise hits both alike.
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from runner.models import Table1Net


def time_steps(channels_last: bool, steps: int, batch: int) -> float:
    torch.manual_seed(0)
    model = Table1Net()
    x = torch.randint(0, 256, (batch, 3, 32, 32)).float()
    y = torch.randint(0, 10, (batch,))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for i in range(steps + 5):
        if i == 5:  # the first steps build oneDNN kernels
            started = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - started) / steps


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args()
    results = {"channels_last": [], "default": []}
    for _ in range(args.rounds):
        for name in results:
            results[name].append(time_steps(name == "channels_last", args.steps, args.batch))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")
    for name, times in results.items():
        print(f"{name:14} median {statistics.median(times) * 1000:7.1f} ms/step  "
              f"(rounds: {', '.join(f'{t * 1000:.1f}' for t in times)})")


if __name__ == "__main__":
    main()
