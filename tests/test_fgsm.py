"""The iterative FGSM attack: its step against a closed-form gradient, stopping, clipping, the cap,
and the Part 3 Q1 spec end to end on a quick-trained Part 1 model."""
import csv
import json
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from runner import RunnerError
from runner.cli import main
from runner.plugins.augment import Normalize
from runner.plugins.fgsm import iterative_fgsm, load_png
from runner.sources import load_trained

SPECS = Path(__file__).resolve().parents[1] / "specs"
SHAPE = (3, 4, 4)  # the attack is shape-agnostic; tiny images keep the closed form cheap
D = 3 * 4 * 4


def linear_model(seed=0, scale=0.02):
    """logits = W x + b: grad_x CE(x, y) = W^T (softmax(Wx + b) - onehot(y)), exactly."""
    torch.manual_seed(seed)
    layer = nn.Linear(D, 10)
    with torch.no_grad():
        layer.weight.normal_(0, scale)
        layer.bias.normal_(0, 1)
    return nn.Sequential(nn.Flatten(), layer).eval()


def closed_form_grad(model, x, y):
    W, b = model[1].weight.detach(), model[1].bias.detach()
    p = (x.flatten(1) @ W.T + b).softmax(1)
    return ((p - nn.functional.one_hot(y, 10).float()) @ W).reshape(x.shape)


def wrong_probability(model, x, y):
    with torch.no_grad():
        p = model(x).softmax(1)
    return p.scatter(1, y[:, None], -1.0).amax(1)


def pixels(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *SHAPE), generator=g).float()


def test_one_step_is_x_plus_eps_sign_of_the_closed_form_gradient():
    model, x = linear_model(), pixels(16)
    y = model(x).argmax(1)  # correctly classified by construction
    # confidence 2: never reached, so every image takes exactly max_steps = 1 step.
    result = iterative_fgsm(model, x, y, eps=3.0, max_steps=1, confidence=2.0)
    grad = closed_form_grad(model, x, y)
    expected = (x + 3.0 * grad.sign()).clamp(0, 255)
    clear = grad.abs() > 1e-6  # a sign of a float sum that is ~0 may differ from autograd's
    assert torch.equal(result.images[clear], expected[clear])
    assert result.steps.tolist() == [1] * 16 and not result.success.any()


def test_targeted_step_descends_the_target_loss():
    model, x = linear_model(), pixels(8)
    y = torch.tensor([3, 1, 2, 3, 4, 5, 6, 7])
    result = iterative_fgsm(model, x, y, eps=2.0, max_steps=1, confidence=2.0, target=3)
    grad = closed_form_grad(model, x, torch.full_like(y, 3))
    expected = (x - 2.0 * grad.sign()).clamp(0, 255)
    others = y != 3
    assert torch.equal(result.images[others], expected[others])
    # Images of the target class cannot be pushed into it: failures at 0 steps, untouched.
    assert torch.equal(result.images[~others], x[~others])
    assert result.steps[~others].tolist() == [0, 0] and not result.success[~others].any()


def test_each_image_stops_at_its_first_step_reaching_the_confidence():
    model, x = linear_model(seed=2, scale=0.02), pixels(32, seed=3)
    y = model(x).argmax(1)
    eps, cap = 1.0, 40  # with these, images need 5 to 40 steps and two need more
    # Reference: plain per-step loop, no stopping, recording every iterate and its wrong-class probability.
    iterates, trajectory, current = [x], [wrong_probability(model, x, y)], x
    for _ in range(cap):
        current = (current + eps * closed_form_grad(model, current, y).sign()).clamp(0, 255)
        iterates.append(current)
        trajectory.append(wrong_probability(model, current, y))
    trajectory = torch.stack(trajectory, 1)  # (images, steps + 1)
    result = iterative_fgsm(model, x, y, eps=eps, max_steps=cap, confidence=0.99)
    reached = trajectory >= 0.99
    assert reached.any(1).sum() >= 8 and (~reached.any(1)).sum() >= 1  # both kinds occur
    for i in range(len(x)):
        if reached[i].any():
            first = int(reached[i].nonzero()[0])
            assert result.success[i] and int(result.steps[i]) == first
            # Frozen from then on: the returned image is the iterate at which it stopped.
            assert torch.allclose(result.images[i], iterates[first][i])
            assert float(result.goal_probability[i]) >= 0.99
            assert int(result.predicted[i]) != int(y[i])
        else:
            assert not result.success[i] and int(result.steps[i]) == cap
            assert torch.allclose(result.images[i], iterates[cap][i])
            assert float(result.goal_probability[i]) < 0.99


def test_an_image_already_wrong_needs_no_step_and_a_zero_gradient_never_moves():
    model = linear_model()
    with torch.no_grad():
        model[1].weight.zero_()  # logits = b: class 0 at ~99.95% everywhere, gradient 0
        model[1].bias.copy_(torch.tensor([10.0] + [0.0] * 9))
    x = pixels(2)
    result = iterative_fgsm(model, x, torch.tensor([1, 0]), eps=1.0, max_steps=5, confidence=0.99)
    assert result.success.tolist() == [True, False] and result.steps.tolist() == [0, 5]
    assert torch.equal(result.images, x)  # sign(0) = 0: the correct one stays put and fails at the cap


def test_pixels_stay_in_range_and_in_the_bound_ball():
    model = linear_model(scale=0.05)
    x = pixels(32)
    x[:8] = 0.0  # at the edges, where a step would leave [0, 255]
    x[8:16] = 255.0
    y = model(x).argmax(1)
    free = iterative_fgsm(model, x, y, eps=7.0, max_steps=30, confidence=2.0)
    assert free.images.min() >= 0 and free.images.max() <= 255
    assert (free.images - x).abs().amax() > 3  # without a bound it goes further than the ball below
    bounded = iterative_fgsm(model, x, y, eps=7.0, max_steps=30, confidence=2.0, bound=3.0)
    assert bounded.images.min() >= 0 and bounded.images.max() <= 255
    assert (bounded.images - x).abs().amax() <= 3.0


def test_the_step_cap_reports_failures_and_restores_the_mode():
    model = linear_model(scale=0.001).train()  # weak weights: 99% is far away
    x = pixels(6)
    y = model(x).argmax(1)
    result = iterative_fgsm(model, x, y, eps=1.0, max_steps=2, confidence=0.99)
    assert not result.success.any() and result.steps.tolist() == [2] * 6
    assert (result.images - x).abs().amax() <= 2.0
    assert model.training  # the attack runs in eval mode and gives the model back as it was
    none = iterative_fgsm(model, x, y, eps=1.0, max_steps=0, confidence=0.99)
    assert torch.equal(none.images, x) and none.steps.tolist() == [0] * 6


# ---- the fast attack gives the plain algorithm's images, bit for bit -------------------------

def reference_fgsm(model, images, labels, *, eps, max_steps, confidence=0.99, bound=0.0, target=None):
    """The attack written plainly, as it was before it was made fast: every step gathers the
    active images, runs a full forward and backward, writes the results back by index, and
    drops the finished images. iterative_fgsm must return exactly what this returns."""
    from runner.plugins.fgsm import goal_of

    model.eval()
    x = images.detach().float().clone()
    original = x.clone()
    n = x.shape[0]
    steps = torch.zeros(n, dtype=torch.long)
    success = torch.zeros(n, dtype=torch.bool)
    predicted = torch.zeros(n, dtype=torch.long)
    probability = torch.zeros(n)
    goal_probability = torch.zeros(n)
    active = torch.arange(n)
    if target is not None:
        active = active[labels != target]
    for step in range(max_steps + 1):
        if active.numel() == 0:
            break
        xa = x[active].requires_grad_(True)
        logits = model(xa)
        probs = logits.detach().float().softmax(1)
        goal = goal_of(probs, labels[active], target)
        done = goal >= confidence
        top = probs.max(1)
        predicted[active], probability[active] = top.indices, top.values
        goal_probability[active], steps[active] = goal, step
        success[active[done]] = True
        keep = ~done
        if step == max_steps or not keep.any():
            break
        aim = labels[active] if target is None else torch.full_like(labels[active], target)
        loss = nn.functional.cross_entropy(logits, aim, reduction="sum")
        (grad,) = torch.autograd.grad(loss, xa)
        direction = grad.sign() if target is None else -grad.sign()
        moved = (xa.detach() + eps * direction).clamp(0.0, 255.0)
        if bound > 0:
            start = original[active]
            moved = torch.minimum(torch.maximum(moved, start - bound), start + bound)
        active = active[keep]
        x[active] = moved[keep]
    return x, steps, success, predicted, probability, goal_probability


def small_convnet(seed=0):
    """A miniature trained-model stand-in: normalization in front, conv + BatchNorm (running
    statistics) + ReLU, pooling, a linear head; channels_last like the runs' models."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 5, padding=2, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 10))
    with torch.no_grad():
        net[1].running_mean.normal_(0, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
        net[-1].weight.mul_(30.0)  # confident enough that images need from a few to tens of steps
    return nn.Sequential(Normalize(torch.full((3,), 120.0), torch.full((3,), 64.0)), net).to(
        memory_format=torch.channels_last).eval()


@pytest.mark.parametrize("settings", [
    dict(eps=1.0, max_steps=60, confidence=0.99),
    dict(eps=2.0, max_steps=25, confidence=0.9, bound=12.0),
    dict(eps=1.0, max_steps=40, confidence=0.95, target=4),
    dict(eps=0.7, max_steps=15, confidence=0.99),  # non-integer steps: off the 8-bit grid
], ids=["homework", "bound", "target", "fractional-eps"])
def test_the_attack_returns_the_plain_algorithms_images_bit_for_bit(settings):
    model = small_convnet()
    g = torch.Generator().manual_seed(5)
    x = torch.randint(0, 256, (300, 3, 16, 16), generator=g).float()
    with torch.no_grad():
        y = model(x).argmax(1)
    expected = reference_fgsm(model, x, y, **settings)
    result = iterative_fgsm(model, x, y, **settings)
    steps = expected[1]
    assert steps.min() < steps.max()  # images finish at different steps: the active set shrinks
    for name, want, got in zip(("images", "steps", "success", "predicted", "probability", "goal_probability"),
                               expected, (result.images, result.steps, result.success, result.predicted,
                                          result.probability, result.goal_probability)):
        assert torch.equal(got, want), name
    assert result.images.is_contiguous()  # what callers save and concatenate


# ---- the spec end to end --------------------------------------------------------------------

FGSM_QUICK = ["--set", "data.test_limit=100",
              # A 30-step quick model is unconfident: bigger steps reach 99% within the test's budget.
              "--set", "plugins.fgsm.eps=8.0", "--set", "plugins.fgsm.max_steps=30"]


@pytest.fixture(scope="module")
def attacked(tmp_path_factory, cifar_archive):
    out = tmp_path_factory.mktemp("out")
    common = ["--quick", "--data", str(cifar_archive), "--out", str(out), "--no-progress"]
    assert main([str(SPECS / "p1_q4_crop.toml"), *common, "--set", "train.iterations=30"]) == 0
    assert main([str(SPECS / "p3_q1_fgsm.toml"), *common, *FGSM_QUICK]) == 0
    (source,) = (out / "p1_q4_crop").iterdir()
    (run_dir,) = (out / "p3_q1_fgsm").iterdir()
    return source, run_dir, json.loads((run_dir / "summary.json").read_text())


def test_saved_pngs_fool_the_source_model_at_99_percent(attacked, cifar_dir):
    from runner.data import load_batches

    source, run_dir, summary = attacked
    model, _ = load_trained(source)
    test_images, _ = load_batches(cifar_dir, ["test_batch"])
    rows = list(csv.DictReader(open(run_dir / "adversarial" / "pairs.csv")))
    assert len(rows) == summary["fgsm"]["pairs_count"] == len(summary["fgsm"]["pairs"]) > 0
    fooled = [r for r in rows if r["png_adversarial"] == "True"]
    assert fooled and len(fooled) == summary["fgsm"]["pairs_png_adversarial"]
    for row in rows:
        original = load_png(run_dir / "adversarial" / f"{row['file']}_orig.png")
        assert torch.equal(original, test_images[int(row["test_index"])])  # the original, untouched
        adversarial = load_png(run_dir / "adversarial" / f"{row['file']}_adv.png")
        assert (adversarial.int() - original.int()).abs().max() == float(row["linf"])
        with torch.no_grad():
            p = model(adversarial[None].float()).softmax(1)[0]
        label = int(row["class"])
        wrong = p.clone()
        wrong[label] = -1
        if row in fooled:
            # The run's model is channels_last, this one is not: the same sums in another order.
            assert wrong.max() >= 0.99 - 1e-5 and int(p.argmax()) == int(row["predicted"]) != label
        else:
            assert row["success"] == "False" and int(row["steps"]) == 30  # a failure is reported, not dropped


def test_summary_and_artifacts(attacked):
    _, run_dir, summary = attacked
    stats = summary["fgsm"]
    assert Path(stats["source_run"]).parent.name == "p1_q4_crop"
    assert stats["eps"] == 8.0 and stats["max_steps"] == 30 and stats["confidence"] == 0.99
    assert stats["attacked"] == stats["succeeded"] + stats["failed_at_cap"] > 0
    assert 0 <= stats["success_rate"] <= 1 and stats["uint8_adversarial"] == stats["succeeded"]
    if stats["succeeded"]:
        assert 1 <= stats["median_steps"] <= 30 and stats["mean_linf"] <= 8 * 30
        assert stats["mean_psnr"] > 0 and stats["mean_l2"] > 0
    assert stats["attack_seconds"] > 0 and stats["attack_images_per_second"] > 0
    for name in ("adversarial_pairs.png", "steps_histogram.png", "adversarial_set.pt"):
        assert (run_dir / name).stat().st_size > 0
    saved = torch.load(run_dir / "adversarial_set.pt", weights_only=True)
    assert saved["images"].dtype == torch.uint8 and len(saved["images"]) == stats["attacked"]
    assert int(saved["success"].sum()) == stats["succeeded"] and saved["source_spec"] == "p1_q4_crop"
    assert len(saved["pairs"]["images"]) == stats["pairs_count"]
    # A Part 3 run is not a model of its own: reloading it says where the model is.
    with pytest.raises(RunnerError, match="model_source.run"):
        load_trained(run_dir)


def test_missing_source_run_names_the_command(tmp_path, cifar_archive, capsys):
    args = [str(SPECS / "p3_q1_fgsm.toml"), "--quick", "--data", str(cifar_archive), "--out", str(tmp_path),
            "--no-progress"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "runner specs/p1_q4_crop.toml --quick" in err and "--with-deps" in err
    assert not (tmp_path / "p3_q1_fgsm").exists()  # found out before a run folder is made


def test_training_is_refused(tmp_path, capsys):
    args = [str(SPECS / "p3_q1_fgsm.toml"), "--out", str(tmp_path), "--set", "train.iterations=5"]
    assert main(args) == 2
    assert "train.iterations" in capsys.readouterr().err


def test_an_attack_uses_the_source_run_of_its_own_seed(tmp_path):
    from types import SimpleNamespace

    from runner import artifacts
    from runner.sources import latest_run as source_run

    def completed(seed):
        run_dir = artifacts.new_run_dir(tmp_path, "p1_q4_crop", seed)
        artifacts.write_json(run_dir / "summary.json", {"seed": seed, "quick": False})
        artifacts.set_status(run_dir, "complete")
        return run_dir

    seed1 = completed(1)
    time.sleep(1.05)  # run folders are named by the second
    seed0 = completed(0)  # the newest
    attack = lambda seed: SimpleNamespace(dir=tmp_path / "p3_q1_fgsm" / "run", quick=False,
                                          spec=SimpleNamespace(seed=seed))
    assert source_run(attack(1), "p1_q4_crop") == seed1
    assert source_run(attack(0), "p1_q4_crop") == seed0
    assert source_run(attack(2), "p1_q4_crop") == seed0  # no seed-2 model: the newest of any seed
    assert source_run(attack(0), "p2_q1_allconv") is None


def test_top_switches_count_true_to_reached_class_pairs():
    from runner.plugins.fgsm import top_switches

    labels, reached = torch.tensor([3, 3, 3, 5, 1, 9]), torch.tensor([5, 5, 2, 3, 9, 1])
    top = top_switches(labels, reached, [f"c{i}" for i in range(10)], most=2)
    assert top[0] == {"from": "c3", "to": "c5", "count": 2, "share": round(2 / 6, 4)}
    assert len(top) == 2 and top[1]["count"] == 1
    assert top_switches(labels[:0], reached[:0], [f"c{i}" for i in range(10)]) == []
