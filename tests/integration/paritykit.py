"""The single-process reference the parallel parity tests compare against."""

from __future__ import annotations

import torch

from autotune.spec import ModelSpec
from workers.model import build_model, synthetic_batch
from workers.parallel import cross_entropy

__all__ = ["SEQ", "BATCH", "STEPS", "SEED", "LR", "reference_run"]

#: Sequence, global batch, optimizer steps, seed and SGD learning rate shared by both sides of a parity test.
SEQ, BATCH, STEPS, SEED, LR = 16, 4, 2, 3, 0.5


def reference_run(spec: ModelSpec) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Single process: the whole global batch in one forward, same seeds and optimizer (SGD, momentum 0.9);
    the losses of each step and the parameters after the last."""
    model = build_model(spec, seq_len=SEQ, seed=SEED)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    losses = []
    for step in range(STEPS):
        inputs, labels = synthetic_batch(spec.vocab, SEQ, BATCH, step, SEED)
        opt.zero_grad()
        loss = cross_entropy(model(inputs), labels)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, {n: p.detach().clone() for n, p in model.named_parameters()}
