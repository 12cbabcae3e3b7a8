"""Attack speed against training speed on the same net: image-steps/s of iterative FGSM (one
forward and one input-gradient backward per image and step) beside training images/s (forward,
backward and update), in one process, rounds interleaved so machine noise hits both alike.

The attacked net is a trained Table 1 net (p1_q4_crop): the latest completed run under --out,
or one the runner trains there first (specs/p1_q4_crop.toml, a few minutes) when there is none.
Training is timed with the plain loop of bench/overhead.py (the spec's recipe, within noise of
the runner's own rate). The attack is p3_q1_fgsm's (eps 1, until a wrong class has 99%, cap 200) on
the first --images correctly classified test images in one batch, as the plugin attacks them.
--reference also times the attack written plainly (tests/test_fgsm.py's reference_fgsm: one pass
of the whole active set per step, autograd's own backward) and checks that both give the same
images, bit for bit.

Usage: python bench/attack_speed.py [--data ARCHIVE] [--out artifacts] [--rounds 3]
       [--images 1000] [--train-batches 50] [--pass-images 64[,N...]] [--reference]
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from overhead import plain  # noqa: E402

from runner import artifacts, data, memory  # noqa: E402
from runner import spec as spec_module  # noqa: E402
from runner.input_grad import shapes_checked  # noqa: E402
from runner.plugin_host.catalogue import Catalogue  # noqa: E402
from runner.plugins.fgsm import PASS_IMAGES, iterative_fgsm  # noqa: E402
from runner.sources import load_trained, probabilities  # noqa: E402
from runner.training.flow import execute  # noqa: E402

ATTACK = dict(eps=1.0, max_steps=200, confidence=0.99)  # specs/p3_q1_fgsm.toml


def attacked_net(out: Path, source):
    """The latest completed p1_q4_crop run under `out` (trained there first if there is none)."""
    found = artifacts.source_run(out, "p1_q4_crop", False, None)
    if found is None:
        catalogue = Catalogue.default()
        spec = spec_module.load(ROOT / "specs" / "p1_q4_crop.toml", catalogue, ['device="cpu"'])
        found = execute(spec, catalogue, out=out, data=source, show_progress=False).dir
    return load_trained(found)[0], found


def timed(function):
    """(wall seconds, system CPU seconds of this process) of function()."""
    before, started = resource.getrusage(resource.RUSAGE_SELF).ru_stime, time.perf_counter()
    result = function()
    return time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF).ru_stime - before, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="CIFAR-10 archive (default: RUNNER_DATA or the download cache)")
    parser.add_argument("--out", default=str(ROOT / "artifacts"), help="runs folder holding a p1_q4_crop run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=1000, help="correctly classified test images attacked")
    parser.add_argument("--train-batches", type=int, default=50, help="training steps (batch 100) per round")
    parser.add_argument("--pass-images", default=str(PASS_IMAGES),
                        help="images per forward/backward pass; several (32,64,128) are timed side by side")
    parser.add_argument("--reference", action="store_true", help="also time the plain attack; check equality")
    args = parser.parse_args()
    memory.keep_freed_memory()  # as every run does
    source = data.resolve_source(args.data, None)
    folder = data.locate(source)
    train_images, train_labels = data.load_batches(folder, ["data_batch_1"])
    test_images, test_labels = data.load_batches(folder, ["test_batch"])
    model, origin = attacked_net(Path(args.out), source)
    correct = torch.nonzero(probabilities(model, test_images).argmax(1) == test_labels).flatten()[:args.images]
    images, labels = test_images[correct], test_labels[correct]

    passes = [int(n) for n in args.pass_images.split(",")]
    attacks = {f"attack /{n}": lambda n=n: iterative_fgsm(model, images, labels, **ATTACK, pass_images=n)
               for n in passes}
    if args.reference:
        from tests.test_fgsm import reference_fgsm

        attacks["plain attack"] = lambda: reference_fgsm(model, images, labels, **ATTACK)
    plain(train_images, train_labels, 5, 100)  # warm-up: oneDNN creates its kernels once per shape
    rates = {"training": [], **{name: [] for name in attacks}}
    system = {name: [] for name in rates}
    results = {}
    for _ in range(args.rounds):
        # plain() times its own loop: building the net and fitting the normalization stay out.
        wall, sys_seconds, seconds = timed(lambda: plain(train_images, train_labels, args.train_batches, 100))
        rates["training"].append(args.train_batches * 100 / seconds)
        system["training"].append(sys_seconds / wall)
        for name, attack in attacks.items():
            seconds, sys_seconds, results[name] = timed(attack)
            steps = results[name][1] if name == "plain attack" else results[name].steps
            rates[name].append(int(steps.sum()) / seconds)  # image-steps: one forward + backward each
            system[name].append(sys_seconds / seconds)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; attacked net: {origin}; "
          f"{len(images)} images, {int(results[f'attack /{passes[0]}'].steps.sum())} image-steps "
          f"per attack (attack /N: passes of at most N images); "
          f"medians of {args.rounds} interleaved rounds")
    training = statistics.median(rates["training"])
    for name, values in rates.items():
        median = statistics.median(values)
        unit = "images/s (batch 100)" if name == "training" else "image-steps/s"
        print(f"{name:14} {median:7.0f} {unit:21} {median / training:5.2f}x training  "
              f"system time {statistics.median(system[name]):4.0%}  (rounds: {', '.join(f'{v:.0f}' for v in values)})")
    checked = shapes_checked()
    print(f"layer shapes whose backward was checked against autograd's: {checked['cheaper']} take the cheaper "
          f"one, {checked['autograd']} autograd's (runner/nets/input_grad.py)")
    if args.reference:
        plain_images, plain_steps = results["plain attack"][:2]
        same = all(torch.equal(results[f"attack /{n}"].images, plain_images)
                   and torch.equal(results[f"attack /{n}"].steps, plain_steps) for n in passes)
        print(f"every attack gives the plain attack's images and steps: {same}")
        if not same:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
