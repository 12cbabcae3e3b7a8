"""Runner overhead: images/s of the runner's Ignite trainer against a hand-written PyTorch loop.

Both do the same work on the same data (synthetic uint8 images held as one tensor), with the same
Table 1 net, transforms (flip, normalize, pad_crop), optimizer and channels_last; rounds alternate
so machine noise hits both alike. The runner side includes the core's metric logging and, with
--grad-magnitude, the gradient-magnitude plugin.

Usage: python bench/overhead.py [--steps 100] [--rounds 3] [--grad-magnitude]
"""
import argparse
import statistics
import time
import types

import torch
import torch.nn.functional as F

from plugins.augment import Normalize, PadCrop, RandomFlip
from runner.engine import EpochBatches, create_trainer, prepare
from runner.metrics import MetricsLog
from runner.models import Table1Net


def setup(n=2000):
    torch.manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,))
    model = Table1Net().to(memory_format=torch.channels_last)
    pipeline = torch.nn.Sequential(RandomFlip(), Normalize.fit(images), PadCrop(4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    return images, labels, model, pipeline, optimizer


def plain(steps: int) -> float:
    images, labels, model, pipeline, optimizer = setup()
    batches = iter(EpochBatches(images, labels, 100, shuffle=True))
    losses = torch.zeros(steps)
    started = time.perf_counter()
    for i in range(steps):
        try:
            x, y = next(batches)
        except StopIteration:
            batches = iter(EpochBatches(images, labels, 100, shuffle=True))
            x, y = next(batches)
        model.train()
        loss = F.cross_entropy(model(prepare(x, pipeline, True)), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses[i] = loss.detach()
    return steps * 100 / (time.perf_counter() - started)


def runner(steps: int, grad_magnitude: bool) -> float:
    from ignite.engine import Events

    images, labels, model, pipeline, optimizer = setup()
    trainer = create_trainer(model, optimizer, None, pipeline)
    metrics = MetricsLog(steps, "cpu")
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: metrics.record(
        e.state.iteration, e.state.output["loss"], e.state.output["correct"], e.state.output["count"]))
    if grad_magnitude:
        from plugins import grad_magnitude as plugin

        run = types.SimpleNamespace(model=model, metrics=metrics, device=torch.device("cpu"))
        plugin.attach(trainer=trainer, run=run, settings={"every": 1, "layers": "conv", "figures": False})
    started = time.perf_counter()
    trainer.run(EpochBatches(images, labels, 100, shuffle=True), max_iters=steps)
    return steps * 100 / (time.perf_counter() - started)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--grad-magnitude", action="store_true")
    args = parser.parse_args()
    plain(5), runner(5, args.grad_magnitude)  # warm-up: oneDNN kernel creation
    results = {"plain loop": [], "runner": []}
    for _ in range(args.rounds):
        results["plain loop"].append(plain(args.steps))
        results["runner"].append(runner(args.steps, args.grad_magnitude))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.steps} steps x {args.rounds} rounds"
          + (", runner with grad_magnitude" if args.grad_magnitude else ""))
    for name, speeds in results.items():
        print(f"{name:11} median {statistics.median(speeds):7.0f} images/s  "
              f"(rounds: {', '.join(f'{s:.0f}' for s in speeds)})")
    ratio = statistics.median(results["runner"]) / statistics.median(results["plain loop"])
    print(f"runner / plain = {ratio:.3f}")


if __name__ == "__main__":
    main()
