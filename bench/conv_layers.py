"""Each convolution of ConvNetSI timed alone on the CPU: forward, input gradient and weight gradient, in ms and
GFLOP/s, against the machine's measured peak (elr.bench.measure_peak).

    python bench/conv_layers.py [--width 8] [--batch 128] [--layout channels_last|contiguous] [--threads 1]

A layer's inputs are normal noise (a convolution's speed does not depend on its values); the first layer's
input gradient is not timed, since training never computes it. Best of 5 rounds of 10 calls each. This is where
the README's per-layer rates come from; `elr bench --profile` splits whole epochs instead.
"""
import argparse
import sys

import torch

from elr.bench import measure_peak, time_epochs

aten = torch.ops.aten
IMAGE = 32   # CIFAR-10's side (Krizhevsky 2009)


def layers(width: int) -> list[tuple[int, int, int]]:
    """(in channels, out channels, side) of each 3x3 conv: ConvNetSI's c, 2c, 4c, 8c, with a 2x2 max-pool after
    every conv but the first (elr.training.models.ConvNetSI)."""
    channels = [3, width, 2 * width, 4 * width, 8 * width]
    sides = [IMAGE, IMAGE, IMAGE // 2, IMAGE // 4]
    return [(channels[i], channels[i + 1], sides[i]) for i in range(4)]


def best_ms(fn, rounds: int = 5, calls: int = 10) -> float:
    """fn's time in ms: the best of `rounds` rounds of `calls` calls, after one untimed call."""
    fn()

    def round_():
        for _ in range(calls):
            fn()
    return 1e3 * min(time_epochs(round_, rounds, torch.device("cpu"))) / calls


def time_layer(cin: int, cout: int, side: int, batch: int, layout) -> dict:
    x = torch.randn(batch, cin, side, side).contiguous(memory_format=layout)
    w = torch.randn(cout, cin, 3, 3).contiguous(memory_format=layout)
    g = torch.randn(batch, cout, side, side).contiguous(memory_format=layout)
    # a 'same' 3x3 convolution: 2 * 9 * Cin * Cout FLOPs per output pixel; each gradient costs as much again
    flops = 2 * 9 * cin * cout * side * side * batch

    def grad(mask):
        return lambda: aten.convolution_backward(g, x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask)
    row = {"layer": f"{cin}->{cout} @{side}x{side}", "flops": flops,
           "forward": best_ms(lambda: torch.nn.functional.conv2d(x, w, padding=1)),
           "weight grad": best_ms(grad([False, True, False]))}
    row["input grad"] = best_ms(grad([True, False, False])) if cin != 3 else None
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--width", type=int, default=8, help="ConvNetSI width c (default 8, the cpu study's)")
    p.add_argument("--batch", type=int, default=128, help="images per call (default 128, the study's batch)")
    p.add_argument("--layout", default="channels_last", help="channels_last (default) | contiguous")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1, as a study run)")
    args = p.parse_args(argv)
    formats = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}
    if args.layout not in formats:
        print(f"conv_layers: unknown --layout {args.layout!r}; accepted: {', '.join(formats)}", file=sys.stderr)
        return 2
    if min(args.width, args.batch, args.threads) < 1:
        print("conv_layers: --width, --batch and --threads must be integers >= 1", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    peak, source = measure_peak(torch.device("cpu"), "fp32")
    print(f"ConvNetSI width {args.width}, batch {args.batch}, {args.layout}, threads {args.threads}; "
          f"peak {peak / 1e9:,.1f} GFLOP/s ({source})")
    for row in (time_layer(*shape, args.batch, formats[args.layout]) for shape in layers(args.width)):
        cells = [f"{row['layer']:>16s}"]
        for part in ("forward", "input grad", "weight grad"):
            ms = row[part]
            cells.append(f"{part} " + ("-" if ms is None else
                                       f"{ms:6.2f} ms {row['flops'] / ms / 1e6:6.0f} GFLOP/s"))
        print(" | ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
