"""Expert-parallel layouts match a single-process reference after two SGD-momentum steps (fp32, gloo).

The reference is the whole MoE model in one process on the whole global batch; the layouts split the
routed experts over an ep group (all-to-all token exchange) and the batch over data-parallel ranks. Routing
is dropless and the same on both sides (top-2 of a softmax over 8 experts), so the two compute the same
loss and gradients up to fp32 rounding. One spawn per world size runs its layouts one after another.
"""

from __future__ import annotations

import math
import re

import pytest
import torch

from autotune.catalog import get_model
from autotune.config import ParallelConfig, derive
from autotune.spec import ModelSpec, TrainingSpec
from tests.integration.paritykit import BATCH, LR, SEED, SEQ, STEPS, reference_run
from workers.launch import run_ranks
from workers.model import build_model
from workers.parallel import parallelize
from workers.parallel.ep import expert_params
from workers.train_step import build_optimizer, train_step

pytestmark = pytest.mark.slow

LOSS_RTOL, PARAM_ATOL = 1e-6, 1e-6
MOE = get_model("tiny-moe")
#: tiny-moe with multi-head latent attention (DeepSeek-V2's shapes, scaled down).
MLA = ModelSpec(**MOE.model_dump() | dict(name="tiny-moe-mla", q_lora_rank=48, kv_lora_rank=32, qk_rope_head_dim=16,
                                          qk_nope_head_dim=32, v_head_dim=32))
TRAIN = TrainingSpec(seq_len=SEQ, global_batch=BATCH)


def _case(world: int, spec: ModelSpec = MOE, **kw: object) -> tuple[ModelSpec, ParallelConfig]:
    return spec, derive(spec, TRAIN, world, **kw)


#: name -> (model, layout). ep 2 on 2 ranks (edp 1); ep 2 x edp 2 on 4 data-parallel ranks, also with ZeRO-1
#: (dense states over dp, expert states over edp) and ZeRO-3, with a 2-stage pipeline (ep 2 within each stage)
#: and with tp 2 x dp 2 attention (experts fold over the tp ranks too: ep 2 x edp 2 with sequence parallelism;
#: without it the tp ranks route the same tokens); latent attention with ep and tp; expert tensor parallelism
#: (etp 2 alone, and ep 2 x etp 2 over tp 2 + sp ranks under ZeRO-3).
WORLD2 = {"ep2": _case(2, ep=2), "mla_ep2": _case(2, MLA, ep=2), "etp2": _case(2, etp=2)}
WORLD4 = {
    "ep2_dp4": _case(4, ep=2),
    "ep2_dp4_zero1": _case(4, ep=2, zero=1),
    "ep2_dp4_zero3": _case(4, ep=2, zero=3),
    "ep2_pp2": _case(4, ep=2, pp=2),
    "ep2_tp2_sp": _case(4, ep=2, tp=2, sequence_parallel=True),
    "ep2_tp2": _case(4, ep=2, tp=2),
    "mla_ep2_tp2_sp": _case(4, MLA, ep=2, tp=2, sequence_parallel=True),
    "ep2_etp2_tp2_sp_zero3": _case(4, ep=2, etp=2, tp=2, sequence_parallel=True, zero=3),
}


def _params(par: object) -> dict[str, tuple[tuple[int, int] | None, torch.Tensor]]:
    """Local parameters by reference-model name (tensor-parallel ones gathered), each with the (ep, etp) ranks
    whose slice it is (None: not an expert parameter)."""
    from torch.distributed.tensor import DTensor

    where = (par.expert_mesh["ep"].get_local_rank(), par.expert_mesh["etp"].get_local_rank())
    out = {}
    for part in par.parts:
        module = getattr(part, "module", part)
        experts = {id(p) for p in expert_params(module)}
        for name, p in module.named_parameters():
            clean = re.sub(r"parametrizations\.(\w+)\.original", r"\1", name)
            owner, _, attr = clean.rpartition(".")
            t = getattr(module.get_submodule(owner), attr)
            t = t.full_tensor() if isinstance(t, DTensor) else t
            out[clean] = (where if id(p) in experts else None, t.detach().cpu().clone())
    return out


def _run_layouts(rank: int, cases: dict[str, tuple[ModelSpec, ParallelConfig]]) -> dict[str, dict]:
    """Rank body: train every layout for STEPS steps; losses and local parameters."""
    import torch.distributed as dist

    out: dict[str, dict] = {}
    for name, (spec, cfg) in cases.items():
        par = parallelize(spec, cfg, seq_len=SEQ, seed=SEED)
        opt = build_optimizer(par, "sgd", lr=LR, momentum=0.9)
        losses = [train_step(par, opt, step, seed=SEED) for step in range(STEPS)]
        out[name] = {"losses": losses, "params": _params(par)}
        dist.barrier()
    return out


def _merge(ranks: list[dict[str, dict]], name: str) -> dict:
    """Rank 0's losses (every rank's must agree) and full parameters: expert slices concatenated over etp
    along the expert width (w1, w3: dim 2; w2: dim 1), then over ep along the experts."""
    first = ranks[0][name]
    slices: dict[str, dict] = {}
    for r in ranks:
        assert r[name]["losses"] == pytest.approx(first["losses"], rel=1e-6), "ranks disagree on the loss"
        for pname, (where, t) in r[name]["params"].items():
            slices.setdefault(pname, {})[where] = t
    params = {}
    for pname, s in slices.items():
        if None in s:
            params[pname] = s[None]
            continue
        width_dim = 1 if pname.endswith("w2") else 2
        eps = sorted({ep for ep, _ in s})
        params[pname] = torch.cat([torch.cat([s[e, t] for t in sorted(t for ep, t in s if ep == e)], width_dim)
                                   for e in eps])
    return {"losses": first["losses"], "params": params}


@pytest.fixture(scope="module")
def results() -> dict[str, dict]:
    ranks2 = run_ranks(_run_layouts, 2, (WORLD2,), timeout_s=240)
    ranks4 = run_ranks(_run_layouts, 4, (WORLD4,), timeout_s=240)
    return {n: _merge(ranks2, n) for n in WORLD2} | {n: _merge(ranks4, n) for n in WORLD4}


@pytest.fixture(scope="module")
def references() -> dict[str, tuple[list[float], dict[str, torch.Tensor]]]:
    return {spec.name: reference_run(spec) for spec in (MOE, MLA)}


@pytest.mark.parametrize("name", list(WORLD2 | WORLD4))
def test_ep_layout_matches_single_process(name: str, results: dict, references: dict) -> None:
    ref_losses, ref_params = references[(WORLD2 | WORLD4)[name][0].name]
    got = results[name]
    assert got["losses"] == pytest.approx(ref_losses, rel=LOSS_RTOL)
    assert all(math.isfinite(x) for x in got["losses"])
    assert got["params"].keys() == ref_params.keys()
    for pname, ref in ref_params.items():
        torch.testing.assert_close(got["params"][pname], ref, atol=PARAM_ATOL, rtol=0, msg=f"{name}: {pname}")


def test_reference_trains_every_expert(references: dict) -> None:
    # The parity above is only meaningful if the experts were updated: every routed expert's weights
    # moved from their seeded start (each of the 8 experts gets some of the 2 * 64 token copies).
    _, params = references[MOE.name]
    start = dict(build_model(MOE, seq_len=SEQ, seed=SEED).named_parameters())
    for name in (n for n in params if ".experts." in n):
        moved = (params[name] - start[name].detach()).flatten(1).abs().amax(1)
        assert (moved > 0).all(), name
