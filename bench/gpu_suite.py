"""Full-protocol timings on one CUDA GPU, in one go (a lent GPU machine's time is short).

Phases, each with a share of the time budget so a slow phase cannot starve the report:
  suite     `runner specs/`: every spec once (seed 0), the command a user types, timed as a whole
  step_ops  bench/step_ops.py --device cuda: kernel launches per training step, by phase
  settings  p1_q4_crop compiled with torch.compile's "reduce-overhead" (each step replayed as a
            CUDA graph), in fp32 instead of bf16, and compiled in the default mode
  seeds     every training spec of Parts 1 and 2 again with seeds 1 and 2 (same --out: 3-seed means)
  variants  a wider all-conv net for Part 2 Q1, 3 seeds
Each phase's runs go under OUT/<phase>/ and are packed into OUT/<phase>.tar.gz as soon as the
phase ends (without adversarial sets and checkpoints), with a table printed and OUT/gpu_suite.json.

Usage: python bench/gpu_suite.py --data ARCHIVE --out DIR [--budget SECONDS]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WIDE = {"p2_q1_allconv_w128": "[128, 256, 512]"}  # the spec itself is [64, 128, 256]


def runner(*args, out: Path, data: str, timeout: float) -> tuple[int, float]:
    command = [sys.executable, "-m", "runner", *args, "--data", data, "--out", str(out), "--no-progress"]
    print("$", " ".join(command[1:]), flush=True)
    started = time.perf_counter()
    # Its own process group, so a timeout also stops the processes of `runner --jobs`.
    process = subprocess.Popen(command, cwd=ROOT, start_new_session=True)
    try:
        code = process.wait(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        code = 124
    return code, time.perf_counter() - started


def bench(script: str, *args: str, out: Path, timeout: float) -> int:
    """Another bench/ script on this machine; its output is printed and kept in OUT/<script>.txt."""
    command = [sys.executable, str(ROOT / "bench" / script), *args]
    print("$", " ".join(command[1:]), flush=True)
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=max(1.0, timeout))
        text, code = done.stdout + done.stderr[-2000:], done.returncode
    except subprocess.TimeoutExpired:
        text, code = "timed out", 124
    (out / f"{Path(script).stem}.txt").write_text(text)
    print(text, flush=True)
    return code


def summaries(folder: Path, started: float) -> list[dict]:
    """One row per run; `began` is when its folder appeared, in seconds after the phase began
    (what is left of a run's process time beyond setup_seconds + seconds + eval is its imports)."""
    rows = []
    for path in sorted(folder.glob("*/*/summary.json")):
        s = json.loads(path.read_text())
        row = {key: s.get(key) for key in ("spec", "seed", "test_accuracy", "seconds", "eval_seconds", "setup_seconds",
                                           "wall_seconds", "images_per_second", "precision", "compiled", "device")}
        row["began"] = round((path.parent / "spec.toml").stat().st_mtime - started, 1)
        rows.append(row)
    return rows


def pack(folder: Path, target: Path, models: bool) -> None:
    """The phase's run folders, without adversarial sets and checkpoints (and models unless asked)."""
    skip = {"adversarial_set.pt", "checkpoint.pt", "universal_perturbation.pt"} | (set() if models else {"model.pt"})
    with tarfile.open(target, "w:gz") as tar:
        tar.add(folder, arcname=folder.name, filter=lambda info: None if Path(info.name).name in skip else info)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--budget", type=float, default=450.0, help="seconds for all phases together")
    parser.add_argument("--jobs", type=int, default=8, help="runs at once (runner --jobs)")
    args = parser.parse_args()
    deadline = time.perf_counter() + args.budget
    left = lambda share: min(share * args.budget, deadline - time.perf_counter())
    report = {"phases": {}}

    import torch

    report["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
    report["torch"] = torch.__version__
    print(f"device {report['device']}, torch {report['torch']}", flush=True)

    def phase(name: str, share: float, commands) -> None:
        folder = args.out / name
        codes, seconds, began = [], 0.0, time.time()
        for command in commands:
            code, took = runner(*command, out=folder, data=args.data, timeout=left(share) - seconds)
            codes.append(code)
            seconds += took
        report["phases"][name] = {"exit_codes": codes, "wall_seconds": round(seconds, 1), "runs": summaries(folder, began)}
        (args.out / "gpu_suite.json").write_text(json.dumps(report, indent=1))
        if folder.exists():
            pack(folder, args.out / f"{name}.tar.gz", models=False)
        print(f"\n== {name}: wall {seconds:.1f} s, exit codes {codes}", flush=True)
        for row in report["phases"][name]["runs"]:
            print(f"  {row['spec']:28} seed {row['seed']}  acc {row['test_accuracy']:.4f}  began {row['began']:6.1f} s"
                  f"  setup {row['setup_seconds'] or 0:5.1f} s  train {row['seconds']:7.1f} s  eval {row['eval_seconds']:5.1f} s"
                  f"  run {row['wall_seconds'] or 0:6.1f} s  {row['images_per_second'] or 0:8.0f} img/s  "
                  f"{row['precision']}{compiled(row)}", flush=True)

    def compiled(row: dict) -> str:
        mode = row["compiled"]
        return "" if not mode else " compiled" if mode is True else f" compiled ({mode})"

    jobs = ["--jobs", str(args.jobs)] if args.jobs > 1 else []
    phase("suite", 0.45, [["specs/", *jobs]])
    # Kernel launches per training step, by phase: what bounds a small net's step on a GPU.
    report["step_ops_exit_code"] = bench("step_ops.py", "--device", "cuda", "--data", args.data, out=args.out,
                                         timeout=left(0.05))
    # reduce-overhead replays each step as a CUDA graph: the remedy for launch-bound steps, so it
    # comes right after the suite; seeds and variants were timed by earlier GPU sessions already.
    crop = "specs/p1_q4_crop.toml"
    phase("settings", 0.25, [[crop, "--set", 'name="p1_q4_crop_cudagraphs"', "--set", 'train.compile="reduce-overhead"'],
                             [crop, "--set", 'name="p1_q4_crop_fp32"', "--set", 'train.precision="fp32"'],
                             [crop, "--set", 'name="p1_q4_crop_compiled"', "--set", "train.compile=true"]])
    training = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "specs").glob("p[12]_*.toml"))
    phase("seeds", 0.15, [[*training, "--seeds", "1,2", *jobs]])
    phase("variants", 0.1, [["specs/p2_q1_allconv.toml", "--seeds", "0,1,2", "--set", f'name="{name}"',
                             "--set", f"model.widths={widths}", *jobs] for name, widths in WIDE.items()])
    return 0


if __name__ == "__main__":
    sys.exit(main())
