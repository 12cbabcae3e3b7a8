"""runner.input_grad: input gradients equal autograd's bit for bit, whichever backward computes them."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from runner.input_grad import input_gradients, shapes_checked
from runner.nets import input_grad
from runner.nets.models import AllConvNet, Table1Net


def trained_looking(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and running statistics far from BatchNorm's defaults (1 and 0)."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.normal_(0, 0.5, generator=generator)
            module.running_var.uniform_(0.2, 3.0, generator=generator)
            module.weight.data.uniform_(-1.0, 2.0, generator=generator)
            module.bias.data.normal_(0, 0.5, generator=generator)
    return model.to(memory_format=torch.channels_last).eval()


def autograd_input_grad(model, images, labels):
    images = images.clone().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(images), labels, reduction="sum")
    return torch.autograd.grad(loss, images)[0]


def frozen(model):
    for p in model.parameters():
        p.requires_grad_(False)
    return model


MODELS = {
    "table1": lambda: Table1Net(),
    "allconv": lambda: AllConvNet(widths=(16, 32), depth=1, conv1_width=8),
}


@pytest.fixture(autouse=True)
def fresh_checks(monkeypatch):
    monkeypatch.setattr(input_grad, "_SAME", {})


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("batch", [1, 9, 64])
def test_the_gradients_are_autograds_bit_for_bit(name, batch):
    torch.manual_seed(batch)
    model = trained_looking(MODELS[name]())
    images, labels = torch.rand(batch, 3, 32, 32) * 255, torch.randint(0, 10, (batch,))
    with input_gradients(model):
        first = autograd_input_grad(model, images, labels)   # checks each layer's shape
        second = autograd_input_grad(model, images, labels)  # the cheaper backward where it matched
    expected = autograd_input_grad(frozen(model), images, labels)
    assert torch.equal(first, expected) and torch.equal(second, expected)
    assert sum(shapes_checked().values()) > 0


def test_a_table1_net_has_its_conv1_stages_and_batchnorm_replaced_inside_only():
    model = trained_looking(Table1Net())
    with input_gradients(model):
        replaced = [type(m).__name__ for m in model.modules() if "forward" in vars(m)]
        assert not model.training and not any(p.requires_grad for p in model.parameters())
    # conv1; three BatchNorm-ReLU-pool stages (three modules each); the classifier's BatchNorm1d
    assert replaced.count("Conv2d") == 1 and replaced.count("AvgPool2d") == 3 and replaced.count("ReLU") == 3
    assert replaced.count("BatchNorm2d") == 3 and replaced.count("BatchNorm1d") == 1
    assert not any("forward" in vars(m) for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())


def test_state_is_restored_when_the_block_raises():
    model = Table1Net().train()
    with pytest.raises(RuntimeError, match="stop"):
        with input_gradients(model):
            raise RuntimeError("stop")
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert not any("forward" in vars(m) for m in model.modules())


def test_a_cheaper_backward_that_differs_is_not_used(monkeypatch):
    torch.manual_seed(0)
    model = trained_looking(Table1Net())
    images, labels = torch.rand(16, 3, 32, 32) * 255, torch.randint(0, 10, (16,))
    expected = autograd_input_grad(frozen(model), images, labels)
    for p in model.parameters():
        p.requires_grad_(True)
    wrong = input_grad._PhasedConv.backward
    monkeypatch.setattr(input_grad._PhasedConv, "backward", lambda self, *a: wrong(self, *a) * 2)
    with input_gradients(model):
        grads = [autograd_input_grad(model, images, labels) for _ in range(2)]
    assert all(torch.equal(g, expected) for g in grads)
    assert shapes_checked()["autograd"] == 1  # conv1's shape; the other layers matched


def test_odd_sizes_and_no_gradient_take_the_layers_own_forward():
    torch.manual_seed(0)
    pool_net = trained_looking(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8),
                                             nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(8 * 7 * 7, 10)))
    images, labels = torch.rand(10, 3, 15, 15) * 255, torch.randint(0, 10, (10,))
    with torch.no_grad():
        outputs = pool_net(images)
    expected = autograd_input_grad(frozen(pool_net), images, labels)
    with input_gradients(pool_net):
        assert torch.equal(autograd_input_grad(pool_net, images, labels), expected)
        with torch.no_grad():
            assert torch.equal(pool_net(images), outputs)
    assert shapes_checked()["autograd"] >= 1  # the 15x15 pooling stage has no cheaper backward
