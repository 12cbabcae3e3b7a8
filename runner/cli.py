"""Command line: parse arguments, then call the planner (suite.py), an executor (executors.py),
or one of the run listings (listing.py). No planning or running happens here.

runner SPEC... [options]      train and evaluate each spec (a folder means every spec in it)
runner show SPEC              the resolved spec, and where each value came from
runner ls [OUT]               the runs in OUT
runner compare RUN|SPEC|OUT   runs side by side, by the settings they differ in
runner validate SPEC...       check specs without running them
runner plugins [NAME]         every plugin, its origin and its hooks, models and transforms; or one in full
runner new plugin NAME        a new plugin: its file, a spec that enables it, a test
runner search show OUT/SPEC   a hyperparameter study's trials, best trial and importances
runner resume RUN_DIR         continue an interrupted run
runner report [OUT]           the report (PDF, HTML, Markdown) from the runs
runner visdom                 serve live plots offline
runner completion SHELL       a tab-completion script
"""
from __future__ import annotations

import argparse
import dataclasses
import shlex
import signal
import sys
import threading
from pathlib import Path

from .errors import RunnerError
from .visdom_server import cmd_visdom

EXIT_CODES = """exit codes: 0 success; 1 other runner error; 2 bad spec or option; 3 data missing or corrupt;
4 a plugin failed; 5 training diverged (NaN/inf loss); 130 interrupted"""

OTHER_COMMANDS = """other commands:
  runner show SPEC [--set ...]         the resolved spec, and where each value came from
  runner ls [OUT] [--spec S] [--status S]   runs with seed, status, result, overrides, start and wall time
  runner compare RUN|SPEC|OUT...       runs side by side, grouped by the settings they differ in
  runner validate SPEC...              check specs without running them
  runner plugins [NAME]                every plugin with its origin, hooks, models and transforms;
                                       with NAME (or FILE.py), one plugin's help, hooks and settings table
  runner new plugin NAME [--dir D]     a new plugin: its file, a spec that enables it, a test that passes
  runner search show OUT/SPEC          a study's trials (best first), its best trial's command, importances
  runner resume RUN_DIR                continue an interrupted run
  runner report [OUT] [-o FILE]        the report from the runs (PDF, HTML, Markdown)
  runner visdom                        serve live plots offline
  runner completion bash|zsh|tcsh      a tab-completion script"""


def version_text() -> str:
    import platform

    from . import __version__

    return f"runner {__version__} (Python {platform.python_version()})"


def run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runner", description="Train and evaluate CIFAR-10 experiment specs (TOML).",
        epilog=OTHER_COMMANDS + "\n\n" + EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=version_text())
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
                        help="override a spec value, e.g. --set train.lr=0.05 (value read as TOML); repeatable. "
                             "Several values, --set train.lr=0.01,0.05,0.1, make a sweep: one run per value, "
                             "a grid over several such keys")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: a few iterations on a small subset (for tests and a first look)")
    parser.add_argument("--with-deps", action="store_true",
                        help="first run the specs a spec requires (those its plugins read, and its `requires`) "
                             "that have no completed run yet, with the same --quick, --data and --out")
    parser.add_argument("--force", action="store_true",
                        help="with a folder of specs: rerun specs whose latest run is up to date")
    parser.add_argument("--resume", action="store_true",
                        help="continue the latest interrupted or failed run of each spec from its checkpoint, if "
                             "it was made from the same spec, else start afresh (or: runner resume RUN_DIR)")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="run up to N specs at once in N worker processes, a spec starting once those it "
                             "requires are done (a GPU is mostly idle under one small run; on a CPU, N processes "
                             "share its cores)")
    parser.add_argument("--executor", choices=("local", "dask"), default="local",
                        help="where the runs go: this machine (--jobs worker processes), or a Dask cluster "
                             "(--scheduler; pip install -e '.[dask]')")
    parser.add_argument("--scheduler", metavar="ADDRESS", help="the Dask scheduler, e.g. tcp://127.0.0.1:8786")
    parser.add_argument("--resources", metavar="NAME=N,...",
                        help="with --executor dask: the Dask worker resources each run asks for (default CPU=1, "
                             "and GPU=1 for a run on CUDA); a run uses CPU=N torch threads")
    parser.add_argument("--nproc-per-node", type=int, default=1, metavar="N",
                        help="data-parallel training of each spec in N processes (ignite.distributed: gloo on "
                             "CPU, nccl with one GPU per process); each takes batch_size / N images of every batch")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="a progress bar (default: when stderr is a terminal; else a line at every tenth)")
    search = parser.add_argument_group("hyperparameter search (the spec's [search] table; docs/search.md)")
    search.add_argument("--search", action="store_true",
                        help="run the spec's Optuna study in OUT/<spec>/_search (rerunning continues it), --jobs "
                             "trials at once, then the best trial's values on the test set over --seeds (0,1,2)")
    search.add_argument("--trials", type=int, metavar="N", help="with --search: run the study to N trials")
    search.add_argument("--search-test", action="store_true",
                        help="only measure the study's best trial on the test set over --seeds (default 0,1,2)")
    return parser


def cmd_run(argv) -> int:
    from .plugin_host.catalogue import Catalogue
    from .suite import plan as suite

    args = run_parser().parse_args(argv)
    if args.executor == "dask" and not args.scheduler:
        raise RunnerError("--executor dask needs the cluster's address: --scheduler tcp://HOST:PORT")
    if args.jobs < 1:
        raise RunnerError(f"--jobs {args.jobs}: give 1 or more")
    catalogue = Catalogue.default()
    options = suite.RunOptions(out=args.out, data=args.data, quick=args.quick, resume=args.resume,
                               progress=args.progress)
    if args.search or args.search_test:
        return _search(args, catalogue, options)
    seeds = args.seeds or ([args.seed] if args.seed is not None else None)
    plan, _ = suite.build(args.specs, catalogue, options=options, overrides=args.overrides, seeds=seeds,
                          with_deps=args.with_deps, force=args.force, device=args.device)
    outcomes = _execute(plan, options, args, catalogue)
    every = plan.skipped + outcomes
    if len(every) > 1:
        from .suite.listing import outcome_table

        print(outcome_table(every))
    failures = [outcome for outcome in outcomes if not outcome.ok]
    if not failures:
        return 0
    if len(every) == 1:
        print(f"runner: error: {failures[0].error}", file=sys.stderr)
    else:
        print(f"runner: {len(failures)} of {len(every)} runs did not complete: "
              f"{', '.join(o.job.name for o in failures)}", file=sys.stderr)
    return failures[0].exit_code


def _execute(plan, options, args, catalogue) -> list:
    """The plan's jobs on the executor the options ask for, with the suite's progress display."""
    from .data import resolve as resolve_data
    from .progress import SuiteDisplay, is_terminal
    from .suite import distributed
    from .suite import plan as suite
    from .suite.executors import Executor, InProcess, ProcessPool

    if not plan.jobs:
        return []
    executor: Executor
    if args.nproc_per_node > 1 or distributed.launched_by_torchrun():
        if args.jobs > 1 or (args.nproc_per_node > 1 and distributed.launched_by_torchrun()):
            raise RunnerError("data-parallel runs train one spec at a time (under torchrun, its --nproc-per-node "
                              "sets how many processes per machine): drop runner's --jobs and --nproc-per-node")
        executor, at_once = distributed.DataParallel(args.nproc_per_node, catalogue), 1
    elif args.executor == "dask":
        from .suite.dask_executor import DaskExecutor, parse_resources

        resources = parse_resources(args.resources) if args.resources else None
        executor, at_once = DaskExecutor(args.scheduler, resources), args.jobs
    elif args.jobs > 1 and len(plan.jobs) > 1:
        # Found (and unpacked) once here: the workers must not race to fill the same cache.
        first = suite.load_spec(plan.jobs[0].path, catalogue, plan.jobs[0].overrides)
        options = dataclasses.replace(options, data=str(resolve_data(args.data, first)))
        at_once = min(args.jobs, len(plan.jobs))
        executor = ProcessPool(at_once, device=args.device)
    else:
        executor, at_once = InProcess(catalogue), 1
    # One run alone shows only its own display; a suite also says what it is doing and its ETA,
    # redrawn live when runs are in other processes and their output in logs.
    quiet = len(plan.jobs) == 1 and not plan.skipped
    display = SuiteDisplay(plan, at_once, live=at_once > 1 and is_terminal() and args.progress is not False)
    try:
        return executor.run(plan, options, (lambda *event: None) if quiet else display)
    finally:
        display.close()


def _search(args, catalogue, options) -> int:
    """runner SPEC --search / --search-test (runner/suite/search.py)."""
    from .suite import search

    if len(args.specs) != 1 or not args.specs[0].endswith(".toml"):
        raise RunnerError("--search takes one spec file (runner SPEC.toml --search)")
    if args.trials is not None and args.trials < 1:
        raise RunnerError(f"--trials {args.trials}: give 1 or more")
    path = args.specs[0]
    if args.search:
        search.run_search(path, catalogue, options, overrides=args.overrides, trials=args.trials, jobs=args.jobs,
                          seed=args.seed, device=args.device, executor=args.executor, scheduler=args.scheduler,
                          resources=_resources(args))
    try:
        search.measure_best(path, catalogue, options, overrides=args.overrides, jobs=args.jobs, device=args.device,
                            seeds=args.seeds or search.DEFAULT_TEST_SEEDS)
    except search.NoCompleteTrial as exc:  # every trial pruned or failed: nothing to measure, not an error
        print(f"runner: {exc}", file=sys.stderr)
    return 0


def _resources(args):
    if not args.resources:
        return None
    from .suite.dask_executor import parse_resources

    return parse_resources(args.resources)


def search_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="runner search", description="A hyperparameter study's results.")
    parser.add_argument("action", choices=("show",))
    parser.add_argument("target", metavar="OUT/SPEC", help="the spec's folder of runs (holding _search), or the spec")
    parser.add_argument("--out", default="artifacts", metavar="DIR",
                        help="where a spec's runs are (default: artifacts)")
    return parser


def cmd_search(argv) -> int:
    from .suite.search import show

    args = search_parser().parse_args(argv)
    print(show(args.target, args.out))
    return 0


def _seed_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seeds like 0,1,2, got {text!r}") from None


def validate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="runner validate", description="Check specs without running them.")
    parser.add_argument("specs", nargs="+", metavar="SPEC")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")
    return parser


def cmd_validate(argv) -> int:
    from .plugin_host.catalogue import Catalogue
    from .spec.loading import check_overrides_used
    from .suite import plan as suite

    args = validate_parser().parse_args(argv)
    catalogue, specs = Catalogue.default(), []
    verdicts: list[tuple[Path, RunnerError | None]] = []
    for path in suite.expand_specs(args.specs):
        try:
            for point in suite.sweep_points(args.overrides):
                specs.append(suite.load_spec(path, catalogue, point))
            suite.dependencies_of([path.resolve()], catalogue)  # every required spec exists, no cycle
            verdicts.append((path, None))
        except RunnerError as exc:
            verdicts.append((path, exc))
    try:
        check_overrides_used(specs, [o.text for point in suite.sweep_points(args.overrides) for o in point])
    except RunnerError as exc:  # the --set is wrong for every spec: none is ok as given
        verdicts = [(path, error or exc) for path, error in verdicts]
    for path, error in verdicts:
        print(f"ok    {path}" if error is None else f"error {error}", file=sys.stdout if error is None else sys.stderr)
    return 2 if any(error for _, error in verdicts) else 0


def resume_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="runner resume",
                                     description="Continue an unfinished run from its checkpoint.")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    parser.add_argument("--data", metavar="PATH", help="where CIFAR-10 is now (default: where the run found it)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    return parser


def cmd_resume(argv) -> int:
    from .plugin_host.catalogue import Catalogue
    from .training.flow import resume

    args = resume_parser().parse_args(argv)
    catalogue = Catalogue.default()
    for run_dir in args.run_dirs:
        resume(run_dir, catalogue, data=args.data, show_progress=args.progress)
    return 0


def plugins_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="runner plugins",
                                     description="List plugins, their origin and hooks; with NAME, one plugin's help, "
                                                 "hooks and settings table.")
    parser.add_argument("name", nargs="?", metavar="NAME|FILE.py",
                        help="a plugin's name, or a plugin file (loaded as a spec naming it would load it)")
    return parser


def cmd_plugins(argv) -> int:
    from .plugin_host.catalogue import Catalogue

    args = plugins_parser().parse_args(argv)
    catalogue = Catalogue.default()
    if args.name:
        return _describe_plugin(catalogue, args.name)
    for name, origin in catalogue.origins.items():
        help_text = catalogue.declarations[name].help
        print(f"{name}  ({origin})" + (f": {help_text}" if help_text else ""))
        print(f"    hooks: {', '.join(catalogue.hooks_of(name)) or '-'}")
        settings = catalogue.settings_of(name)
        if settings:
            print("    settings: " + ", ".join(
                f"{k}={v.default!r}" + (f" (--quick: {v.quick!r})" if v.quick is not None else "")
                for k, v in settings.items()))
        for kind, table in (("model", catalogue.models), ("transform", catalogue.transforms)):
            for entry in table.values():
                if entry.plugin == name:
                    print(f"    {kind} {entry.name}: {entry.help}")
    return 0


def _describe_plugin(catalogue, name: str) -> int:
    from .scaffold import describe_plugin
    from .spec.schema import suggestion

    if name.endswith(".py"):
        path = Path(name)
        name = path.stem
        if name not in catalogue.origins:
            catalogue.add_file(name, path)
    if name not in catalogue.origins:
        print(f"runner: error: no plugin named {name!r}{suggestion(name, catalogue.origins)} (`runner plugins` lists "
              f"them; a plugin file: runner plugins FILE.py)", file=sys.stderr)
        return 2
    print(describe_plugin(catalogue, name))
    return 0


def new_parser() -> argparse.ArgumentParser:
    import shtab

    parser = argparse.ArgumentParser(prog="runner new", description="Start a new plugin from a working example.")
    kinds = parser.add_subparsers(dest="kind", metavar="KIND", required=True)
    plugin = kinds.add_parser("plugin", help="a plugin file, a spec that enables it and a pytest test",
                              description="Write NAME.py (a plugin with typed settings, an attach, a run_finished "
                                          "and a report_sections hook), NAME.toml (a spec that extends Part 1 "
                                          "Q1's and enables it) and test_NAME.py (a test on synthetic data that "
                                          "passes as written). Existing files are never overwritten.")
    plugin.add_argument("name", metavar="NAME", help="the plugin's name: a Python identifier (weight_norms)")
    folder = plugin.add_argument("--dir", metavar="D", help="where the files go (default: a new folder NAME in the "
                                                            "working directory)")
    folder.complete = shtab.DIRECTORY  # type: ignore[attr-defined]  # an attribute shtab reads
    return parser


def cmd_new(argv) -> int:
    from importlib.metadata import entry_points

    from .plugin_host.catalogue import BUILTINS, ENTRY_POINT_GROUP
    from .scaffold import new_plugin, next_steps

    args = new_parser().parse_args(argv)
    # The installed plugins' names, without importing them (and torch): a new one must differ.
    taken = set(BUILTINS) | {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
    written = new_plugin(args.name, args.dir, taken=taken)
    print(next_steps(args.name, written))
    return 0


def show_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="runner show",
                                     description="The resolved spec, each value with where it came from.")
    parser.add_argument("spec", metavar="SPEC")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")
    parser.add_argument("--quick", action="store_true", help="as --quick would run it")
    return parser


def cmd_show(argv) -> int:
    from .plugin_host.catalogue import Catalogue
    from .suite import plan as suite
    from .suite.listing import resolved_with_origins

    args = show_parser().parse_args(argv)
    catalogue = Catalogue.default()
    quick = suite.quick_overrides(args.spec, catalogue) if args.quick else []
    for point in suite.sweep_points(args.overrides):
        print(resolved_with_origins(suite.load_spec(args.spec, catalogue, quick + point)))
    return 0


def ls_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="runner ls", description="The runs in OUT, oldest first.")
    parser.add_argument("out", nargs="?", default="artifacts", metavar="OUT")
    parser.add_argument("--spec", action="append", help="only this spec's runs (repeatable)")
    parser.add_argument("--status", action="append",
                        choices=("complete", "running", "interrupted", "failed", "diverged", "pruned"),
                        help="only runs in this status (repeatable)")
    return parser


def cmd_ls(argv) -> int:
    from .suite.listing import find_runs, runs_table

    args = ls_parser().parse_args(argv)
    runs = find_runs(args.out, specs=args.spec, statuses=args.status)
    filtered = " matching the filters" if args.spec or args.status else ""
    print(runs_table(runs) if runs else f"no runs in {args.out}{filtered}")
    return 0


def compare_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="runner compare",
                                     description="Runs side by side, grouped by the settings in which they differ.")
    parser.add_argument("targets", nargs="+", metavar="RUN|SPEC|OUT",
                        help="a run folder, a spec (file or name: its completed runs in --out), or a folder of runs")
    parser.add_argument("--out", default="artifacts", metavar="DIR",
                        help="where a spec's runs are (default: artifacts)")
    return parser


def cmd_compare(argv) -> int:
    from .suite.listing import compare_table, runs_of

    args = compare_parser().parse_args(argv)
    print(compare_table(runs_of(args.targets, args.out)))
    return 0


def cmd_report(argv) -> int:
    from .report import cmd_report as report

    return report(argv)


def completion_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="runner completion",
                                     description="Print a tab-completion script, e.g. "
                                                 "runner completion bash "
                                                 "> ~/.local/share/bash-completion/completions/runner")
    parser.add_argument("shell", choices=("bash", "zsh", "tcsh"))
    return parser


def cmd_completion(argv) -> int:
    import shtab

    args = completion_parser().parse_args(argv)
    print(shtab.complete(command_tree(), shell=args.shell))
    return 0


def command_tree() -> argparse.ArgumentParser:
    """Every command in one parser, for completion (the commands themselves parse separately, so
    `runner SPEC` needs no subcommand name)."""
    import shtab

    tree = run_parser()
    specs = tree._actions[[a.dest for a in tree._actions].index("specs")]
    specs.complete = shtab.FILE  # type: ignore[attr-defined]  # an attribute shtab reads
    commands = tree.add_subparsers(dest="command", metavar="COMMAND")
    for name, make in PARSERS.items():
        sub = make()
        commands.add_parser(name, parents=[sub], add_help=False, help=sub.description)
    return tree


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


COMMANDS = {"show": cmd_show, "ls": cmd_ls, "compare": cmd_compare, "validate": cmd_validate, "plugins": cmd_plugins,
            "new": cmd_new, "search": cmd_search,
            "resume": cmd_resume, "report": cmd_report, "visdom": cmd_visdom, "completion": cmd_completion}
PARSERS = {"show": show_parser, "ls": ls_parser, "compare": compare_parser, "validate": validate_parser,
           "search": search_parser,
           "plugins": plugins_parser, "new": new_parser, "resume": resume_parser, "completion": completion_parser}


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
    except BrokenPipeError:  # `runner ls | head`: the reader has what it wanted
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        again = "" if command else "; continue with: runner " + shlex.join(
            argv + ([] if "--resume" in argv else ["--resume"]))
        print(f"runner: interrupted{again}", file=sys.stderr)
        return 130
