"""The GPU figures of issue 30, in one call of a lent machine (9 minutes at most).

Phases, in this order, each with a share of the budget (printed before it starts); a phase is
skipped when less than its minimum is left, and stopped when it overruns its share:
  step      p1_q4_crop at the full protocol, train.step "eager" then "graph": ms per step
  attack    p3_q1_fgsm on the graph step's p1_q4_crop model: the whole test set's iterative FGSM
  seeds     p1_q4_crop seeds 0-2 batched in one process (runner.training.batched) against the
            three trained one after another: time and test accuracy
  suite     `runner specs/ --jobs N --set train.step="graph"`: the whole homework as a user runs it
  compile   p1_q4_crop with train.compile = "reduce-overhead" for a few hundred steps, with torch's
            logs of graph breaks, recompiles and skipped CUDA graphs kept in OUT/compile_log.txt
Everything but the suite runs in this process (one import of torch); the suite and the compile
log run as commands. A table is printed at the end and kept, with each run's figures, in
OUT/gpu_suite.json.

Usage:  python bench/gpu_suite.py --data ARCHIVE --out DIR [--budget 540] [--jobs 8]
        python bench/gpu_suite.py --dry-run     every phase at a tiny size on the CPU, on synthetic
                                                data (checks the script, measures nothing)
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CROP, ATTACK = ROOT / "specs" / "p1_q4_crop.toml", ROOT / "specs" / "p3_q1_fgsm.toml"
# (name, share of the budget, minimum seconds to start it)
PHASES = [("step", 0.13, 40), ("attack", 0.09, 25), ("seeds", 0.2, 60), ("suite", 0.46, 60), ("compile", 0.12, 40)]


class Overrun(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float):
    """Stop the work inside after `seconds` (SIGALRM: between Python steps, so a phase ends within a step)."""
    def stop(signum, frame):
        raise Overrun(f"over its {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, max(1.0, seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Bench:
    def __init__(self, args):
        from runner.plugin_host.catalogue import Catalogue
        from runner.spec.loading import load
        from runner.suite.plan import quick_overrides

        self.args, self.catalogue, self.load, self.quick_overrides = args, Catalogue.default(), load, quick_overrides
        # The dry run: a narrow Table 1 net for a few steps (model keys last: the attack spec has its source's).
        self.size = ['device="cpu"', "train.iterations=12", "train.batch_size=50", "model.widths=[8,16,16]",
                     "model.hidden=32"] if args.dry_run else []
        self.report = {"phases": {}, "dry_run": args.dry_run}

    def spec(self, path: Path, *overrides: str, quick=False):
        base = self.quick_overrides(path, self.catalogue) if quick else []
        trains = path != ATTACK
        given = self.args.set if trains else [o for o in self.args.set if o.startswith("device")]
        return self.load(path, self.catalogue, [*base, *(self.size if trains else self.size[:1]),
                                                "plugins.visdom.enabled=false", *given, *overrides])

    def execute(self, spec, out: Path, quick=False) -> dict:
        from runner.training.flow import execute

        with contextlib.redirect_stderr(io.StringIO()):  # the runs' own lines; the table says it all
            return execute(spec, self.catalogue, out=out, data=self.args.data, quick=quick, show_progress=False).results

    # ---- the phases ----------------------------------------------------------------------
    def step(self, out: Path) -> dict:
        rows = {}
        for step in ("eager", "graph"):
            r = self.execute(self.spec(CROP, f'train.step="{step}"'), out)
            rows[step] = {"ms_per_step": round(r["seconds"] / r["iterations"] * 1e3, 3), "seconds": r["seconds"],
                          "setup_seconds": r["setup_seconds"], "test_accuracy": r["test_accuracy"]}
        return rows

    def attack(self, out: Path) -> dict:
        if not list((out / "p1_q4_crop").glob("*/summary.json")):  # the step phase did not run
            self.execute(self.spec(CROP, 'train.step="graph"'), out)
        tiny = ["data.test_limit=20", "plugins.fgsm.max_steps=5"] if self.args.dry_run else []
        r = self.execute(self.spec(ATTACK, *tiny), out)
        return {key: found(r, key) for key in ("attack_seconds", "attack_images_per_second", "attacked", "succeeded")}

    def seeds(self, out: Path) -> dict:
        from runner.training.batched import train_seeds

        seeds = (0, 1, 2)
        started = time.perf_counter()
        with contextlib.redirect_stderr(io.StringIO()):
            runs = train_seeds([self.spec(CROP, f"seed={s}") for s in seeds], self.catalogue, out=out / "batched",
                               data=self.args.data)
        batched = {"seconds": runs[0].results["seconds"], "wall_seconds": round(time.perf_counter() - started, 1),
                   "test_accuracy": [r.results["test_accuracy"] for r in runs]}
        started, alone = time.perf_counter(), []
        for s in seeds:
            alone.append(self.execute(self.spec(CROP, f"seed={s}"), out / "alone"))
        return {"batched": batched, "alone": {"seconds": round(sum(r["seconds"] for r in alone), 3),
                                              "wall_seconds": round(time.perf_counter() - started, 1),
                                              "test_accuracy": [r["test_accuracy"] for r in alone]}}

    def suite(self, out: Path, seconds: float) -> dict:
        if self.args.dry_run:  # one small spec, in the command's own process
            targets = [str(CROP), "--quick", "--jobs", "1", *[a for o in self.size for a in ("--set", o)]]
        else:
            targets = [str(ROOT / "specs"), "--jobs", str(self.args.jobs)]
        command = [sys.executable, "-m", "runner", *targets, "--set",
                   'train.step="graph"', "--data", self.args.data, "--out", str(out), "--no-progress"]
        code, took, _ = command_run(command, seconds, out.parent / "suite_log.txt")
        statuses = [json.loads(p.read_text()).get("status") for p in out.glob("*/*/status.json")]
        return {"exit_code": code, "wall_seconds": round(took, 1), "runs": len(statuses),
                "complete": statuses.count("complete")}

    def compile(self, out: Path, seconds: float) -> dict:
        iterations = 12 if self.args.dry_run else 300
        # The dry run checks the command and its parsing: compiling on the CPU alone takes a minute.
        mode = "false" if self.args.dry_run else '"reduce-overhead"'
        device = [a for o in self.size[:1] + self.size[3:] for a in ("--set", o)] if self.args.dry_run else []
        command = [sys.executable, "-m", "runner", str(CROP), "--set", f"train.compile={mode}", "--set",
                   f"train.iterations={iterations}", *device, "--data", self.args.data, "--out", str(out),
                   "--no-progress"]
        env = {"TORCH_LOGS": "graph_breaks,recompiles,perf_hints,cudagraphs"}
        code, took, log = command_run(command, seconds, out.parent / "compile_log.txt", env)
        summaries = [json.loads(p.read_text()) for p in out.glob("*/*/summary.json")]
        notable = ("skipping cudagraphs", "graph break", "recompil")
        hints = [line for line in log.splitlines() if any(k in line.lower() for k in notable)]
        s = summaries[0] if summaries else {}
        return {"exit_code": code, "iterations": iterations, "seconds": s.get("seconds"),
                "setup_seconds": s.get("setup_seconds"), "log_lines_of_note": hints[:20]}


def found(results: dict, key: str):
    """A key's value wherever summary.json nests it (a plugin's table), else None."""
    if key in results:
        return results[key]
    for value in results.values():
        if isinstance(value, dict) and found(value, key) is not None:
            return found(value, key)
    return None


def command_run(command: list[str], seconds: float, log: Path, env: dict | None = None) -> tuple[int, float, str]:
    """A command in its own process group (a timeout stops `--jobs` workers too); its output to `log`."""
    print("$", " ".join(command[1:]), flush=True)
    started = time.perf_counter()
    with open(log, "w") as sink:
        process = subprocess.Popen(command, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**os.environ, **(env or {})})
        try:
            code = process.wait(timeout=max(1.0, seconds))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            code = 124
    return code, time.perf_counter() - started, log.read_text()


def table(report: dict) -> str:
    dry = "  (DRY RUN: tiny sizes, nothing measured)" if report["dry_run"] else ""
    lines = [f"{report['device']}, torch {report['torch']}{dry}",
             f"{'phase':8} {'budget s':>8} {'took s':>7}  result"]
    for name, phase in report["phases"].items():
        r = phase.get("result") or {}
        if name == "step" and r:
            text = "  ".join(f"{k} {v['ms_per_step']:.2f} ms/step ({v['seconds']:.1f} s, acc {v['test_accuracy']:.4f})"
                             for k, v in r.items())
        elif name == "seeds" and r:
            text = "  ".join(f"{k} {v['seconds']:.1f} s train, {v['wall_seconds']:.1f} s wall, acc "
                             + "/".join(f"{a:.4f}" for a in v["test_accuracy"]) for k, v in r.items())
        elif name == "attack" and r:
            text = (f"{r['attack_seconds']} s of attack: {r['attacked']} images, {r['succeeded']} fooled, "
                    f"{r['attack_images_per_second']} images/s")
        elif r:
            text = ", ".join(f"{k} {v}" for k, v in r.items() if k != "log_lines_of_note")
        else:
            text = ""
        lines.append(f"{name:8} {phase['budget']:8.0f} {phase.get('seconds', 0):7.1f}  {phase['status']}  {text}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="CIFAR-10 archive or folder (the dry run writes synthetic data)")
    parser.add_argument("--out", type=Path, help="where the runs and gpu_suite.json go (default: a temporary folder)")
    parser.add_argument("--budget", type=float, default=540.0, help="seconds for all phases together")
    parser.add_argument("--jobs", type=int, default=8, help="the suite's runs at once (runner --jobs)")
    parser.add_argument("--phases", default=",".join(p[0] for p in PHASES), help="comma-separated, of those above")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an override for every run of the in-process phases, e.g. --set train.iterations=50 "
                             "--set 'device=\"cpu\"' (the seeds phase on a CPU)")
    parser.add_argument("--dry-run", action="store_true", help="every phase at a tiny size on the CPU")
    args = parser.parse_args()
    started = time.perf_counter()
    args.out = args.out or Path(tempfile.mkdtemp(prefix="gpu_suite-"))
    args.out.mkdir(parents=True, exist_ok=True)
    if args.dry_run:
        from runner.testing import write_synthetic_cifar

        args.data, args.budget = str(write_synthetic_cifar(args.out / "data")), min(args.budget, 240.0)
    if not args.data:
        parser.error("--data ARCHIVE is needed (or --dry-run)")
    import torch

    if args.dry_run:  # one thread: tiny steps gain nothing from two, and a shared CPU makes them wait
        torch.set_num_threads(1)
        os.environ["OMP_NUM_THREADS"] = "1"

    bench = Bench(args)
    bench.report["device"] = "cpu (dry run)" if args.dry_run else (
        torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device: cpu")
    bench.report["torch"] = torch.__version__
    chosen = args.phases.split(",")
    for name, share, minimum in PHASES:
        if name not in chosen:
            continue
        left = args.budget - (time.perf_counter() - started)
        budget = min(share * args.budget, left)
        phase = bench.report["phases"][name] = {"budget": round(budget, 1)}
        if budget < (5 if args.dry_run else minimum):
            phase["status"] = f"skipped ({left:.0f} s left, needs {minimum})"
            print(f"== {name}: {phase['status']}", flush=True)
            continue
        print(f"== {name}: budget {budget:.0f} s of {left:.0f} s left", flush=True)
        began, folder = time.perf_counter(), args.out / name
        try:
            if name in ("suite", "compile"):
                phase["result"] = getattr(bench, name)(folder, budget)
            else:
                with time_limit(budget):
                    phase["result"] = getattr(bench, name)(folder)
            phase["status"] = "done"
        except Overrun as exc:
            phase["status"] = f"stopped: {exc}"
        except Exception as exc:  # one phase's failure leaves the others' figures
            phase["status"] = f"failed: {type(exc).__name__}: {exc}"
        phase["seconds"] = round(time.perf_counter() - began, 1)
        print(f"   {phase['status']} in {phase['seconds']} s: {json.dumps(phase.get('result'))}", flush=True)
        (args.out / "gpu_suite.json").write_text(json.dumps(bench.report, indent=1))
    print("\n" + table(bench.report), flush=True)
    print(f"\n{time.perf_counter() - started:.0f} s in all; figures in {args.out / 'gpu_suite.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
