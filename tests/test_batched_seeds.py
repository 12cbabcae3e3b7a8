"""Seeds of one spec trained together as one batched model (runner.training.batched) give each seed
what training it alone gives, within fp32 noise.

The tolerance. The batched kernels sum in another order (a vmapped convolution is one grouped
convolution), so values differ in the last bits from the first step, and training amplifies that:
the same lone run on this CPU with 1 thread and with 2 (another order of sums, nothing else)
differed by up to 0.02 in a step's loss within 30 iterations of this recipe, batched and lone up
to 0.01. So the first steps must agree to 1e-5 (each seed's own initialization, permutation,
augmentation draws and gradients: a mixed-up random stream or a gradient shared across seeds is
off by far more at once), and the rest within that noise: 0.03 in loss, 0.05 in running accuracy
(a few images of the 50-image window).
"""
from pathlib import Path

import pytest

from runner.errors import RunnerError
from runner.plugin_host.catalogue import Catalogue
from runner.spec.loading import load
from runner.training.batched import train_seeds
from runner.training.metrics import read_csv

SPEC = Path(__file__).resolve().parents[1] / "specs" / "p1_q4_crop.toml"
# The Table 1 net of Part 1, narrowed so the test is quick; the p1_q4_crop recipe (flip, pad_crop
# draws, warmup, Nesterov, label smoothing) unchanged.
SMALL = ["train.iterations=30", "train.batch_size=50", "model.widths=[8,16,16]", "model.hidden=32",
         'device="cpu"', "plugins.visdom.enabled=false"]


def test_each_batched_seed_trains_as_it_does_alone(run_spec, synthetic_cifar, tmp_path):
    catalogue = Catalogue.default()
    seeds = (0, 1, 2)
    runs = train_seeds([load(SPEC, catalogue, [*SMALL, f"seed={s}"]) for s in seeds], catalogue,
                       out=tmp_path / "batched", data=str(synthetic_cifar))
    alone = {s: run_spec(SPEC, iterations=None, set=[*SMALL, f"seed={s}"]) for s in seeds}
    firsts = set()
    for seed, run in zip(seeds, runs):
        batched, single = read_csv(run.dir / "metrics.csv"), alone[seed].metrics
        assert len(batched["loss"]) == 30 and run.results["batched_seeds"] == list(seeds)
        assert batched["loss"][:2] == pytest.approx(single["loss"][:2], rel=1e-5)
        assert batched["loss"] == pytest.approx(single["loss"], abs=0.03)
        assert batched["running_accuracy"] == pytest.approx(single["running_accuracy"], abs=0.05)
        assert run.results["test_accuracy"] == pytest.approx(alone[seed].summary["test_accuracy"], abs=0.05)
        firsts.add(batched["loss"][0])
    assert len(firsts) == len(seeds)  # each seed its own initialization and batches
    assert (runs[0].dir / "model.pt").is_file() and (runs[0].dir / "summary.json").is_file()


def test_specs_that_differ_beyond_their_seed_or_enable_plugins_are_refused(synthetic_cifar, tmp_path):
    catalogue = Catalogue.default()
    specs = [load(SPEC, catalogue, [*SMALL, "seed=0"]), load(SPEC, catalogue, [*SMALL, "seed=1", "train.lr=0.1"])]
    with pytest.raises(RunnerError, match="more than its seed"):
        train_seeds(specs, catalogue, out=tmp_path, data=str(synthetic_cifar))
    plugin = [*SMALL, "plugins.grad_magnitude.enabled=true"]
    specs = [load(SPEC, catalogue, [*plugin, f"seed={s}"]) for s in (0, 1)]
    with pytest.raises(RunnerError, match="grad_magnitude"):
        train_seeds(specs, catalogue, out=tmp_path, data=str(synthetic_cifar))
