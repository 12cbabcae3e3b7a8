"""The layer_stats plugin: its numbers against direct computations on a tiny model through the real
trainer, where the signal dies, the report's comparison, and a short CIFAR-10 run of its study spec."""
import copy
import json
import math
import types

import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Events
from torch import nn

from runner.blocks import Residual
from runner.plugins import layer_stats
from runner.training.engine import create_trainer
from runner.training.metrics import MetricsLog

LR = 0.05


def plain_model(dead: bool = False):
    """conv, ReLU, conv, ReLU, pool, linear, ReLU, linear. dead: the second conv's bias is so negative
    that its ReLU outputs zero for every input."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 10))
    if dead:
        with torch.no_grad():
            model[2].bias.fill_(-1e4)
    return model


def residual_model():
    """conv, ReLU, a residual block (conv, ReLU, conv, ReLU) whose branch is dead (it outputs zero, so
    the block passes its input on unchanged), pool, linear."""
    branch = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
    with torch.no_grad():
        branch[0].bias.fill_(-1e4)
        branch[2].bias.zero_()
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), Residual(branch), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 10))


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (8, 3, 8, 8), dtype=torch.uint8, generator=g), torch.randint(0, 10, (8,), generator=g)


def train(model, tmp_path, iterations, **settings):
    """The plugin on a real trainer (plain SGD, no transforms) for a few steps, with what the core
    attaches in a real run (the per-step record that sets how many rows there are)."""
    settings = layer_stats.Settings(**{"every": 1, **settings})
    run = types.SimpleNamespace(metrics=MetricsLog(iterations, torch.device("cpu")), model=model, dir=tmp_path,
                                device=torch.device("cpu"), state=types.SimpleNamespace())
    trainer = create_trainer(model, torch.optim.SGD(model.parameters(), lr=LR), None, nn.Sequential(),
                             channels_last=False)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda engine: run.metrics.record(
        engine.state.iteration, engine.state.output["loss"], engine.state.output["correct"],
        engine.state.output["count"]))
    layer_stats.attach(trainer=trainer, run=run, settings=settings, state=run.state)
    run.hooks_at_forward = []  # forward hooks present in each step's forward pass

    def count_hooks(module, args):
        run.hooks_at_forward.append(sum(len(m._forward_hooks) for m in model.modules()))

    model.register_forward_pre_hook(count_hooks)
    trainer.run([batch()] * iterations, max_iters=iterations)
    return run, settings


def finish(run, settings):
    results = {}
    layer_stats.run_finished(run=run, results=results, settings=settings, state=run.state)
    return results["layer_stats"]


def test_activation_stats_match_a_direct_computation(tmp_path):
    torch.manual_seed(0)
    model = plain_model()
    initial = copy.deepcopy(model)
    run, _ = train(model, tmp_path, 2)
    table = run.metrics.table()

    x, _ = batch()
    outputs, h = [], x.float()
    for module in initial:
        h = module(h)
        if isinstance(module, nn.ReLU):
            outputs.append(h.detach().clone())
    for name, out in zip(("relu01", "relu02", "relu03"), outputs):
        per_unit = out.transpose(0, 1).reshape(out.shape[1], -1)  # channels (conv) or features (linear)
        expected = {"mean": out.mean(), "std": out.std(), "zero_frac": (out == 0).float().mean(),
                    "dead_relu": (per_unit.abs().amax(1) == 0).float().mean()}
        for stat, value in expected.items():
            assert table[f"layer_stats/{name}/{stat}"][0] == pytest.approx(value.item(), rel=1e-5, abs=1e-7), \
                (name, stat)
    assert table["layer_stats/relu01/std"][1] != table["layer_stats/relu01/std"][0]  # the second step's weights


def test_dead_relu_is_one_after_a_conv_with_a_negative_bias(tmp_path):
    torch.manual_seed(0)
    run, settings = train(plain_model(dead=True), tmp_path, 3)
    table = run.metrics.table()
    assert table["layer_stats/relu02/dead_relu"] == [1.0, 1.0, 1.0]
    assert table["layer_stats/relu02/zero_frac"] == [1.0, 1.0, 1.0]
    assert table["layer_stats/relu01/dead_relu"][0] < 1.0
    # No gradient passes a dead ReLU: the conv before it does not move.
    assert table["layer_stats/conv02/update_ratio"] == [0.0, 0.0, 0.0]
    summary = finish(run, settings)
    assert summary["signal_dies_at"] == "relu02" and summary["signal_dies_std"] == 0.0
    assert summary["first_death"] == {"iteration": 1, "layer": "relu02"}
    assert summary["layers"]["relu02"] == {"module": "3", "branch": False, "mean": 0.0, "std": 0.0,
                                           "dead_relu": 1.0, "zero_frac": 1.0}


def test_update_ratio_matches_one_sgd_step(tmp_path):
    torch.manual_seed(0)
    model = plain_model()
    initial = copy.deepcopy(model)
    run, _ = train(model, tmp_path, 1)
    table = run.metrics.table()

    x, y = batch()
    before = {name: initial[i].weight.detach().clone() for name, i in (("conv01", 0), ("conv02", 2),
                                                                       ("linear01", 6), ("linear02", 8))}
    optimizer = torch.optim.SGD(initial.parameters(), lr=LR)
    F.cross_entropy(initial(x.float()), y).backward()
    optimizer.step()
    for (name, w0), i in zip(before.items(), (0, 2, 6, 8)):
        expected = ((initial[i].weight.detach() - w0).norm() / w0.norm()).item()
        assert table[f"layer_stats/{name}/update_ratio"][0] == pytest.approx(expected, rel=1e-4), name


def test_hooks_only_on_recorded_iterations(tmp_path):
    torch.manual_seed(0)
    run, settings = train(plain_model(), tmp_path, 7, every=3)
    column = run.metrics.table()["layer_stats/relu01/std"]
    assert [i for i, v in enumerate(column, 1) if not math.isnan(v)] == [1, 3, 6, 7]
    # 3 ReLUs hooked in recorded steps' forward passes, none in the others' nor after training.
    assert run.hooks_at_forward == [3, 0, 3, 0, 0, 3, 3]
    assert not any(m._forward_hooks for m in run.model.modules())
    assert finish(run, settings)["iteration"] == 7


def test_residual_branches_are_off_the_signal_path(tmp_path):
    torch.manual_seed(0)
    run, settings = train(residual_model(), tmp_path, 2)
    summary = finish(run, settings)
    assert summary["path"] == ["relu01", "block01"]
    assert [n for n, layer in summary["layers"].items() if layer.get("branch")] == ["relu02", "relu03"]
    assert summary["layers"]["relu02"]["dead_relu"] == 1.0  # the branch is dead, yet
    assert summary["signal_dies_at"] is None and summary["first_death"] is None  # the skip carries the signal
    assert summary["layers"]["block01"]["std"] == summary["layers"]["relu01"]["std"]
    for name in ("layer_stats_heatmap.png", "layer_stats_update_ratio.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def spec_runs(name, title, run, tmp_path):
    """A report's SpecRuns of one trained tiny model (its metrics.csv written like a run's)."""
    from runner.report import SpecRuns

    folder = tmp_path / name
    folder.mkdir()
    (folder / "metrics.csv").write_text(run.metrics.to_csv())
    summary = {"run_dir": str(folder), "seed": 0, "test_accuracy": 0.5, "iterations": 4,
               "layer_stats": finish(run, layer_stats.Settings(every=1))}
    return SpecRuns(name, [summary], spec={"question": f"P2 study: {title}", "title": title,
                                           "plugins": {"layer_stats": {}}})


def test_report_compares_where_the_signal_dies(tmp_path):
    from runner.report import Paragraph, Runs, Table

    torch.manual_seed(0)
    plain, _ = train(plain_model(dead=True), tmp_path / "a", 2)
    torch.manual_seed(0)
    skip, _ = train(residual_model(), tmp_path / "b", 2)
    specs = [spec_runs("plain", "the plain net", plain, tmp_path), spec_runs("skip", "the skip net", skip, tmp_path)]
    runs = Runs(specs, quick=True, out=tmp_path, workdir=tmp_path)
    sections = layer_stats.report_sections(runs=runs, specs=specs)
    assert [s.spec for s in sections] == ["plain", "skip", None]
    assert sections[0].fields["signal_dies_at"] == "relu02" and sections[1].fields["signal_dies_at"] is None
    compared = sections[-1]
    table = next(b for b in compared.blocks if isinstance(b, Table))
    assert [row[3] for row in table.rows] == ["relu02 (0.0e+00)", "alive"]
    text = " ".join(b.text for b in compared.blocks if isinstance(b, Paragraph))
    assert "In the plain net the signal dies at relu02, layer 2 of the 3 on its path" in text
    assert "In the skip net the signal stays alive through all 2 layers of its path" in text
    assert "Inside the residual branches 2 of 2 ReLU layers have more than half of their units dead" in text
    assert "Where the plain net loses its signal at relu02, the skip net keeps every layer of its path alive" in text


def test_study_spec_runs_on_cifar(tmp_path, cifar_archive):
    from runner.cli import main

    spec = layer_stats.__file__.replace("plugins/layer_stats.py", "specs/study_layer_stats_plain.toml")
    sets = {"train.iterations": 3, "train.batch_size": 20, "data.train_limit": 200, "data.test_limit": 100,
            "plugins.layer_stats.every": 2}
    assert main([spec, "--quick", "--data", str(cifar_archive), "--out", str(tmp_path), "--no-progress",
                 *[a for key, value in sets.items() for a in ("--set", f"{key}={value}")]]) == 0
    (run_dir,) = (tmp_path / "study_layer_stats_plain").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())["layer_stats"]
    assert summary["iteration"] == 3 and summary["every"] == 2
    # The deep plain net: conv1 and 20 inserted convs with their ReLUs, then the stages and the classifier.
    assert len([n for n in summary["layers"] if n.startswith("conv")]) == 27
    assert summary["path"][:3] == ["relu01", "relu02", "relu03"]
    header = (run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "layer_stats/relu01/dead_relu" in header and "layer_stats/conv27/update_ratio" in header
    assert not [c for c in header if c.startswith("G/")]  # the study leaves grad_magnitude off
    assert (run_dir / "layer_stats_heatmap.png").is_file() and (run_dir / "layer_stats_update_ratio.png").is_file()
