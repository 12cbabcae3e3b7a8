"""The built-in diagnostics through runner.testing's fixtures, as a plugin author tests a plugin:
a whole run on the synthetic data set in a second or two, then the numbers it wrote."""
import math

import pytest


def recorded(result, column: str) -> list[int]:
    """Iterations at which a metrics.csv column holds a value."""
    return [int(i) for i, value in zip(result.metrics["iteration"], result.metrics[column]) if value == value]


def test_layer_stats_records_every_layer_on_its_iterations(run_spec):
    result = run_spec(iterations=12, set={"plugins.layer_stats.enabled": True, "plugins.layer_stats.every": 5})
    summary = result.summary["layer_stats"]
    relus = [name for name in summary["layers"] if name.startswith("relu")]
    assert len(relus) == 4  # the minimal spec's Table 1 net: three conv stages and the hidden layer
    assert recorded(result, f"layer_stats/{relus[0]}/dead_relu") == [1, 5, 10, 12]
    for name in relus:
        layer = summary["layers"][name]
        assert 0 <= layer["dead_relu"] <= layer["zero_frac"] <= 1 and layer["std"] > 0


def test_gradient_flow_measures_every_layer(run_spec):
    result = run_spec(iterations=6, set={"plugins.grad_magnitude.enabled": True, "plugins.grad_magnitude.layers": "all",
                                         "plugins.grad_magnitude.measures": ["max", "mean", "ratio"]})
    maxima = [c for c in result.metrics if c.startswith("G/")]
    means = [c for c in result.metrics if c.startswith("grad_mean/")]
    assert len(maxima) == len(means) == 9  # 3 convs, 4 BatchNorms, 2 linears
    for g, mean in zip(maxima, means):
        assert 0 < result.metrics[mean][-1] <= result.metrics[g][-1]  # a mean is at most the largest


def test_lr_finder_suggests_a_rate_inside_its_range(run_spec):
    result = run_spec(iterations=4, set={"plugins.lr_finder.enabled": True, "plugins.lr_finder.num_iter": 20})
    summary = result.summary["lr_finder"]
    assert 1e-5 <= summary["suggested_lr"] <= 10


def test_sharpness_is_measured_where_asked(run_spec):
    result = run_spec(iterations=6, set={"plugins.sharpness.enabled": True, "plugins.sharpness.at": [1, 6],
                                         "plugins.sharpness.batch_size": 100, "plugins.sharpness.iterations": 5})
    points = result.summary["sharpness"]["points"]
    assert [p["iteration"] for p in points] == [1, 6]
    assert all(math.isfinite(p["eigenvalue"]) and p["eigenvalue"] > 0 for p in points)


@pytest.mark.parametrize("plugin", ["layer_stats", "grad_magnitude"])
def test_a_watching_plugin_leaves_the_training_as_it_was(run_spec, plugin):
    plain = run_spec(iterations=8)
    watched = run_spec(iterations=8, set={f"plugins.{plugin}.enabled": True})
    assert watched.metrics["loss"] == plain.metrics["loss"]
    assert watched.summary["test_accuracy"] == plain.summary["test_accuracy"]
