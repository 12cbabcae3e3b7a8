"""`runner report` from --quick runs of every spec: the typeset PDF (no Markdown syntax, every
figure embedded, the answers' numbers the runs' numbers, at most 25 pages), the HTML page, and the
Markdown table; a user's own spec with its own plugin gets a clean section."""
import json
import re
import shutil
import statistics
import subprocess
from pathlib import Path

import pytest
from pypdf import PdfReader

from runner.cli import main
from runner.plugin_host.catalogue import Catalogue
from runner.report import collect
from runner.spec import loading


def load(spec_file, overrides=()):
    return loading.load(spec_file, Catalogue.default(), overrides)

SPECS = Path(__file__).resolve().parents[1] / "specs"


@pytest.fixture(scope="module")
def reported(tmp_path_factory, quick_suite):
    runs, code = quick_suite
    # 5: a spec's smoke run diverged (a deep net at the full learning rate, say); the report is made
    # from the runs that completed, and the tests below read those they need.
    assert code in (0, 5)
    out = tmp_path_factory.mktemp("report")
    pdf, html = out / "report.pdf", out / "report.html"
    assert main(["report", str(runs), "-o", str(pdf), "-o", str(html), "--quick"]) == 0
    return runs, pdf, html


def pdf_text(pdf: Path) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(pdf).pages)


def summary(out: Path, name: str) -> dict:
    return json.loads(next((out / name).glob("*/summary.json")).read_text())


def test_the_pdf_is_typeset_not_markdown(reported):
    _, pdf, _ = reported
    text = pdf_text(pdf)
    for syntax in ("|---", "**", "###", "`"):
        assert syntax not in text, syntax
    assert "Made from --quick smoke runs" in PdfReader(pdf).pages[0].extract_text()
    # The homework's sections and the studies beyond it (about half a page each), appendix included.
    assert len(PdfReader(pdf).pages) <= 30


def test_no_stray_files_beside_the_outputs(reported):
    _, pdf, html = reported
    assert sorted(p.name for p in pdf.parent.iterdir()) == ["report.html", "report.pdf"]


def test_sections_follow_the_questions_then_the_other_studies(reported):
    _, pdf, _ = reported
    text = " ".join(pdf_text(pdf).split())
    questions = ["P1 Q1:", "P1 Q2:", "P1 Q3:", "P1 Q4:", "P2 Q1:", "P2 Q2:", "P2 Q3:", "P2 Q4:", "P3 Q1:", "P3 Q2:",
                 "P2 fix:", "Appendix"]
    body = text[text.index("1. Overview", text.index("Contents") + 200):]  # after the table of contents
    positions = [body.index(q) for q in questions if q in body]
    assert len(positions) >= 10 and positions == sorted(positions)


def test_every_figure_the_sections_name_is_embedded(reported):
    _, pdf, _ = reported
    reader = PdfReader(pdf)
    text = pdf_text(pdf)
    named = set(re.findall(r"Figure (\d+)\.", text))
    embedded = sum(len(page.images) for page in reader.pages)
    # Typst embeds byte-identical images once (two smoke runs' confusion matrices can be).
    assert len(named) >= 20 and len(named) - 2 <= embedded <= len(named)
    assert named == {str(n) for n in range(1, len(named) + 1)}


def test_the_answers_numbers_are_the_runs_numbers(reported):
    out, pdf, _ = reported
    text = " ".join(pdf_text(pdf).split())
    crop, flip = summary(out, "p1_q4_crop"), summary(out, "p1_q3_flip")
    assert f"Test accuracy is {crop['test_accuracy']:.1%} (1 seed)" in text
    assert f"{flip['test_accuracy']:.1%}; {crop['test_accuracy'] - flip['test_accuracy']:+.1%})" in text
    # The classes said to gain most are the per-class results' largest gains.
    gains = sorted(((a - b, name) for name, a, b in zip(crop["per_class"]["classes"], crop["per_class"]["accuracy"],
                                                         flip["per_class"]["accuracy"])), reverse=True)
    change, name = gains[0]
    if change > 0:
        assert f"gained most are {name} ({change * 100:+.1f} points)" in text
    deep = summary(out, "p2_q3_deep_plain")["grad_magnitude"]["ratio_first_over_last"]
    assert f"G {deep['1']:.2f} times the classifier's" in text
    fgsm = summary(out, "p3_q1_fgsm")["fgsm"]
    assert f"{fgsm['source_spec']} ({fgsm['source_test_accuracy']:.1%})" in text  # the attack's table


def test_attacks_do_not_claim_their_source_models_accuracy(reported):
    out, pdf, _ = reported
    text = " ".join(pdf_text(pdf).split())
    overview = text[text.index("Table 1."):text.index("Table 2.")]
    fooled = summary(out, "p3_q1_fgsm")["fgsm"]["success_rate"]
    assert f"P3 Q1 the attack on the Part 1 net 1 fooled {fooled:.1%}" in overview


def test_per_class_results_are_recorded_and_drawn(reported):
    out, _, _ = reported
    raw = summary(out, "p1_q1_raw")
    matrix = raw["per_class"]["confusion_matrix"]
    assert len(matrix) == 10 and sum(map(sum, matrix)) == 500  # --quick's test images
    correct = sum(matrix[i][i] for i in range(10))
    assert correct / 500 == pytest.approx(raw["test_accuracy"], abs=1e-6)
    assert raw["per_class"]["accuracy"][3] == pytest.approx(matrix[3][3] / sum(matrix[3]), abs=1e-5)
    assert next((out / "p1_q1_raw").glob("*/confusion_matrix.png")).stat().st_size > 0
    assert not list((out / "p3_q1_fgsm").glob("*/confusion_matrix.png"))  # its model is another run's


def test_markdown_table_on_stdout_and_markdown_file(reported, capsys):
    out, _, _ = reported
    path = out.parent / "again" / "report.md"
    assert main(["report", str(out), "-o", str(path), "--quick"]) == 0
    printed = capsys.readouterr().out
    accuracy = summary(out, "p1_q2_normalize")["test_accuracy"]
    assert f"| p1_q2_normalize | 1 | {accuracy:.1%} |" in printed
    assert f"| p3_q1_fgsm | 1 | – (fooled {summary(out, 'p3_q1_fgsm')['fgsm']['success_rate']:.1%}) |" in printed
    markdown = path.read_text()
    assert "## P1 Q2: normalize images" in markdown
    # The figures drawn for the report are files beside it, linked relatively, not embedded.
    assert "](report-figures/training_p1_q1_raw.png)" in markdown and "data:image" not in markdown
    assert (path.parent / "report-figures" / "training_p1_q1_raw.png").is_file()
    assert "runner-report-" not in markdown


def test_the_html_renders_with_every_image_loaded(reported, tmp_path):
    _, _, html = reported
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    page = html.read_text()
    assert "src=\"data:image/png;base64," in page and "<img src=\"/" not in page  # self-contained
    # The page has no script; this copy reports, once loaded, which images did not load.
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", "<script>window.addEventListener('load', () => {"
                                  "const bad = [...document.images].filter(i => !i.complete || !i.naturalWidth);"
                                  "document.body.setAttribute('data-images', "
                                  "document.images.length + ' ' + bad.length);"
                                  "});</script></body>"))
    result = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                             f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
                             "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
                            capture_output=True, text=True, timeout=120)
    loaded = re.search(r'data-images="(\d+) (\d+)"', result.stdout)
    assert loaded, result.stderr[-2000:]
    images, broken = map(int, loaded.groups())
    assert images >= 20 and broken == 0
    console = [line for line in result.stderr.splitlines() if "CONSOLE" in line]
    assert not console, console


USER_PLUGIN = '''
from runner import hookimpl


@hookimpl
def report_sections(runs, specs):
    from runner.report import Paragraph, Section
    return [Section(spec=spec.name, blocks=[Paragraph(f"My plugin saw {len(spec.runs)} run.")],
                    fields={"note": "from my plugin"}) for spec in specs]
'''


def _run_folder(out: Path, name: str, run_id: str, spec_toml: str, **summary) -> Path:
    run_dir = out / name / run_id
    run_dir.mkdir(parents=True)
    (run_dir / "status.json").write_text(json.dumps({"status": "complete"}))
    (run_dir / "spec.toml").write_text(spec_toml)
    (run_dir / "metrics.csv").write_text("iteration,loss,batch_accuracy,running_accuracy\n1,2,0.1,0.1\n2,2,0.2,0.2\n")
    summary = dict({"spec": name, "quick": False, "iterations": 2000, "seconds": 1, "test_accuracy": 0.5}, **summary)
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


def test_a_users_spec_with_its_own_plugin_gets_a_clean_section(tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "mine.py").write_text(USER_PLUGIN)
    spec_file = folder / "my_study.toml"
    spec_file.write_text(f'extends = "{SPECS / "p1_q1_raw.toml"}"\nquestion = "My study: does it learn?"\n\n'
                         '[plugins.mine]\npath = "mine.py"\n')
    (folder / "my_explanation.md").write_text("## my_study\n\nIt reaches {my_study.accuracy}, {my_study.note}.\n")
    out = tmp_path / "artifacts"
    _run_folder(out, "my_study", "20260101-000000-s0", load(spec_file).dumps(), spec_file=str(spec_file), seed=0,
                test_accuracy=0.625)
    pdf = tmp_path / "report.pdf"
    assert main(["report", str(out), "-o", str(pdf)]) == 0
    err = capsys.readouterr().err
    assert "left out" not in err and "warning" not in err.lower() and "cannot" not in err, err
    text = " ".join(pdf_text(pdf).split())
    assert "My study: does it learn?" in text and "My plugin saw 1 run." in text
    assert "It reaches 62.5% (1 seed), from my plugin." in text
    assert "Architecture of my_study" not in text  # a study's layers stay out; its setup row says what differs


def test_full_report_leaves_out_runs_not_made_as_their_spec_file_says(tmp_path, capsys):
    spec_file = SPECS / "p1_q1_raw.toml"

    def spec(*overrides):
        return load(spec_file, overrides=list(overrides)).dumps()

    out = tmp_path / "artifacts"
    runs = [(0, "20260101-000000-s0", spec("seed=0"), 0.60),
            (0, "20260102-000000-s0", spec("seed=0", "train.iterations=12"), 0.11),  # newer, but --set
            (1, "20260101-000000-s1", spec("seed=1", 'device="cpu"'), 0.61),  # --device is no protocol
            (2, "20260101-000000-s2", spec("seed=2"), 0.62),
            (3, "20260101-000000-s3", spec("seed=3", "train.lr=0.1"), 0.13)]
    for seed, run_id, toml, accuracy in runs:
        _run_folder(out, "p1_q1_raw", run_id, toml, spec_file=str(spec_file), seed=seed, test_accuracy=accuracy,
                    code_version="old", final_running_train_accuracy=1.0, parameters=145770)
    pdf = tmp_path / "report.pdf"
    assert main(["report", str(out), "-o", str(pdf)]) == 0
    captured = capsys.readouterr()
    assert "| p1_q1_raw | 3 | 61.0% ± 1.0% | 60.0%, 61.0%, 62.0% |" in captured.out  # seed 0: its older run
    assert "p1_q1_raw/20260102-000000-s0 (train.iterations = 12 (spec file: 2000))" in captured.err
    assert "p1_q1_raw/20260101-000000-s3 (train.lr = 0.1 (spec file: 0.05))" in captured.err
    text = " ".join(pdf_text(pdf).split())
    assert "Test accuracy 61.0% ± 1.0% (3 seeds)" in text
    assert "left out 2 run(s) whose spec differs" in text and "p1_q1_raw/20260101-000000-s3" in text
    assert statistics.mean([0.60, 0.61, 0.62]) == pytest.approx(0.61)


def test_an_empty_folder_and_a_wrong_suffix_say_what_to_type(tmp_path, capsys):
    (tmp_path / "runs").mkdir()
    assert main(["report", str(tmp_path / "runs")]) != 0
    assert "no completed full-protocol runs" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "runs"), "-o", str(tmp_path / "report.docx")]) != 0
    assert "name it .pdf, .html or .md" in capsys.readouterr().err
    assert collect(tmp_path / "runs") == {}


def test_every_template_field_names_a_key_the_runs_or_plugins_write(reported, tmp_path):
    """A quick run may leave a value empty (None: nothing fooled in 20 steps); a name that no run
    and no plugin writes is a template error."""
    import string

    from runner.plugin_host.catalogue import Catalogue
    from runner.report import make_runs
    from runner.report.build import plugin_sections
    from runner.report.templates import sections, template_fields

    out, _, _ = reported
    catalogue = Catalogue.default()
    runs = make_runs(out, True, tmp_path, catalogue)
    added = {}
    for section in plugin_sections(runs, catalogue):
        if section.spec:
            added.setdefault(section.spec, {}).update(section.fields)
    fields = template_fields(runs, added)
    formatter, checked = string.Formatter(), 0
    for template in SPECS.glob("*_explanation.md"):
        for spec, body in sections(template).items():
            assert (SPECS / f"{spec}.toml").is_file(), f"{template.name}: ## {spec} is no spec"
            if spec not in runs:
                continue  # its smoke run did not complete
            for _, name, _, _ in formatter.parse(body):
                if name and name.partition(".")[0] in runs:
                    try:
                        formatter.get_field(name, (), fields)  # KeyError/AttributeError: no such key
                    except AttributeError as exc:
                        if "'NoneType'" not in str(exc):  # a table a smoke run left empty (null) is no error
                            raise
                    except (KeyError, TypeError):
                        if "[" not in name:  # an index a 12-step run has no entry for (iteration 100)
                            raise
                    checked += 1
    assert checked > 60
