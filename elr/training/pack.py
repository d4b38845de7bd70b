"""Packed runs: one forward and backward per step for K runs of the same model (elr.training.train.train_many).

    records = run_packed_epoch(states, data, cfgs)   # one epoch of K runs; records[k] as run_epoch(states[k]) gives

A batch-128 step of a CIFAR-sized network leaves most of a GPU idle; K such steps issued as one keep it
busy. Batched (the default on CUDA), the K runs' weights and BatchNorm buffers are stacked along a new leading axis and the model is
applied to all K minibatches at once with torch.func.vmap over torch.func.functional_call: every layer
becomes one batched kernel (a K-group convolution, a K-batched matmul), and BatchNorm normalises each run's
minibatch by its own statistics and updates its own running buffers. Nothing else is shared: each run draws
its own batch order, computes its own loss, and steps its own optimizer and schedule (elr.training.train.EpochPass),
so a packed run's metrics equal the run trained alone up to the summation order inside batched kernels
(tests/test_pack.py: <= 1e-9 relative in float64 over several epochs). Unbatched (the default on a CPU, where
batching K small models was measured slower than running them in turn), a pack runs each model's own forward in
turn within the step: the same kernels as the run alone, so its metrics are bitwise the run's own; the pack
still shares the process, the data and the checkpoint protocol.

Why the sum of the K losses is backpropagated: run k's weights enter only run k's loss, so the gradient of
the sum with respect to them is exactly the gradient of run k's own loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap

from ..config import RunConfig
from .data import Data
from .train import EpochPass, RunState


class PackedForward:
    """model(x_k) for K runs at once: xs (K, B, ...) -> logits (K, B, classes). The runs' parameters are stacked
    afresh at each call (their values change every step), so gradients flow back to each run's own leaf tensors;
    the BatchNorm buffers, updated in place on the stacked copy in train mode, are written back to each run.
    The tensors themselves are looked up once: optimizers and checkpoint restores update them in place."""

    def __init__(self, states: list[RunState], batched: bool | None = None):
        self.states, models = states, [s.model for s in states]
        device = next(models[0].parameters()).device
        self.vmapped = device.type == "cuda" if batched is None else batched
        skeleton = models[0]       # functional_call only borrows its structure; train/eval mode is run 0's
        names = [n for n, _ in skeleton.named_parameters()]
        buffer_names = [n for n, _ in skeleton.named_buffers()]
        own = [(dict(m.named_parameters()), dict(m.named_buffers())) for m in models]
        self.params = {n: [p[n] for p, _ in own] for n in names}           # name -> the K runs' tensors
        self.buffers = {n: [b[n] for _, b in own] for n in buffer_names}

        def one(params, buffers, x):
            return functional_call(skeleton, (params, buffers), (x,))

        self.batched = vmap(one)

    def __call__(self, xs: torch.Tensor) -> torch.Tensor:
        if not self.vmapped:      # each run's own forward (compiled where it is): bitwise the run alone
            return torch.stack([s.forward(x) for s, x in zip(self.states, xs)])
        params = {n: torch.stack(ts) for n, ts in self.params.items()}
        buffers = {n: torch.stack(ts) for n, ts in self.buffers.items()}
        out = self.batched(params, buffers, xs)
        with torch.no_grad():
            for n, stacked in buffers.items():
                for k, t in enumerate(self.buffers[n]):
                    t.copy_(stacked[k])
        return out


def run_packed_epoch(states: list[RunState], data: Data, cfgs: list[RunConfig], on_step=None,
                     batched: bool | None = None) -> list[dict]:
    """One epoch of K runs that share the model, data, batch size and precision (elr.training.train.PACK_KEYS); returns
    each run's metrics record. on_step(i, n) as run_epoch's; batched: vmap (default on CUDA) or each in turn."""
    forward = PackedForward(states, batched)
    passes = [EpochPass(s, data, c) for s, c in zip(states, cfgs)]
    n = len(passes[0].batches)
    assert all(len(p.batches) == n for p in passes), "packed runs must share the data and the batch size"
    for i in range(n):
        batches = [p.batch(i) for p in passes]
        with states[0].autocast():
            outs = forward(torch.stack([x for x, _ in batches]))
            losses = [F.cross_entropy(outs[k], y) for k, (_, y) in enumerate(batches)]
        for s in states:
            s.optimizer.zero_grad(set_to_none=True)
        # run k's weights enter only loss k: the sum's gradient is each run's own (module docstring)
        torch.stack(losses).sum().backward()
        for k, p in enumerate(passes):
            p.step(losses[k], outs[k], batches[k][1])
        if on_step is not None:
            on_step(i + 1, n)
    return [p.finish() for p in passes]
