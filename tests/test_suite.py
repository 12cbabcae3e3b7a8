"""A folder of specs runs as a suite: dependency order, up-to-date specs skipped, --force reruns."""
from pathlib import Path

from runner.cli import main

SPECS = Path(__file__).resolve().parents[1] / "specs"


def test_suite_order_and_skipping(tmp_path, cifar_archive, capsys):
    suite = tmp_path / "suite"
    suite.mkdir()
    raw = SPECS / "p1_q1_raw.toml"
    # "a" sorts first but requires "b": b must run first.
    (suite / "a_needs_b.toml").write_text(f'extends = "{raw}"\nrequires = ["b_base.toml"]\n')
    (suite / "b_base.toml").write_text(f'extends = "{raw}"\n')
    args = [str(suite), "--quick", "--set", "train.iterations=2", "--data", str(cifar_archive),
            "--out", str(tmp_path / "out")]

    assert main(args) == 0
    err = capsys.readouterr().err
    assert err.index("[b_base] run folder") < err.index("[a_needs_b] run folder")

    assert main(args) == 0
    captured = capsys.readouterr()
    assert "[a_needs_b] up to date" in captured.err and "[b_base] up to date" in captured.err
    assert "run folder" not in captured.err and "skipped" in captured.out

    (suite / "b_base.toml").write_text(f'extends = "{raw}"\n[train]\nlr = 0.02\n')  # b changed
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "[b_base] run folder" in err and "[a_needs_b] up to date" in err

    assert main(args + ["--force"]) == 0
    assert capsys.readouterr().err.count("run folder") == 2
    assert len(list((tmp_path / "out" / "b_base").iterdir())) == 3
