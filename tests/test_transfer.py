"""Cross-model transfer: Wilson intervals, and the Part 3 chain p1_q4_crop -> p3_q1_fgsm ->
p2_q1_allconv -> p3_q2_transfer on quick runs."""
import json
from pathlib import Path

import pytest

from runner.cli import main
from runner.plugins.transfer import wilson_interval

SPECS = Path(__file__).resolve().parents[1] / "specs"


@pytest.mark.parametrize("k, n, low, high", [
    (15, 20, 0.5313, 0.8881),   # textbook values (z = 1.96)
    (0, 20, 0.0, 0.1611),       # 0/n: the upper end is still informative
    (20, 20, 0.8389, 1.0),
    (50, 100, 0.4038, 0.5962),
])
def test_wilson_interval(k, n, low, high):
    assert wilson_interval(k, n) == pytest.approx((low, high), abs=1e-4)


def test_wilson_interval_without_data_knows_nothing():
    assert wilson_interval(0, 0) == (0.0, 1.0)


@pytest.fixture(scope="module")
def chain(tmp_path_factory, cifar_archive):
    out = tmp_path_factory.mktemp("out")
    common = ["--quick", "--data", str(cifar_archive), "--out", str(out), "--no-progress"]
    assert main([str(SPECS / "p1_q4_crop.toml"), *common, "--set", "train.iterations=30"]) == 0
    assert main([str(SPECS / "p3_q1_fgsm.toml"), *common, "--set", "data.test_limit=100",
                 "--set", "plugins.fgsm.eps=8.0", "--set", "plugins.fgsm.max_steps=20"]) == 0
    assert main([str(SPECS / "p2_q1_allconv.toml"), *common]) == 0
    # The matrix names a spec with no run (p1_q1_raw): listed as skipped, not an error.
    assert main([str(SPECS / "p3_q2_transfer.toml"), *common, "--set", "data.test_limit=100",
                 "--set", 'plugins.transfer.matrix_targets=["p1_q4_crop", "p2_q1_allconv", "p1_q1_raw"]']) == 0
    (run_dir,) = (out / "p3_q2_transfer").iterdir()
    return out, run_dir, json.loads((run_dir / "summary.json").read_text())


def test_transfer_results(chain):
    out, run_dir, summary = chain
    result = summary["transfer"]
    assert Path(result["target_run"]).parent.name == "p2_q1_allconv"
    assert Path(result["attack_run"]).parent.name == "p3_q1_fgsm" and result["source_spec"] == "p1_q4_crop"
    fgsm = json.loads((Path(result["attack_run"]) / "summary.json").read_text())["fgsm"]
    assert result["pairs_n"] == fgsm["pairs_count"] and result["set_n"] == fgsm["succeeded"]
    for key in ("adv_accuracy", "clean_accuracy", "set_adv_accuracy", "set_clean_accuracy"):
        if result[key] is not None:
            assert 0.0 <= result[key] <= 1.0
            low, high = result[key.replace("accuracy", "ci95")]
            assert low <= result[key] <= high
    assert result["pairs"]["adversarial"]["n"] == result["pairs_n"]
    for name in ("transfer_accuracy.png", "transfer_pairs.png", "transfer_matrix.png"):
        assert (run_dir / name).stat().st_size > 0


def test_transfer_matrix(chain):
    _, _, summary = chain
    matrix = summary["transfer"]["matrix"]
    assert matrix["sources"] == ["p3_q1_fgsm"] and matrix["source_models"] == ["p1_q4_crop"]
    assert matrix["targets"] == ["p1_q4_crop", "p2_q1_allconv"]
    assert any("p1_q1_raw" in line for line in matrix["skipped"])
    (row,) = matrix["accuracy"]
    if matrix["n"][0]:
        # White-box cell: every successful adversarial image fools the model it was made on.
        assert row[0] == 0.0 and matrix["clean_accuracy"][0][0] == 1.0
        # The same images and model as the run's own number (there channels_last: allow one flip).
        assert row[1] == pytest.approx(summary["transfer"]["set_adv_accuracy"], abs=1.01 / matrix["n"][0])


def test_missing_attack_run_names_the_command(tmp_path, cifar_archive, capsys):
    args = [str(SPECS / "p3_q2_transfer.toml"), "--quick", "--data", str(cifar_archive), "--out", str(tmp_path),
            "--no-progress"]
    assert main(args) == 1
    assert "runner specs/p3_q1_fgsm.toml --quick" in capsys.readouterr().err
