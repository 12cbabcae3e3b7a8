"""Runner overhead: training images/s of `runner` itself against a hand-written PyTorch loop.

The runner side is the real thing: run.execute on specs/p1_q4_crop.toml (Table 1 net, flip +
normalize + pad_crop, SGD, channels_last) with its core logging, divergence checks, checkpoints
and plugins, timed by the run itself (summary.json "seconds": the trainer's run). The plain side
is a loop written here by hand doing the same work on the same CIFAR-10 tensors: same model,
transforms, optimizer and learning-rate schedule. Runner variants give each plugin's own cost:
  runner            the spec as is: visdom on (with no server it records visdom.jsonl only)
  visdom off        [plugins.visdom] enabled = false
  +grad_magnitude   visdom off, G of every conv layer recorded at every step
  +gradient_flow    visdom off, grad_magnitude on every layer with max, mean |g| and ||g||/||w||
  +layer_stats      visdom off, layer statistics every 50 steps
  +lr_finder        visdom off, the range test (100 steps) before training: in wall time, not training's
  +sharpness        visdom off, one top-eigenvalue measurement (after step 1) on 1,000 images
  +tensorboard      visdom off, every metric to TensorBoard event files every 10 steps
  +mlflow           visdom off, the same to an MLflow SQLite store in the run folder
(saliency reads an attack's images and trains nothing: bench/attack_speed.py is its measure.)
Rounds alternate the plain loop and the variants, so machine noise hits all alike. With a small
--batch, arithmetic shrinks and each step's fixed cost (Python, dispatch: what bounds a GPU step)
shows; the per-step difference is printed in microseconds.

Usage: python bench/overhead.py [--data ARCHIVE] [--steps 100] [--rounds 3] [--batch 100] [--step eager|graph]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runner import data  # noqa: E402
from runner.nets.models import Table1Net  # noqa: E402
from runner.plugin_host.catalogue import Catalogue  # noqa: E402
from runner.plugins.augment import Normalize, PadCrop, RandomFlip  # noqa: E402
from runner.spec import loading as spec_module  # noqa: E402
from runner.training.flow import execute  # noqa: E402

SPEC = ROOT / "specs" / "p1_q4_crop.toml"
VARIANTS = {
    "runner": [],
    "visdom off": ["plugins.visdom.enabled=false"],
    # A plugin the spec does not enable needs enabled=true: its other settings alone would be unused.
    "+grad_magnitude": ["plugins.visdom.enabled=false", "plugins.grad_magnitude.enabled=true",
                        "plugins.grad_magnitude.every=1"],
    "+gradient_flow": ["plugins.visdom.enabled=false", "plugins.grad_magnitude.enabled=true",
                       'plugins.grad_magnitude.layers="all"', 'plugins.grad_magnitude.measures=["max","mean","ratio"]'],
    "+layer_stats": ["plugins.visdom.enabled=false", "plugins.layer_stats.enabled=true",
                     "plugins.layer_stats.every=50"],
    "+lr_finder": ["plugins.visdom.enabled=false", "plugins.lr_finder.enabled=true"],
    "+sharpness": ["plugins.visdom.enabled=false", "plugins.sharpness.enabled=true", "plugins.sharpness.at=[1]"],
    "+tensorboard": ["plugins.visdom.enabled=false", "plugins.tensorboard.enabled=true"],
    "+mlflow": ["plugins.visdom.enabled=false", "plugins.mlflow.enabled=true"],
}


def plain(images, labels, steps: int, batch: int) -> float:
    """Training seconds of a hand-written loop: the spec's recipe, nothing else."""
    torch.manual_seed(0)
    model = Table1Net().to(memory_format=torch.channels_last)
    pipeline = torch.nn.Sequential(RandomFlip(), Normalize.fit(images), PadCrop(4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4,
                                fused=True)
    warm = int(0.1 * steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda k: (k + 1) / warm if k < warm else 1 - (k - warm) / (steps - warm))
    losses, correct = torch.zeros(steps), torch.zeros(steps)
    per_epoch = len(labels) // batch
    started = time.perf_counter()
    for i in range(steps):
        if i % per_epoch == 0:
            order = torch.randperm(len(labels))
        index = order[(i % per_epoch) * batch:(i % per_epoch + 1) * batch]
        x = pipeline(images[index].float()).contiguous(memory_format=torch.channels_last)
        logits = model(x)
        loss = F.cross_entropy(logits, labels[index], label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses[i], correct[i] = loss.detach(), (logits.argmax(1) == labels[index]).sum()
    if not math.isfinite(float(losses[-1])):
        raise RuntimeError("the plain loop diverged")
    return time.perf_counter() - started


def runner(variant: list[str], steps: int, batch: int, source, catalogue, step: str = "eager") -> tuple[float, float]:
    """Training and wall seconds of `runner` on the spec, as the run measured them."""
    overrides = [f"train.iterations={steps}", f"train.batch_size={batch}", "data.test_limit=100",
                 "train.log_every=10", 'device="cpu"', f'train.step="{step}"', *variant]
    spec = spec_module.load(SPEC, catalogue, overrides)
    if spec.unused_overrides:  # a variant that measures nothing would pass for a free plugin
        raise SystemExit(f"overrides the spec does not use: {spec.unused_overrides}")
    with tempfile.TemporaryDirectory() as out, contextlib.redirect_stderr(io.StringIO()):  # its progress lines
        results = execute(spec, catalogue, out=out, data=source, show_progress=False).results
        return results["seconds"], results["wall_seconds"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="CIFAR-10 archive (default: RUNNER_DATA or the download cache)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--step", default="eager", choices=("eager", "graph"),
                        help="the runner's train.step (graph: the captured step's code, uncaptured on the CPU)")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated, of: {', '.join(VARIANTS)}")
    args = parser.parse_args()
    chosen = {name: VARIANTS[name] for name in args.variants.split(",")}
    source = data.resolve(args.data)
    images, labels = data.load_batches(source.folder, ["data_batch_1"])
    catalogue = Catalogue.default()
    timings = {"plain loop": [], **{name: [] for name in chosen}}
    walls = {name: [] for name in chosen}
    plain(images, labels, 5, args.batch)  # warm-up: oneDNN creates its kernels once per shape
    for _ in range(args.rounds):
        timings["plain loop"].append(plain(images, labels, args.steps, args.batch))
        for name, variant in chosen.items():
            seconds, wall = runner(variant, args.steps, args.batch, source, catalogue, args.step)
            timings[name].append(seconds)
            walls[name].append(wall)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, step {args.step}, "
          f"{args.steps} steps x {args.rounds} rounds (medians; visdom has no server)")
    base = statistics.median(timings["plain loop"])
    for name, seconds in timings.items():
        median = statistics.median(seconds)
        print(f"{name:16} {args.steps * args.batch / median:7.0f} images/s  {median / args.steps * 1e3:7.2f} ms/step  "
              f"{median / base:5.3f} of plain's time  {(median - base) / args.steps * 1e6:+7.0f} us/step  "
              f"(rounds: {', '.join(f'{s:.2f}' for s in seconds)} s)")
    # A plugin's work outside the training loop (a range test, a tracker's store) shows in wall time.
    reference = "visdom off" if "visdom off" in walls else None
    for name, seconds in walls.items():
        median = statistics.median(seconds)
        versus = (f"  {median / statistics.median(walls[reference]):5.2f}x visdom off's"
                  if reference and name != reference else "")
        print(f"{name:16} wall {median:7.2f} s{versus}  (rounds: {', '.join(f'{s:.2f}' for s in seconds)} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
