"""The diagnostics lr_finder, sharpness and saliency: their numbers against closed forms, that they
leave the training as it was, and their specs end to end on quick runs."""
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from runner.cli import main
from runner.plugins.saliency import correlation, maps
from runner.plugins.sharpness import measure, momentum_threshold, top_eigenvalue

SPECS = Path(__file__).resolve().parents[1] / "specs"


# ---- sharpness: the power iteration ---------------------------------------------------------

def test_power_iteration_finds_the_top_eigenvalue_of_least_squares():
    """loss = mean((Xw + b - y)^2) has the Hessian 2/N [X 1]'[X 1], whatever w and b are."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(200, 12, generator=g) * torch.linspace(0.5, 3.0, 12)
    y = torch.randn(200, generator=g)
    layer = nn.Linear(12, 1)
    loss = (layer(X).squeeze(1) - y).pow(2).mean()
    value, steps = top_eigenvalue(loss, [layer.weight, layer.bias], iterations=500, tolerance=1e-9)
    design = torch.cat([X, torch.ones(200, 1)], 1).double()
    exact = torch.linalg.eigvalsh(2 / 200 * design.T @ design)[-1].item()
    assert value == pytest.approx(exact, rel=1e-3)
    assert 1 < steps < 500  # it stopped on the tolerance
    assert layer.weight.grad is None and layer.bias.grad is None


def test_power_iteration_on_a_quadratic_with_known_spectrum():
    g = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(30, 30, generator=g))
    spectrum = torch.cat([torch.tensor([50.0, 20.0]), torch.rand(28, generator=g) * 10 - 5])
    A = q @ torch.diag(spectrum) @ q.T
    w = torch.randn(30, generator=g, requires_grad=True)
    value, _ = top_eigenvalue(0.5 * w @ A @ w, [w], iterations=200, tolerance=1e-8)
    assert value == pytest.approx(torch.linalg.eigvalsh(A)[-1].item(), rel=1e-3)


def test_power_iteration_finds_the_largest_eigenvalue_where_a_negative_one_dominates():
    g = torch.Generator().manual_seed(2)
    q, _ = torch.linalg.qr(torch.randn(20, 20, generator=g))
    spectrum = torch.cat([torch.tensor([-50.0, 20.0]), torch.rand(18, generator=g) * 10 - 5])
    A = q @ torch.diag(spectrum) @ q.T
    w = torch.randn(20, generator=g, requires_grad=True)
    value, steps = top_eigenvalue(0.5 * w @ A @ w, [w], iterations=500, tolerance=1e-9)
    assert value == pytest.approx(20.0, rel=1e-3)


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.3),
                         nn.AvgPool2d(4), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))


@pytest.mark.parametrize("batchnorm", ["batch", "running"])
def test_a_measurement_leaves_the_training_as_it_was(batchnorm):
    model = small_net().train()
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    nn.functional.cross_entropy(model(x), y).backward()  # a step's gradients, as at ITERATION_COMPLETED
    grads = [p.grad.clone() for p in model.parameters()]
    buffers = {k: b.clone() for k, b in model.state_dict().items()}
    rng = torch.get_rng_state()
    point = measure(model, x, y, batchnorm=batchnorm, iterations=10, tolerance=1e-4)
    assert torch.equal(torch.get_rng_state(), rng)  # the dropout's draws and the start vector: none global
    assert model.training
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
    assert all(torch.equal(b, buffers[k]) for k, b in model.state_dict().items())  # BatchNorm's statistics too
    assert point["eigenvalue"] > 0 and 1 <= point["steps"] <= 10 and point["seconds"] >= 0


def test_momentum_thresholds():
    assert momentum_threshold(0.1, 0.9, False) == pytest.approx(38.0)  # heavy ball: (2 + 2b) / lr
    assert momentum_threshold(0.1, 0.9, True) == pytest.approx(3.8 / 0.28)  # Nesterov: / (1 + 2b)
    assert momentum_threshold(0.1, 0.0, False) is None


# ---- saliency: the maps -------------------------------------------------------------------

def test_correlation_is_pearsons():
    a, b = torch.randn(5, 6, 6), torch.randn(5, 6, 6)
    expected = [torch.corrcoef(torch.stack([a[i].flatten(), b[i].flatten()]))[0, 1] for i in range(5)]
    assert correlation(a, b) == pytest.approx(torch.stack(expected), abs=1e-5)
    assert correlation(a, 3 * a + 1) == pytest.approx(torch.ones(5), abs=1e-6)


def test_saliency_is_the_input_gradient_and_gradcam_the_class_activation_map():
    """With the conv followed by global average pooling and a linear classifier, Grad-CAM is CAM
    (Zhou et al. 2016): ReLU(sum_k w_yk A_k) / (H W)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 6, 3, padding=1, stride=4)
    fc = nn.Linear(6, 10)
    model = nn.Sequential(conv, nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc).eval()
    x, y = torch.rand(4, 3, 32, 32) * 255, torch.tensor([0, 3, 5, 9])
    saliency, cam = maps(model, x, y, conv, batch_size=3)  # two passes
    xr = x.clone().requires_grad_(True)
    loss = nn.functional.cross_entropy(model(xr), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, xr)
    assert torch.allclose(saliency, grad.abs().sum(1), rtol=1e-5, atol=1e-9)
    with torch.no_grad():
        activation = conv(x)
        expected = torch.relu(torch.einsum("nk,nkhw->nhw", fc.weight[y], activation) / 64)
        expected = nn.functional.interpolate(expected[:, None], size=(32, 32), mode="bilinear")[:, 0]
    assert torch.allclose(cam, expected, rtol=1e-4, atol=1e-6)
    assert all(p.requires_grad for p in model.parameters())  # input_gradients froze them for the pass only


# ---- the specs end to end -------------------------------------------------------------------

ITERATIONS = 20


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory, cifar_archive):
    """Quick runs in one --out: the plain p1_q4_crop, the same with each training diagnostic, the
    attack on it and the saliency of the attack. Returns {spec: run folder}."""
    out = tmp_path_factory.mktemp("out")
    common = ["--quick", "--data", str(cifar_archive), "--out", str(out), "--no-progress",
              "--set", f"train.iterations={ITERATIONS}"]
    assert main([str(SPECS / "p1_q4_crop.toml"), *common]) == 0
    assert main([str(SPECS / "study_lr_finder.toml"), *common, "--set", "plugins.lr_finder.num_iter=12"]) == 0
    assert main([str(SPECS / "study_sharpness.toml"), *common, "--set", f"plugins.sharpness.at=[1,{ITERATIONS},99]",
                 "--set", "plugins.sharpness.batch_size=50"]) == 0
    attack = ["--quick", "--data", str(cifar_archive), "--out", str(out), "--no-progress",
              "--set", "data.test_limit=100"]
    # A 20-iteration net is rarely 99% sure of anything: the attack stops at 50% on a wrong class.
    assert main([str(SPECS / "p3_q1_fgsm.toml"), *attack, "--set", "plugins.fgsm.eps=8.0",
                 "--set", "plugins.fgsm.max_steps=20", "--set", "plugins.fgsm.confidence=0.5"]) == 0
    assert main([str(SPECS / "study_saliency.toml"), *attack]) == 0
    return {name: next((out / name).iterdir()) for name in
            ("p1_q4_crop", "study_lr_finder", "study_sharpness", "p3_q1_fgsm", "study_saliency")}


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.mark.parametrize("name", ["study_lr_finder", "study_sharpness"])
def test_the_diagnostic_leaves_the_training_unchanged(quick_runs, name):
    """Same weights at the start and the same random draws: metrics.csv is the plain run's, byte for byte."""
    plain = (quick_runs["p1_q4_crop"] / "metrics.csv").read_bytes()
    assert (quick_runs[name] / "metrics.csv").read_bytes() == plain
    assert summary(quick_runs[name])["test_accuracy"] == summary(quick_runs["p1_q4_crop"])["test_accuracy"]


def test_lr_finder_results(quick_runs):
    result = summary(quick_runs["study_lr_finder"])["lr_finder"]
    lrs, losses = result["lrs"], result["losses"]
    assert len(lrs) == len(losses) == result["steps"] <= 12
    assert result["diverged"] == (result["steps"] < 12)
    assert all(a < b for a, b in zip(lrs, lrs[1:]))  # growing exponentially: a constant ratio
    assert lrs[1] / lrs[0] == pytest.approx(lrs[-1] / lrs[-2], rel=1e-2)
    assert result["spec_lr"] == 0.05 and result["seconds"] > 0
    if result["suggested_lr"] is not None:
        assert min(abs(lr / result["suggested_lr"] - 1) for lr in lrs) < 1e-3  # one of the rates tried
    assert (quick_runs["study_lr_finder"] / "lr_finder.png").stat().st_size > 0


def test_sharpness_results(quick_runs):
    result = summary(quick_runs["study_sharpness"])["sharpness"]
    assert [p["iteration"] for p in result["points"]] == [1, ITERATIONS]
    assert result["skipped"] == [99]  # past the run's end
    assert len(result["lrs"]) == ITERATIONS and result["batch_size"] == 50
    for point in result["points"]:
        assert point["eigenvalue"] > 0 and 1 <= point["steps"] <= 2 * result["iterations"]
        assert point["two_over_lr"] == pytest.approx(2 / point["lr"])
    assert result["seconds"] == pytest.approx(sum(p["seconds"] for p in result["points"]), abs=0.01)
    assert (quick_runs["study_sharpness"] / "sharpness.png").stat().st_size > 0


def test_saliency_results(quick_runs):
    result = summary(quick_runs["study_saliency"])["saliency"]
    fgsm = summary(quick_runs["p3_q1_fgsm"])["fgsm"]
    assert Path(result["attack_run"]) == quick_runs["p3_q1_fgsm"] and result["source_spec"] == "p1_q4_crop"
    assert result["set_n"] == fgsm["succeeded"] > 0
    assert len(result["shown"]) == len({p["class"] for p in fgsm["pairs"] if p["success"]})
    shown_classes = [s["class"] for s in result["shown"]]
    assert len(shown_classes) == len(set(shown_classes))  # per_class = 1
    for key in ("set_mean_r", "set_median_r", "set_control_mean_r", "gradcam_set_mean_r"):
        assert -1 <= result[key] <= 1
    # The attack follows the gradient: its perturbation sits where the image's own saliency is high,
    # more than where another image's perturbation sits.
    assert result["set_mean_r"] > result["set_control_mean_r"] + 0.05
    assert (quick_runs["study_saliency"] / "saliency.png").stat().st_size > 0
