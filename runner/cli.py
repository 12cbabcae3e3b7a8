"""Command line: argument parsing only; the work happens in run.py and friends.

runner SPEC... [options]      train and evaluate each spec (a folder means every spec in it)
runner validate SPEC...       check specs without running them
runner plugins                list every plugin, its origin and its hooks, models and transforms
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from .errors import DataError, DivergedError, RunnerError, SpecError
from .visdom_server import cmd_visdom

EXIT_CODES = """exit codes: 0 success; 1 other runner error; 2 bad spec or option; 3 data missing or corrupt;
4 a plugin failed; 5 training diverged (NaN/inf loss); 130 interrupted"""


def _run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runner", description="Train and evaluate CIFAR-10 experiment specs (TOML).",
        epilog="Other commands: 'runner validate SPEC...', 'runner plugins', 'runner resume RUN_DIR', "
               "'runner report [ARTIFACTS]', 'runner visdom'.\n" + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("specs", nargs="+", metavar="SPEC",
                        help="spec files, or a folder of specs: the suite, run in dependency order, skipping "
                             "specs whose latest completed run used the same resolved spec and code, unless a "
                             "spec they require is rerun or has run since")
    parser.add_argument("--data", metavar="PATH",
                        help="CIFAR-10: a folder holding cifar-10-batches-py or an archive (.tar.gz/.tar.xz); "
                             "overrides RUNNER_DATA and the spec's data.root; default: a per-user cache, "
                             "downloaded when missing")
    parser.add_argument("--out", metavar="DIR", default="artifacts", help="where run folders go (default: artifacts)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="override the spec's device")
    parser.add_argument("--seed", type=int, help="override the spec's seed")
    parser.add_argument("--seeds", type=_seed_list, metavar="N,N,...",
                        help="run each spec once per seed, e.g. --seeds 0,1,2 (mean and spread printed)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a spec value, e.g. --set train.lr=0.05 (value read as TOML); repeatable")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: a few iterations on a small subset (for tests and a first look)")
    parser.add_argument("--with-deps", action="store_true",
                        help="first run the specs a spec requires (its `requires` key) that have no completed "
                             "run yet, with the same --quick, --data and --out")
    parser.add_argument("--force", action="store_true",
                        help="with a folder of specs: rerun specs whose latest run is up to date")
    parser.add_argument("--resume", action="store_true",
                        help="continue the latest interrupted or failed run of each spec from its checkpoint, if "
                             "it was made from the same spec, else start afresh (or: runner resume RUN_DIR)")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="run up to N specs at once in N worker processes, a spec starting once those it "
                             "requires are done (a GPU is mostly idle under one small run; on a CPU, N processes "
                             "share its cores)")
    parser.add_argument("--nproc-per-node", type=int, default=1, metavar="N",
                        help="data-parallel training of each spec in N processes (ignite.distributed: gloo on "
                             "CPU, nccl with one GPU per process); each takes batch_size / N images of every batch")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bar (default: when stderr is a terminal)")
    return parser


def expand_specs(paths) -> list[Path]:
    """Spec files in the order given; a folder contributes its *.toml files sorted, base/ left out."""
    out = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(path.glob("*.toml"))
            if not found:
                raise SpecError(f"no spec files (*.toml) in folder {path}")
            out += found
        else:
            out.append(path)
    return out


def cmd_run(argv) -> int:
    args = _run_parser().parse_args(argv)
    workers = []
    if args.jobs > 1 and args.nproc_per_node <= 1:
        from .parallel import start_workers

        # Started before the imports and spec loading below, so that their imports overlap ours.
        runs = len(expand_specs(args.specs)) * len(args.seeds or [None])
        workers = start_workers(args.jobs if args.with_deps else min(args.jobs, runs), args.jobs)
    try:
        return _run_specs(args, workers)
    finally:
        for worker in workers:  # unused when there was one run or none (run_in_processes stops those it took)
            worker.stop(interrupt=True)
            worker.process.wait()


def _run_specs(args, workers: list) -> int:
    from . import artifacts, run, spec as spec_module
    from .plugins import Catalogue

    overrides = list(args.overrides)
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if args.device:
        overrides.append(f'device="{args.device}"')
    catalogue = Catalogue.default()
    seeds = [[f"seed={seed}"] for seed in args.seeds] if args.seeds else [[]]
    paths = expand_specs(args.specs)
    # Validate everything before the first run starts: a typo in the last spec fails at once.
    quick = lambda path: quick_overrides(path, catalogue) if args.quick else []
    specs = [spec_module.load(path, catalogue, quick(path) + overrides + seed) for path in paths for seed in seeds]
    spec_module.check_overrides_used(specs, args.overrides)
    if args.with_deps:
        missing = [path for path in dependencies(specs, catalogue) if path not in [p.resolve() for p in paths]
                   and artifacts.latest_run(args.out, spec_module.load(path, catalogue).name, args.quick) is None]
        # The user's --set is for the specs named, but where they run (--device) holds for all, as
        # the --jobs workers get it.
        device = [f'device="{args.device}"'] if args.device else []
        specs = [spec_module.load(path, catalogue, quick(path) + device) for path in missing] + specs
    order = topological([spec.path.resolve() for spec in specs], catalogue)
    specs.sort(key=lambda spec: order.index(spec.path.resolve()))  # stable: seeds keep their order
    # A folder of specs is a suite: specs whose latest completed run used the same resolved spec
    # and code, and the models of the specs they require as they are now, are skipped unless --force.
    suite = any(Path(p).is_dir() for p in args.specs) and not args.force
    finished, todo = [], []
    for spec in specs:
        done = artifacts.latest_run(args.out, spec.name, args.quick, seed=spec["seed"]) if suite else None
        if done is not None and artifacts.read_summary(done).get("fingerprint") == run.fingerprint(spec):
            why = outdated_by(spec, done, {s.name for s in todo}, args.out, args.quick)
            if why is None:
                print(f"[{spec.name}] up to date: {done} (--force reruns it)", file=sys.stderr)
                finished.append(("skipped", spec, artifacts.read_summary(done)))
                continue
            print(f"[{spec.name}] reruns: {why}", file=sys.stderr)
        todo.append(spec)
    from .distributed import launched_by_torchrun

    if args.nproc_per_node > 1 or launched_by_torchrun():
        failures = _run_data_parallel(todo, args, finished)
    elif args.jobs > 1 and len(todo) > 1:
        from .parallel import run_in_processes

        failures = run_in_processes(todo, args, finished, started=workers)
    else:
        failures = _run_in_turn(todo, args, catalogue, finished, alone=len(specs) == 1)
    if len(finished) > 1:
        print_table(finished)
    if failures:
        first = next(iter(failures.values()))
        print(f"runner: {len(failures)} of {len(specs)} runs did not complete: {', '.join(failures)}", file=sys.stderr)
        return first.exit_code
    return 0


def _run_data_parallel(specs, args, finished: list) -> dict:
    """Each spec in turn, each trained data-parallel (ignite.distributed): by args.nproc_per_node
    processes started here, or by the processes torchrun started, this one among them."""
    from . import distributed

    if distributed.launched_by_torchrun():
        if args.jobs > 1 or args.nproc_per_node > 1:
            raise RunnerError("under torchrun, its processes train one spec at a time together (torchrun's "
                              "--nproc-per-node sets how many per machine): drop runner's --jobs and --nproc-per-node")
        summaries = distributed.execute_under_torchrun(specs, out=args.out, data_source=args.data, quick=args.quick,
                                                       resume=args.resume)
        finished += [("ran", spec, summary) for spec, summary in zip(specs, summaries)]
        return {}
    if args.jobs > 1 or args.resume:
        raise RunnerError("--nproc-per-node runs one spec at a time and from the start: drop --jobs and --resume")
    for spec in specs:
        summary = distributed.execute_distributed(spec, args.nproc_per_node, out=args.out, data_source=args.data,
                                                  quick=args.quick)
        finished.append(("ran", spec, summary))
    return {}


def _run_in_turn(specs, args, catalogue, finished: list, alone: bool) -> dict:
    """Run specs one after another in this process; returns {spec name: error} for those that failed."""
    from . import artifacts, run

    failures = {}
    for spec in specs:
        if skip_if_blocked(spec, required_names(spec), failures, finished):
            continue
        try:
            # Only this seed's and this mode's runs: a --seeds run resumes each seed from its own folder.
            unfinished = (artifacts.unfinished_runs(args.out, spec.name, seed=spec["seed"], quick=bool(args.quick))
                          if args.resume else [])
            # Resuming reloads the run's own spec.toml: one made from another spec (a --set since
            # changed, say) would silently run that spec, not the one asked for.
            differs = spec_differences(unfinished[-1], spec, catalogue) if unfinished else []
            if differs:
                print(f"[{spec.name}] not resuming {unfinished[-1]}: it was made from a different spec "
                      f"(differing: {', '.join(differs)}; `runner resume {unfinished[-1]}` continues it as it was); "
                      f"starting a fresh run", file=sys.stderr)
            if unfinished and not differs:
                result = run.resume(unfinished[-1], catalogue, data_source=args.data, show_progress=args.progress)
            else:
                result = run.execute(spec, catalogue, out=args.out, data_source=args.data, quick=args.quick,
                                     show_progress=args.progress)
        except Exception as exc:
            # Every spec was validated before the first run, so a SpecError here is one run's (a
            # plugin's check of its model); missing data would stop every later run too.
            if alone or isinstance(exc, DataError):
                raise
            # One diverged or broken run must not cost the rest of a suite; the exit code still tells,
            # and its status.json keeps the traceback. --jobs workers behave the same.
            print(f"[{spec.name}] {type(exc).__name__}: {exc}; going on with the other specs", file=sys.stderr)
            failures[spec.name] = exc if isinstance(exc, RunnerError) else RunnerError(f"{type(exc).__name__}: {exc}")
            finished.append((failure_status(failures[spec.name].exit_code), spec, {}))
            continue
        finished.append(("ran", spec, result.results))
    return failures


def outdated_by(spec, done: Path, rerun: set[str], out, quick: bool) -> str | None:
    """Why a spec whose latest run `done` has its fingerprint must run again, or None: a spec it
    requires is rerun now (any seed: one it may fall back to), or the run of it that the source
    plugins would take now (artifacts.source_run: its own seed's, else any seed's) started
    after `done`, which used an older model. `rerun`: the specs this invocation runs before it; it
    holds those rerun for this reason too, so a rerun reaches every spec that needs it, however
    indirectly."""
    from . import artifacts

    required = required_names(spec)
    if required & rerun:
        return f"{', '.join(sorted(required & rerun))} {'is' if len(required & rerun) == 1 else 'are'} rerun"
    for name in sorted(required):
        latest = artifacts.source_run(out, name, quick, spec["seed"])
        if latest is not None and artifacts.started_after(latest, done):
            return f"{name} ran after it ({latest} is newer than {done.name})"
    return None


def spec_differences(run_dir, spec, catalogue) -> list[str]:
    """The keys in which the spec an unfinished run was made from (its spec.toml, as resuming loads
    it) differs from `spec`; none means resuming it runs `spec`. The code is not compared: resuming
    after fixing what crashed a run is what resuming is for."""
    import tomllib

    from . import spec as spec_module

    path = Path(run_dir) / "spec.toml"
    try:
        return [key for key, _, _ in spec_module.differences(spec_module.load(path, catalogue).values, spec.values)]
    except RunnerError:  # not a valid spec now (a plugin's check refuses it, say): its keys as written
        try:
            return ([key for key, _, _ in spec_module.differences(tomllib.loads(path.read_text()), spec.values)]
                    or [f"{path} is invalid"])
        except (OSError, ValueError):
            return [f"{path} is unreadable"]


def required_names(spec) -> set[str]:
    """The names of the specs `spec` requires (a spec's name is its file's stem)."""
    return {Path(p).stem for p in spec["requires"]}


def skip_if_blocked(spec, required: set[str], failures: dict, finished: list) -> bool:
    """Mark `spec` not run when a spec it requires failed; says whether it did."""
    blocked = sorted(required & set(failures))
    if blocked:
        print(f"[{spec.name}] not run: it needs {', '.join(blocked)}, whose run failed", file=sys.stderr)
        failures[spec.name] = RunnerError(f"needs {', '.join(blocked)}")
        finished.append(("not run", spec, {}))
    return bool(blocked)


def failure_status(exit_code: int) -> str:
    return "diverged" if exit_code == DivergedError.exit_code else "failed"


def topological(paths: list[Path], catalogue) -> list[Path]:
    """The given spec files ordered so that every spec comes after those it requires."""
    return [p for p in dependencies_of(paths, catalogue) if p in paths]


def quick_overrides(path, catalogue) -> list[str]:
    """--quick's overrides: the run's (an evaluate-only spec stays evaluate-only), then each enabled
    plugin's settings that name a quick value (an attack's step cap, say)."""
    import json

    from . import run, spec as spec_module

    table, _, _ = spec_module.read(path)
    keep_zero = table.get("train", {}).get("iterations") == 0
    overrides = [o for o in run.QUICK if not (keep_zero and o.startswith("train.iterations="))]
    catalogue.add_spec_files(Path(path), table)
    for name, settings in table.get("plugins", {}).items():
        if isinstance(settings, dict) and settings.get("enabled", True):
            overrides += [f"plugins.{name}.{key}={json.dumps(setting.quick)}"  # JSON scalars are TOML too
                          for key, setting in catalogue.settings_of(name).items() if setting.quick is not None]
    return overrides


def dependencies(specs, catalogue) -> list[Path]:
    """Every spec file the given specs require, transitively, each before the specs needing it."""
    return dependencies_of([s.path.resolve() for s in specs], catalogue, include_roots=False)


def dependencies_of(paths, catalogue, include_roots=True) -> list[Path]:
    """The spec files (and, with include_roots, the given ones) in an order where requirements come first."""
    from . import spec as spec_module

    ordered: list[Path] = []

    def visit(path: Path, chain: tuple):
        if path in chain:
            raise RunnerError(f"circular requires: {' -> '.join(p.name for p in chain + (path,))}")
        if path in ordered:
            return
        for required in required_files(path):
            visit(required, chain + (path,))
        ordered.append(path)

    def required_files(path: Path) -> list[Path]:
        found = [Path(r) for r in spec_module.load(path, catalogue)["requires"]]
        for required in found:
            if not required.is_file():
                raise SpecError(f"required spec {required.name!r} not found (looked for {required})",
                                file=path, key="requires")
        return found

    for path in paths:
        if include_roots:
            visit(path, ())
        else:
            for required in required_files(path):
                visit(required, (path,))
    return ordered


def _seed_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seeds like 0,1,2, got {text!r}") from None


def print_table(finished) -> None:
    """One line per run, then mean and spread of test accuracy per spec where it ran several seeds."""
    import statistics

    print(f"\n{'spec':28} {'seed':>4} {'test acc':>8} {'seconds':>8} {'images/s':>9}  status")
    by_spec: dict[str, list[float]] = {}
    for status, spec, results in finished:
        if "test_accuracy" not in results:
            print(f"{spec.name:28} {spec['seed']:4} {'-':>8} {'-':>8} {'-':>9}  {status}")
            continue
        by_spec.setdefault(spec.name, []).append(results["test_accuracy"])
        print(f"{spec.name:28} {spec['seed']:4} {results['test_accuracy']:8.4f} {results['seconds']:8.1f} "
              f"{results.get('images_per_second') or 0:9.0f}  {status}")
    for name, accuracies in by_spec.items():
        if len(accuracies) > 1:
            print(f"{name:28} mean {statistics.mean(accuracies):.4f} +- {statistics.stdev(accuracies):.4f} "
                  f"(sd over {len(accuracies)} seeds)")


def cmd_validate(argv) -> int:
    from . import spec as spec_module
    from .plugins import Catalogue

    parser = argparse.ArgumentParser(prog="runner validate", description="Check specs without running them.")
    parser.add_argument("specs", nargs="+", metavar="SPEC")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")
    args = parser.parse_args(argv)
    catalogue, failures, specs = Catalogue.default(), 0, []
    for path in expand_specs(args.specs):
        try:
            specs.append(spec_module.load(path, catalogue, args.overrides))
            dependencies_of([Path(path).resolve()], catalogue)  # every required spec exists, no cycle
            print(f"ok    {path}")
        except RunnerError as exc:
            failures += 1
            print(f"error {exc}", file=sys.stderr)
    try:
        spec_module.check_overrides_used(specs, args.overrides)
    except RunnerError as exc:
        failures += 1
        print(f"error {exc}", file=sys.stderr)
    return 2 if failures else 0


def cmd_resume(argv) -> int:
    from . import run
    from .plugins import Catalogue

    parser = argparse.ArgumentParser(prog="runner resume", description="Continue an unfinished run from its checkpoint.")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    parser.add_argument("--data", metavar="PATH", help="as for runner SPEC")
    args = parser.parse_args(argv)
    catalogue = Catalogue.default()
    for run_dir in args.run_dirs:
        run.resume(run_dir, catalogue, data_source=args.data)
    return 0


def cmd_plugins(argv) -> int:
    from .plugins import Catalogue

    argparse.ArgumentParser(prog="runner plugins", description="List plugins, their origin and hooks.").parse_args(argv)
    catalogue = Catalogue.default()
    for name, origin in catalogue.origins.items():
        print(f"{name}  ({origin})")
        print(f"    hooks: {', '.join(catalogue.hooks_of(name)) or '-'}")
        settings = catalogue.settings_of(name)
        if settings:
            print("    settings: " + ", ".join(f"{k}={v.default!r}" + (f" (--quick: {v.quick!r})" if v.quick is not None else "")
                                        for k, v in settings.items()))
        for kind, table in (("model", catalogue.models), ("transform", catalogue.transforms)):
            for entry in table.values():
                if entry.plugin == name:
                    print(f"    {kind} {entry.name}: {entry.help}")
    return 0


def cmd_report(argv) -> int:
    from .report import cmd_report as report

    return report(argv)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


COMMANDS = {"validate": cmd_validate, "plugins": cmd_plugins, "resume": cmd_resume, "report": cmd_report, "visdom": cmd_visdom}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # A kill (SIGTERM) unwinds like Ctrl-C, so the run folder is marked interrupted.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_interrupt)
    command = COMMANDS.get(argv[0]) if argv else None
    try:
        return command(argv[1:]) if command else cmd_run(argv)
    except RunnerError as exc:
        details = f" (full traceback: {exc.details})" if exc.details else ""
        print(f"runner: error: {exc}{details}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("runner: interrupted", file=sys.stderr)
        return 130
