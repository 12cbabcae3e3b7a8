"""Device ops per training step, by phase: what a GPU step launches, counted on any machine.

On a GPU a small net's step is bound by launching kernels from Python, not by their arithmetic
(README: 3.5 ms per Part 1 step on an H200), so the number of ops per step is the figure to
cut. This runs a spec through the runner itself (its plugins included), profiles a few steps
with torch.profiler and counts the leaf compute ops (each about one kernel launch; views and
allocations launch none) in each phase the trainer labels (runner.training.engine.phase): augment,
forward, loss, backward, optimizer, metrics, and "handlers" for what event handlers (the core's
logging, plugins) do between them.

With --device cuda it also counts the kernel launches themselves (CUDA runtime calls) per phase.

Usage: python bench/step_ops.py [SPEC ...] [--data ARCHIVE] [--device cpu|cuda] [--steps 10] [--top 6]
"""
from __future__ import annotations

import argparse
import collections
import sys
import tempfile
from pathlib import Path

import torch
from ignite.engine import Events

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runner import hookimpl  # noqa: E402
from runner import spec as spec_module  # noqa: E402
from runner.plugin_host.catalogue import Catalogue  # noqa: E402
from runner.training.flow import execute  # noqa: E402

PHASES = ("augment", "forward", "loss", "backward", "optimizer", "metrics")
# Ops that only make views or allocate: no kernel runs for them.
NO_KERNEL = {"aten::view", "aten::_unsafe_view", "aten::as_strided", "aten::t", "aten::transpose",
             "aten::permute", "aten::unsqueeze", "aten::squeeze", "aten::expand", "aten::slice",
             "aten::select", "aten::detach", "aten::detach_", "aten::alias", "aten::empty",
             "aten::empty_like", "aten::empty_strided", "aten::resize_", "aten::reshape", "aten::lift_fresh",
             "aten::_reshape_alias", "aten::result_type", "aten::set_", "aten::item", "aten::_local_scalar_dense",
             "aten::is_nonzero", "aten::to", "aten::_to_copy", "aten::contiguous", "aten::flatten",
             "aten::unflatten", "aten::split", "aten::chunk", "aten::unbind", "aten::narrow", "aten::expand_as",
             "aten::view_as", "aten::numpy_T", "aten::values", "aten::indices",
             "aten::_has_compatible_shallow_copy_type"}
LAUNCHES = {"cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx", "cudaGraphLaunch",
            "cudaMemcpyAsync", "cudaMemsetAsync"}


class ProfileSteps:
    """A plugin: profiles iterations first .. first + steps - 1 of the trainer."""

    def __init__(self, first: int, steps: int, cuda: bool):
        self.first, self.steps, self.profile = first, steps, None
        self.activities = [torch.profiler.ProfilerActivity.CPU] + [torch.profiler.ProfilerActivity.CUDA] * cuda

    @hookimpl
    def attach(self, trainer, evaluator, run, settings):
        last = self.first + self.steps - 1

        @trainer.on(Events.ITERATION_STARTED(once=self.first))
        def start(engine):
            self.profile = torch.profiler.profile(activities=self.activities)
            self.profile.__enter__()

        # Attached after the core's handlers, so their work on the last step is counted too.
        @trainer.on(Events.ITERATION_COMPLETED(once=last))
        def stop(engine):
            self.profile.__exit__(None, None, None)


def phase_of(event) -> str:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name in PHASES:
            return parent.name
        parent = parent.cpu_parent
    return "handlers"


def count_ops(profile, steps: int) -> tuple[dict[str, collections.Counter], collections.Counter]:
    """Leaf compute ops per step, {phase: Counter(op name)}, and kernel launches per step by phase."""
    found = collections.defaultdict(collections.Counter)
    launches = collections.Counter()
    for event in profile.events():
        if event.name in LAUNCHES:
            launches[phase_of(event)] += 1 / steps
            continue
        if not event.name.startswith("aten::") or event.name in NO_KERNEL:
            continue
        if any(child.name.startswith("aten::") and child.name not in NO_KERNEL for child in event.cpu_children):
            continue  # not a leaf: its children are counted
        found[phase_of(event)][event.name] += 1
    per_step = {name: collections.Counter({op: n / steps for op, n in ops.items()}) for name, ops in found.items()}
    return per_step, launches


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="*", default=["specs/p1_q4_crop.toml", "specs/p2_q2_gradients.toml",
                                                     "specs/p2_q4_skip.toml"])
    parser.add_argument("--data", help="CIFAR-10 archive (default: RUNNER_DATA or the download cache)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--top", type=int, default=6, help="most frequent ops listed per phase")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    first = 6  # past the first steps' one-off work (lazy state, allocator warm-up)
    for path in args.specs:
        catalogue = Catalogue.default()
        profiler = ProfileSteps(first, args.steps, cuda=args.device == "cuda")
        catalogue.add("profile_steps", profiler, "bench/step_ops.py")
        overrides = [f"train.iterations={first + args.steps}", "data.train_limit=2000", "data.test_limit=100",
                     f'device="{args.device}"', "plugins.profile_steps={}", *args.overrides]
        spec = spec_module.load(ROOT / path, catalogue, overrides)
        with tempfile.TemporaryDirectory() as out:
            model = execute(spec, catalogue, out=out, data=args.data, show_progress=False).model
        ops, launches = count_ops(profiler.profile, args.steps)
        total = sum(sum(c.values()) for c in ops.values())
        print(f"\n{spec.name} on {args.device}: {total:.0f} compute ops per step"
              + (f", {sum(launches.values()):.0f} kernel launches and copies" if launches else "")
              + f" ({spec['train']['optimizer']}, {len(list(model.parameters()))} "
              f"parameter tensors)")
        for name in (*PHASES, "handlers"):
            counter = ops.get(name, collections.Counter())
            top = ", ".join(f"{op[6:]} {n:g}" for op, n in counter.most_common(args.top))
            launched = f"  launches {launches[name]:4.0f}" if launches else ""
            print(f"  {name:10} {sum(counter.values()):5.0f}{launched}  {top}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
