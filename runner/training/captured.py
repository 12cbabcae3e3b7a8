"""The training step as CUDA graphs (`train.step = "graph"`): the per-step Python work is a replay.

A small net's GPU step is bound by launching ~100 kernels from Python (bench/README.md). Here the
whole step runs on static tensors, so that on CUDA it is captured once and replayed:

    batch -> static images/labels (two copies)
    segment 1: augmentation (random draws from the device's generator, which CUDA graphs advance
               on every replay), forward, loss, gradients zeroed in place, backward
    BACKWARD_COMPLETED, fired from Python between the segments when a handler listens to it
    segment 2: gradient clipping, the fused optimizer's step (learning rate a device tensor the
               schedule fills), the count of correct predictions

With no BACKWARD_COMPLETED handler both segments are one graph. The gradients are the same tensors
at every step (zeroed in place, never set to None), so a handler reads, or changes in place, what
the optimizer then uses: grad_magnitude records the same numbers as in the eager step. A step
where a module has hooks (layer_stats records activations on some steps) runs the segments
uncaptured, as a graph would not call the hooks. On the CPU the segments always run uncaptured:
the same code as on a GPU, tested against the eager step (tests/test_step_capture.py).

The first `warmup` steps run uncaptured on a side stream (cuDNN picks its kernels, the optimizer
makes its momentum buffers); the next one is captured, then replayed.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from ignite.engine import Engine
from torch import nn

from ..errors import RunnerError, SpecError
from .engine import TrainEvents, autocast, phase, prepare

WARMUP_STEPS = 3


def graph_safe_optimizer(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Make an optimizer's step capturable: its learning rate a device tensor the schedule fills in
    place (a captured step reads it at every replay), its step count on the device (Adam).

    `initial_lr` stays a Python float, so the schedule computes plain numbers and fills them in
    without reading a tensor back. Call it before the schedule is made."""
    # fp64 on the CPU: the fused kernel reads it as a double, as it reads a Python float (same
    # numbers as the eager step); fp32 on CUDA, where the fused kernels read a float.
    dtype = torch.float32 if device.type == "cuda" else torch.float64
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", float(group["lr"]))
        group["lr"] = torch.tensor(float(group["lr"]), dtype=dtype, device=device)
        if device.type == "cuda" and "capturable" in group:
            group["capturable"] = True


def check_settings(train, world: int, file=None) -> None:
    """What a captured step cannot be combined with, named by key."""
    if train["step"] != "graph":
        return
    if world > 1:
        raise SpecError("a captured step runs in one process; use train.step = \"eager\" with --nproc-per-node",
                        file=file, key="train.step")
    if train["compile"]:
        raise SpecError("train.step = \"graph\" captures the whole step itself; set train.compile = false "
                        "(or train.step = \"eager\" to compile)", file=file, key="train.compile")


class CudaGraphs:
    """How GraphStep captures and replays: CUDA graphs (a test passes a stand-in to run this
    control flow on the CPU)."""

    def capture(self, segment, pool):
        """The segment recorded, not run, as a graph with .replay() and .pool()."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            segment()
        return graph

    @contextlib.contextmanager
    def side_stream(self):
        """Work before a capture goes to a side stream, joined back after (PyTorch's advice)."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            yield
        torch.cuda.current_stream().wait_stream(side)

    def synchronize(self):
        torch.cuda.synchronize()


def create_graph_trainer(model, optimizer, scheduler, pipeline, **settings) -> Engine:
    """engine.create_trainer's trainer with the step as GraphStep runs it (settings: GraphStep's)."""
    trainer = Engine(GraphStep(model, optimizer, scheduler, pipeline, **settings))
    trainer.register_events(*TrainEvents)
    return trainer


class GraphStep:
    """Ignite's process function for `train.step = "graph"`; see the module's docstring."""

    def __init__(self, model, optimizer, scheduler, pipeline, *, label_smoothing=0.0, channels_last=True,
                 precision="fp32", clip_grad_norm=0.0, warmup=WARMUP_STEPS, graphs=None):
        self.model, self.optimizer, self.scheduler, self.pipeline = model, optimizer, scheduler, pipeline
        self.label_smoothing, self.channels_last, self.precision = label_smoothing, channels_last, precision
        self.clip_grad_norm, self.warmup = clip_grad_norm, warmup
        self.graphs_api = graphs  # None: CudaGraphs on a CUDA device, uncaptured elsewhere
        self.images: torch.Tensor | None = None  # the static inputs, made at the first step
        self.labels: torch.Tensor | None = None
        self.outputs: dict = {}  # the static outputs: loss, logits, correct
        self.graphs: list | None = None  # (graph, fires BACKWARD_COMPLETED after it) once captured
        self.steps = 0  # steps this process has run
        self.parameters, self.grads = [], []  # the gradient tensors the graphs were captured with
        self.captured_outputs: dict = {}

    def __call__(self, engine, batch):
        images, labels = batch
        if self.images is None or self.labels is None:
            self.images, self.labels = torch.empty_like(images), torch.empty_like(labels)
        if images.shape != self.images.shape:
            raise RunnerError(f"train.step = \"graph\" needs batches of one shape: {tuple(images.shape)} after "
                              f"{tuple(self.images.shape)}; use train.step = \"eager\"")
        self.model.train()
        self.pipeline.train()
        self.images.copy_(images)
        self.labels.copy_(labels)
        segments = self._segments(engine)
        api = self.graphs_api or (CudaGraphs() if images.device.type == "cuda" else None)
        if api is None or self._hooked():
            self._run_uncaptured(engine, segments)
        elif self.steps < self.warmup:
            with api.side_stream():
                self._run_uncaptured(engine, segments)
        else:
            if self.graphs is None:
                self.graphs = self._capture(api, segments)
            self.outputs = dict(self.captured_outputs)  # an uncaptured step since made its own
            for graph, fires in self.graphs:
                self._keep_gradients()
                graph.replay()
                if fires:
                    self._fire(engine)
        if self.scheduler is not None:
            self.scheduler.step()
        self.steps += 1
        out = self.outputs
        return {"loss": out["loss"], "correct": out["correct"], "count": len(labels)}

    def _segments(self, engine) -> list[tuple[Callable[[], None], bool]]:
        """(segment, fire BACKWARD_COMPLETED after it): two when a handler listens, else one."""
        if engine._event_handlers.get(TrainEvents.BACKWARD_COMPLETED):
            return [(self._forward_backward, True), (self._update, False)]
        return [(self._whole, False)]

    def _run_uncaptured(self, engine, segments) -> None:
        for segment, fires in segments:
            segment()
            if fires:
                self._fire(engine)

    def _fire(self, engine) -> None:
        engine.state.loss = self.outputs["loss"]
        engine.fire_event(TrainEvents.BACKWARD_COMPLETED)

    def _capture(self, api, segments) -> list:
        """Each segment recorded as a CUDA graph, in order, sharing one memory pool."""
        api.synchronize()
        self.parameters = list(self.model.parameters())
        self.grads = [p.grad for p in self.parameters]  # made by the warmup steps, zeroed in place since
        graphs, pool = [], None
        for segment, fires in segments:
            graph = api.capture(segment, pool)
            pool = graph.pool()
            graphs.append((graph, fires))
        self.captured_outputs = dict(self.outputs)  # the tensors every replay writes
        return graphs

    def _keep_gradients(self) -> None:
        """The graphs read and write the gradient tensors they were captured with: a handler that set
        a gradient to None or to a new tensor gets the captured one back, holding its values."""
        for parameter, grad in zip(self.parameters, self.grads):
            if parameter.grad is not grad:
                if parameter.grad is not None:
                    grad.copy_(parameter.grad)
                parameter.grad = grad

    def _hooked(self) -> bool:
        """Whether a module has hooks a replay would not call (layer_stats' on its recorded steps)."""
        return any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
                   for m in self.model.modules())

    def _whole(self) -> None:
        self._forward_backward()
        self._update()

    def _forward_backward(self) -> None:
        assert self.images is not None and self.labels is not None  # made by __call__ before any segment runs
        with phase("augment"):
            x = prepare(self.images, self.pipeline, self.channels_last)
        # No autocast cache: a cached cast weight would be a stale input of the graph.
        with phase("forward"), autocast(self.labels.device, self.precision, cache=False):
            logits = self.model(x)
        with phase("loss"):
            loss = F.cross_entropy(logits.float(), self.labels, label_smoothing=self.label_smoothing)
        self.optimizer.zero_grad(set_to_none=False)  # in place: the gradients stay the graph's tensors
        with phase("backward"):
            loss.backward()
        self.outputs["loss"], self.outputs["logits"] = loss.detach(), logits.detach()

    def _update(self) -> None:
        with phase("optimizer"):
            if self.clip_grad_norm:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad_norm, foreach=True)
            self.optimizer.step()
        with phase("metrics"):
            self.outputs["correct"] = (self.outputs["logits"].argmax(1) == self.labels).sum()
