"""The example report travels with the repository: every figure and link of specs/figures/report.md
and report.html resolves inside the checkout (the runs behind it keep their light files in
artifacts/example), and it names no machine or absolute folder."""
import re
import subprocess
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ROOT / "specs" / "figures"


def _local_targets(text: str) -> list[str]:
    markdown = re.findall(r"\]\(([^)\s]+)\)", text)
    html = re.findall(r'(?:src|href)="([^"]+)"', text)
    return [t for t in markdown + html if not re.match(r"^(data:|https?:|mailto:|#)", t)]


@pytest.mark.parametrize("name", ["report.md", "report.html"])
def test_every_link_of_the_example_report_resolves_in_the_checkout(name):
    text = (FIGURES / name).read_text()
    targets = _local_targets(text)
    if name == "report.md":
        assert len(targets) >= 20  # the figures are links to files, not embedded
    for target in targets:
        path = (FIGURES / unquote(target)).resolve()
        assert path.is_file(), f"{name} links {target}, which is not in the checkout"
        assert path.is_relative_to(ROOT), f"{name} links {target}, outside the repository"


def test_the_example_report_names_no_machine_or_absolute_folder():
    for name in ("report.md", "report.html"):
        text = (FIGURES / name).read_text()
        assert not re.search(r"(?<![\w.])/(work|home|tmp|root|farm)/", text), name
        assert "../../../" not in text, name


def test_the_example_runs_keep_their_light_files_and_no_weights():
    runs = [p.parent for p in (ROOT / "artifacts" / "example").glob("*/*/summary.json")]
    assert len(runs) >= 30
    for run in runs:
        assert (run / "spec.toml").is_file() and (run / "status.json").is_file()
    tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files", "artifacts/example"], capture_output=True, text=True)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    heavy = [f for f in tracked.stdout.split() if f.endswith((".pt", ".jsonl"))]
    assert not heavy, f"weights or recordings tracked: {heavy[:3]}"
