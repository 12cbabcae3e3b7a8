"""The universal perturbation plugin: the bound holds, it beats random noise, and a quick chain runs."""
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from runner import RunnerError
from runner.cli import main
from runner.plugins.universal import fit_universal, fooling_rate, random_sign_noise
from runner.sources import load_trained

SPECS = Path(__file__).resolve().parents[1] / "specs"


def tiny_setup(n=400, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 10)).eval()
    with torch.no_grad():
        model[1].weight.normal_(0, 0.02)
    images = torch.randint(0, 256, (n, 3, 4, 4), generator=torch.Generator().manual_seed(seed + 1)).to(torch.uint8)
    return model, images


def test_the_perturbation_stays_in_its_ball_and_beats_random_noise_of_the_same_norm():
    model, images = tiny_setup()
    v, history = fit_universal(model, images, radius=12.0, step=1.0, epochs=4, stop_at=1.0, batch_size=50,
                               generator=torch.Generator().manual_seed(0))
    assert v.shape == (1, 3, 4, 4) and float(v.abs().max()) <= 12.0
    assert len(history) == 4 and history[-1] == pytest.approx(fooling_rate(model, images, v))
    noise = random_sign_noise(v, 12.0, torch.Generator().manual_seed(1))
    assert float(noise.abs().min()) == float(noise.abs().max()) == 12.0
    # One shared direction does far better than noise of the same L-inf norm.
    assert history[-1] > 0.15 and history[-1] > 5 * fooling_rate(model, images, noise)


def test_it_stops_once_the_training_fooling_rate_is_reached_and_a_zero_radius_changes_nothing():
    model, images = tiny_setup()
    _, history = fit_universal(model, images, radius=30.0, step=2.0, epochs=10, stop_at=0.05, batch_size=50)
    assert len(history) == 1 and history[0] >= 0.05
    v, history = fit_universal(model, images, radius=0.0, step=1.0, epochs=2, stop_at=1.0, batch_size=50)
    assert float(v.abs().max()) == 0 and history == [0.0, 0.0]


def test_quick_chain(tmp_path, cifar_archive):
    common = ["--quick", "--data", str(cifar_archive), "--out", str(tmp_path), "--no-progress"]
    assert main([str(SPECS / "p1_q4_crop.toml"), *common, "--set", "train.iterations=30"]) == 0
    assert main([str(SPECS / "p3_universal.toml"), *common, "--set", "data.train_limit=500",
                 "--set", "plugins.universal.epochs=2",
                 "--set", 'plugins.universal.targets=["p1_q4_crop", "p2_q1_allconv"]']) == 0
    (run_dir,) = (tmp_path / "p3_universal").iterdir()
    stats = json.loads((run_dir / "summary.json").read_text())["universal"]
    assert stats["linf"] <= stats["radius"] == 10.0 and 1 <= stats["epochs_run"] <= 2
    assert stats["skipped"] == ["p2_q1_allconv: no completed run (runner specs/p2_q1_allconv.toml)"]
    cell = stats["test"]["p1_q4_crop"]
    assert cell["fooling_rate"] == stats["source_test_fooling_rate"] and 0 <= cell["fooling_rate"] <= 1
    assert cell["perturbed_accuracy"] <= cell["clean_accuracy"] + 0.05
    saved = torch.load(run_dir / "universal_perturbation.pt", weights_only=True)
    assert float(saved["perturbation"].abs().max()) == stats["linf"]
    assert (run_dir / "universal_perturbation.png").stat().st_size > 0
    with pytest.raises(RunnerError, match="model_source.run"):
        load_trained(run_dir)
