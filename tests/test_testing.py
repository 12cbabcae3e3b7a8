"""runner.testing: the synthetic data set, and the fixtures as a plugin author uses them (through
pytest's own entry point, in a folder of their own, with no conftest.py)."""
from __future__ import annotations

import math
import re
import time
from pathlib import Path

import pytest

from runner.errors import SpecError

pytest_plugins = ["pytester"]

REPO_ROOT = Path(__file__).resolve().parents[1]

AUTHOR_PLUGIN = '''
from dataclasses import dataclass

import torch
from ignite.engine import Events

from runner import Plugin, hookimpl, setting


@dataclass(frozen=True)
class Settings:
    every: int = setting(5, "iterations between records", min=1)


plugin = Plugin(settings=Settings, help="the norm of all the model's parameters")


@hookimpl
def attach(trainer, run, settings, state):
    state.records = 0

    @trainer.on(Events.ITERATION_COMPLETED(every=settings.every))
    def record(engine):
        norm = torch.stack([p.detach().norm() for p in run.model.parameters()]).norm()
        run.metrics.add("weight_norm/total", engine.state.iteration, norm)
        state.records += 1


@hookimpl
def run_finished(run, results, state):
    results["weight_norm"] = {"records": state.records}
'''

AUTHOR_TESTS = '''
import math


def test_records_every_few_iterations(run_plugin):
    result = run_plugin("weight_norm.py", settings={"every": 5}, iterations=20)
    assert result.summary["weight_norm"] == {"records": 4}
    recorded = [i for i, v in zip(result.metrics["iteration"], result.metrics["weight_norm/total"]) if v == v]
    assert recorded == [5, 10, 15, 20]
    assert (result.dir / "summary.json").is_file()


def test_on_a_homework_spec(run_plugin):
    result = run_plugin("weight_norm.py", extends="{homework_spec}", settings={"every": 4}, iterations=8,
                        set={"model.widths": [8, 8, 16]})
    assert result.summary["weight_norm"] == {"records": 2}
    assert result.run.spec.model["widths"] == [8, 8, 16]


def test_the_minimal_spec_learns(run_spec):
    result = run_spec(iterations=20)
    assert result.summary["test_accuracy"] > 0.5  # ten classes: chance is 0.1
'''


def test_synthetic_cifar_is_the_official_layout(synthetic_cifar):
    from runner.data import class_names, load_batches, locate

    folder = locate(synthetic_cifar, progress=False)
    images, labels = load_batches(folder, ["data_batch_1"])
    test_images, test_labels = load_batches(folder, ["test_batch"])
    assert images.shape == (500, 3, 32, 32) and test_images.shape == (200, 3, 32, 32)
    assert sorted(set(labels.tolist())) == list(range(10)) and len(test_labels) == 200
    assert class_names(folder)[:2] == ["airplane", "automobile"]
    assert 0 <= float(images.min()) and float(images.max()) <= 255 and 100 < float(images.float().mean()) < 156


def test_runs_repeat_exactly_and_learn_with_iterations(run_spec):
    short, again, longer = run_spec(iterations=5), run_spec(iterations=5), run_spec(iterations=40)
    columns = short.metrics.columns
    assert {c: short.metrics[c] for c in columns} == {c: again.metrics[c] for c in columns} and short.dir != again.dir
    assert short.summary["test_accuracy"] == again.summary["test_accuracy"] < 0.5
    assert longer.summary["test_accuracy"] > 0.8
    assert longer.metrics["iteration"][-1] == 40 and not any(math.isnan(v) for v in longer.metrics["loss"])


def test_a_bad_setting_names_the_table_and_key(run_plugin, tmp_path):
    plugin = tmp_path / "weight_norm.py"
    plugin.write_text(AUTHOR_PLUGIN)
    with pytest.raises(SpecError, match=r"plugins\.weight_norm\.every: 0 is below the minimum 1"):
        run_plugin(plugin, settings={"every": 0})


def test_a_plugin_authors_tests_pass_through_the_entry_point(pytester):
    """The author's folder: a plugin and its tests, no conftest.py; the fixtures come from the
    pytest11 entry point. Prints the seconds each test took."""
    pytester.makepyfile(weight_norm=AUTHOR_PLUGIN,
                        test_weight_norm=AUTHOR_TESTS.replace("{homework_spec}",
                                                              str(REPO_ROOT / "specs" / "p1_q1_raw.toml")))
    started = time.perf_counter()
    result = pytester.runpytest("-p", "no:cacheprovider", "--durations=0", "--durations-min=0")
    wall = time.perf_counter() - started
    result.assert_outcomes(passed=3)
    seconds = {}
    for line in result.outlines:
        found = re.match(r"\s*([\d.]+)s (setup|call|teardown)\s+test_weight_norm.py::(\w+)", line)
        if found:
            seconds[found[3]] = seconds.get(found[3], 0.0) + float(found[1])
    assert set(seconds) == {"test_records_every_few_iterations", "test_on_a_homework_spec",
                            "test_the_minimal_spec_learns"}
    print(f"harness: {wall:.1f} s for 3 tests; per test: " + ", ".join(f"{k} {v:.2f} s" for k, v in seconds.items()))
    assert all(v < 20 for v in seconds.values()), seconds


def test_the_fixtures_come_from_the_runner_entry_point(pytester):
    pytester.makepyfile(test_it="def test_it(run_plugin):\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider", "-p", "no:runner_testing")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'run_plugin' not found*"])
