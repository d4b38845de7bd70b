"""Side by side in one process: the stock compiled training step (A) against a variant of it (B), on the CPU.

    python bench/compile_ab.py VARIANT [--data noise | npz:PATH] [--rounds 10] [--steps 10]
    python bench/compile_ab.py --list

Both steps train their own ConvNetSI width 8 (channels_last, batch 128, one thread, SGD with momentum 0.9 and L2
5e-4, cross-entropy) from the same initial weights on the same batches, cycling through 10 batches of the data.
After the compile and one warm-up pass A and B alternate in rounds of --steps steps (the order flips every
round), so a drift in the machine's speed hits both. It prints each step's median time, A/B (above 1: the
variant is faster) and the largest weight difference after the warm-up (0.0: the variant's arithmetic is bit
for bit the stock step's). This is how the README's Speed section timed the variants it names; `elr bench`
times whole epochs of the trainer instead.

A variant changes torch's inductor globally (a config value, its decomposition table, its lowerings), so it is
applied only while B compiles and undone afterwards; `torch._dynamo.reset()` separates the two compilations.
"""
import argparse
import contextlib
import statistics
import sys
import time

import torch

aten = torch.ops.aten

VARIANTS = {
    "eager": "no compile: the channels_last eager step",
    "max-autotune": "torch.compile(mode='max-autotune-no-cudagraphs')",
    "aggressive-fusion": "inductor config aggressive_fusion = True",
    "simdlen-256": "inductor config cpp.simdlen = 256 (256-bit vectors)",
    "cpp-wrapper": "inductor config cpp_wrapper = True (the graph called from C++)",
    "two-step-variance": "BatchNorm statistics by the two-pass variance, not Welford",
    "gather-maxpool-backward": "inductor's own gather lowering of the max-pool backward (its scatter "
                               "decomposition removed)",
    "aten-maxpool-forward": "aten's max-pool forward kernel as a fallback in the graph",
    "aten-maxpool": "aten's max-pool forward and backward kernels as fallbacks",
    "aten-backward": "aten's BatchNorm, ReLU and max-pool backward kernels as fallbacks",
}
CONFIG = {"aggressive-fusion": {"aggressive_fusion": True}, "simdlen-256": {"cpp.simdlen": 256},
          "cpp-wrapper": {"cpp_wrapper": True},
          # above this many reduced elements inductor uses Welford on a CPU; 2**40 means always two passes
          "two-step-variance": {"cpp.use_two_step_variance_threshold": 2**40}}
FALLBACKS = {"aten-maxpool-forward": [aten.max_pool2d_with_indices],
             "aten-maxpool": [aten.max_pool2d_with_indices, aten.max_pool2d_with_indices_backward],
             "aten-backward": [aten.native_batch_norm_backward, aten.threshold_backward,
                               aten.max_pool2d_with_indices_backward]}
BATCH, BATCHES = 128, 10


def overloads(op) -> set:
    """The packet and its overloads: a decomposition or lowering may be registered under any of them."""
    return {op} | {getattr(op, name) for name in op.overloads()}


@contextlib.contextmanager
def variant(name: str):
    """Inductor as the variant needs it, restored on exit (compiled code keeps what it was compiled with)."""
    import torch._inductor.config as config
    import torch._inductor.decomposition as decomposition
    import torch._inductor.lowering as lowering

    decompositions, lowerings = dict(decomposition.decompositions), dict(lowering.lowerings)
    fallbacks = set(lowering.fallbacks)
    try:
        removed = set()
        if name == "gather-maxpool-backward":
            removed = overloads(aten.max_pool2d_with_indices_backward)
        for op in FALLBACKS.get(name, []):
            removed |= overloads(op)
        for key in removed:
            decomposition.decompositions.pop(key, None)
        for op in FALLBACKS.get(name, []):
            for key in overloads(op):
                lowering.lowerings.pop(key, None)
            lowering.make_fallback(op, warn=False)
        with config.patch(CONFIG.get(name, {})):
            yield
    finally:
        decomposition.decompositions.clear()
        decomposition.decompositions.update(decompositions)
        lowering.lowerings.clear()
        lowering.lowerings.update(lowerings)
        lowering.fallbacks.clear()
        lowering.fallbacks.update(fallbacks)


def batches(spec: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """BATCHES batches of BATCH images, channels_last, as `elr bench --data SPEC` makes them: normal noise and
    uniform labels, or a class-balanced subset of a data set as elr.training.data loads it."""
    from elr.bench import bench_data

    data = bench_data(spec, BATCH * BATCHES, 10, torch.device("cpu"))
    x, y = data.x_train.contiguous(memory_format=torch.channels_last), data.y_train
    return [(x[i * BATCH:(i + 1) * BATCH], y[i * BATCH:(i + 1) * BATCH]) for i in range(BATCHES)]


def make_step(data, name: str | None):
    """A training step over data's batches in turn, and its model; compiled as stock (name None) or as the
    variant, and run once over every batch (the compile, then a warm pass)."""
    from elr.training.models import ConvNetSI

    torch.manual_seed(0)
    model = ConvNetSI(8).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9,
                          weight_decay=5e-4)
    torch._dynamo.reset()
    if name == "eager":
        forward = model
    elif name == "max-autotune":
        forward = torch.compile(model, dynamic=False, mode="max-autotune-no-cudagraphs")
    else:
        forward = torch.compile(model, dynamic=False)
    turn = [0]

    def step():
        x, y = data[turn[0] % len(data)]
        turn[0] += 1
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(forward(x), y).backward()
        opt.step()

    with variant(name) if name else contextlib.nullcontext():
        for _ in data:
            step()
    return step, model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("variant", nargs="?", help="one of: " + ", ".join(VARIANTS))
    p.add_argument("--data", default="noise", help="noise (default) | synthetic | cifar10 | npz:PATH")
    p.add_argument("--rounds", type=int, default=10, help="timed rounds of each step (default 10)")
    p.add_argument("--steps", type=int, default=10, help="steps per round (default 10)")
    p.add_argument("--list", action="store_true", help="list the variants and what each changes")
    args = p.parse_args(argv)
    if args.list:
        print("\n".join(f"{k:24s} {v}" for k, v in VARIANTS.items()))
        return 0
    if args.variant not in VARIANTS:
        print(f"compile_ab: unknown variant {args.variant!r}; accepted: {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    if args.rounds < 1 or args.steps < 1:
        print("compile_ab: --rounds and --steps must be integers >= 1", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    try:
        data = batches(args.data)
    except ValueError as e:   # elr.training.data.DataError: one line naming the problem
        print(f"compile_ab: {e}", file=sys.stderr)
        return 2
    step_a, model_a = make_step(data, None)
    step_b, model_b = make_step(data, args.variant)
    diff = max((a - b).abs().max().item() for a, b in zip(model_a.parameters(), model_b.parameters()))
    times = {"A": [], "B": []}
    for r in range(args.rounds):
        for key, step in (("A", step_a), ("B", step_b)) if r % 2 else (("B", step_b), ("A", step_a)):
            t = time.perf_counter()
            for _ in range(args.steps):
                step()
            times[key].append((time.perf_counter() - t) / args.steps)
    a, b = statistics.median(times["A"]), statistics.median(times["B"])
    print(f"{args.variant} ({VARIANTS[args.variant]}), data {args.data}: stock {a * 1e3:.2f} ms a step, variant "
          f"{b * 1e3:.2f} ms; A/B = {a / b:.3f}; max |weight A - B| after the warm pass: {diff:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
