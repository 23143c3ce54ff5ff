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

How the frameworks spell a split (:func:`megatron_accounted_ends`, :func:`megatron_explicit_ok`,
:func:`torchtitan_split`; the capability rules are :data:`autotune.search.frameworks.RULES`):

- Megatron-LM core_v0.19.0 (``megatron/training/arguments.py``, ``transformer_config.py``): either
  ``--account-for-embedding-in-pipeline-split`` / ``--account-for-loss-in-pipeline-split`` (every stage
  n = (layers + ends) / pp, the accounted ends one fewer, n divisible by vpp), or
  ``--decoder-first-pipeline-num-layers`` / ``--decoder-last-pipeline-num-layers`` (each given count, and
  the count of the stages sharing the rest, divisible by vpp); the two cannot be combined.
- torchtitan 0.3.0 (``torchtitan/distributed/pipeline_parallel.py`` ``_get_pipeline_metadata`` and
  ``_generate_llm_fqn_per_model_part``): ``pipeline_parallel_layers_per_stage`` c layers per virtual stage,
  the first virtual stage ``pipeline_parallel_first_stage_less_layers`` fewer and the last
  ``pipeline_parallel_last_stage_less_layers`` fewer (each at most c), the pp·vpp virtual stages looped
  over the ranks. A rank's shortfall all sits in one virtual stage, so with vpp > 1 it matches the
  chunking above only for a shortfall of at most one layer.
"""

from __future__ import annotations

from typing import Any, NoReturn

import numpy as np

from autotune.errors import InfeasibleConfig

__all__ = ["check_split", "default_split", "has_split", "stage_layers", "pipeline_stage_layers", "virtual_stage_layers",
           "megatron_accounted_ends", "megatron_explicit_ok", "torchtitan_split"]


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


def has_split(layers: int, pp: int, vpp: int) -> bool:
    """Whether :func:`default_split` finds a split of ``layers`` over pp stages of vpp chunks."""
    try:
        default_split(layers, pp, vpp)
    except InfeasibleConfig:
        return False
    return True


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


def megatron_accounted_ends(layers: int, pp: int, vpp: int, first: int | None, last: int | None
                            ) -> tuple[bool, bool] | None:
    """(embedding, loss) account-for flags of Megatron-LM that build this split, or None when none do."""
    ends = (first is not None, last is not None)
    extra = sum(ends)
    if extra == 0 or (layers + extra) % (pp * vpp):
        return None
    n = (layers + extra) // pp
    ok = all(count is None or count == n - 1 for count in (first, last))
    return ends if ok else None


def megatron_explicit_ok(layers: int, pp: int, vpp: int, first: int | None, last: int | None) -> bool:
    """Whether Megatron-LM's first/last stage layer counts build this split (vpp divides every stage)."""
    return all(n % vpp == 0 for n in pipeline_stage_layers(layers, pp, first, last))


def torchtitan_split(layers: int, pp: int, vpp: int, first: int | None, last: int | None
                     ) -> tuple[int, int, int] | None:
    """(layers_per_stage, first_stage_less_layers, last_stage_less_layers) of torchtitan that build this
    split with the chunking of :func:`virtual_stage_layers`, or None when they cannot."""
    counts = pipeline_stage_layers(layers, pp, first, last)
    c = -(-max(counts) // vpp)
    less = (vpp * c - counts[0], vpp * c - counts[-1])
    middle_ok = all(n == vpp * c for n in counts[1:-1])
    if not middle_ok or not all(0 <= d <= (c if vpp == 1 else min(c, 1)) for d in less):
        return None
    return c, less[0], less[1]
