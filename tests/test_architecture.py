from runner.nets.architecture import forward_flops, markdown, rows
from runner.nets.models import AllConvNet, Table1Net


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


def test_forward_flops_count_the_convs_and_matmuls_of_table1():
    # 2 FLOPs per multiply-add: conv1 at 32x32, conv2 at 16x16, conv3 at 8x8, then FC 1024-64-10.
    expected = 2 * (3 * 32 * 25 * 32 * 32 + 32 * 32 * 25 * 16 * 16 + 32 * 64 * 25 * 8 * 8 + 1024 * 64 + 64 * 10)
    model = Table1Net().train()
    assert forward_flops(model) == expected
    assert model.training  # left as it was found


def test_residual_blocks_show_and_their_gates_count():
    from runner.plugins import skip

    model = skip.change_model(model=AllConvNet(widths=(8, 8, 8), depth=1, batchnorm=False, extra_layers=4,
                                               extra_width=8, extra_at="half"),
                              settings=skip.Settings(gate="zero"))
    real = sum(p.numel() for p in model.parameters())
    table = rows(model)
    blocks = [r for r in table if r["layer"].startswith("Residual")]
    assert len(blocks) == 2 and all(r["parameters"] == 1 and r["depth"] == 0 for r in blocks)  # the gate
    assert table[table.index(blocks[0]) + 1]["depth"] == 1  # its branch's layers sit inside it
    assert sum(r["parameters"] for r in table) == real
    assert markdown(model).splitlines()[-1].endswith(f"| {real:,} |")
