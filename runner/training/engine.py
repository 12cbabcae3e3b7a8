"""Ignite trainer and evaluator over datasets held as one tensor on the device.

The training step fires `TrainEvents.BACKWARD_COMPLETED` between backward and the optimizer
step, so plugins can read gradients (gradient magnitudes) or change them.
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from ignite.engine import Engine, EventEnum, Events
from torch import nn


class TrainEvents(EventEnum):
    BACKWARD_COMPLETED = "backward_completed"


class EpochBatches:
    """Batches of (uint8 images, labels) from tensors on the device.

    Shuffled: each epoch is a fresh permutation drawn from the global torch RNG (so seeding
    makes it reproducible), cut into full batches. Not shuffled: the data in order, last batch
    possibly short.

    With shard=(rank, world), each process of a data-parallel run draws the same permutation
    (same seed) and keeps every world-th image of each batch: together they see the batch.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, shuffle: bool,
                 shard: tuple[int, int] = (0, 1)):
        self.images, self.labels, self.batch_size, self.shuffle = images, labels, batch_size, shuffle
        self.rank, self.world = shard

    def __len__(self):
        n = len(self.labels)
        return max(1, n // self.batch_size) if self.shuffle else math.ceil(n / self.batch_size)

    def __iter__(self):
        n = len(self.labels)
        if self.shuffle:
            order = torch.randperm(n, device="cpu").to(self.labels.device)
            size = min(self.batch_size, n)
            for i in range(len(self)):
                index = order[i * size:(i + 1) * size][self.rank::self.world]
                yield self.images[index], self.labels[index]
        else:
            for start in range(0, n, self.batch_size):
                yield self.images[start:start + self.batch_size], self.labels[start:start + self.batch_size]


def prepare(x: torch.Tensor, pipeline: nn.Module, channels_last: bool) -> torch.Tensor:
    """uint8 batch -> float pixel values 0-255 -> transforms, in the memory format the model runs in."""
    x = pipeline(x.float())
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def phase(name: str):
    """A labelled range in torch.profiler traces (bench/step_ops.py counts device ops per phase);
    it costs about a microsecond when no profiler runs."""
    return torch.profiler.record_function(name)


def resolve_precision(choice: str, device: torch.device) -> str:
    """'auto' means bf16 on CUDA (tensor cores) and fp32 on CPU (bf16 convs are slower there)."""
    if choice == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return choice


def autocast(device: torch.device, precision: str, cache: bool = True):
    """bf16 autocast for forward passes; weights, gradients and the optimizer stay fp32. A captured
    step turns autocast's cache of cast weights off (cache=False): the graph would keep stale casts."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=cache)
    return contextlib.nullcontext()


def create_trainer(model, optimizer, scheduler, pipeline, *, label_smoothing=0.0, channels_last=True,
                   precision="fp32", forward=None, clip_grad_norm=0.0) -> Engine:
    """One step: forward, loss, backward, BACKWARD_COMPLETED, gradient clipping if asked, optimizer
    and scheduler step.

    The step's output keeps loss and the count of correct predictions as device tensors: no
    host sync per step; whoever logs them decides when to read. `forward` is the callable that
    runs the model (a torch.compile'd wrapper of it, say); it defaults to the model itself.
    The same step captured as CUDA graphs: runner/training/captured.py (train.step = "graph").
    """
    forward = forward or model

    def step(engine, batch):
        images, labels = batch
        model.train()
        pipeline.train()
        with phase("augment"):
            x = prepare(images, pipeline, channels_last)
        with phase("forward"), autocast(labels.device, precision):
            logits = forward(x)
        with phase("loss"):
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        with phase("backward"):
            loss.backward()
        engine.state.loss = loss
        engine.fire_event(TrainEvents.BACKWARD_COMPLETED)
        with phase("optimizer"):
            if clip_grad_norm:
                nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm, foreach=True)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
        with phase("metrics"):
            correct = (logits.detach().argmax(1) == labels).sum()
        return {"loss": loss.detach(), "correct": correct, "count": len(labels)}

    trainer = Engine(step)
    trainer.register_events(*TrainEvents)
    return trainer


def create_evaluator(model, pipeline, *, num_classes=10, channels_last=True, precision="fp32", forward=None) -> Engine:
    """Evaluation: eval mode, no gradients, accuracy and the confusion matrix accumulated by
    torchmetrics. state.metrics gets `accuracy` and `confusion_matrix` (rows: true class, columns:
    predicted class, counts as lists), from which per-class accuracy follows (metrics.per_class)."""
    # Imported here, not with the module: torchmetrics loads scipy (~1.5 s), which `runner
    # validate`, `runner plugins` and `runner report` do not need.
    import torchmetrics

    accuracy = confusion = None
    forward = forward or model

    def step(engine, batch):
        nonlocal accuracy, confusion
        images, labels = batch
        if accuracy is None:
            # Not summed across processes: in a data-parallel run each one evaluates the whole test set.
            accuracy = torchmetrics.classification.MulticlassAccuracy(num_classes, average="micro",
                                                                      sync_on_compute=False).to(labels.device)
            confusion = torchmetrics.classification.MulticlassConfusionMatrix(
                num_classes, sync_on_compute=False).to(labels.device)
        with torch.inference_mode(), autocast(labels.device, precision):
            logits = forward(prepare(images, pipeline, channels_last))
        accuracy.update(logits, labels)
        confusion.update(logits, labels)
        return logits, labels

    evaluator = Engine(step)

    @evaluator.on(Events.STARTED)
    def reset(engine):
        model.eval()
        pipeline.eval()
        if accuracy is not None and confusion is not None:  # made together, at the first batch
            accuracy.reset()
            confusion.reset()

    @evaluator.on(Events.COMPLETED)
    def compute(engine):
        engine.state.metrics["accuracy"] = float(accuracy.compute()) if accuracy is not None else float("nan")
        engine.state.metrics["confusion_matrix"] = confusion.compute().tolist() if confusion is not None else None

    return evaluator


def make_optimizer(params, train: dict) -> torch.optim.Optimizer:
    # fused: one kernel updates every parameter, where the default launches several per tensor
    # (CPU) or per group of tensors (CUDA): a small net's GPU step is bound by launches
    # (bench/step_ops.py). Same update, same state_dict; faster on the CPU too.
    if train["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=train["lr"], momentum=train["momentum"], nesterov=train["nesterov"],
                               weight_decay=train["weight_decay"], fused=True)
    kind = torch.optim.Adam if train["optimizer"] == "adam" else torch.optim.AdamW
    return kind(params, lr=train["lr"], betas=(train["momentum"], 0.999), weight_decay=train["weight_decay"],
                fused=True)


def lr_factor(step: int, total: int, warmup: float, shape: str) -> float:
    """Learning-rate multiplier at a step: linear warmup, then constant, linear or cosine decay to 0."""
    warm = int(round(warmup * total))
    if step < warm:
        return (step + 1) / warm
    if shape == "constant":
        return 1.0
    progress = (step - warm) / max(1, total - warm)
    return 1.0 - progress if shape == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(optimizer, train: dict):
    if train["schedule"] == "constant" and train["warmup"] == 0:
        return None
    total, warmup, shape = train["iterations"], train["warmup"], train["schedule"]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total, warmup, shape))
