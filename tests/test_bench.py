"""`elr bench`: its arithmetic, its output's shape from a tiny run, and its one-line errors. Nothing here times
anything: the speeds a tiny run prints are not checked, only that every requested row is there."""

import json
import sys
import time
import types

import pytest
import torch

import elr.training.train
from elr import bench
from elr.cli import main
from test_cli import run_bad    # one definition of a one-line error
from elr.config import RunConfig
from elr.study import Design, expand


# ---------------------------------------------------------------------------------------------- FLOPs
def test_flop_count_equals_the_hand_count():
    # two 3x3 convs, 'same' padding, 32x32: a direct convolution costs 2 K^2 Cin Cout H W FLOPs per image
    # (one multiply and one add per weight per output pixel); training adds the weight gradient (as many) for
    # both and the input gradient (as many) for the second only: the image needs no gradient
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1, bias=False), torch.nn.ReLU(),
                                torch.nn.Conv2d(4, 10, 3, padding=1, bias=False),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    conv1, conv2 = 2 * 9 * 3 * 4 * 32 * 32, 2 * 9 * 4 * 10 * 32 * 32
    train, forward = bench.count_flops(model)
    assert forward == conv1 + conv2
    assert train == 2 * conv1 + 3 * conv2
    assert model.training and all(p.grad is None for p in model.parameters())  # the model is left as found


def test_cpu_peak_is_the_faster_of_a_matrix_product_and_a_direct_convolution(monkeypatch):
    # stand-in clock: the 1024x1024 product takes 1 s, the 3x3 convolution (128 -> 128 channels, 16x16, batch 32)
    # 0.1 s; a 'same' 3x3 conv does 2 * 9 * Cin * Cout multiply-or-adds per output pixel
    times = iter([[1.0] * 5, [0.1] * 5])
    monkeypatch.setattr(bench, "time_epochs", lambda fn, n, device: next(times))
    peak, source = bench.measure_peak(torch.device("cpu"), "fp32")
    gemm, conv = 2 * 1024**3 / 1.0, 2 * 9 * 128 * 128 * (16 * 16) * 32 / 0.1
    assert conv > gemm and peak == pytest.approx(conv)
    assert f"{gemm / 1e9:,.1f} GFLOP/s" in source and f"{conv / 1e9:,.1f} GFLOP/s" in source
    times = iter([[0.001] * 5, [0.1] * 5])        # a faster product wins
    assert bench.measure_peak(torch.device("cpu"), "fp32")[0] == pytest.approx(2 * 1024**3 / 0.001)


def test_mfu_and_units():
    # 100 trained images at 30 FLOPs + 50 evaluated at 10, in 2 s, against a 1000 FLOP/s peak
    assert bench.mfu(100, 50, 2.0, (30.0, 10.0), 1000.0) == pytest.approx((3000 + 500) / 2 / 1000)
    # an evaluated image costs forward/train = 1/3 of a trained one: 100 + 50/3 units in 2 s
    assert bench.seconds_per_unit(2.0, 100, 50, 1 / 3) == pytest.approx(2.0 / (100 + 50 / 3))


# ---------------------------------------------------------------------------------------------- projection
def test_split_sizes_follow_elr_data():
    cfg = lambda **kw: RunConfig(**kw)  # noqa: E731
    assert bench.split_sizes(cfg(data="cifar10")) == (50_000, 10_000)
    assert bench.split_sizes(cfg(data="cifar10", subset=1000)) == (1000, 200)        # proportional
    assert bench.split_sizes(cfg(data="cifar10", subset=1000, test_subset=1000)) == (1000, 1000)
    assert bench.split_sizes(cfg(data="synthetic", subset=400)) == (400, 100)        # 2000/500 split
    assert bench.split_sizes(cfg(data="cifar10", subset=2)) == (2, 1)                # at least one test image


def test_makespan_is_greedy_in_order():
    assert bench.makespan([3, 1, 1, 1], 2) == 3     # 3 | 1+1+1
    assert bench.makespan([1, 1, 3], 2) == 4        # 1+3 | 1: the long run comes last, to the first free worker
    assert bench.makespan([2, 2], 1) == 4
    assert bench.makespan([], 2) == 0


def tiny_design() -> Design:
    elr = {"optimizer": "sgd", "momentum": 0.0, "schedule": "elr", "elr_power": 1, "elr_norm": "all",
           "elr_every": "epoch", "lr0": [0.3], "weight_decay": [5e-4, 5e-3]}
    controls = {"periodic": {"model": "convnet_si", "optimizer": "sgd", "schedule": "constant", "lr": 1.0,
                             "weight_decay": 5e-3, "epochs_factor": 2},
                "other": {"model": "resnet18", "width": 2, "optimizer": "sgd", "schedule": "constant", "lr": 0.1}}
    scales = {"tiny": {"model": "convnet_si", "width": 4, "data": "synthetic", "subset": 400, "epochs": 10}}
    return Design(batch_size=128, elr=elr, baseline={"count": 0, "seed": 1}, scales=scales, controls=controls)


def test_projection_by_hand():
    configs = expand(tiny_design(), "tiny")
    assert [c.model for _, c in configs] == ["convnet_si"] * 3 + ["resnet18"]
    speed = {"label": "convnet_si:4", "mode": "fast", "images_per_s": 1000.0, "seconds_per_unit": 0.001,
             "forward_share": 1 / 3}
    p = bench.project(configs, {("convnet_si", 4, "fp32"): speed}, workers=2)
    # 400 training images and 100 test images (synthetic 2000/500, proportional) per epoch, a test image at 1/3
    per_epoch = (400 + 100 / 3) * 0.001
    runs = [10 * per_epoch, 10 * per_epoch, 20 * per_epoch]      # two ELR runs, the control at 2x epochs
    assert p["serial_hours"] == pytest.approx(sum(runs) / 3600)
    assert p["hours"] == pytest.approx((runs[0] + runs[2]) / 3600)   # worker 1: run 1, then the control
    assert (p["runs"], p["measured_runs"], p["workers"]) == (4, 3, 2)
    assert p["missing"] == ["resnet18:2"]
    assert p["models"]["convnet_si:4"]["runs"] == 3
    assert p["models"]["convnet_si:4"]["hours"] == pytest.approx(sum(runs) / 3600)


def test_projection_reads_the_bench_rows(tmp_path, monkeypatch):
    import dataclasses

    path = tmp_path / "design.toml"
    path.write_text("")
    assert bench.projection([], {}, tmp_path / "absent.toml") == {"error": "no design.toml found"}
    rows = [dict(bench._row("convnet_si", 4, mode, "fp32", k), images_per_s=ips, seconds_per_unit=1 / ips)
            for mode, k, ips in (("loop", None, 9000.0), ("eager", None, 1000.0), ("fast", None, 2000.0),
                                 ("packed", 4, 4000.0))]
    flops = {"convnet_si:4": {"train": 3.0, "forward": 1.0}}
    design = tiny_design()
    design.controls = {"periodic": design.controls["periodic"]}
    monkeypatch.setattr(Design, "load", classmethod(lambda cls, p: dataclasses.replace(design)))
    out = bench.projection(rows, flops, path)
    p = out["scales"]["tiny"]
    assert p["models"]["convnet_si:4"]["mode"] == "fast"            # the best single-run mode, never the loop
    assert p["packed"]["models"]["convnet_si:4"]["mode"] == "packed K=4"
    assert p["packed"]["serial_hours"] == pytest.approx(p["serial_hours"] / 2)


def test_ratios():
    rows = [dict(bench._row("convnet_si", 4, m, p), images_per_s=v) for m, p, v in
            (("loop", "fp32", 100.0), ("eager", "fp32", 200.0), ("fast", "fp32", 500.0), ("eager", "bf16", 300.0))]
    rows.append(bench._row("convnet_si", 4, "packed", "fp32", 4, status=bench.OOM))
    bench.add_ratios(rows)
    assert [(r["x_loop"], r["x_eager"]) for r in rows] == [(1.0, 0.5), (2.0, 1.0), (5.0, 2.5), (3.0, 1.5),
                                                           (None, None)]


# ---------------------------------------------------------------------------------------------- a tiny run
TINY = ["bench", "--models", "convnet_si:2", "--images", "128", "--test-images", "16", "--warmup", "0",
        "--repeats", "1"]
KEYS = {"date", "device", "torch", "threads", "command", "rows", "peak_flops", "flops_per_image", "projection"}


def test_tiny_run_table_and_json(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert main(TINY + ["--modes", "loop,eager,packed", "--pack", "1,2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert KEYS <= set(result)
    got = [(r["model"], r["mode"], r["precision"], r["K"]) for r in result["rows"]]
    assert got == [("convnet_si:2", "loop", "fp32", None), ("convnet_si:2", "eager", "fp32", None),
                   ("convnet_si:2", "packed", "fp32", 1), ("convnet_si:2", "packed", "fp32", 2)]
    for r in result["rows"]:
        if r["status"] == "ok":
            assert r["images_per_s"] > 0 and r["mfu"] > 0 and len(r["epoch_times"]) == 1
            assert r["model_epochs_per_s"] == pytest.approx(r["images_per_s"] / 50_000)
        else:
            assert r["mode"] == "packed" and r["status"] == bench.PACK_MISSING
    packed = {r["K"]: r for r in result["rows"] if r["mode"] == "packed" and r["status"] == "ok"}
    if 2 in packed:
        assert packed[2]["train_images"] == 2 * 128 and packed[2]["eval_images"] in (0, 2 * 16)
    assert result["flops_per_image"]["convnet_si:2"]["train"] > result["flops_per_image"]["convnet_si:2"]["forward"]
    peak = result["peak_flops"]["fp32"]
    assert peak["value"] > 0 and "the faster of sgemm" in peak["source"] and "direct 3x3 convolution" in peak["source"]
    assert set(result["projection"]["scales"]) >= {"cpu", "full"}       # the repository's design.toml
    printed = capsys.readouterr().out
    # the full scale's models at their default widths, named by the width they are built at
    for model in ("convnet_si:8", "convnet_si:32", "resnet18:64"):
        assert f"model {model} not measured" in printed
    text = bench.report_text(result)
    head = text.splitlines()[0]
    for col in ("model", "mode", "precision", "K", "images/s", "model-epochs/s", "× loop", "× eager", "MFU",
                "compile s"):
        assert col in head
    assert text.splitlines()[-1].startswith(result["date"]) and "threads 1" in text.splitlines()[-1]


def test_real_data_runs_on_class_balanced_subsets_of_it(tmp_path, capsys, monkeypatch):
    """--data npz:PATH: the epochs run on the data set's images, subsets of --images / --test-images, and the
    models get its class count (12 here: a model built for CIFAR-10's 10 would fail on labels 10 and 11)."""
    import numpy as np

    rng = np.random.default_rng(0)
    path = tmp_path / "twelve.npz"
    np.savez(path, x_train=rng.integers(0, 256, (240, 32, 32, 3), dtype=np.uint8), y_train=np.arange(240) % 12,
             x_test=rng.integers(0, 256, (60, 32, 32, 3), dtype=np.uint8), y_test=np.arange(60) % 12)
    seen = []
    real_epoch = elr.training.train.run_epoch
    monkeypatch.setattr(elr.training.train, "run_epoch",
                        lambda state, data, cfg: seen.append(data) or real_epoch(state, data, cfg))
    out = tmp_path / "b.json"
    assert main(TINY[:4] + ["132", "--test-images", "24", "--warmup", "0", "--repeats", "1",
                            "--modes", "loop,eager", "--data", f"npz:{path}", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [r["status"] for r in result["rows"]] == ["ok", "ok"]
    assert result["data"] == "npz:twelve.npz, class-balanced subsets of 132/24 train/test images"
    assert "data: npz:twelve.npz" in capsys.readouterr().out
    (data,) = seen
    assert data.name == "npz:twelve.npz" and data.num_classes == 12
    assert len(data.y_train) == 132 and len(data.y_test) == 24
    assert torch.bincount(data.y_train).tolist() == [11] * 12 and torch.bincount(data.y_test).tolist() == [2] * 12
    assert "--data npz:" in result["rerun"]
    # the FLOPs counted are the 12-class model's (its head is 16 x 12, not 16 x 10)
    from elr.training.models import build_model
    twelve = bench.count_flops(build_model("convnet_si", width=2, num_classes=12))
    assert result["flops_per_image"]["convnet_si:2"] == {"train": twelve[0], "forward": twelve[1]}


def test_a_size_error_names_the_bench_flags_and_keeps_the_data_sets_name(tmp_path, capsys):
    import numpy as np

    path = tmp_path / "subset.npz"   # a name that holds the word the message rewrites
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8), y_train=np.arange(40) % 4,
             x_test=rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8), y_test=np.arange(8) % 4)
    line = run_bad(capsys, ["bench", "--data", f"npz:{path}", "--images", "60", "--out", str(tmp_path / "b.json")],
                   "--images 60 is outside what npz:subset.npz allows")
    assert line.endswith("4 <= --images <= 40")


def test_noise_is_the_default_data(tmp_path):
    out = tmp_path / "b.json"
    assert main(TINY + ["--modes", "eager", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["data"].startswith("noise") and "--data noise" in result["rerun"]


def test_fast_row_reports_the_compile_time(tmp_path, monkeypatch):
    """fast: channels_last data, setup_compile called as the trainer calls it; compile s = first - steady epoch."""
    import elr.training.train

    seen = {}

    class SlowFirstCall:
        active = True

        def __init__(self, model):
            self.model, self.calls = model, 0

        def __call__(self, x):
            seen["channels_last"] = x.is_contiguous(memory_format=torch.channels_last)
            self.calls += 1
            if self.calls == 1:
                time.sleep(0.5)   # the "compile"
            return self.model(x)

    def fake_setup(state, cfg, steps, device, notice):
        seen.update(compile=cfg.compile, steps=steps)
        state.forward = SlowFirstCall(state.model)
        return True

    monkeypatch.setattr(elr.training.train, "setup_compile", fake_setup)
    monkeypatch.setattr(bench, "design_path", lambda: tmp_path / "absent.toml")
    out = tmp_path / "b.json"
    assert main(TINY[:-4] + ["--warmup", "1", "--repeats", "2", "--modes", "fast", "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert seen == {"channels_last": True, "compile": "on", "steps": 10**6}
    assert row["mode"] == "fast" and row["compile_s"] == pytest.approx(row["epoch_times"][0] - row["epoch_s"])
    assert 0.4 < row["compile_s"] < 5
    assert row["epoch_s"] == pytest.approx(sum(row["epoch_times"][1:]) / 2)   # the median of two timed epochs
    timed = row["epoch_times"][1:]
    assert row["spread"] == pytest.approx((max(timed) - min(timed)) / row["epoch_s"]) and row["spread"] > 0


def test_profile_shares_by_hand():
    events = [("aten::mkldnn_convolution", 2.0), ("aten::convolution_backward", 3.0),
              ("graph_0_cpp_fused_relu_0", 4.0), ("graph_1_cpp_fused_max_pool2d_1", 0.5), ("aten::index", 0.5)]
    assert bench.profile_shares(events) == {"convolution forward": 0.2, "convolution backward": 0.3,
                                            "compiled kernels (BN, ReLU, pooling)": 0.45, "other": 0.05}
    assert bench.profile_shares([]) == dict.fromkeys(bench.profile_shares(events), 0.0)


@pytest.mark.slow
def test_profile_splits_a_real_fast_epoch(tmp_path, monkeypatch, capsys):
    """--profile on a real compiled epoch: the generated kernels are named (so they are not lost in "other"),
    the shares add up, and the line is printed; later compiles go back to unnamed kernels."""
    import torch._inductor.config as inductor

    if elr.training.train.compile_unavailable(torch.device("cpu")):
        pytest.skip("torch.compile unavailable here")
    monkeypatch.setattr(bench, "design_path", lambda: tmp_path / "absent.toml")
    out = tmp_path / "b.json"
    assert main(TINY + ["--modes", "fast", "--profile", "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    shares = row["profile"]
    assert sum(shares.values()) == pytest.approx(1.0)
    assert shares["compiled kernels (BN, ReLU, pooling)"] > 0.05 and shares["convolution forward"] > 0.05
    assert "profile of one more fast epoch, convnet_si:2 fp32" in capsys.readouterr().out
    assert inductor.cpp.enable_kernel_profile is False


def test_packed_rows_without_pack_and_out_of_memory(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench, "design_path", lambda: tmp_path / "absent.toml")
    out = tmp_path / "b.json"
    monkeypatch.setitem(sys.modules, "elr.training.pack", None)       # the import fails
    assert main(TINY + ["--modes", "packed", "--pack", "1,4", "--out", str(out)]) == 0
    assert [r["status"] for r in json.loads(out.read_text())["rows"]] == [bench.PACK_MISSING] * 2
    assert "not available (elr.training.pack missing)" in capsys.readouterr().out

    calls = []

    def run_packed_epoch(states, data, cfgs):
        calls.append(([c.seed for c in cfgs], [s.model is not states[0].model for s in states[1:]]))
        if len(states) > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        from elr.training.train import run_epoch
        return [run_epoch(s, data, c) for s, c in zip(states, cfgs)]

    monkeypatch.setitem(sys.modules, "elr.training.pack", types.SimpleNamespace(run_packed_epoch=run_packed_epoch))
    assert main(TINY + ["--modes", "packed", "--pack", "1,4", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["status"] for r in rows] == ["ok", bench.OOM]
    assert calls[0] == ([0], []) and calls[1] == ([0, 1, 2, 3], [True, True, True])   # own seeds, own models
    assert rows[0]["eval_images"] == 16 and rows[0]["train_images"] == 128
    assert "projection: no design.toml found" in capsys.readouterr().out


def test_quick_skips_the_big_models_fast_and_packed_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "design_path", lambda: tmp_path / "absent.toml")
    out = tmp_path / "b.json"
    # small epochs, so that a --quick that forgot to skip would still end soon (and fail)
    assert main(["bench", "--quick", "--models", "resnet18", "--modes", "fast,packed", "--images", "128",
                 "--test-images", "16", "--warmup", "0", "--repeats", "1", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["mode"], r["K"], r["status"]) for r in rows] == [("fast", None, bench.SKIPPED),
                                                                ("packed", 1, bench.SKIPPED),
                                                                ("packed", 4, bench.SKIPPED)]


# ---------------------------------------------------------------------------------------------- bad input
BAD = {
    "model": (["--models", "vgg,convnet_si:2"], "accepted: convnet_si, resnet18"),
    "width in models": (["--models", "convnet_si:0"], "positive integer"),
    "width": (["--width", "0"], "--width must be a positive integer"),
    "K zero": (["--pack", "1,0"], "--pack takes integers >= 1"),
    "K text": (["--pack", "four"], "--pack takes integers >= 1"),
    "precision": (["--precisions", "fp32,fp16"], "accepted: fp32, bf16"),
    "mode": (["--modes", "loop,turbo"], "accepted: loop, eager, fast, packed"),
    "repeats": (["--repeats", "0"], "--repeats must be an integer >= 1"),
    "images": (["--images", "1"], "--images must be an integer >= 2"),
    "device": (["--device", "tpu"], "accepted: cpu, cuda"),
    "threads": (["--threads", "0"], "--threads must be an integer >= 1"),
    "profile without fast": (["--profile", "--modes", "eager"], "add fast to --modes"),
    "data": (["--data", "mnist"], "accepted: noise, synthetic, cifar10, npz:PATH"),
    "data missing": (["--data", "npz:no/such.npz"], "no/such.npz does not exist"),
    # more images than the split holds: the message names the bench's flag, not elr train's --subset
    "too many images": (["--data", "synthetic", "--images", "4000"], "--images 4000 is outside"),
    "too many test images": (["--data", "synthetic", "--images", "100", "--test-images", "600"], "--test-images 600 is outside"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_flags_one_line_exit_2(case, capsys, tmp_path):
    flags, needle = BAD[case]
    out = tmp_path / "b.json"
    run_bad(capsys, ["bench", *flags, "--out", str(out)], needle)
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_one_line_exit_2(capsys, tmp_path):
    run_bad(capsys, ["bench", "--device", "cuda", "--out", str(tmp_path / "b.json")], "CUDA is not available")
