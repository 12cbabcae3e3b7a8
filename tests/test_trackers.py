"""The tensorboard and mlflow plugins: a quick run's event files and MLflow store read back and
compared with its metrics.csv, and failures that leave the run to finish with one warning each."""
import json
import os
import re
import sys
import types
from pathlib import Path

import pytest

from runner.cli import main
from runner.training.metrics import read_csv

SPEC = Path(__file__).resolve().parent.parent / "specs" / "p1_q1_raw.toml"
# mlflow's SQLite store warns of a SQLAlchemy option it uses: its code's warning, not ours
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")

LOGGED = [1, 4, 8, 12]  # --quick's train.log_every is 4, and the first and last iterations are logged too


def quick_run(cifar_archive, out: Path, *settings: str) -> int:
    """p1_q1_raw for 12 iterations with grad_magnitude's G/ columns, Visdom off."""
    args = [str(SPEC), "--quick", "--data", str(cifar_archive), "--out", str(out), "--no-progress",
            "--set", "train.iterations=12", "--set", "plugins.visdom.enabled=false",
            "--set", "plugins.grad_magnitude.enabled=true"]
    for text in settings:
        args += ["--set", text]
    return main(args)


def only_run_dir(out: Path) -> Path:
    (run_dir,) = (out / "p1_q1_raw").iterdir()
    return run_dir


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, cifar_archive) -> Path:
    """One run with both trackers on: its folder."""
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    out = tmp_path_factory.mktemp("trackers")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the default store: the run folder's
        assert quick_run(cifar_archive, out, "plugins.tensorboard.enabled=true", "plugins.mlflow.enabled=true") == 0
        # MLflow keeps its URI in the environment too: the run gives back the process's, unset
        assert "MLFLOW_TRACKING_URI" not in os.environ
    return only_run_dir(out)


def columns(run_dir: Path) -> dict[str, list[float]]:
    """metrics.csv's columns besides the iteration, checked to hold the plugins' G/ columns too."""
    table = read_csv(run_dir / "metrics.csv")
    del table["iteration"]
    assert {"loss", "batch_accuracy", "running_accuracy"} < set(table)
    assert sum(name.startswith("G/") for name in table) == 3  # the Table 1 net's three convs
    return table


def test_tensorboard_event_files_hold_what_metrics_csv_has(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = EventAccumulator(str(tracked / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    table = columns(tracked)
    summary = json.loads((tracked / "summary.json").read_text())

    assert set(events.Tags()["scalars"]) == {f"train/{name}" for name in table} | {"lr/group_0", "test/accuracy"}
    for name, values in table.items():
        logged = events.Scalars(f"train/{name}")
        assert [point.step for point in logged] == LOGGED, name
        # metrics.csv keeps 6 significant digits, the event file float32
        assert [point.value for point in logged] == pytest.approx([values[i - 1] for i in LOGGED], rel=1e-5), name
    (test,) = events.Scalars("test/accuracy")
    assert (test.step, test.value) == (12, pytest.approx(summary["test_accuracy"], rel=1e-6))
    assert [p.value for p in events.Scalars("lr/group_0")][-1] == pytest.approx(0.05)  # warmup's end: the spec's lr

    spec_text = events.Tensors("spec.toml/text_summary")[0].tensor_proto.string_val[0].decode()
    assert (tracked / "spec.toml").read_text().strip() in spec_text
    result_text = events.Tensors("summary.json/text_summary")[0].tensor_proto.string_val[0].decode()
    assert json.loads(result_text.strip("`\njson"))["test_accuracy"] == summary["test_accuracy"]
    assert set(events.Tags()["images"]) == {"figures/grad_first_last", "figures/grad_heatmap"}

    start = plugin_data_pb2.HParamsPluginData.FromString(
        events.PluginTagToContent("hparams")["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["train.lr"].number_value == 0.05
    assert start.hparams["model.widths"].string_value == "[32, 32, 64]"
    assert start.hparams["plugins.grad_magnitude.every"].number_value == 1
    assert summary["tensorboard"] == {"log_dir": str(tracked / "tensorboard")}


def test_mlflow_store_holds_what_metrics_csv_has(tracked):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tracked.resolve() / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("p1_q1_raw").experiment_id])
    table = columns(tracked)
    summary = json.loads((tracked / "summary.json").read_text())

    assert (run.info.run_name, run.info.status) == (tracked.name, "FINISHED")
    assert summary["mlflow"]["run_id"] == run.info.run_id
    names = {name: "train " + re.sub(r"[()]", "", name) for name in table}  # MLflow refuses parentheses
    assert set(run.data.metrics) == set(names.values()) | {"lr group_0", "test accuracy"}
    for name, values in table.items():
        history = client.get_metric_history(run.info.run_id, names[name])
        assert [m.step for m in history] == LOGGED, name
        assert [m.value for m in history] == pytest.approx([values[i - 1] for i in LOGGED], rel=1e-5), name
    (test,) = client.get_metric_history(run.info.run_id, "test accuracy")
    assert (test.step, test.value) == (12, pytest.approx(summary["test_accuracy"], rel=1e-9))

    params = run.data.params
    assert (params["train.lr"], params["model.widths"], params["plugins.grad_magnitude.every"]) == \
        ("0.05", "[32, 32, 64]", "1")
    assert params["train.iterations"] == "12" and run.data.tags["runner.spec"] == "p1_q1_raw"

    artifacts = Path(client.download_artifacts(run.info.run_id, "", str(tracked.parent / "downloaded")))
    assert (artifacts / "spec.toml").read_text() == (tracked / "spec.toml").read_text()
    assert json.loads((artifacts / "summary.json").read_text())["test_accuracy"] == summary["test_accuracy"]
    assert sorted(p.name for p in (artifacts / "figures").iterdir()) == ["grad_first_last.png", "grad_heatmap.png"]


@pytest.mark.parametrize("name", ["tensorboard", "mlflow"])
def test_a_missing_package_is_one_warning_that_says_what_to_install(name, tmp_path, monkeypatch, capsys):
    import importlib

    module = importlib.import_module(f"runner.plugins.{name}_log")  # tensorboard_log, mlflow_log
    monkeypatch.setitem(sys.modules, name, None)  # `import tensorboard` / `import mlflow` fails
    run = types.SimpleNamespace(rank=0, spec=types.SimpleNamespace(name="demo"), dir=tmp_path)
    state = types.SimpleNamespace()
    module.attach(trainer=None, evaluator=None, run=run, settings=module.Settings(), state=state)
    assert state.guard.off and not list(tmp_path.iterdir())
    warning = capsys.readouterr().err
    assert warning.startswith(f"[demo] {name}: warning: off for this run: ModuleNotFoundError")
    assert f"install it: pip install -e '.[{name}]'" in warning and warning.count("\n") == 1


def test_trackers_that_cannot_start_leave_the_run_to_finish(tmp_path, cifar_archive, capsys):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    code = quick_run(cifar_archive, tmp_path / "out", "plugins.tensorboard.enabled=true",
                     f"plugins.tensorboard.log_dir={json.dumps(str(not_a_folder))}",
                     "plugins.mlflow.enabled=true", 'plugins.mlflow.tracking_uri="nosuchscheme://nowhere"')
    err = capsys.readouterr().err
    assert code == 0
    summary = json.loads((only_run_dir(tmp_path / "out") / "summary.json").read_text())
    assert summary["test_accuracy"] > 0 and "tensorboard" not in summary and "mlflow" not in summary
    assert err.count("tensorboard: warning") == 1 and err.count("mlflow: warning") == 1
    assert f"check that plugins.tensorboard.log_dir ({not_a_folder}) can be written" in err
    assert "check plugins.mlflow.tracking_uri (nosuchscheme://nowhere)" in err


def test_trackers_failing_mid_run_warn_once_and_the_run_goes_on(tmp_path, cifar_archive, capsys, monkeypatch):
    """A full disk under both: TensorBoard's writer raises on the training thread, MLflow's store in
    MLflow's own logging thread (metrics are logged asynchronously); each is one warning."""
    import logging

    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from torch.utils.tensorboard import SummaryWriter

    from runner.plugins.mlflow_log import ASYNC_LOGGER

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(SummaryWriter, "add_scalar", disk_full)
    monkeypatch.setattr(SqlAlchemyStore, "log_batch", disk_full)
    code = quick_run(cifar_archive, tmp_path, "plugins.tensorboard.enabled=true", "plugins.mlflow.enabled=true")
    err = capsys.readouterr().err
    assert code == 0 and json.loads((only_run_dir(tmp_path) / "summary.json").read_text())["iterations"] == 12
    assert err.count("tensorboard: warning") == 1
    assert "tensorboard: warning: logging stopped: OSError: [Errno 28] No space left on device" in err
    (line,) = [line for line in err.splitlines() if "No space left" in line and "tensorboard" not in line]
    assert line.startswith("[p1_q1_raw] mlflow: warning: logging stopped: ")
    assert "check plugins.mlflow.tracking_uri" in line
    assert logging.getLogger(ASYNC_LOGGER).filters == []  # the run's filter is gone with it
