"""Uneven pipeline stages: how many decoder layers each pipeline stage and each virtual stage holds.

A layout's split is ``(pp_first_layers, pp_last_layers)``: the decoder layers on the first and on the last
pipeline stage, ``None`` meaning "as many as a middle stage". The other stages share the rest equally,
and with interleaving (vpp > 1) every middle stage's count must divide into vpp equal chunks. These are
Megatron-LM core_v0.19.0's rules for ``num_layers_in_first_pipeline_stage`` /
``num_layers_in_last_pipeline_stage`` (``megatron/core/transformer/transformer_config.py``
``__post_init__``: counts > 0, middle layers divisible by the middle stages, and by vpp;
``megatron/core/transformer/transformer_block.py`` ``get_num_layers_to_build``). Both ``None`` is the even
split, ``layers / pp`` per stage.

Default split (:func:`default_split`, used by :func:`autotune.config.derive` when ``layers`` is not
divisible by pp·vpp and no count is given), in this order:

1. ``layers + 2`` divisible by pp·vpp: the embedding and the loss each count as one layer, as
   Megatron-LM's ``account_for_embedding_in_pipeline_split`` and ``account_for_loss_in_pipeline_split``
   do (``get_num_layers_to_build``: every stage gets n = (layers + 2) / pp, the first and the last build
   n − 1). NVIDIA's Llama 3.1 405B recipe (126 layers, pp 8, vpp 8) runs so: 128 / 64 = 2 layers per
   virtual stage, 15 on the first and on the last stage, 16 on each middle one.
2. ``layers + 1`` divisible by pp·vpp: the embedding alone counts as a layer (first stage n − 1).
3. Otherwise explicit counts: the smallest middle count m (a multiple of vpp, m·pp >= layers) whose
   remainder ``layers − (pp − 2)·m`` splits into first <= last <= m, both multiples of vpp (Megatron's
   ``--decoder-first/last-pipeline-num-layers`` need that); the first stage takes the smaller share
   (it keeps the most micro-batches in flight).

Virtual stages (:func:`virtual_stage_layers`): a middle stage's m layers split into vpp chunks of m/vpp;
an end stage's n layers split as evenly as possible with the shorter chunks at the pipeline's ends (the
first chunks of the first stage, the last chunks of the last stage): Megatron's account-for-embedding
split (one layer fewer in the first virtual stage) and its explicit counts (n/vpp each) are both of that
form. Virtual stage ``i`` lives on pipeline rank ``i mod pp`` (looped placement).
"""

from __future__ import annotations

from typing import Any, NoReturn

import numpy as np

from autotune.errors import InfeasibleConfig

__all__ = ["check_split", "default_split", "stage_layers", "pipeline_stage_layers", "virtual_stage_layers"]


def _fail(msg: str) -> NoReturn:
    raise InfeasibleConfig(msg)


def _counts(layers: int, pp: int, first: int | None, last: int | None) -> tuple[int, int, int, int]:
    """(first, middle, last, stages sharing the rest) for a split already checked to be whole."""
    given = (first is not None) + (last is not None)
    rest = layers - (first or 0) - (last or 0)
    shared = pp - given
    mid = rest // shared if shared else 0
    return (mid if first is None else first), mid, (mid if last is None else last), shared


def check_split(layers: int, pp: int, vpp: int, first: int | None, last: int | None) -> tuple[int | None, int | None]:
    """Validate a split and return it, ``(None, None)`` when it is the even one.

    Raises :class:`InfeasibleConfig` with the numbers when the counts cannot hold ``layers`` layers.
    """
    for name, value in (("pp_first_layers", first), ("pp_last_layers", last)):
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            _fail(f"{name}={value} must be a positive integer")
        if pp == 1:
            _fail(f"{name}={value} needs pp > 1 (pp=1)")
    given = (first is not None) + (last is not None)
    rest = layers - (first or 0) - (last or 0)
    shared = pp - given
    named = " - ".join([f"layers={layers}"] + [f"{n}={v}" for n, v in (("pp_first_layers", first),
                                                                       ("pp_last_layers", last)) if v is not None])
    if shared == 0:
        if rest != 0:
            _fail(f"pp_first_layers + pp_last_layers = {first}+{last} = {first + last} must equal layers={layers} "  # type: ignore[operator]
                  f"with pp={pp}")
    elif rest < shared or rest % shared:
        _fail(f"{named} = {rest} layers do not split evenly over the other {shared} pipeline stages")
    f, mid, lst, _ = _counts(layers, pp, first, last)
    if pp > 2 and mid % vpp:
        _fail(f"each middle pipeline stage's {mid} layers ({named} over {shared} stages) are not divisible "
              f"by vpp={vpp}")
    if f == mid == lst and layers % (pp * vpp) == 0:
        return None, None
    return first, last


def default_split(layers: int, pp: int, vpp: int) -> tuple[int | None, int | None]:
    """The split :func:`autotune.config.derive` uses when no count is given (see the module docstring)."""
    if layers % (pp * vpp) == 0 or pp == 1:
        return None, None
    for extra, ends in ((2, (1, 1)), (1, (1, 0))):
        if (layers + extra) % (pp * vpp) == 0 and (layers + extra) // pp >= 2:
            n = (layers + extra) // pp
            return (n - 1 if ends[0] else None), (n - 1 if ends[1] else None)
    if layers % vpp == 0:
        step = vpp
        m = -(-layers // pp)
        m += -m % step
        while m <= layers and (pp - 2) * m < layers:
            r = layers - (pp - 2) * m
            f = r // 2 // step * step
            if step <= f and r - f <= m:
                return check_split(layers, pp, vpp, f, r - f)
            m += step
    _fail(f"layers={layers} is not divisible by pp*vpp={pp}*{vpp}={pp * vpp} and no first/last stage split leaves "
          f"equal middle stages divisible by vpp={vpp} (give pp_first_layers / pp_last_layers)")


def stage_layers(layers: int, L: Any) -> tuple[Any, Any, Any]:
    """Decoder layers on the first, a middle and the last pipeline stage of layout ``L`` (a mapping of
    ints or numpy arrays; ``pp_first_layers``/``pp_last_layers`` 0 = as a middle stage). The even split
    gives ``layers / pp`` for all three; the middle count is 0 when pp = 2 and both ends are given."""
    f, lst, pp = L["pp_first_layers"], L["pp_last_layers"], L["pp"]
    shared = pp - np.where(f > 0, 1, 0) - np.where(lst > 0, 1, 0)
    mid = (layers - f - lst) / np.maximum(shared, 1)
    return np.where(f > 0, f, mid), mid, np.where(lst > 0, lst, mid)


def pipeline_stage_layers(layers: int, pp: int, first: int | None, last: int | None) -> list[int]:
    """Decoder layers of each pipeline stage 0 .. pp−1 (a checked split)."""
    f, mid, lst, _ = _counts(layers, pp, first, last)
    return [layers] if pp == 1 else [f] + [mid] * (pp - 2) + [lst]


def virtual_stage_layers(layers: int, pp: int, vpp: int, first: int | None, last: int | None) -> list[int]:
    """Decoder layers of each of the pp·vpp virtual stages, by stage id (rank ``i mod pp``, chunk ``i // pp``)."""
    per_rank = pipeline_stage_layers(layers, pp, first, last)
    chunks = []
    for rank, n in enumerate(per_rank):
        base, extra = divmod(n, vpp)
        even = [base + (1 if v < extra else 0) for v in range(vpp)]
        chunks.append(even[::-1] if rank == 0 and pp > 1 else even)
    return [chunks[i % pp][i // pp] for i in range(pp * vpp)]
