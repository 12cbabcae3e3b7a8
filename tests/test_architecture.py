from runner.architecture import markdown, rows
from runner.models import AllConvNet, Table1Net


def test_rows_follow_forward_order_with_shapes_and_parameters():
    model = Table1Net()
    table = rows(model)
    assert [r["layer"] for r in table[:4]] == ["Conv2d", "BatchNorm2d", "ReLU", "AvgPool2d"]
    assert table[0]["kernel"] == "5x5" and table[0]["padding"] == "2" and table[0]["output"] == "32x32x32"
    assert table[3]["output"] == "32x16x16" and table[-1]["output"] == "10"
    assert sum(r["parameters"] for r in table) == sum(p.numel() for p in model.parameters())


def test_markdown_total():
    model = AllConvNet()
    text = markdown(model)
    assert text.splitlines()[-1].endswith(f"{sum(p.numel() for p in model.parameters()):,} |")
