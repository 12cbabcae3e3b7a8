"""train.step = "graph": the training step on static tensors, captured as CUDA graphs on a GPU and run
uncaptured on the CPU, gives the eager step's numbers.

The tolerance: on the CPU both steps run the same kernels on the same values in the same order (the
gradients are zeroed in place instead of set to None, and 0 + g is g; the learning rate is a
float64 tensor that the fused SGD kernel reads as the double the eager step passes it), so their
metrics.csv agree to the last printed digit. The comparisons allow 1e-6 relative, fp32's rounding
of one operation, no more: a step that drew its random numbers in another order, skipped a plugin's
handler or used a stale learning rate is off by far more within 30 iterations. On a GPU the
replayed graph may pick other kernels than the eager step (cuDNN's autotuning), so there the two
agree within seed noise only; bench/gpu_suite.py compares them.
"""
import contextlib
import math
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from torch import nn

from runner.errors import SpecError
from runner.training.captured import create_graph_trainer, graph_safe_optimizer
from runner.training.engine import TrainEvents, create_trainer, make_optimizer, make_scheduler
from runner.training.metrics import read_csv

SPECS = Path(__file__).resolve().parents[1] / "specs"
QUIET = ["plugins.visdom.enabled=false", 'device="cpu"']


def assert_same_metrics(a: Path, b: Path) -> None:
    first, second = read_csv(a / "metrics.csv"), read_csv(b / "metrics.csv")
    assert list(first) == list(second)
    for column in first:
        for i, (x, y) in enumerate(zip(first[column], second[column], strict=True)):
            assert (math.isnan(x) and math.isnan(y)) or x == pytest.approx(y, rel=1e-6, abs=1e-9), \
                f"{column} at iteration {i + 1}: {x} eager, {y} graph"


def test_the_crop_specs_graph_step_gives_the_eager_steps_metrics(run_spec):
    # Table 1 net, flip + normalize + pad_crop (random draws), warmup and linear decay, Nesterov,
    # weight decay, label smoothing: every part of the step the spec uses.
    runs = {step: run_spec(SPECS / "p1_q4_crop.toml", iterations=30,
                           set=[f'train.step="{step}"', "train.batch_size=50", *QUIET]) for step in ("eager", "graph")}
    assert_same_metrics(runs["eager"].dir, runs["graph"].dir)
    assert runs["eager"].summary["test_accuracy"] == runs["graph"].summary["test_accuracy"]
    assert runs["graph"].metrics["loss"][-1] < runs["graph"].metrics["loss"][0]  # it trained


def test_plugins_reading_gradients_and_activations_see_the_eager_numbers(run_spec):
    # grad_magnitude reads gradients between the two segments at every step; layer_stats hooks
    # activations on its recorded steps, which then run uncaptured.
    plugins = ["plugins.grad_magnitude.enabled=true", "plugins.layer_stats.enabled=true",
               "plugins.layer_stats.every=4", "train.clip_grad_norm=1.0"]
    runs = {step: run_spec(iterations=12, set=[f'train.step="{step}"', *plugins]) for step in ("eager", "graph")}
    columns = read_csv(runs["graph"].dir / "metrics.csv")
    assert any(c.startswith("G/") for c in columns) and len(columns) > 10
    assert_same_metrics(runs["eager"].dir, runs["graph"].dir)


def _tiny_trainer(step: str, clip: float):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
    train = {"optimizer": "sgd", "lr": 1e-6, "momentum": 0.9, "nesterov": False, "weight_decay": 0.0,
             "iterations": 3, "warmup": 0.5, "schedule": "linear"}
    optimizer = make_optimizer(model.parameters(), train)
    if step == "graph":
        graph_safe_optimizer(optimizer, torch.device("cpu"))
    scheduler = make_scheduler(optimizer, train)
    make = create_graph_trainer if step == "graph" else create_trainer
    trainer = make(model, optimizer, scheduler, nn.Sequential(), channels_last=False, clip_grad_norm=clip)
    return model, optimizer, trainer


def test_the_graph_step_clips_after_plugins_read_and_follows_the_schedule():
    model, optimizer, trainer = _tiny_trainer("graph", clip=0.5)
    seen_by_plugins, seen_by_optimizer, rates = [], [], []
    norm = lambda: float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])))
    trainer.add_event_handler(TrainEvents.BACKWARD_COMPLETED, lambda engine: seen_by_plugins.append(norm()))

    def before_step(opt, args, kwargs):
        seen_by_optimizer.append(norm())
        rates.append(float(opt.param_groups[0]["lr"]))

    optimizer.register_step_pre_hook(before_step)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, 256, (8, 3, 8, 8), dtype=torch.uint8, generator=g),
                torch.randint(0, 10, (8,), generator=g)) for _ in range(3)]
    trainer.run(batches, max_iters=3)
    assert min(seen_by_plugins) > 5  # raw 0-255 pixels: large gradients, every step clipped
    assert seen_by_optimizer == [pytest.approx(0.5, rel=1e-4)] * 3
    # warmup over 2 of 3 steps, then linear decay: the tensor learning rate is filled in place
    assert rates == pytest.approx([0.5e-6, 1e-6, 1e-6])
    assert isinstance(optimizer.param_groups[0]["lr"], torch.Tensor)


def test_a_graph_step_with_compile_is_a_spec_error_naming_the_key(run_spec):
    with pytest.raises(SpecError, match="train.compile"):
        run_spec(iterations=2, set=['train.step="graph"', "train.compile=true"])


def test_an_interrupted_graph_run_resumes_to_the_uninterrupted_metrics(run_spec, synthetic_cifar, tmp_path,
                                                                        monkeypatch):
    # The learning rate is a tensor in the optimizer's checkpoint; resumed, the schedule fills it in place.
    from ignite.engine import Events

    from runner.plugin_host.catalogue import Catalogue
    from runner.spec.loading import load
    from runner.training import flow, handlers

    graph = ['train.step="graph"', "train.warmup=0.2", 'train.schedule="linear"']
    whole = run_spec(iterations=25, set=graph)
    spec = tmp_path / "minimal.toml"
    spec.write_text((whole.dir / "spec.toml").read_text())
    record = handlers.record_metrics

    def record_then_stop(run):
        record(run)
        run.trainer.add_event_handler(Events.ITERATION_COMPLETED(once=15),
                                      lambda _: (_ for _ in ()).throw(KeyboardInterrupt))

    monkeypatch.setattr(handlers, "record_metrics", record_then_stop)
    catalogue = Catalogue.default()
    with pytest.raises(KeyboardInterrupt):
        flow.execute(load(spec, catalogue), catalogue, out=tmp_path / "cut", data=str(synthetic_cifar),
                     show_progress=False)
    monkeypatch.setattr(handlers, "record_metrics", record)
    cut = next((tmp_path / "cut").glob("*/*"))
    flow.resume(cut, catalogue, show_progress=False)
    assert (cut / "metrics.csv").read_text() == (whole.dir / "metrics.csv").read_text()


class RecordedGraphs:
    """A stand-in for CUDA graphs on the CPU: capturing records the segment without running it (as
    CUDA does), a replay runs it. It drives GraphStep's capture path: warm-up, one capture, replays."""

    def __init__(self):
        self.captured, self.replays, self.warmups = 0, 0, 0

    def capture(self, segment, pool):
        self.captured += 1
        outer = self

        class Graph:
            def replay(self):
                outer.replays += 1
                segment()

            def pool(self):
                return None

        return Graph()

    def side_stream(self):
        self.warmups += 1
        return contextlib.nullcontext()

    def synchronize(self):
        pass


@pytest.mark.parametrize("listening", [False, True])
def test_the_capture_path_warms_up_captures_once_and_replays_the_eager_steps(listening):
    from runner.training.captured import GraphStep

    results = {}
    for kind in ("eager", "graph"):
        model, optimizer, trainer = _tiny_trainer(kind, clip=0.0)
        if kind == "graph":
            graphs = RecordedGraphs()
            trainer._process_function = GraphStep(model, optimizer, trainer._process_function.scheduler,
                                                  nn.Sequential(), channels_last=False, graphs=graphs)
        # The handlers bind this kind's lists and model (default arguments), not the loop's latest.
        seen: list[float] = []
        if listening:  # two segments, the event between them, reading the gradients the update uses
            trainer.add_event_handler(
                TrainEvents.BACKWARD_COMPLETED,
                lambda engine, seen=seen, model=model: seen.append(model[0].weight.grad.abs().sum().item()))
        losses: list[float] = []
        trainer.add_event_handler(Events.ITERATION_COMPLETED,
                                  lambda engine, losses=losses: losses.append(engine.state.output["loss"].item()))
        g = torch.Generator().manual_seed(0)
        batches = [(torch.randint(0, 256, (8, 3, 8, 8), dtype=torch.uint8, generator=g),
                    torch.randint(0, 10, (8,), generator=g)) for _ in range(7)]
        trainer.run(batches, max_iters=7)
        results[kind] = (losses, seen, [p.detach().clone() for p in model.parameters()])
    assert (graphs.warmups, graphs.captured, graphs.replays) == (3, 2 if listening else 1, 4 * (2 if listening else 1))
    assert results["graph"][0] == results["eager"][0] and results["graph"][1] == results["eager"][1]
    for a, b in zip(results["graph"][2], results["eager"][2]):
        assert torch.equal(a, b)
