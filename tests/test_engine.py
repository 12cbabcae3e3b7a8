"""The training step: gradient clipping after plugins read gradients, and the fused optimizer's update."""
import copy

import pytest
import torch
from torch import nn

from runner.training.engine import TrainEvents, create_trainer, make_optimizer

TRAIN = {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}


def tiny_model():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))


def batches(n):
    g = torch.Generator().manual_seed(0)
    return [(torch.randint(0, 256, (8, 3, 8, 8), dtype=torch.uint8, generator=g),
             torch.randint(0, 10, (8,), generator=g)) for _ in range(n)]


def total_norm(model):
    return float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])))


def test_clipping_bounds_the_step_but_plugins_see_the_raw_gradients():
    torch.manual_seed(0)
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6)
    trainer = create_trainer(model, optimizer, None, nn.Sequential(), channels_last=False, clip_grad_norm=0.5)
    seen_by_plugins, seen_by_optimizer = [], []
    trainer.add_event_handler(TrainEvents.BACKWARD_COMPLETED, lambda engine: seen_by_plugins.append(total_norm(model)))
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: seen_by_optimizer.append(total_norm(model)))
    trainer.run(batches(3), max_iters=3)
    # Raw 0-255 pixels make large gradients: every step is clipped, to 0.5.
    assert min(seen_by_plugins) > 5
    assert seen_by_optimizer == [pytest.approx(0.5, rel=1e-4)] * 3


def test_fused_optimizer_makes_the_update_of_the_plain_one():
    torch.manual_seed(0)
    fused_model = tiny_model()
    plain_model = copy.deepcopy(fused_model)
    fused = make_optimizer(fused_model.parameters(), TRAIN)
    plain = torch.optim.SGD(plain_model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4,
                            foreach=False)
    assert fused.defaults["fused"]
    for x, y in batches(4):
        for model, optimizer in ((fused_model, fused), (plain_model, plain)):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x.float() / 255), y).backward()
            optimizer.step()
    for a, b in zip(fused_model.parameters(), plain_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert set(fused.state_dict()["state"][0]) == set(plain.state_dict()["state"][0])  # checkpoints: same keys
