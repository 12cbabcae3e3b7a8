"""`runner report` from quick runs of Parts 1 and 2: the PDF's sections, tables, figures and filled text."""
import json
import string
from pathlib import Path

import pytest
from pypdf import PdfReader

from runner.cli import main
from runner.report import (Fields, collect, explanations, fill_template, part2_table, spec_path,
                           template_fields)
from runner.spec import load

SPECS = Path(__file__).resolve().parents[1] / "specs"
PART1 = ["p1_q1_raw", "p1_q2_normalize", "p1_q3_flip", "p1_q4_crop"]
PART2 = ["p2_q2_gradients", "p2_q3_deep_plain", "p2_q4_skip", "p2_fix_kaiming", "p2_fix_fixup"]


@pytest.fixture(scope="module")
def reported(tmp_path_factory, cifar_archive):
    out = tmp_path_factory.mktemp("out")
    common = ["--quick", "--data", str(cifar_archive), "--out", str(out), "--no-progress"]
    assert main([*(str(SPECS / f"{name}.toml") for name in PART1 + PART2), *common]) == 0
    # Identity skips with He init start at a loss near 76 (activations grow 2x per block) and diverge
    # at the quick run's full learning rate within a few steps; a tiny one keeps this smoke run finite.
    assert main([str(SPECS / "p2_fix_residual.toml"), *common, "--set", "train.lr=0.0001"]) == 0
    pdf = out / "report.pdf"
    assert main(["report", str(out), "-o", str(pdf), "--quick"]) == 0
    return out, pdf


def test_the_pdf_has_a_section_with_figures_for_every_run(reported):
    out, pdf = reported
    reader = PdfReader(pdf)
    pages = [page.extract_text() for page in reader.pages]
    assert "QUICK RUNS" in pages[0]
    for name in PART1 + PART2 + ["p2_fix_residual"]:
        section = [i for i, text in enumerate(pages) if text.startswith(name)]
        assert section, name
        # Every PNG of the run folder is drawn on that spec's pages.
        pngs = list(next((out / name).iterdir()).glob("*.png"))
        drawn = sum(len(reader.pages[i].images) for i in section)
        assert drawn >= len(pngs) > 0, name
        assert any(f"{name}: architecture" in pages[i] for i in section), name
    assert sum("Part 2: CNNs and vanishing gradients" in text for text in pages) >= 1
    assert (out / "report-part1.png").stat().st_size > 0


def test_the_tables_and_the_filled_explanation(reported):
    out, pdf = reported
    markdown = pdf.with_suffix(".md").read_text()
    for heading in ("## Part 1 compared", "## Part 2: plain deep net against every fix"):
        assert heading in markdown
    part2 = markdown.split("## Part 2: plain deep net against every fix")[1].split("##")[0]
    assert all(f"| {name} |" in part2 for name in PART2 + ["p2_fix_residual"])
    assert "| p2_q1_allconv |" not in part2  # no gradients logged there
    # The explanation's numbers are the runs' numbers.
    fields = template_fields(collect(out), quick=True)
    text = fill_template(SPECS / "p2_explanation.md", fields)
    assert text is not None and "{" not in text and text.partition("\n")[2].strip() in markdown
    ratio = fields["p2_q3_deep_plain"]["grad_magnitude"]["ratio_first_over_last"]["1"]
    assert f"{ratio:.1e} of the classifier's at iteration 1" in text
    assert "| conv" not in text and "| 1 | Conv2d | 5x5 | 1 | 2 |" in markdown  # architecture tables


def test_a_template_field_without_a_run_leaves_the_text_out(tmp_path):
    template = tmp_path / "x_explanation.md"
    template.write_text("accuracy {p9_missing.test_accuracy:.1%}")
    assert fill_template(template, Fields({})) is None
    assert fill_template(template, Fields({"p9_missing": {"test_accuracy": 0.5}})) == "accuracy 50.0%"
    assert Fields({"g": {"1": 2.0}})["g"][1] == 2.0  # {spec.key[1]} reads the JSON key "1"


def _grads(ratio_at_1, **blocks):
    g = {"first": "0", "last": "9", "every": 1, "iterations": {"1": 1, "last_iteration": 50},
         "first_G": {"1": 1e-4, "last_iteration": 2e-4}, "last_G": {"1": 1e-2, "last_iteration": 3e-2},
         "ratio_first_over_last": {"1": ratio_at_1, "last_iteration": 7e-3}}
    return dict(g, **blocks)


def test_part2_table_shows_null_gradient_values_as_dashes():
    # grad_magnitude writes null for a NaN/inf G, for a ratio over a zero G and for a run with nothing recorded.
    runs = {"nan_run": [{"seed": 0, "test_accuracy": 0.1,
                         "grad_magnitude": _grads(None, first_G={"1": None}, last_G={"1": 0.0})}],
            "empty_run": [{"seed": 0, "test_accuracy": 0.1, "grad_magnitude": None}],
            "no_plugin": [{"seed": 0, "test_accuracy": 0.1}]}
    table = part2_table(runs, quick=False)
    assert "| nan_run | 10.0% (1) | – | 0.0e+00 | – | – | 7.0e-03 |" in table  # no "100": a short run
    assert "| empty_run | 10.0% (1) | – | – | – | – | – |" in table
    assert "no_plugin" not in table


def test_part2_table_and_templates_quote_the_same_seed():
    runs = {"p2_x": [{"seed": seed, "test_accuracy": 0.5, "grad_magnitude": _grads(ratio)}
                     for seed, ratio in ((2, 5.1e-2), (0, 4.0e-2), (1, 6.0e-2))]}
    fields = template_fields(runs, quick=False)
    quoted = fields["p2_x"]["grad_magnitude"]["ratio_first_over_last"]["1"]
    assert fields["p2_x"]["seed"] == 0 and quoted == 4.0e-2  # the lowest seed, as the table
    assert f"| {quoted:.1e} |" in fields["part2_table"] and "5.1e-02" not in fields["part2_table"]


def test_part1_text_sits_under_the_part1_table(reported):
    out, pdf = reported
    markdown = pdf.with_suffix(".md").read_text()
    part1 = markdown.split("## Part 1 compared")[1].split("\n## ")[0]
    fields = template_fields(collect(out), quick=True)
    for heading in ("### Q2: normalized images", "### Q3: random horizontal flips", "### Q4: random crops"):
        assert heading in part1 and markdown.count(heading) == 1, heading  # not repeated at the end
    assert f"{fields['p1_q4_crop']['accuracy_mean']:.1%}, {fields['p1_q4_crop']['vs_previous']['test_word']}" in part1
    assert "{" not in part1
    pages = [page.extract_text() for page in PdfReader(pdf).pages]
    first_run = next(i for i, text in enumerate(pages) if text.startswith("p1_q1_raw"))
    assert any("Q4: random crops" in text for text in pages[:first_run])  # with the tables, not at the end


def _part1_runs(tmp_path, accuracies, train):
    return {name: [{"seed": seed, "test_accuracy": acc, "final_running_train_accuracy": tr, "parameters": 1000,
                    "run_dir": str(tmp_path)} for seed, acc in enumerate(accs)]
            for name, accs, tr in zip(PART1, accuracies, train)}


def test_part1_comparison_words_come_from_the_numbers(tmp_path):
    runs = _part1_runs(tmp_path, [(0.66, 0.67, 0.65), (0.665, 0.655, 0.66), (0.71,), (0.60,)], [1.0, 1.0, 0.96, 0.9])
    fields = template_fields(runs, quick=False)
    assert "vs_previous" not in fields["p1_q1_raw"]
    q2, q3, q4 = (fields[name]["vs_previous"] for name in PART1[1:])
    assert (q2["test_word"], q2["train_word"], q2["gap_word"]) == ("about the same as",) * 3  # within noise
    assert (q3["test_word"], q3["train_word"], q3["gap_word"]) == ("higher than", "lower than", "narrower than")
    assert q3["test_change"] == pytest.approx(0.05)
    assert (q4["test_word"], q4["train_word"], q4["gap_word"]) == ("lower than", "lower than", "wider than")
    text = fill_template(SPECS / "p1_explanation.md", fields)
    assert "about the same as the 66.0% of raw" in text and "71.0%, higher than\nwithout them" in text
    assert "60.0%, lower than with flips alone" in text.replace("\n", " ")


def test_a_section_without_its_fields_is_left_out_and_named(tmp_path, capsys):
    template = tmp_path / "x_explanation.md"
    template.write_text("# Title\n\n### A\n\na is {a.x}\n\n### B\n\nb is {b.y:.1%} and {b.z}\n")
    assert fill_template(template, Fields({"a": {"x": 1}})) == "# Title\n\n### A\n\na is 1"
    err = capsys.readouterr().err
    assert "x_explanation.md" in err and "### B" in err and "b.y, b.z" in err and "### A" not in err
    assert fill_template(template, Fields({"a": {"x": None}})) is None  # None is no value: not "None"
    assert "a.x" in capsys.readouterr().err


def test_part3_q1_stays_without_the_transfer_run(capsys):
    names = [name for _, name, _, _ in string.Formatter().parse((SPECS / "p3_explanation.md").read_text()) if name]
    fgsm = {name.split(".")[1]: 0 for name in names if name.startswith("fgsm.")}
    # fgsm_switches: template_fields' text of fgsm.top_switches
    text = fill_template(SPECS / "p3_explanation.md", Fields({"fgsm": fgsm, "fgsm_switches": "cat to dog (9.0%)"}))
    assert "### Q1: iterative FGSM" in text and "### Q2" not in text and "{" not in text
    err = capsys.readouterr().err
    assert "### Q2: the same images on the Part 2 network" in err and "transfer.target_spec" in err


def _run_folder(out, name, run_id, spec_toml, **summary):
    run_dir = out / name / run_id
    run_dir.mkdir(parents=True)
    (run_dir / "status.json").write_text(json.dumps({"status": "complete"}))
    (run_dir / "spec.toml").write_text(spec_toml)
    (run_dir / "metrics.csv").write_text("iteration,running_accuracy\n1,0.1\n2,0.2\n")
    summary = dict({"spec": name, "quick": False, "iterations": 2000, "seconds": 1, "test_accuracy": 0.5}, **summary)
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


def test_templates_are_found_for_relative_spec_files_from_anywhere(tmp_path, monkeypatch):
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    (project / "specs").mkdir(parents=True)
    elsewhere.mkdir()
    (project / "specs" / "p9_x.toml").write_text('model.name = "table1"\n')
    (project / "specs" / "p9_explanation.md").write_text("# P9\n\naccuracy {p9_x.test_accuracy:.0%}\n")
    out = project / "artifacts"
    _run_folder(out, "p9_x", "20260101-000000-s0", "", spec_file="specs/p9_x.toml", seed=0)  # as run from project/
    # A newer run of the same spec recorded its path absolute: still one folder, one text.
    _run_folder(out, "p9_x", "20260102-000000-s1", "", spec_file=str(project / "specs" / "p9_x.toml"), seed=1)
    monkeypatch.chdir(elsewhere)
    runs = collect(out)
    assert explanations(runs, template_fields(runs, quick=False), out) == [("p9_explanation.md", "P9", "accuracy 50%")]
    monkeypatch.chdir(project)  # where the relative path holds as written
    assert len(explanations(runs, template_fields(runs, quick=False), out)) == 1
    # A spec recorded where it no longer is (another checkout, the device machine's copy): this project's specs/.
    assert spec_path({"spec_file": "/gone/specs/p1_q1_raw.toml"}, out) == SPECS / "p1_q1_raw.toml"
    assert spec_path({"spec_file": "/gone/specs/p9_nowhere.toml"}, out) is None


def test_full_report_leaves_out_runs_not_made_as_their_spec_file_says(tmp_path, capsys):
    spec_file = SPECS / "p1_q1_raw.toml"

    def spec(*overrides):
        return load(spec_file, overrides=list(overrides)).dumps()

    out = tmp_path / "artifacts"
    runs = [(0, "20260101-000000-s0", spec("seed=0"), 0.60),
            (0, "20260102-000000-s0", spec("seed=0", "train.iterations=12"), 0.11),  # newer, but --set
            (1, "20260101-000000-s1", spec("seed=1", 'device="cpu"'), 0.61),  # --device is no protocol
            # Older code: no [plugins.visdom], no train.compile (now defaults); a key since retired.
            (2, "20260101-000000-s2", spec("seed=2").replace("compile = false\n", "").split("[plugins.visdom]")[0],
             0.62),
            (3, "20260101-000000-s3", spec("seed=3").replace("[eval]", "retired = 1\n\n[eval]"), 0.63),
            (4, "20260101-000000-s4", spec("seed=4", "train.lr=0.1").replace("[eval]", "retired = 1\n\n[eval]"), 0.14)]
    for seed, run_id, toml, accuracy in runs:
        _run_folder(out, "p1_q1_raw", run_id, toml, spec_file=str(spec_file), seed=seed, test_accuracy=accuracy,
                    code_version="old", final_running_train_accuracy=1.0)
    _run_folder(out, "p9_gone", "20260101-000000-s0", 'model.name = "x"\n', spec_file="/gone/p9_gone.toml", seed=0)
    pdf = tmp_path / "report.pdf"
    assert main(["report", str(out), "-o", str(pdf)]) == 0
    captured = capsys.readouterr()
    markdown = pdf.with_suffix(".md").read_text()
    row = "| p1_q1_raw | 4 | 61.5% ± 1.3% | 60.0%, 61.0%, 62.0%, 63.0% |"  # seed 0: its older run
    assert row in captured.out and row in markdown
    assert "| p9_gone | 1 | 50.0% |" in captured.out  # its spec file is gone: kept
    assert "p1_q1_raw/20260102-000000-s0 (train.iterations = 12 (spec file: 2000))" in captured.err
    assert "p1_q1_raw/20260101-000000-s4 (train.lr = 0.1 (spec file: 0.05))" in captured.err
    assert ("Left out: 2 run(s) whose spec differs from their spec file's now (made with --set, or before the "
            "spec changed): p1_q1_raw/20260101-000000-s4, p1_q1_raw/20260102-000000-s0.") in markdown


def test_the_commonest_switches_become_text():
    switches = [{"from": "cat", "to": "dog", "count": 9, "share": 0.09}, {"from": "truck", "to": "automobile",
                                                                         "count": 5, "share": 0.05}]
    fields = template_fields({"p3_q1_fgsm": [{"seed": 0, "test_accuracy": 0.7, "quick": False,
                                              "fgsm": {"top_switches": switches}}]}, quick=False)
    assert fields["fgsm_switches"] == "cat to dog (9.0%), truck to automobile (5.0%)"
    assert template_fields({}, quick=False)["fgsm_switches"] is None  # runs made before it was recorded
