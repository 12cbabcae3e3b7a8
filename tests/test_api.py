"""The Python API (runner/api.py): runner.run is the command line's run (the same metrics.csv
bytes), its Result reads the run folder, runner.runs lists as `runner ls` does, errors are the
runner's own, resume continues an interrupted run, and docs/notebook.md's code runs as written."""
import json
import re
import sys
import types
from pathlib import Path

import pytest

import runner
from runner import artifacts
from runner.cli import main
from runner.training.metrics import read_csv

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "specs" / "p1_q4_crop.toml"
# --quick (12 steps per epoch of 1,200 images at batch 100), one checkpoint at iteration 12.
SETTINGS = {"train.iterations": 16, "train.checkpoint_epochs": 1}
SEED = 3


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, cifar_archive):
    """The same spec and seed through runner.run (OUT/api) and through the command line (OUT/cli)."""
    out = tmp_path_factory.mktemp("api")
    result = runner.run(SPEC, set=SETTINGS, quick=True, seed=SEED, data=cifar_archive, out=out / "api",
                        progress=False)
    sets = [arg for key, value in SETTINGS.items() for arg in ("--set", f"{key}={value}")]
    assert main([str(SPEC), "--quick", *sets, "--seed", str(SEED), "--data", str(cifar_archive),
                 "--out", str(out / "cli"), "--no-progress"]) == 0
    (cli_dir,) = (out / "cli" / "p1_q4_crop").iterdir()
    return out, result, cli_dir


def test_the_api_run_is_the_command_lines(two_runs):
    _, result, cli_dir = two_runs
    for name in ("metrics.csv", "spec.toml"):
        assert (result.dir / name).read_bytes() == (cli_dir / name).read_bytes(), name
    cli_summary = json.loads((cli_dir / "summary.json").read_text())
    for key in ("test_accuracy", "overrides", "seed", "quick", "iterations"):
        assert result.summary[key] == cli_summary[key], key


def test_result_reads_the_run_folder(two_runs, cifar_dir):
    out, result, _ = two_runs
    assert result.dir.parent == out / "api" / "p1_q4_crop" and result.status == "complete"
    assert result.summary == json.loads((result.dir / "summary.json").read_text())
    assert result.spec == "p1_q4_crop" and result.seed == SEED and result.summary["iterations"] == 16
    assert 0.1 < result.test_accuracy < 1 and result.test_accuracy == result.summary["test_accuracy"]
    assert "p1_q4_crop seed 3, complete, test accuracy" in repr(result) and str(result.dir) in repr(result)

    metrics = result.metrics
    assert len(metrics) == 16 and metrics["iteration"] == list(range(1, 17))
    assert metrics.columns == ["iteration", "loss", "batch_accuracy", "running_accuracy"]
    assert metrics["loss"] == read_csv(result.dir / "metrics.csv")["loss"]
    assert metrics["running_accuracy"][-1] == pytest.approx(result.summary["final_running_train_accuracy"], abs=1e-6)
    frame = metrics.to_pandas()
    assert frame.shape == (16, 4) and frame["loss"].tolist() == metrics["loss"]
    with pytest.raises(KeyError, match="running_accuracy"):
        metrics["accuracy"]

    # The model with its normalization, on the run's own 500 test images: the run's accuracy again.
    import torch

    from runner.data import load_batches

    images, labels = load_batches(cifar_dir, ["test_batch"])
    model = result.model()
    with torch.inference_mode():
        right = (model(images[:500].float()).argmax(1) == labels[:500]).sum().item()
    assert abs(right / 500 - result.test_accuracy) <= 1 / 500


def test_runs_lists_as_runner_ls(two_runs):
    out, result, cli_dir = two_runs
    (row,) = runner.runs(out / "api")
    assert (row.spec, row.seed, row.status, row.dir) == ("p1_q4_crop", SEED, "complete", result.dir)
    assert row.result == f"test accuracy {result.test_accuracy:.4f}"
    assert "train.iterations=16" in [o.text for o in row.overrides]
    assert row.started and row.wall > 0 and row.load().dir == result.dir
    assert "p1_q4_crop/" + result.dir.name in repr(runner.runs(out / "api"))
    assert [r.dir for r in runner.runs(out / "cli", spec="specs/p1_q4_crop.toml", status=["complete"])] == [cli_dir]
    assert runner.runs(out / "api", status="failed") == [] and runner.runs(out / "api", spec="p1_q1_raw") == []
    assert runner.runs(out / "api").to_pandas()["status"].tolist() == ["complete"]
    with pytest.raises(runner.RunnerError, match="'finished': not a run status"):
        runner.runs(out / "api", status="finished")


def test_a_bad_setting_raises_the_spec_error_naming_it(tmp_path):
    with pytest.raises(runner.SpecError, match=r"train\.lrr: unknown key; did you mean 'train\.lr'") as caught:
        runner.run(SPEC, set={"train.lrr": 0.1}, quick=True, out=tmp_path)
    assert caught.value.key == "train.lrr"
    with pytest.raises(runner.SpecError, match="train.lr: None has no TOML form"):
        runner.run(SPEC, set={"train.lr": None}, quick=True, out=tmp_path)
    assert not any(tmp_path.iterdir())  # nothing ran


def test_resume_continues_an_interrupted_run(two_runs, cifar_archive, monkeypatch):
    """A Ctrl-C right after the checkpoint at iteration 12, then resume=True: the same folder ends
    with the uninterrupted run's metrics.csv."""
    from runner.training import checkpoint
    class InterruptAfterSaving(checkpoint.Checkpoint):
        def __call__(self, engine):
            super().__call__(engine)
            raise KeyboardInterrupt

    out, straight, _ = two_runs
    options = dict(set=SETTINGS, quick=True, seed=SEED, data=cifar_archive, out=out / "resumed", progress=False)
    monkeypatch.setattr(checkpoint, "Checkpoint", InterruptAfterSaving)
    with pytest.raises(KeyboardInterrupt):
        runner.run(SPEC, **options)
    monkeypatch.undo()
    (run_dir,) = (out / "resumed" / "p1_q4_crop").iterdir()
    assert artifacts.read_status(run_dir)["status"] == "interrupted"
    assert len(read_csv(run_dir / "metrics.csv")["loss"]) == 12

    result = runner.run(SPEC, resume=True, **options)
    assert result.dir == run_dir and result.status == "complete"
    assert (run_dir / "metrics.csv").read_bytes() == (straight.dir / "metrics.csv").read_bytes()
    assert result.test_accuracy == straight.test_accuracy


def test_runner_run_is_the_function_and_public_modules_keep_their_short_names():
    import runner.blocks
    import runner.nets.blocks
    from runner.sources import trained_model
    from runner.training import sources

    assert callable(runner.run) and not isinstance(runner.run, types.ModuleType)
    assert runner.run.__module__ == "runner.api"
    assert {"run", "runs", "Result"} <= set(runner.__all__)
    # `runner.blocks` is the module in its floor, not a copy: one class, one isinstance.
    assert runner.blocks is runner.nets.blocks and trained_model is sources.trained_model


def test_progress_uses_tqdm_auto_in_a_notebook(monkeypatch):
    import tqdm.auto

    from runner import progress

    assert not progress.in_notebook()
    made = []
    monkeypatch.setattr(tqdm.auto, "tqdm", lambda **options: made.append(options) or types.SimpleNamespace(
        close=lambda: None))
    shell = types.SimpleNamespace(config={"IPKernelApp": {}})
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: shell))
    assert progress.in_notebook()
    with progress.Progress(40, "fgsm", unit="images") as bar:
        assert bar.interactive
    assert made == [dict(total=40, initial=0, desc="fgsm", unit="images", leave=True, smoothing=0.1)]
    assert not progress.Progress(40, "x", stream=sys.stdout).interactive  # a stream given: its own rule


def test_the_notebook_page_runs(tmp_path, cifar_archive, monkeypatch):
    """docs/notebook.md's python blocks, in order in one namespace, with QUICK, DATA and OUT set for a test."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    page = (ROOT / "docs" / "notebook.md").read_text()
    code = "\n".join(re.findall(r"```python\n(.*?)```", page, flags=re.S))
    for name, value in (("DATA", repr(str(cifar_archive))), ("OUT", repr(str(tmp_path))), ("QUICK", "True")):
        code, count = re.subn(rf"^{name} = .*$", f"{name} = {value}", code, count=1, flags=re.M)
        assert count == 1, f"docs/notebook.md no longer sets {name}"
    namespace = {}
    exec(compile(code, "docs/notebook.md", "exec"), namespace)
    assert len(runner.runs(tmp_path, spec="p1_q4_crop", status="complete")) == 3
    assert namespace["best"].summary["quick"] is True and len(namespace["predicted"]) == 12
    import matplotlib.pyplot as plt

    plt.close("all")
