"""`runner report`: a results table (Markdown) and a PDF with every run's figures, from artifacts.

Numbers come from the runs' summary.json files, never typed by hand. Only completed runs count;
a report that includes --quick runs says so on its first page.
"""
from __future__ import annotations

import argparse
import json
import statistics
import textwrap
from pathlib import Path

from . import artifacts, figures
from matplotlib.backends.backend_pdf import PdfPages

plt = figures.plt


def collect(out: Path) -> dict[str, list[dict]]:
    """spec name -> summaries of its completed runs (each with its folder), oldest first."""
    runs: dict[str, list[dict]] = {}
    for spec_dir in sorted(p for p in Path(out).iterdir() if p.is_dir()):
        for run_dir in artifacts.completed_runs(out, spec_dir.name):
            try:
                summary = json.loads((run_dir / "summary.json").read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                continue
            runs.setdefault(spec_dir.name, []).append(dict(summary, run_dir=str(run_dir)))
    return runs


def latest_per_seed(summaries: list[dict], quick: bool) -> list[dict]:
    """One run per seed (the newest), of the wanted kind (quick or full protocol)."""
    by_seed = {}
    for summary in summaries:
        if bool(summary.get("quick")) == quick:
            by_seed[summary.get("seed")] = summary
    return [by_seed[seed] for seed in sorted(by_seed, key=lambda s: (s is None, s))]


def results_table(runs: dict[str, list[dict]], quick: bool = False) -> str:
    lines = ["| spec | seeds | test accuracy (mean ± sd) | per seed | seconds per run | images/s |",
             "|---|---|---|---|---|---|"]
    for name, summaries in runs.items():
        chosen = latest_per_seed(summaries, quick)
        if not chosen:
            continue
        accuracies = [s["test_accuracy"] for s in chosen]
        spread = f" ± {statistics.stdev(accuracies):.1%}" if len(accuracies) > 1 else ""
        seconds = [s["seconds"] for s in chosen if s.get("iterations")]
        speed = [s["images_per_second"] for s in chosen if s.get("images_per_second")]
        lines.append(f"| {name} | {len(chosen)} | {statistics.mean(accuracies):.1%}{spread} | "
                     + ", ".join(f"{a:.1%}" for a in accuracies) + " | "
                     + (f"{statistics.mean(seconds):.0f}" if seconds else "–") + " | "
                     + (f"{statistics.mean(speed):.0f}" if speed else "–") + " |")
    return "\n".join(lines) + "\n"


def _text_page(pdf, title: str, body: str) -> None:
    figure = plt.figure(figsize=(8.27, 11.69))
    figure.text(0.07, 0.95, title, fontsize=15, weight="bold", va="top")
    wrapped = "\n".join(textwrap.fill(line, 95) if not line.startswith("|") else line for line in body.splitlines())
    figure.text(0.07, 0.91, wrapped, fontsize=7.5, va="top", family="monospace")
    pdf.savefig(figure)
    plt.close(figure)


def _figure_page(pdf, title: str, lines: list[str], images: list[Path]) -> None:
    figure = plt.figure(figsize=(8.27, 11.69))
    figure.text(0.07, 0.96, title, fontsize=13, weight="bold", va="top")
    figure.text(0.07, 0.935, "\n".join(textwrap.fill(line, 100) for line in lines), fontsize=8, va="top")
    slots = max(1, len(images))
    top, bottom = 0.84, 0.03
    height = (top - bottom) / slots
    for i, image in enumerate(images):
        axes = figure.add_axes([0.05, top - (i + 1) * height + 0.01, 0.9, height - 0.02])
        axes.imshow(plt.imread(image))
        axes.set_axis_off()
        axes.set_title(image.name, fontsize=7)
    pdf.savefig(figure)
    plt.close(figure)


def part3_explanation(runs: dict[str, list[dict]], quick: bool) -> str | None:
    """specs/p3_explanation.md with its fields filled from the latest attack and transfer runs."""
    import re
    from types import SimpleNamespace

    attack = latest_per_seed(runs.get("p3_q1_fgsm", []), quick)
    transfer = latest_per_seed(runs.get("p3_q2_transfer", []), quick)
    if not attack or not transfer:
        return None
    template_path = Path(attack[-1]["spec_file"]).parent / "p3_explanation.md"
    if not template_path.is_file():
        return None
    template = re.sub(r"<!--.*?-->", "", template_path.read_text(), flags=re.S)  # the comment holds braces
    tables = {"fgsm": SimpleNamespace(**attack[-1]["fgsm"]), "transfer": SimpleNamespace(**transfer[-1]["transfer"])}
    return template.format_map(tables).strip()


def write_report(out: Path, pdf_path: Path, quick: bool = False) -> Path:
    runs = collect(out)
    table = results_table(runs, quick)
    markdown = ["# runner report", "",
                ("**Made from --quick smoke runs: the numbers are not results.**" if quick else
                 "Full-protocol runs (train batch 1, 2,000 iterations at batch 100, test batch)."), "", table]
    with artifacts.atomic_path(pdf_path) as tmp, PdfPages(tmp) as pdf:
        _text_page(pdf, "runner report" + (" (QUICK RUNS: not results)" if quick else ""), "\n".join(markdown[2:]))
        for name, summaries in runs.items():
            chosen = latest_per_seed(summaries, quick)
            if not chosen:
                continue
            latest = Path(chosen[-1]["run_dir"])
            spec_text = (latest / "spec.toml").read_text() if (latest / "spec.toml").exists() else ""
            question = next((l.split("=", 1)[1].strip().strip('"') for l in spec_text.splitlines()
                             if l.startswith("question")), "")
            accuracies = [s["test_accuracy"] for s in chosen]
            lines = [question, f"spec: {chosen[-1].get('spec_file', name)}",
                     f"test accuracy: {statistics.mean(accuracies):.2%} over {len(accuracies)} seed(s) "
                     + ", ".join(f"{a:.2%}" for a in accuracies),
                     f"run: {latest}"]
            pngs = sorted(latest.glob("*.png"))
            for start in range(0, max(1, len(pngs)), 3):
                _figure_page(pdf, name, lines, pngs[start:start + 3])
        explanation = part3_explanation(runs, quick)
        if explanation:
            _text_page(pdf, "Part 3: explanation (numbers filled from the runs)", explanation)
            markdown += ["", explanation]
    markdown_path = pdf_path.with_suffix(".md")
    artifacts.write_text(markdown_path, "\n".join(markdown))
    return pdf_path


def cmd_report(argv) -> int:
    parser = argparse.ArgumentParser(prog="runner report", description="Results table and PDF from run artifacts.")
    parser.add_argument("artifacts", nargs="?", default="artifacts")
    parser.add_argument("-o", "--output", default=None, help="PDF path (default: ARTIFACTS/report.pdf)")
    parser.add_argument("--quick", action="store_true", help="report the --quick runs instead of full ones")
    args = parser.parse_args(argv)
    out = Path(args.artifacts)
    pdf = Path(args.output) if args.output else out / ("report-quick.pdf" if args.quick else "report.pdf")
    write_report(out, pdf, args.quick)
    print(results_table(collect(out), args.quick))
    print(f"wrote {pdf} and {pdf.with_suffix('.md')}")
    return 0
