"""The grad_magnitude plugin driven through the real trainer on a tiny model and batch."""
import copy
import math
import types

import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Events
from torch import nn

from runner.plugins import grad_magnitude
from runner.training.engine import create_trainer
from runner.training.metrics import MetricsLog


def tiny_model():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))


class Backwards(nn.Module):
    """Registers `a` before `b` but calls `b` first: registration order is not forward order."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(4, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 10)

    def forward(self, x):
        return self.head(self.a(torch.relu(self.b(x))).mean((2, 3)))


class WithUnused(nn.Sequential):
    """tiny_model plus a conv that is registered but never called, so it never gets a gradient."""

    def __init__(self):
        super().__init__(*tiny_model())
        self.unused = nn.Conv2d(1, 1, 1)

    def forward(self, x):
        return nn.Sequential.forward(nn.Sequential(*list(self)[:-1]), x)


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (8, 3, 8, 8), dtype=torch.uint8, generator=g), torch.randint(0, 10, (8,), generator=g)


def train(model, tmp_path, iterations, **settings):
    """Attach the plugin to a real trainer (plain SGD, no transforms) and run a few steps; the run
    carries the plugin's per-run state as `run.plugin_state`, for run_finished."""
    settings = grad_magnitude.Settings(**settings)
    run = types.SimpleNamespace(metrics=MetricsLog(iterations, torch.device("cpu")), model=model, dir=tmp_path,
                                device=torch.device("cpu"), plugin_state=types.SimpleNamespace())
    trainer = create_trainer(model, torch.optim.SGD(model.parameters(), lr=0.01), None, nn.Sequential(),
                             channels_last=False)
    # What the core attaches in a real run: the per-step record that sets how many rows there are.
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda engine: run.metrics.record(
        engine.state.iteration, engine.state.output["loss"], engine.state.output["correct"],
        engine.state.output["count"]))
    grad_magnitude.attach(trainer=trainer, run=run, settings=settings, state=run.plugin_state)
    trainer.run([batch()] * iterations, max_iters=iterations)
    return run, settings


def test_g_equals_autograd_max_abs_gradient(tmp_path):
    torch.manual_seed(0)
    model = tiny_model()
    initial = copy.deepcopy(model)
    run, _ = train(model, tmp_path, 3)
    table = run.metrics.table()
    names = [n for n in table if n.startswith("G/")]
    assert names == ["G/conv01 (0)", "G/conv02 (2)"]

    x, y = batch()
    loss = F.cross_entropy(initial(x.float()), y)
    weights = [initial[0].weight, initial[2].weight]
    expected = [g.abs().max().item() for g in torch.autograd.grad(loss, weights)]
    assert [table[n][0] for n in names] == pytest.approx(expected, rel=1e-5)
    # Later steps are recorded too, and differ once the weights have moved.
    assert all(math.isfinite(table[n][2]) for n in names)
    assert table[names[0]][2] != table[names[0]][0]


def test_all_layers_and_foreach_norm_matches_amax(tmp_path):
    torch.manual_seed(0)
    run, _ = train(tiny_model(), tmp_path, 1, layers="all")
    names = [n for n in run.metrics.table() if n.startswith("G/")]
    assert names == ["G/conv01 (0)", "G/conv02 (2)", "G/linear03 (5)"]
    grads = [torch.randn(4, 3, 5, 5), torch.randn(10), torch.randn(2, 3, 4, 4).to(memory_format=torch.channels_last)]
    assert torch.equal(torch.stack(grad_magnitude._max_abs(grads)), torch.stack([g.abs().amax() for g in grads]))


def test_columns_follow_forward_order_not_registration_order(tmp_path):
    torch.manual_seed(0)
    model = Backwards()
    run, _ = train(model, tmp_path, 1, layers="all")
    names = [n for n in run.metrics.table() if n.startswith("G/")]
    assert names == ["G/conv01 (b)", "G/conv02 (a)", "G/linear03 (head)"]
    # The order-recording hooks are gone after the first step.
    assert not any(m._forward_pre_hooks for m in model.modules())


def test_every_k_records_first_multiples_and_last(tmp_path):
    torch.manual_seed(0)
    run, _ = train(tiny_model(), tmp_path, 7, every=3)
    column = run.metrics.table()["G/conv01 (0)"]
    recorded = [i for i, v in enumerate(column, 1) if not math.isnan(v)]
    assert recorded == [1, 3, 6, 7]


def test_missing_gradient_records_nan(tmp_path):
    torch.manual_seed(0)
    model = WithUnused()
    run, _ = train(model, tmp_path, 2)
    table = run.metrics.table()
    assert list(n for n in table if n.startswith("G/"))[-1] == "G/conv03 (unused)"
    assert math.isnan(table["G/conv03 (unused)"][0]) and math.isfinite(table["G/conv01 (0)"][0])


def test_run_finished_writes_figures_and_summary(tmp_path):
    torch.manual_seed(0)
    run, settings = train(tiny_model(), tmp_path, 5, every=2)
    results = {}
    grad_magnitude.run_finished(run=run, results=results, settings=settings, state=run.plugin_state)
    summary = results["grad_magnitude"]
    assert summary["first"] == "G/conv01 (0)" and summary["last"] == "G/conv02 (2)"
    # 100 is past a 5-step run's end, so only iteration 1 and the last appear.
    assert summary["iterations"] == {"1": 1, "last_iteration": 5}
    table = run.metrics.table()
    for key, at in summary["iterations"].items():
        assert summary["first_G"][key] == table["G/conv01 (0)"][at - 1]
        assert summary["ratio_first_over_last"][key] == pytest.approx(
            table["G/conv01 (0)"][at - 1] / table["G/conv02 (2)"][at - 1])
    for name in ("grad_first_last.png", "grad_heatmap.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_summary_takes_nearest_recorded_iteration_at_or_before(tmp_path):
    torch.manual_seed(0)
    run, settings = train(tiny_model(), tmp_path, 103, every=7, figures=False)
    results = {}
    grad_magnitude.run_finished(run=run, results=results, settings=settings, state=run.plugin_state)
    assert results["grad_magnitude"]["iterations"] == {"1": 1, "100": 98, "last_iteration": 103}
    assert not list(tmp_path.glob("*.png"))


def test_catalogue_lists_the_plugin_and_its_hooks(catalogue):
    assert "grad_magnitude" in catalogue.plugins
    assert {"attach", "run_finished"} <= set(catalogue.hooks_of("grad_magnitude"))
    assert set(catalogue.settings_of("grad_magnitude")) == {"every", "layers", "figures", "measures"}


ALL_MEASURES = ["max", "mean", "ratio"]


def test_mean_and_ratio_equal_a_direct_computation(tmp_path):
    torch.manual_seed(0)
    model = tiny_model()
    initial = copy.deepcopy(model)
    run, _ = train(model, tmp_path, 2, layers="all", measures=["ratio", "mean", "max"])
    table = run.metrics.table()
    layers = ["conv01 (0)", "conv02 (2)", "linear03 (5)"]
    # Columns come in one order whatever the spec lists: G first (as before), then mean, then ratio.
    assert [n for n in table if "/" in n] == [f"{p}/{layer}" for p in ("G", "grad_mean", "grad_ratio")
                                              for layer in layers]

    x, y = batch()
    weights = [initial[0].weight, initial[2].weight, initial[5].weight]
    grads = torch.autograd.grad(F.cross_entropy(initial(x.float()), y), weights)
    assert [table[f"grad_mean/{layer}"][0] for layer in layers] == pytest.approx(
        [g.abs().mean().item() for g in grads], rel=1e-5)
    assert [table[f"grad_ratio/{layer}"][0] for layer in layers] == pytest.approx(
        [(g.norm() / w.norm()).item() for g, w in zip(grads, weights)], rel=1e-5)
    assert [table[f"G/{layer}"][0] for layer in layers] == pytest.approx(
        [g.abs().max().item() for g in grads], rel=1e-5)
    # The second step's ratio uses the moved weights: it differs from the first's.
    assert table["grad_ratio/conv01 (0)"][1] != table["grad_ratio/conv01 (0)"][0]


def test_default_measures_write_g_only(tmp_path):
    torch.manual_seed(0)
    run, settings = train(tiny_model(), tmp_path, 3)
    assert settings.measures == ["max"]
    assert not [n for n in run.metrics.table() if n.startswith(("grad_mean/", "grad_ratio/"))]
    results = {}
    grad_magnitude.run_finished(run=run, results=results, settings=settings, state=run.plugin_state)
    assert "flow" not in results["grad_magnitude"]
    assert not (tmp_path / "grad_flow.png").exists()


def test_flow_summary_and_figure(tmp_path):
    torch.manual_seed(0)
    run, settings = train(tiny_model(), tmp_path, 5, every=2, layers="all", measures=ALL_MEASURES)
    results = {}
    grad_magnitude.run_finished(run=run, results=results, settings=settings, state=run.plugin_state)
    summary = results["grad_magnitude"]
    assert summary["first"] == "G/conv01 (0)"  # G's summary is there as before
    flow, table = summary["flow"], run.metrics.table()
    assert flow["iteration"] == 5 and flow["measures"] == ALL_MEASURES
    assert flow["layers"]["linear03 (5)"]["ratio"] == table["grad_ratio/linear03 (5)"][4]
    ratios = {layer: values["ratio"] for layer, values in flow["layers"].items()}
    assert flow["smallest_ratio"] == min(ratios, key=ratios.get)
    assert flow["largest_ratio"] == max(ratios, key=ratios.get)
    for name in ("grad_first_last.png", "grad_heatmap.png", "grad_flow.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_flow_without_g(tmp_path):
    torch.manual_seed(0)
    run, settings = train(tiny_model(), tmp_path, 2, measures=["ratio"])
    assert [n for n in run.metrics.table() if "/" in n] == ["grad_ratio/conv01 (0)", "grad_ratio/conv02 (2)"]
    results = {}
    grad_magnitude.run_finished(run=run, results=results, settings=settings, state=run.plugin_state)
    assert set(results["grad_magnitude"]) == {"flow"}
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["grad_flow.png"]


def test_missing_gradient_records_nan_in_every_measure(tmp_path):
    torch.manual_seed(0)
    run, _ = train(WithUnused(), tmp_path, 1, measures=ALL_MEASURES)
    table = run.metrics.table()
    for prefix in ("G", "grad_mean", "grad_ratio"):
        assert math.isnan(table[f"{prefix}/conv03 (unused)"][0]) and math.isfinite(table[f"{prefix}/conv01 (0)"][0])


def test_measures_setting_is_checked(catalogue):
    from runner.errors import SpecError

    measures = catalogue.settings_of("grad_magnitude")["measures"]
    from runner.spec.schema import check_value

    assert check_value(measures, ["mean", "ratio"], file="s.toml", key="plugins.grad_magnitude.measures")
    with pytest.raises(SpecError, match="not allowed"):
        check_value(measures, ["median"], file="s.toml", key="plugins.grad_magnitude.measures")
