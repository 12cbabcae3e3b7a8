"""Several seeds of one spec trained together in one process, as one batched model (torch.func).

The seeds' nets are stacked (torch.func.stack_module_state: every parameter and buffer gains a
leading seed dimension) and run by torch.func.vmap over torch.func.functional_call, so each
layer is one operation for all seeds (a convolution becomes one grouped convolution) instead of
one per seed and process. Each seed keeps what makes it that seed's run alone: its own random
stream (the model's initialization, each epoch's permutation and each step's augmentation draw
from it in the order the lone run draws them), its own BatchNorm statistics and metrics. The
seeds' losses are summed for one backward pass, which gives each seed exactly its own gradients,
and the fused optimizer updates element by element, so the stacked update is each seed's update.

What differs from training each seed alone is only the order of fp32 sums inside the batched
kernels (a grouped convolution sums as the kernel chooses), so metrics.csv agrees within fp32
noise that training's chaos amplifies: tests/test_batched_seeds.py gives the tolerance.

Core metrics only: plugins' attach and run_finished hooks do not run (a spec enabling plugins
other than visdom is refused), and no checkpoints are written. Each seed gets its own run folder
with spec.toml, metrics.csv, model.pt and summary.json, whose `seconds` is the batched training's
(all seeds' together) and `batched_seeds` lists the seeds trained with it.
"""
from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from ignite.utils import manual_seed
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from .. import artifacts
from ..data import resolve as resolve_data
from ..errors import DivergedError, RunnerError
from .builders import build_model, build_transforms, load_data, resolve_device
from .engine import EpochBatches, autocast, create_evaluator, make_optimizer, make_scheduler, prepare, resolve_precision
from .metrics import MetricsLog
from .state import Run

ALLOWED_PLUGINS = {"visdom"}  # a live plot that is silently off without a server


class SeedStream:
    """One seed's random state and epoch iterator, entered around each of its draws."""

    def __init__(self, device: torch.device, batches: EpochBatches):
        self.cuda = device.type == "cuda"
        self.batches = batches
        self.iterator: Iterator[tuple[torch.Tensor, torch.Tensor]] | None = None  # made at the first step
        self.saved = self._state()

    def _state(self):
        return torch.get_rng_state(), torch.cuda.get_rng_state() if self.cuda else None

    def next_batch(self, pipeline: nn.Module, channels_last: bool):
        """The seed's next augmented batch, its draws made from its own stream."""
        torch.set_rng_state(self.saved[0])
        if self.cuda:
            torch.cuda.set_rng_state(self.saved[1])
        if self.iterator is None:  # the first step: a fresh permutation
            self.iterator = iter(self.batches)
        try:
            images, labels = next(self.iterator)
        except StopIteration:  # an epoch's end: a fresh permutation
            self.iterator = iter(self.batches)
            images, labels = next(self.iterator)
        x = prepare(images, pipeline, channels_last)
        self.saved = self._state()
        return x, labels


@dataclass
class Seed:
    """One seed's Run and the parts of it the batched loop uses, as built (none of them None),
    with its random stream, which is the batched loop's alone and so not part of the Run."""

    run: Run
    model: nn.Module
    pipeline: nn.Module
    metrics: MetricsLog
    stream: SeedStream


def check_specs(specs) -> None:
    """The specs must be one spec at several seeds, with only core metrics to record."""
    first = {k: v for k, v in specs[0].values.items() if k != "seed"}
    for spec in specs[1:]:
        if {k: v for k, v in spec.values.items() if k != "seed"} != first:
            raise RunnerError(f"batched seeds train one spec at several seeds; {spec.path} differs from "
                              f"{specs[0].path} in more than its seed")
    extra = set(specs[0].plugin_names()) - ALLOWED_PLUGINS
    if extra:
        raise RunnerError(f"{specs[0].path}: batched seeds record the core metrics only, and plugins "
                          f"{sorted(extra)} attach to training; train these seeds one run each")
    if specs[0].train["step"] != "eager" or specs[0].train["compile"]:
        raise RunnerError(f"{specs[0].path}: batched seeds run the eager step; set train.step = \"eager\" "
                          "and train.compile = false")


def train_seeds(specs, catalogue, *, out="artifacts", data=None) -> list[Run]:
    """Train the specs (one spec at several seeds) together; returns each seed's finished Run.
    data: --data's text or a resolved source (runner.data.resolve), as run.execute takes it."""
    check_specs(specs)
    started = time.perf_counter()
    spec, train = specs[0], specs[0].train
    device = resolve_device(spec.device)
    data = load_data(spec, resolve_data(data, spec), device)
    seeds = [_seed_run(s, catalogue, device, data, out) for s in specs]
    setup_seconds = time.perf_counter() - started
    seconds = _train(seeds, train, device)
    runs = [seed.run for seed in seeds]
    for run in runs:
        eval_started = time.perf_counter()
        assert run.test_images is not None and run.test_labels is not None  # set by _seed_run
        run.evaluator.run(EpochBatches(run.test_images, run.test_labels, spec.eval.batch_size, shuffle=False))
        _finish(run, seconds, time.perf_counter() - eval_started, setup_seconds, [s.seed for s in specs])
    return runs


def _seed_run(spec, catalogue, device, data, out) -> Seed:
    """One seed's parts, built in the order a lone run builds them from its seed."""
    train = spec.train
    run_dir = artifacts.new_run_dir(Path(out), spec.name, spec.seed)
    run = Run(spec=spec, catalogue=catalogue, device=device, dir=run_dir)
    artifacts.write_text(run_dir / "spec.toml", spec.dumps())
    artifacts.set_status(run_dir, "running")
    manual_seed(spec.seed)
    run.train_images, run.train_labels, run.test_images, run.test_labels, run.class_names = data
    run.train_pipeline, run.eval_pipeline = build_transforms(spec, catalogue, run.train_images)
    run.train_pipeline.to(device)
    memory_format = torch.channels_last if train["channels_last"] else torch.contiguous_format
    # Module.to takes memory_format (torch's docs), though its typed overloads leave it out.
    run.model = build_model(spec, catalogue, run).to(  # type: ignore[call-overload]
        device, memory_format=memory_format)
    batches = EpochBatches(run.train_images, run.train_labels, train["batch_size"], shuffle=True)
    stream = SeedStream(device, batches)
    run.metrics = MetricsLog(train["iterations"], device, window=len(batches))
    precision = resolve_precision(train["precision"], device)
    run.results["precision"] = precision
    run.evaluator = create_evaluator(run.model, run.eval_pipeline, num_classes=len(run.class_names),
                                     channels_last=train["channels_last"], precision=precision)
    return Seed(run, run.model, run.train_pipeline, run.metrics, stream)


def _train(seeds: list[Seed], train, device) -> float:
    """The batched training loop; the seconds it took. The seeds' models get their trained weights."""
    params, buffers = stack_module_state([seed.model for seed in seeds])
    base = copy.deepcopy(seeds[0].model).to("meta")
    forward = vmap(lambda p, b, x: functional_call(base, (p, b), (x,)))
    per_seed_loss = vmap(lambda logits, labels: F.cross_entropy(logits, labels,
                                                                label_smoothing=train["label_smoothing"]))
    optimizer = make_optimizer(list(params.values()), train)
    scheduler = make_scheduler(optimizer, train)
    precision = resolve_precision(train["precision"], device)
    started = time.perf_counter()
    torch.backends.cudnn.benchmark = device.type == "cuda"
    for seed in seeds:
        seed.pipeline.train()
    try:
        for iteration in range(1, train["iterations"] + 1):
            drawn = [seed.stream.next_batch(seed.pipeline, train["channels_last"]) for seed in seeds]
            x, labels = torch.stack([d[0] for d in drawn]), torch.stack([d[1] for d in drawn])
            with autocast(device, precision):
                logits = forward(params, buffers, x)
            losses = per_seed_loss(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()  # each seed's parameters get exactly its own loss's gradient
            if train["clip_grad_norm"]:
                _clip_each_seed(list(params.values()), train["clip_grad_norm"])
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            correct = (logits.detach().argmax(-1) == labels).sum(1)
            for i, seed in enumerate(seeds):
                seed.metrics.record(iteration, losses[i].detach(), correct[i], labels.shape[1])
            if iteration % train["log_every"] == 0 or iteration == train["iterations"]:
                _check_finite(seeds, iteration)
    finally:
        torch.backends.cudnn.benchmark = False
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    with torch.no_grad():
        for i, seed in enumerate(seeds):
            state = {name: tensor[i] for name, tensor in {**params, **buffers}.items()}
            seed.model.load_state_dict(state)
    return seconds


def _clip_each_seed(stacked: list[torch.Tensor], max_norm: float) -> None:
    """clip_grad_norm_ for each seed on its own: its gradients' total L2 norm, scaled down to max_norm."""
    grads = [p.grad for p in stacked if p.grad is not None]
    norms = torch.stack([g.flatten(1).norm(dim=1) for g in grads]).norm(dim=0)  # one total per seed
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.reshape(-1, *[1] * (g.dim() - 1)))


def _check_finite(seeds: list[Seed], iteration: int) -> None:
    """One host read for every seed's latest loss; a seed whose loss is no longer finite stops them all."""
    losses = torch.stack([seed.metrics.loss[iteration - 1] for seed in seeds]).tolist()
    for seed, loss in zip(seeds, losses):
        if not math.isfinite(loss):
            raise DivergedError(f"seed {seed.run.spec.seed}: loss became {loss} at iteration {iteration}; "
                                "lower train.lr")


def _finish(run: Run, seconds: float, eval_seconds: float, setup_seconds: float, seeds: list[int]) -> None:
    """summary.json, metrics.csv and model.pt as a lone run writes them, and the status."""
    from .flow import _summarize, _write_outputs

    _summarize(run, seconds, eval_seconds, setup_seconds)
    run.results["batched_seeds"] = seeds  # `seconds` is the training of all of them together
    run.results["wall_seconds"] = round(time.perf_counter() - run.started, 3)
    _write_outputs(run)
    artifacts.set_status(run.dir, "complete")
    print(f"[{run.spec.name}] seed {run.spec.seed}: test accuracy {run.results['test_accuracy']:.4f} "
          f"(batched with seeds {seeds}) -> {run.dir}", file=sys.stderr)
