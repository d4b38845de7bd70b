"""bench/compile_ab.py, the side-by-side timer of compile variants: each variant changes inductor only while
its step compiles, and a run prints the comparison. Nothing here checks a speed."""

import pytest
import torch
import torch._inductor.config as config
import torch._inductor.decomposition as decomposition
import torch._inductor.lowering as lowering

import bench_scripts   # tests/bench_scripts.py

aten = torch.ops.aten


@pytest.fixture(scope="module")
def compile_ab():
    return bench_scripts.load("compile_ab")


def inductor_state():
    return (dict(decomposition.decompositions), dict(lowering.lowerings), set(lowering.fallbacks),
            config.cpp.use_two_step_variance_threshold, config.aggressive_fusion)


def test_each_variant_changes_inductor_only_inside_its_context(compile_ab):
    before = inductor_state()
    bn_backward, pool_backward = aten.native_batch_norm_backward.default, aten.max_pool2d_with_indices_backward.default
    assert bn_backward in decomposition.decompositions and pool_backward in decomposition.decompositions
    with compile_ab.variant("aten-backward"):
        # aten's kernel: no decomposition, a fallback lowering in its place
        for op in (bn_backward, pool_backward, aten.threshold_backward.default):
            assert op not in decomposition.decompositions and op in lowering.lowerings
        assert lowering.lowerings[pool_backward] is not before[1].get(pool_backward)
    with compile_ab.variant("gather-maxpool-backward"):
        # inductor's own lowering, no longer preempted by the scatter decomposition
        assert pool_backward not in decomposition.decompositions
        assert lowering.lowerings[aten.max_pool2d_with_indices_backward] is before[1][
            aten.max_pool2d_with_indices_backward]
    with compile_ab.variant("two-step-variance"):
        assert config.cpp.use_two_step_variance_threshold == 2**40
    with compile_ab.variant("aggressive-fusion"):
        assert config.aggressive_fusion is True
    after = inductor_state()
    assert after[0] == before[0] and after[1] == before[1] and after[2:] == before[2:]


def test_a_variant_is_undone_when_its_compile_fails(compile_ab):
    before = inductor_state()
    with pytest.raises(RuntimeError), compile_ab.variant("aten-maxpool"):
        raise RuntimeError("the compile failed")
    assert inductor_state()[:3] == before[:3]


def test_a_run_prints_the_comparison(compile_ab, capsys):
    assert compile_ab.main(["eager", "--rounds", "2", "--steps", "1"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("eager (no compile") and "A/B = " in line and "max |weight A - B|" in line


@pytest.mark.parametrize("argv, needle", [(["turbo"], "unknown variant 'turbo'; accepted: eager"),
                                          (["eager", "--rounds", "0"], "must be integers >= 1"),
                                          (["eager", "--data", "npz:no/such.npz"], "does not exist")])
def test_bad_input_one_line_exit_2(compile_ab, capsys, argv, needle):
    assert compile_ab.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("compile_ab: ") and needle in err[0]
