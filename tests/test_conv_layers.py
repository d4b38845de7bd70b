"""bench/conv_layers.py: ConvNetSI's convolution shapes, and a run's output. Nothing here checks a speed."""

import pytest
import torch

from elr.training.models import ConvNetSI

import bench_scripts   # tests/bench_scripts.py


@pytest.fixture(scope="module")
def conv_layers():
    return bench_scripts.load("conv_layers")


@pytest.mark.parametrize("width", [2, 8])
def test_the_shapes_are_the_models(conv_layers, width):
    # the model itself, traced: each conv's channels and the side of the image it sees
    seen = []
    model = ConvNetSI(width)
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(lambda mod, inp, out: seen.append((mod.in_channels, mod.out_channels,
                                                                      inp[0].shape[-1])))
    model(torch.randn(2, 3, 32, 32))
    assert conv_layers.layers(width) == seen


def test_a_run_prints_every_layer(conv_layers, capsys, monkeypatch):
    monkeypatch.setattr(conv_layers, "measure_peak", lambda device, precision: (1e11, "stand-in"))
    monkeypatch.setattr(conv_layers, "best_ms", lambda fn, rounds=5, calls=10: (fn(), 0.002)[1])
    assert conv_layers.main(["--width", "2", "--batch", "4"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("ConvNetSI width 2, batch 4, channels_last, threads 1; peak 100.0 GFLOP/s")
    assert [line.split("|")[0].strip() for line in out[1:]] == ["3->2 @32x32", "2->4 @32x32", "4->8 @16x16",
                                                                "8->16 @8x8"]
    # 2 * 9 * Cin * Cout * side^2 * batch FLOPs in the stand-in 2 us: layer 2 does 589,824, so 295 GFLOP/s
    assert f"{2 * 9 * 2 * 4 * 1024 * 4 / 2e-6 / 1e9:6.0f} GFLOP/s" in out[2] and " 295 GFLOP/s" in out[2]
    assert "input grad -" in out[1] and "input grad -" not in out[2]   # the image needs no gradient


@pytest.mark.parametrize("argv, needle", [(["--layout", "nhwc"], "unknown --layout 'nhwc'; accepted"),
                                          (["--batch", "0"], "must be integers >= 1")])
def test_bad_input_one_line_exit_2(conv_layers, capsys, argv, needle):
    assert conv_layers.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]
