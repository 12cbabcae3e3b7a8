"""The homework's nets, registered through the same hook any plugin uses.

Every model takes float images (N, 3, 32, 32) and returns logits (softmax lives in the loss).
"""
from __future__ import annotations

from torch import nn

from ..plugin_host.hookspecs import hookimpl
from ..spec.schema import Setting


def conv_bn_relu(cin: int, cout: int, kernel: int = 5, *, bn: bool = True, stride: int = 1) -> list[nn.Module]:
    # Without BatchNorm the conv keeps its bias; with it the bias is redundant.
    layers = [nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=not bn)]
    return layers + ([nn.BatchNorm2d(cout)] if bn else []) + [nn.ReLU(inplace=True)]


class Table1Net(nn.Sequential):
    """Part 1, Table 1: three conv5x5 + BN + ReLU + avgpool2 stages, FC64 + BN + ReLU, FC10."""

    def __init__(self, widths=(32, 32, 64), hidden: int = 64, classes: int = 10):
        layers, cin = [], 3
        for width in widths:
            layers += conv_bn_relu(cin, width) + [nn.AvgPool2d(2, 2)]
            cin = width
        side = 32 // 2 ** len(widths)
        layers += [nn.Flatten(), nn.Linear(cin * side * side, hidden, bias=False), nn.BatchNorm1d(hidden),
                   nn.ReLU(inplace=True), nn.Linear(hidden, classes)]
        super().__init__(*layers)


class AllConvNet(nn.Sequential):
    """Part 2: convolutions with ReLU, pooling and a conv classifier with global average pooling.

    Stages of `widths[i]` channels, `depth` 3x3 convs each (the first conv is 5x5, conv1 of the
    homework), max-pooled 2x between stages; the classifier is a 1x1 conv to 10 channels
    averaged over space. `extra_layers` 5x5 convs (pad 2, stride 1) sit right after conv1: the
    homework's Part 2 Q3 net, at full resolution or after a first pooling (`extra_at`). With
    `extra_at = "half"` the first stage shares conv1's pooled resolution with the next one,
    unless `pool_first_stage` pools after it too. `conv1_width` narrows conv1 alone (and the
    inserted convs, which take its width unless `extra_width` says otherwise): at 32x32 its
    channels cost 4x what they cost a stage after the first pooling.
    """

    def __init__(self, widths=(64, 128, 256), depth: int = 2, batchnorm: bool = True, extra_layers: int = 0,
                 extra_width: int = 0, extra_at: str = "full", pool_first_stage: bool = False,
                 conv1_width: int = 0, classes: int = 10):
        cin = conv1_width or widths[0]
        layers = conv_bn_relu(3, cin, 5, bn=batchnorm)
        extra_width = extra_width or cin
        extra = []
        for _ in range(extra_layers):
            extra += conv_bn_relu(cin, extra_width, 5, bn=batchnorm)
            cin = extra_width
        if extra_at == "half":
            layers += [nn.MaxPool2d(2)]
        layers += extra
        for stage, width in enumerate(widths):
            for _ in range(depth - (1 if stage == 0 else 0)):
                layers += conv_bn_relu(cin, width, 3, bn=batchnorm)
                cin = width
            if stage < len(widths) - 1 and (stage > 0 or extra_at == "full" or pool_first_stage):
                layers += [nn.MaxPool2d(2)]
        layers += [nn.Conv2d(cin, classes, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        super().__init__(*layers)


TABLE1_SETTINGS = {
    # Each stage halves the 32x32 image: at most 5 stages leave a pixel for the FC layer.
    "widths": Setting([32, 32, 64], "conv widths of the stages (the homework's three)", item=int, min=1,
                      length=(1, 5)),
    "hidden": Setting(64, "width of the hidden fully connected layer", min=1),
}

ALLCONV_SETTINGS = {
    "widths": Setting([64, 128, 256], "channels of each stage", item=int, min=1, length=(1, 5)),
    "depth": Setting(2, "convs per stage", min=1),
    "batchnorm": Setting(True, "BatchNorm after every conv"),
    "extra_layers": Setting(0, "5x5 convs inserted between conv1 and conv2 (Part 2 Q3)", min=0),
    "extra_width": Setting(0, "channels of the inserted convs (0: conv1's)", min=0),
    "conv1_width": Setting(0, "channels of conv1 (0: the first stage's)", min=0),
    "extra_at": Setting("full", "resolution of the inserted convs: full 32x32, or half after a first pool",
                        choices=("full", "half")),
    # Halving before each wider stage keeps the cost of a stage about constant: wide late stages
    # at 8x8 and 4x4 cost what narrow ones at 16x16 do.
    "pool_first_stage": Setting(False, "with extra_at = half, max-pool after the first stage too (conv1's "
                                "pool already halved the image), so each stage runs at half the last's size"),
}


@hookimpl
def register_models(register):
    register("table1", lambda widths, hidden: Table1Net(tuple(widths), hidden), TABLE1_SETTINGS,
             help="Part 1 Table 1 net: 3x (conv5x5 + BN + ReLU + avgpool2), FC64 + BN + ReLU, FC10")
    register("allconv", lambda **s: AllConvNet(**dict(s, widths=tuple(s["widths"]))), ALLCONV_SETTINGS,
             help="Part 2 all-convolutional net (conv + ReLU, pooling, conv classifier)")
