"""The skip (residual blocks) and init (kaiming, fixup) plugins on tiny models and the deep plain net."""
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from runner import SpecError
from runner.nets.models import AllConvNet
from runner.plugins import init, skip
from runner.spec import loading as spec_module

SKIP = {"layers": "inserted", "block": 2, "shortcut": "identity", "gate": "none", "final_relu": False}


def deep_plain_net():
    """The homework's Part 2 Q3 net, narrow: conv1, 20 inserted 5x5 convs, no BatchNorm."""
    return AllConvNet(widths=(16, 32, 32), depth=1, batchnorm=False, extra_layers=20, extra_width=16,
                      extra_at="half")


def count(model, kind=nn.Conv2d):
    return sum(isinstance(m, kind) for m in model.modules())


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def first_over_last(model) -> float:
    """G(first conv) / G(last conv) after one backward pass on 8 normalized random images."""
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(8, 3, 32, 32, generator=g) * 255 - 127.5) / 64
    y = torch.randint(0, 10, (8,), generator=g)
    F.cross_entropy(model(x), y).backward()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return (convs[0].weight.grad.abs().max() / convs[-1].weight.grad.abs().max()).item()


def built(seed=0, skip_settings=None, scheme=None):
    torch.manual_seed(seed)
    model = deep_plain_net()
    if skip_settings is not None:
        model = skip.change_model(model=model, settings=skip.Settings(**dict(SKIP, **skip_settings)))
    if scheme is not None:
        assert init.change_model(model=model, settings=init.Settings(**{"scheme": scheme, "layers": "all"})) is None
    return model


# ---- skip -------------------------------------------------------------------------------

def test_residual_adds_its_branch_exactly():
    torch.manual_seed(0)
    branch = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
    x = torch.randn(2, 4, 6, 6)
    assert torch.equal(skip.Residual(branch)(x), x + branch(x))
    assert torch.equal(skip.Residual(branch, final_relu=True)(x), torch.relu(x + branch(x)))
    assert torch.equal(skip.Residual(branch, gate=True)(x), x)  # the zero gate starts as the identity
    assert torch.allclose(skip.Residual(branch, skip.identity_conv(4))(x), x + branch(x), atol=1e-6)


def test_wraps_the_inserted_convs_keeping_every_layer():
    model = deep_plain_net()
    before = [id(p) for p in model.parameters()]
    wrapped = skip.change_model(model=model, settings=skip.Settings(**SKIP))
    blocks = [m for m in wrapped if isinstance(m, skip.Residual)]
    assert len(blocks) == 10 and all(count(b.branch) == 2 for b in blocks)
    assert isinstance(wrapped[2], nn.MaxPool2d) and wrapped[3] is blocks[0]  # conv1, ReLU, pool, blocks...
    assert count(wrapped) == count(model) == 24
    assert [id(p) for p in wrapped.parameters()] == before  # the same parameter objects, same order
    assert wrapped(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("settings, blocks, extra", [({}, 10, 0), ({"gate": "zero"}, 10, 1), ({"block": 3}, 7, 0)])
def test_parameter_count(settings, blocks, extra):
    model = deep_plain_net()
    total = n_params(model)
    wrapped = skip.change_model(model=model, settings=skip.Settings(**dict(SKIP, **settings)))
    assert sum(isinstance(m, skip.Residual) for m in wrapped) == blocks
    assert n_params(wrapped) == total + extra * blocks  # identity shortcuts add nothing; a gate adds 1
    assert count(wrapped) == 24


def test_leftover_block_and_all_runs():
    # "all" also finds the later 3x3 32->32 conv; the 5x5 run ends where the kernel size changes.
    wrapped = skip.change_model(model=deep_plain_net(), settings=skip.Settings(**dict(SKIP, layers="all", block=3)))
    sizes = [count(m.branch) for m in wrapped if isinstance(m, skip.Residual)]
    assert sizes == [3] * 6 + [2] + [1]


def test_gate_zero_block_outputs_its_input():
    settings = skip.Settings(**dict(SKIP, gate="zero", shortcut="projection"))
    wrapped = skip.change_model(model=deep_plain_net(), settings=settings)
    block = next(m for m in wrapped if isinstance(m, skip.Residual))
    x = torch.randn(2, 16, 16, 16)
    assert torch.allclose(block(x), x, atol=1e-6)


def test_refuses_models_it_cannot_wrap():
    no_run = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1))
    with pytest.raises(SpecError, match=r"plugins\.skip\.layers.*shape-preserving"):
        skip.change_model(model=no_run, settings=skip.Settings(**SKIP))
    with pytest.raises(SpecError, match=r"plugins\.skip\.layers.*nn\.Sequential"):
        skip.change_model(model=nn.Conv2d(3, 3, 3, padding=1), settings=skip.Settings(**SKIP))
    # A shape-preserving run after a conv that changes shape is not "right after the first conv".
    later = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 16, 3), nn.Conv2d(16, 16, 3, padding=1))
    with pytest.raises(SpecError, match='layers = "all"'):
        skip.change_model(model=later, settings=skip.Settings(**SKIP))
    assert count(skip.change_model(model=later, settings=skip.Settings(**dict(SKIP, layers="all")))) == 3


# ---- init -------------------------------------------------------------------------------

def test_kaiming_std_and_zero_biases():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(64, 128, 5), nn.ReLU(), nn.Linear(256, 10))
    init.change_model(model=model, settings=init.Settings(**{"scheme": "kaiming", "layers": "all"}))
    fan_in = 64 * 5 * 5
    assert model[0].weight.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.1)
    assert model[2].weight.std().item() == pytest.approx(math.sqrt(2 / 256), rel=0.1)
    assert not model[0].bias.any() and not model[2].bias.any()
    # layers = "conv" leaves the linear layer alone.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(64, 128, 5), nn.Linear(256, 10))
    linear = model[1].weight.clone()
    init.change_model(model=model, settings=init.Settings(**{"scheme": "kaiming", "layers": "conv"}))
    assert torch.equal(model[1].weight, linear)


def test_final_relu_moves_the_branch_relu_after_the_addition():
    model = built(skip_settings={"final_relu": True})
    blocks = [m for m in model if isinstance(m, skip.Residual)]
    assert len(blocks) == 10 and count(model, nn.Conv2d) == count(deep_plain_net(), nn.Conv2d)
    for block in blocks:
        assert [type(m) for m in block.branch] == [nn.Conv2d, nn.ReLU, nn.Conv2d]  # ReLU moved, none dropped
        x = torch.randn(2, 16, 16, 16)
        assert torch.equal(block(x), torch.relu(x + block.branch(x)))


def test_fixup_blocks_start_as_identity_and_scale_the_rest():
    settings = skip.Settings(**dict(SKIP, shortcut="projection", final_relu=True))
    model = skip.change_model(model=deep_plain_net(), settings=settings)
    init.change_model(model=model, settings=init.Settings(**{"scheme": "fixup", "layers": "all"}))
    blocks = [m for m in model if isinstance(m, skip.Residual)]
    for block in blocks:
        first, last = [m for m in block.branch if isinstance(m, nn.Conv2d)]
        assert not last.weight.any() and not last.bias.any()
        assert torch.equal(block.shortcut.weight[:, :, 0, 0], torch.eye(16))  # kept as the identity
        x = torch.rand(2, 16, 16, 16)  # non-negative, as after conv1's ReLU
        assert torch.equal(block(x), x)
        # kaiming std sqrt(2 / fan_in), scaled by L^(-1/(2m-2)) = 10^(-1/2)
        expected = math.sqrt(2 / (16 * 25)) * 10 ** -0.5
        assert first.weight.std().item() == pytest.approx(expected, rel=0.1)


def test_fixup_branches_get_gradients_and_train():
    # The branch's last conv starts at zero; its gradient must not be: a ReLU behind it once
    # blocked every branch for the whole run (they stayed exactly zero).
    model = built(skip_settings={"final_relu": True}, scheme="fixup")
    blocks = [m for m in model if isinstance(m, skip.Residual)]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(8, 3, 32, 32, generator=g) * 255, torch.randint(0, 10, (8,), generator=g)
    for _ in range(2):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    for block in blocks:
        first, last = [m for m in block.branch if isinstance(m, nn.Conv2d)]
        assert last.weight.any(), "the zero-initialized conv must move off zero"
        assert first.weight.grad.abs().max() > 0, "with the last conv non-zero, gradients reach the first"


def test_fixup_refuses_a_branch_ending_in_relu():
    model = skip.change_model(model=deep_plain_net(), settings=skip.Settings(**SKIP))
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(SpecError, match=r"plugins\.skip\.final_relu.*never train.*\(allowed: true\)"):
        init.change_model(model=model, settings=init.Settings(**{"scheme": "fixup", "layers": "all"}))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # nothing half-initialized


def test_fixup_needs_residual_blocks():
    with pytest.raises(SpecError, match=r"plugins\.init\.scheme.*\[plugins\.skip\] before \[plugins\.init\]"):
        init.change_model(model=deep_plain_net(), settings=init.Settings(**{"scheme": "fixup", "layers": "all"}))


# ---- the homework's point: vanishing gradients and their fixes ---------------------------

def test_fixes_lift_the_first_layer_gradient_by_orders_of_magnitude():
    # Measured (seeds 0-2): plain 2e-10..8e-10; kaiming, skip, skip + fixup, skip gate=zero all
    # 1e-2..1e-1. Bounds below leave orders of magnitude of slack either way.
    plain = first_over_last(built())
    assert plain < 1e-6  # the gradient vanishes before it reaches conv1
    fixed = {
        "kaiming": first_over_last(built(scheme="kaiming")),
        "skip": first_over_last(built(skip_settings={})),
        "skip+fixup": first_over_last(built(skip_settings={"final_relu": True}, scheme="fixup")),
        "skip gate=zero": first_over_last(built(skip_settings={"gate": "zero"})),
    }
    for name, ratio in fixed.items():
        assert ratio > 1e4 * plain, (name, ratio, plain)
        assert 1e-4 < ratio < 10, (name, ratio)


def test_catalogue_lists_skip_and_init(catalogue):
    for name in ("skip", "init"):
        assert "change_model" in catalogue.hooks_of(name)
    assert set(catalogue.settings_of("skip")) == {"layers", "block", "shortcut", "gate", "final_relu"}
    assert set(catalogue.settings_of("init")) == {"scheme", "layers"}


def test_fixup_without_final_relu_or_skip_fails_when_the_spec_loads(catalogue):
    fixup_spec = Path(__file__).resolve().parents[1] / "specs" / "p2_fix_fixup.toml"
    with pytest.raises(SpecError, match=r"plugins\.skip\.final_relu.*never train"):
        spec_module.load(fixup_spec, catalogue, ["plugins.skip.final_relu=false"])
    with pytest.raises(SpecError, match=r"plugins\.init\.scheme.*\[plugins\.skip\] before"):
        spec_module.load(fixup_spec, catalogue, ["plugins.skip.enabled=false"])
