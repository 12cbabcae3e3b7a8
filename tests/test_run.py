"""End-to-end quick runs on the shared CIFAR-10 copy: artifacts, determinism, reloading, CLI errors."""
import json
from pathlib import Path

import pytest
import torch

from runner import artifacts
from runner.cli import main
from runner.sources import load_trained
from runner.training.metrics import read_csv

SPECS = Path(__file__).resolve().parents[1] / "specs"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, cifar_archive):
    out = tmp_path_factory.mktemp("out")
    assert main([str(SPECS / "p1_q4_crop.toml"), "--quick", "--data", str(cifar_archive), "--out", str(out),
                 "--seed", "3"]) == 0
    (run_dir,) = (out / "p1_q4_crop").iterdir()
    return run_dir


def test_quick_run_writes_every_artifact(quick_run):
    names = {p.name for p in quick_run.iterdir()}
    assert {"spec.toml", "metrics.csv", "summary.json", "model.pt", "training_accuracy.png", "status.json"} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    assert artifacts.read_status(quick_run)["status"] == "complete"
    summary = json.loads((quick_run / "summary.json").read_text())
    assert summary["spec"] == "p1_q4_crop" and summary["seed"] == 3 and summary["quick"] is True
    assert summary["iterations"] == 12
    assert 0.0 <= summary["test_accuracy"] <= 1.0 and summary["seconds"] > 0 and summary["images_per_second"] > 0
    # The run's own clock covers setup, training and evaluation (what --jobs schedules by).
    assert summary["setup_seconds"] > 0
    assert summary["wall_seconds"] >= summary["setup_seconds"] + summary["seconds"] + summary["eval_seconds"]
    # Table 1: convs and the hidden FC have no bias (BatchNorm follows); BN has weight and bias.
    assert summary["parameters"] == (3 * 32 * 25 + 32 * 32 * 25 + 32 * 64 * 25 + 1024 * 64 + 650
                                     + 2 * (32 + 32 + 64 + 64))


def test_metrics_csv_has_one_row_per_iteration(quick_run):
    metrics = read_csv(quick_run / "metrics.csv")
    assert list(metrics)[:4] == ["iteration", "loss", "batch_accuracy", "running_accuracy"]
    assert metrics["iteration"] == [float(i) for i in range(1, 13)]
    assert all(0 <= a <= 1 for a in metrics["batch_accuracy"])
    assert all(loss > 0 for loss in metrics["loss"])


def test_resolved_spec_is_saved(quick_run):
    text = (quick_run / "spec.toml").read_text()
    assert 'transforms = [\n    "flip",\n    "normalize",\n    "pad_crop",\n]' in text or '"pad_crop"' in text
    assert "iterations = 12" in text and "seed = 3" in text


def test_trained_model_reloads_with_its_normalization(quick_run, cifar_dir):
    from runner.data import load_batches

    model, spec = load_trained(quick_run)
    images, labels = load_batches(cifar_dir, ["test_batch"])
    with torch.inference_mode():
        accuracy = (model(images[:500].float()).argmax(1) == labels[:500]).float().mean().item()
    summary = json.loads((quick_run / "summary.json").read_text())
    assert accuracy == pytest.approx(summary["test_accuracy"], abs=1e-6)  # same 500 test images
    normalize = model[0][0]
    assert normalize.mean.flatten()[0].item() == pytest.approx(0.4933 * 255, abs=1.0)


def test_same_seed_gives_identical_metrics(tmp_path, cifar_archive):
    args = [str(SPECS / "p1_q3_flip.toml"), "--quick", "--data", str(cifar_archive), "--set", "train.iterations=6"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    assert main(args + ["--out", str(tmp_path / "b")]) == 0
    read = lambda d: next((tmp_path / d / "p1_q3_flip").iterdir()).joinpath("metrics.csv").read_text()
    assert read("a") == read("b")


def test_a_compiled_run_learns_like_an_eager_one(tmp_path, cifar_archive):
    # On the CPU "reduce-overhead" compiles without CUDA graphs; what is checked is that the mode
    # reaches torch.compile and that the compiled model trains and evaluates like the plain one.
    args = [str(SPECS / "p1_q1_raw.toml"), "--quick", "--data", str(cifar_archive), "--no-progress",
            "--set", "data.test_limit=500"]
    assert main(args + ["--out", str(tmp_path / "eager")]) == 0
    assert main(args + ["--out", str(tmp_path / "compiled"), "--set", 'train.compile="reduce-overhead"']) == 0
    eager, compiled = (json.loads(next((tmp_path / d / "p1_q1_raw").iterdir()).joinpath("summary.json").read_text())
                       for d in ("eager", "compiled"))
    assert eager["compiled"] is False and compiled["compiled"] == "reduce-overhead"
    assert compiled["test_accuracy"] == pytest.approx(eager["test_accuracy"], abs=0.03)
    assert compiled["test_accuracy"] > 0.15  # learned something in 12 steps (chance: 0.10)


def test_bad_spec_exits_2_with_file_and_key(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('extends = "%s"\n[train]\nlr = "fast"\n' % (SPECS / "p1_q1_raw.toml"))
    assert main([str(bad), "--quick"]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "train.lr" in err and "expected a number" in err


def test_validate_command(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('[model]\nname = "nope"\n')
    assert main(["validate", str(SPECS)]) == 0
    assert main(["validate", str(bad)]) == 2
    assert "model.name" in capsys.readouterr().err


def test_missing_data_names_the_ways_to_point_at_it(tmp_path, capsys):
    code = main([str(SPECS / "p1_q1_raw.toml"), "--quick", "--data", str(tmp_path / "nothing-here"),
                 "--out", str(tmp_path)])
    assert code == 3
    assert "nothing-here" in capsys.readouterr().err
    # Checked before the run folder is made: no failed run is left behind for --resume to find.
    assert not (tmp_path / "p1_q1_raw").exists()


def test_report_from_quick_runs_says_so(quick_run, tmp_path, capsys):
    out = quick_run.parent.parent
    assert main(["report", str(out), "-o", str(tmp_path / "r.pdf"), "-o", str(tmp_path / "r.md"), "--quick"]) == 0
    from pypdf import PdfReader

    assert len(PdfReader(tmp_path / "r.pdf").pages) >= 2
    markdown = (tmp_path / "r.md").read_text()
    assert "--quick smoke runs" in markdown and "P1 Q4" in markdown
    assert "p1_q4_crop" in capsys.readouterr().out


def test_report_without_runs_to_report_says_what_there_is(quick_run, tmp_path, capsys):
    out = quick_run.parent.parent
    assert main(["report", str(out), "-o", str(tmp_path / "r.pdf")]) == 1  # only --quick runs there
    assert f"no completed full-protocol runs in {out}; it has --quick runs: runner report {out} --quick" \
        in capsys.readouterr().err
    assert not (tmp_path / "r.pdf").exists()
    assert main(["report", str(tmp_path / "absent")]) == 1
    assert "no artifacts folder" in capsys.readouterr().err


def test_a_folder_without_specs_is_an_error(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2 and main(["validate", str(tmp_path)]) == 2
    assert f"no spec files (*.toml) in folder {tmp_path}" in capsys.readouterr().err


def test_nan_loss_stops_the_run_as_diverged(tmp_path, cifar_archive, capsys):
    code = main([str(SPECS / "p1_q1_raw.toml"), "--quick", "--data", str(cifar_archive), "--out", str(tmp_path),
                 "--set", "train.lr=1e30", "--set", "train.label_smoothing=0.0"])
    assert code == 5
    assert "lower train.lr" in capsys.readouterr().err
    (run_dir,) = (tmp_path / "p1_q1_raw").iterdir()
    assert artifacts.read_status(run_dir)["status"] == "diverged"
    assert (run_dir / "metrics.csv").exists() and not (run_dir / "summary.json").exists()


def test_out_of_memory_names_the_setting_to_lower(tmp_path, cifar_archive, capsys, monkeypatch):
    def exhausted(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr("runner.training.builders.make_optimizer", exhausted)
    code = main([str(SPECS / "p1_q1_raw.toml"), "--quick", "--data", str(cifar_archive), "--out", str(tmp_path)])
    assert code == 1
    assert "train.batch_size" in capsys.readouterr().err
    (run_dir,) = (tmp_path / "p1_q1_raw").iterdir()
    assert artifacts.read_status(run_dir)["status"] == "failed"
