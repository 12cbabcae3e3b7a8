"""How long `runner report` takes over a full protocol's worth of runs (PDF, HTML and Markdown).

The runs are bench/full_protocol.sh's set (every homework spec with seeds 0-2, the studies with
seed 0): made with --quick into a temporary folder unless --runs names a folder that holds them.
Quick runs carry the same files as full ones (metrics, figures, summaries), so the report's work
is the same. Each round is the whole command as a person types it, interpreter start included.

Usage: python bench/report_speed.py [--runs DIR [--quick]] [--data ARCHIVE] [--rounds 3]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runner.artifacts import completed_runs  # noqa: E402


def runs_in(folder: Path) -> int:
    """Completed runs under folder (OUT/<spec>/<run>)."""
    return sum(len(completed_runs(folder, spec.name)) for spec in folder.iterdir() if spec.is_dir())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", help="runs folder to report on (default: quick runs made first)")
    parser.add_argument("--data", help="CIFAR-10 archive, for making the quick runs")
    parser.add_argument("--quick", action="store_true", help="the runs under --runs are --quick runs")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    scratch = tempfile.TemporaryDirectory(prefix="report-speed-")
    runs = Path(args.runs) if args.runs else Path(scratch.name) / "runs"
    if not args.runs:
        extra = ["--quick", "--out", str(runs)] + (["--data", args.data] if args.data else [])
        started = time.perf_counter()
        print(f"making the full protocol's runs with --quick in {runs} ...", flush=True)
        with open(Path(scratch.name) / "runs.log", "w") as log:
            subprocess.run(["bash", str(ROOT / "bench" / "full_protocol.sh"), *extra], check=True,
                           stdout=log, stderr=subprocess.STDOUT)
        print(f"  {runs_in(runs)} runs in {time.perf_counter() - started:.0f} s", flush=True)
        args.quick = True
    outputs = [Path(scratch.name) / f"report.{kind}" for kind in ("pdf", "html", "md")]
    command = (["runner", "report", str(runs)] + (["--quick"] if args.quick else [])
               + [arg for out in outputs for arg in ("-o", str(out))])
    seconds = []
    for _ in range(args.rounds):
        started = time.perf_counter()
        done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode:
            sys.exit(f"{' '.join(command)} failed:\n{done.stderr}")
        seconds.append(time.perf_counter() - started)
    import pypdf

    pages = len(pypdf.PdfReader(outputs[0]).pages)
    print(f"runner report over {runs_in(runs)} runs -> PDF ({pages} pages), HTML, Markdown: "
          f"median {statistics.median(seconds):.1f} s (rounds: {', '.join(f'{s:.1f}' for s in seconds)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
