"""The report's parts without runs: templates, inline markup, section order, repeated layers,
the augment plugin's comparison words, and text that must reach the PDF as it is."""
from pathlib import Path

import pytest
from pypdf import PdfReader

from runner.plugins.augment import report_sections as augment_sections
from runner.report import Fields, Runs, SpecRuns, fill_template
from runner.report.build import collapse_repeats
from runner.report.collect import question_order
from runner.report.document import Bullets, Document, Heading, Paragraph, Section, Table, blocks_from_text, inline
from runner.report.pdf import write_pdf
from runner.report.templates import template_fields

SPECS = Path(__file__).resolve().parents[1] / "specs"


def test_inline_markup_and_blocks():
    assert inline("a **b** `c` *d* 2*3*4") == [("text", "a "), ("strong", "b"), ("text", " "), ("code", "c"),
                                               ("text", " "), ("emph", "d"), ("text", " 2*3*4")]
    blocks = blocks_from_text("### Why\n\nOne\nparagraph.\n\n- first\n  continued\n- second\n")
    assert blocks == [Heading("Why"), Paragraph("One paragraph."), Bullets(["first continued", "second"])]


def test_questions_first_then_the_other_studies_by_part():
    names = {"p3_q1": "P3 Q1: attack", "p1_q2": "P1 Q2: x", "p1_q10": "P1 Q10: y", "fix": "P2 fix: z",
             "mine": "My own study", "p2_q1": "P2 Q1: w", "ref": "Reference: v"}
    ordered = sorted(names, key=lambda name: question_order(name, names[name]))
    assert ordered == ["p1_q2", "p1_q10", "p2_q1", "p3_q1", "fix", "mine", "ref"]


def test_a_run_of_repeated_layers_is_shown_once():
    rows = [["1", "Conv2d", "5x5"]] + [[str(i), "Conv2d" if i % 2 == 0 else "ReLU", ""] for i in range(2, 42)] \
        + [["42", "Linear", ""]]
    collapsed = collapse_repeats(rows)
    assert collapsed[:3] == [["1", "Conv2d", "5x5"], ["2", "Conv2d", ""], ["3", "ReLU", ""]]
    assert collapsed[3][1] == "(the 2 rows above 19 more times: rows 4-41)"
    assert collapsed[4] == ["42", "Linear", ""] and len(collapsed) == 5
    assert collapse_repeats([["1", "a"], ["2", "a"]]) == [["1", "a"], ["2", "a"]]  # twice is no run


def test_template_answers_are_keyed_by_spec_and_a_missing_field_is_named(tmp_path, capsys):
    template = tmp_path / "x_explanation.md"
    template.write_text("<!-- {comment} -->\n## a\n\na is {a.x}\n\n## b\n\nb is {b.y:.1%} and {c.z}\n\n"
                        "b alone: {b.y:.0%}\n\n## gone\n\n{q}\n")
    assert fill_template(template, Fields({"a": {"x": 1}, "b": {"y": 0.5}})) == {"a": "a is 1", "b": "b alone: 50%"}
    err = capsys.readouterr().err
    assert "left out a paragraph of the answer for b ('b is" in err and "no value for c.z" in err
    assert "gone" not in err  # no runs of it: silent
    assert fill_template(template, Fields({"a": {"x": None}})) == {}  # None is no value, not "None"
    assert Fields({"g": {"1": 2.0}})["g"][1] == 2.0  # {spec.key[1]} reads the JSON key "1"


def _spec(name, question, accuracies, train, transforms, per_class=None):
    runs = [{"seed": seed, "test_accuracy": acc, "final_running_train_accuracy": train, "iterations": 2000,
             "run_dir": f"/nowhere/{name}/{seed}", "parameters": 1000,
             "per_class": per_class and {"classes": ["cat", "dog", "ship"], "accuracy": per_class}}
            for seed, acc in enumerate(accuracies)]
    spec = {"question": question, "model": {"name": "table1"}, "train": {"lr": 0.05},
            "data": {"train": ["data_batch_1"], "transforms": transforms}}
    return SpecRuns(name, runs, spec)


def test_augment_compares_each_spec_with_the_one_with_a_transform_fewer(tmp_path, monkeypatch):
    from runner.training import figures
    monkeypatch.setattr(figures, "running_accuracy_compared", lambda *_: figures.plt.figure())
    specs = [_spec("q1", "P1 Q1: raw", (0.66, 0.67, 0.65), 1.0, [], [0.5, 0.5, 0.5]),
             _spec("q2", "P1 Q2: norm", (0.665, 0.655, 0.66), 1.0, ["normalize"], [0.5, 0.5, 0.5]),
             _spec("q3", "P1 Q3: flip", (0.71,), 0.96, ["flip", "normalize"], [0.6, 0.45, 0.5]),
             _spec("q4", "P1 Q4: crop", (0.60,), 0.9, ["flip", "normalize", "pad_crop"], [0.6, 0.45, 0.5]),
             _spec("other", "P2 Q1: same transforms, other model", (0.7,), 0.9, ["flip", "normalize"])]
    specs[-1].spec["model"] = {"name": "allconv"}
    runs = Runs(specs, quick=False, out=tmp_path, workdir=tmp_path)
    sections = augment_sections(runs)
    fields = {s.spec: s.fields for s in sections if s.fields}
    assert set(fields) == {"q2", "q3", "q4"}  # q1 has nothing before it, "other" another model
    q2, q3, q4 = (fields[name]["vs_previous"] for name in ("q2", "q3", "q4"))
    assert (q2["test_word"], q2["train_word"], q2["gap_word"]) == ("about the same as",) * 3  # within noise
    assert (q3["test_word"], q3["train_word"], q3["gap_word"]) == ("higher than", "lower than", "narrower than")
    assert q3["test_change"] == pytest.approx(0.05)
    assert (q4["test_word"], q4["train_word"], q4["gap_word"]) == ("lower than", "lower than", "wider than")
    assert fields["q3"]["class_gains"] == "cat (+10.0 points)" and fields["q3"]["class_losses"] == "dog (-5.0 points)"
    assert fields["q4"]["class_gains"] == "none"
    chain = [s for s in sections if s.spec == "q4" and s.blocks and not s.fields]
    assert "q1, q2, q3, q4" in chain[0].blocks[0].caption  # the chain's curves, in its last spec's section
    text = fill_template(SPECS / "p1_explanation.md", template_fields(runs, fields), ["q2"])
    assert text == {}  # the homework's template answers its own specs, not these


def test_text_reaches_the_pdf_as_it_is(tmp_path):
    tricky = 'a #b $c *d* _e_ "f" \\g <h> @i // j [k] = l'  # one $ is no math
    document = Document("Title", [("what", tricky)], sections=[
        Section("S", [Paragraph(tricky), Table(["x", "y"], [[tricky, "1"]], "caption " + tricky)])]).number()
    pdf = tmp_path / "t.pdf"
    write_pdf(document, pdf, tmp_path / "work")
    text = " ".join(" ".join(page.extract_text() for page in PdfReader(pdf).pages).split())
    plain = 'a #b $c d _e_ "f" \\g <h> @i // j [k] = l'  # *d* is emphasis
    assert text.count(plain) == 4, text  # the title page's fact, the paragraph, the cell and the caption


def test_math_between_dollars_is_typeset(tmp_path):
    document = Document("Title", [], sections=[Section("S", [Paragraph("so $G = max_i |x_i|$ holds")])]).number()
    pdf = tmp_path / "t.pdf"
    write_pdf(document, pdf, tmp_path / "work")
    text = " ".join(page.extract_text() for page in PdfReader(pdf).pages)
    assert "max" in text and "$" not in text and "max_i" not in text  # a subscript, not the source


def _q4_answer(tmp_path, q4, ablation):
    """The P2 Q4 answer's "what limits it" paragraph, filled from runs with these accuracies."""
    specs = [_spec("p2_q4_skip", "P2 Q4: fix", q4, 0.9, []),
             _spec("p2_ablate_nobn_kaiming", "P2 ablation", ablation, 0.9, []),
             _spec("p2_ablate_skip_default_init", "P2 ablation", [0.70, 0.70, 0.70], 0.9, [])]
    runs = Runs(specs, quick=False, out=tmp_path, workdir=tmp_path)
    answer = fill_template(SPECS / "p2_explanation.md", template_fields(runs), ["p2_q4_skip"])["p2_q4_skip"]
    return " ".join(next(p for p in answer.split("\n\n") if p.startswith("**What limits it**")).split())


def test_comparative_sentences_follow_the_numbers_they_compare(tmp_path):
    above = _q4_answer(tmp_path, [0.73, 0.731, 0.729], [0.70, 0.701, 0.699])
    below = _q4_answer(tmp_path, [0.70, 0.701, 0.699], [0.73, 0.731, 0.729])
    same = _q4_answer(tmp_path, [0.730, 0.725, 0.735], [0.731, 0.726, 0.736])
    assert "73.0% is higher than what its layers reach" in above
    assert "70.0% is lower than what its layers reach" in below
    assert "is about the same as what its layers reach" in same
    # the default-init sentence compares 70.0% with Q4's, whichever is larger
    assert "70.0%, lower than with He init" in above and "70.0%, about the same as with He init" in below
