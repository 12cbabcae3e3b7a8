"""Gradients with respect to a network's input alone, as adversarial attacks take them.

`input_gradients(model)` freezes the weights (autograd then records nothing for them), puts the
model in eval mode and gives three kinds of layers a cheaper backward pass with the same bits:

- a convolution that sees few channels (a first layer's 3): autograd computes its input gradient
  as a forward convolution of the output gradient with the flipped kernel, whose output has 3
  channels, so oneDNN fills 3 of a vector's 16 lanes (it cost more than twice the layer's
  forward pass). Here S = 16 // channels neighbouring output columns are computed together, as
  S * channels output channels of one convolution with stride S across the width whose kernel is
  the flipped one shifted by each column's offset (zeros elsewhere): each output is the same sum
  of the same products in the same order, and the zeros add nothing;
- BatchNorm on running statistics: ATen's backward also sums over the batch for the weight
  gradients nobody asked for; here it is the two multiplications ATen forms the input gradient
  with, (grad * invstd) * weight, invstd computed in double as ATen does;
- 2x2 average pooling: ATen zero-fills the input gradient, then adds grad / 4 into it; here
  grad / 4 is repeated over each window (a zero may come out as -0: nothing downstream differs);
- BatchNorm, ReLU and 2x2 average pooling in a row (the Table 1 net's stages): the two
  multiplications are done on the pooled gradient, a quarter of the size, and ReLU's mask then
  takes it straight to full size, one pass over the largest activations instead of five.

Whether a kernel keeps the order of a sum is oneDNN's and ATen's choice per CPU and shape, so the
first call of each shape also runs autograd's own backward and keeps the cheaper one only where
the two results are equal; otherwise that shape keeps autograd's.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

LANES = 16  # fp32 lanes of an AVX-512 vector, oneDNN's channel block on such CPUs
_SAME: dict[tuple, bool] = {}  # (layer kind, shapes, threads) -> the cheaper backward matched autograd's


@contextmanager
def input_gradients(model: nn.Module):
    """Within the block: `model` in eval mode with frozen weights, and the cheaper backward passes
    above in its layers that have one. All is restored on leaving."""
    was_training = model.training
    weights = [p for p in model.parameters() if p.requires_grad]
    model.eval()
    for p in weights:
        p.requires_grad_(False)
    replaced = _replace_forwards(model)
    try:
        yield model
    finally:
        for module in replaced:
            del module.forward
        for p in weights:
            p.requires_grad_(True)
        model.train(was_training)


def shapes_checked() -> dict[str, int]:
    """Layer shapes seen so far in this process: how many take the cheaper backward and how many
    autograd's, because the two differed there."""
    same = sum(_SAME.values())
    return {"cheaper": same, "autograd": len(_SAME) - same}


def _replace_forwards(model: nn.Module) -> list[nn.Module]:
    """Give each layer with a cheaper backward a forward that uses it (an instance attribute: the
    class's forward is untouched). A BatchNorm-ReLU-pooling run in a Sequential becomes one layer:
    the BatchNorm's forward does all three and the other two pass their input on."""
    replaced = []
    for container in model.modules():
        if isinstance(container, nn.Sequential):
            children = list(container)
            for norm, relu, pool in zip(children, children[1:], children[2:]):
                if (type(norm) is nn.BatchNorm2d and _cheaper(norm) and type(relu) is nn.ReLU
                        and _cheaper(pool) is _HalvingAvgPool
                        and "forward" not in vars(norm)):
                    # An instance's own forward, which nn.Module.__call__ calls instead of the class's.
                    norm.forward = _BatchNormReluPool((norm, relu, pool))  # type: ignore[method-assign]
                    relu.forward = pool.forward = _passed_on  # type: ignore[method-assign]
                    replaced += [norm, relu, pool]
    for module in model.modules():
        if "forward" not in vars(module) and _cheaper(module) is not None:
            module.forward = _cheaper(module)(module)
            replaced.append(module)
    return replaced


def _passed_on(x):
    return x


def _cheaper(module: nn.Module):
    if (type(module) is nn.Conv2d and module.in_channels * 4 <= LANES and module.groups == 1
            and module.stride == (1, 1) and module.dilation == (1, 1) and module.padding_mode == "zeros"
            and isinstance(module.padding, tuple)):
        return _PhasedConv
    if (type(module) in (nn.BatchNorm1d, nn.BatchNorm2d) and module.affine
            and module.running_var is not None):
        return _RunningBatchNorm
    if (type(module) is nn.AvgPool2d and module.kernel_size in (2, (2, 2)) and module.stride in (2, (2, 2))
            and module.padding in (0, (0, 0)) and module.divisor_override is None):
        return _HalvingAvgPool
    return None


class _Layer:
    """A layer's forward as it is, with a cheaper backward checked against autograd's per shape."""

    def __init__(self, module: nn.Module):
        self.module = module

    def __call__(self, x):
        if x.device.type != "cpu" or not x.requires_grad:  # the lanes above are a CPU's; no backward
            return self.forward(x)
        key = (type(self).__name__, tuple(x.shape), self.shape_of_weights(), x.stride(), x.dtype,
               torch.get_num_threads())
        if _SAME.get(key) is False:  # the cheaper backward differed here: autograd records as usual
            return self.forward(x)
        return _CheckedBackward.apply(x, self, key)

    def shape_of_weights(self) -> tuple:
        return ()

    def applies_to(self, x) -> bool:
        return True

    def forward(self, x):
        return type(self.module).forward(self.module, x)

    def run(self, x) -> tuple[torch.Tensor, tuple]:
        """The forward's output and what the cheaper backward needs besides the input's shape."""
        return self.forward(x), ()

    def autograd_backward(self, x, grad):
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            return torch.autograd.grad(self.forward(x), x, grad)[0]

    def backward(self, x_shape, grad):
        raise NotImplementedError


class _PhasedConv(_Layer):
    def __init__(self, conv: nn.Conv2d):
        super().__init__(conv)
        assert isinstance(conv.padding, tuple)  # as _cheaper chose it: numbers, not "same" or "valid"
        self.conv, self.padding = conv, conv.padding
        self.phases = LANES // conv.in_channels
        flipped = conv.weight.detach().flip(2, 3).transpose(0, 1)  # (in, out, kh, kw)
        channels, out, kh, kw = flipped.shape
        weight = flipped.new_zeros(self.phases * channels, out, kh, kw + self.phases - 1)
        for phase in range(self.phases):
            weight[phase * channels:(phase + 1) * channels, :, :, phase:phase + kw] = flipped
        self.weight = weight.contiguous(memory_format=torch.channels_last)

    def shape_of_weights(self):
        return tuple(self.conv.weight.shape), self.padding

    def backward(self, x_shape, grad):
        (kh, kw), (ph, pw) = self.conv.kernel_size, self.padding
        width = x_shape[-1]
        left = kw - 1 - pw  # the flipped kernel's padding, as in a forward convolution
        pad = left  # the same on both sides, wide enough to cover every input column
        span = kw + self.phases - 1
        while ((grad.shape[-1] + 2 * pad - span) // self.phases + 1) * self.phases - (pad - left) < width:
            pad += 1
        out = F.conv2d(grad, self.weight, stride=(1, self.phases), padding=(kh - 1 - ph, pad))
        n, _, h, blocks = out.shape
        channels = self.conv.in_channels
        # Channel phase * channels + c of block b is column phases * b + phase, shifted by pad - left.
        columns = out.view(n, self.phases, channels, h, blocks).permute(0, 2, 3, 4, 1)
        columns = columns.reshape(n, channels, h, blocks * self.phases)
        return columns[..., pad - left:pad - left + width]


class _RunningBatchNorm(_Layer):
    def __init__(self, norm):
        super().__init__(norm)
        invstd = (norm.running_var.detach().double() + norm.eps).sqrt().reciprocal().to(norm.weight.dtype)
        self.invstd, self.scale = invstd, norm.weight.detach()

    def backward(self, x_shape, grad):
        shape = (1, -1) + (1,) * (len(x_shape) - 2)
        return (grad * self.invstd.view(shape)).mul_(self.scale.view(shape))


class _HalvingAvgPool(_Layer):
    def applies_to(self, x):
        return x.dim() == 4 and x.shape[-1] % 2 == 0 and x.shape[-2] % 2 == 0 and not self.module.ceil_mode

    def backward(self, x_shape, grad):
        return F.interpolate(grad / 4, scale_factor=2, mode="nearest")


class _BatchNormReluPool(_Layer):
    def __init__(self, modules: tuple[nn.Module, nn.Module, nn.Module]):
        super().__init__(modules[0])  # the BatchNorm, whose forward it becomes
        self.modules = modules
        self.norm, self.pool = _RunningBatchNorm(modules[0]), _HalvingAvgPool(modules[2])

    def applies_to(self, x):
        return self.pool.applies_to(x)

    def forward(self, x):
        return self.run(x)[0]

    def run(self, x):
        norm, _, pool = self.modules
        relu_output = torch.relu_(type(norm).forward(norm, x))  # its own output: in place, as the net does
        return type(pool).forward(pool, relu_output), (relu_output,)

    def backward(self, x_shape, grad, relu_output):  # type: ignore[override]  # also what run() kept
        # ((grad / 4) * invstd) * weight, pooled size; then the mask at each window's four pixels.
        small = self.norm.backward(x_shape, grad / 4)
        n, c, h, w = relu_output.shape
        windows = relu_output.unflatten(3, (w // 2, 2)).unflatten(2, (h // 2, 2))
        spread = small[:, :, :, None, :, None].expand(windows.shape)
        return torch.ops.aten.threshold_backward(spread, windows, 0).reshape(n, c, h, w)


class _CheckedBackward(torch.autograd.Function):
    """The layer's forward; its backward the cheaper one, or on a shape's first call autograd's,
    compared with the cheaper one to decide that shape."""

    @staticmethod
    def forward(ctx, x, layer, key):
        output, ctx.kept = layer.run(x)
        ctx.layer, ctx.key, ctx.x_shape = layer, key, x.shape
        ctx.checking = key not in _SAME
        if ctx.checking:  # autograd's backward is run from the input
            ctx.save_for_backward(x)
        return output

    @staticmethod
    def backward(ctx, grad):
        layer = ctx.layer
        if not ctx.checking:
            return layer.backward(ctx.x_shape, grad, *ctx.kept), None, None
        (x,) = ctx.saved_tensors
        stock = layer.autograd_backward(x, grad)
        if ctx.key not in _SAME:  # several passes of a new shape may be in flight at once
            _SAME[ctx.key] = layer.applies_to(x) and torch.equal(layer.backward(ctx.x_shape, grad, *ctx.kept), stock)
        return stock, None, None
