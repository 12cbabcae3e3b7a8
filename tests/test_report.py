"""`runner report` from quick runs of Parts 1 and 2: the PDF's sections, tables, figures and filled text."""
from pathlib import Path

import pytest
from pypdf import PdfReader

from runner.cli import main
from runner.report import Fields, collect, fill_template, part2_table, template_fields

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
    assert sum("Part 2: what happened in Q3" in text for text in pages) >= 1
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
