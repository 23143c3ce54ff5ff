"""The ep / etp search dimensions exist only for mixture-of-experts models, with the choices the model allows;
``best``'s reproduce command carries them."""

from __future__ import annotations

import json
import shlex

import pytest

from autotune.errors import SpecError
from autotune.results.reproduce import estimate_command, flag
from autotune.search.space import EXPERT_DIMS, load_space

DENSE = dict(layers=32, heads=32, seq_len=4096, global_batch=64, gpu_counts=[64])


@pytest.mark.parametrize("name", ["megatron", "fsdp"])
def test_dense_models_have_no_expert_dimensions(name) -> None:
    space = load_space(name).specialise(**DENSE)
    assert not {d.name for d in space.dimensions} & set(EXPERT_DIMS)
    assert all("ep" not in p and "etp" not in p for p in _first(space, 50))


@pytest.mark.parametrize("name", ["megatron", "fsdp"])
def test_moe_models_search_ep_within_the_experts(name) -> None:
    # 8 experts on 64 GPUs: ep in 1, 2, 4, 8 (16..64 do not divide 8 experts).
    dims = {d.name: d for d in load_space(name).specialise(**DENSE, experts=8).dimensions}
    assert dims["ep"].choices == (1, 2, 4, 8)
    assert dims["etp"].choices == (1, 2, 4, 8) and dims["etp"].when is not None
    # 256 experts on 64 GPUs: every power of two up to 64.
    wide = {d.name: d for d in load_space(name).specialise(**DENSE, experts=256).dimensions}
    assert wide["ep"].choices == (1, 2, 4, 8, 16, 32, 64)


def test_expert_dimension_with_no_fitting_choice_is_named() -> None:
    # 3 experts: only ep 1 divides them.
    dims = {d.name: d for d in load_space("megatron").specialise(**DENSE, experts=3).dimensions}
    assert dims["ep"].choices == (1,)
    with pytest.raises(SpecError, match="space.dimensions.ep: no choice of \\[64\\] fits .*experts=3"):
        from autotune.search.space import parse_space
        parse_space({"dimensions": {"ep": {"choices": [64]}}}, "x").specialise(**DENSE, experts=3)


def test_reproduce_command_carries_ep_and_etp(cli) -> None:
    """A stored MoE layout's reproduce command sets --ep/--etp, and running it gives that layout back."""
    spec = {"name": "moe", "model": "mixtral-8x7b", "cluster": {"gpu": "h100-sxm", "nodes": 2, "reliability": "off"},
            "training": {"seq_len": 4096, "global_batch": 64}}
    layout = {"tp": 2, "sequence_parallel": True, "ep": 4, "etp": 2, "zero": 1}
    args = shlex.split(estimate_command(spec, layout))
    assert args[args.index(flag("ep")) + 1] == "4" and args[args.index(flag("etp")) + 1] == "2"
    code, out, err = cli(args[1:] + ["--json"])
    assert code == 0, err
    assert {k: json.loads(out)["config"][k] for k in layout} == layout


def _first(space, n: int) -> list[dict]:
    out = []
    for point in space.points():
        out.append(point)
        if len(out) == n:
            break
    return out
