"""Every native-torch layout matches a single-process reference after two SGD-momentum steps (fp32, gloo).

One spawn per world size runs all of its layouts one after another in the same process group (a new
DeviceMesh each), so the whole file costs two process-group start-ups. A dead or hung rank fails the
module fixture through :class:`workers.launch.RankFailure` instead of hanging.
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
from workers.parallel import UnsupportedLayout, parallelize
from workers.train_step import build_optimizer, train_step

pytestmark = pytest.mark.slow

LOSS_RTOL, PARAM_ATOL = 1e-6, 1e-6
LLAMA = get_model("tiny")
GPT = ModelSpec(
    name="gpt-tiny",
    layers=2,
    hidden=64,
    heads=4,
    vocab=256,
    activation="gelu",
    tied_embeddings=True,
    norm="layernorm",
    bias="all",
    position_embedding="learned",
    max_seq_len=64,
)
TRAIN = TrainingSpec(seq_len=SEQ, global_batch=BATCH)


def _cfg(spec: ModelSpec, world: int, **kw: object) -> ParallelConfig:
    return derive(spec, TRAIN, world, **kw)


#: name -> (model, layout, pipeline schedule, precision)
WORLD2 = {
    "dp_ga": (LLAMA, _cfg(LLAMA, 2), "1f1b", "fp32"),
    "zero1": (LLAMA, _cfg(LLAMA, 2, zero=1), "1f1b", "fp32"),
    "zero2": (LLAMA, _cfg(LLAMA, 2, zero=2), "1f1b", "fp32"),
    "zero3": (LLAMA, _cfg(LLAMA, 2, zero=3), "1f1b", "fp32"),
    "hsdp": (LLAMA, _cfg(LLAMA, 2, zero=3, dp_shard=1), "1f1b", "fp32"),
    "tp": (LLAMA, _cfg(LLAMA, 2, tp=2), "1f1b", "fp32"),
    "tp_sp": (LLAMA, _cfg(LLAMA, 2, tp=2, sequence_parallel=True), "1f1b", "fp32"),
    "pp_1f1b": (LLAMA, _cfg(LLAMA, 2, pp=2), "1f1b", "fp32"),
    "pp_interleaved": (LLAMA, _cfg(LLAMA, 2, pp=2, vpp=2), "1f1b", "fp32"),
    "pp_gpipe": (LLAMA, _cfg(LLAMA, 2, pp=2), "gpipe", "fp32"),
    "pp_uneven": (LLAMA, _cfg(LLAMA, 2, pp=2, pp_first_layers=1), "1f1b", "fp32"),  # stages of 1 and 3 blocks
    "recompute_full": (LLAMA, _cfg(LLAMA, 2, recompute="full", recompute_layers=2), "1f1b", "fp32"),
    "recompute_selective": (LLAMA, _cfg(LLAMA, 2, recompute="selective"), "1f1b", "fp32"),
    "gpt_tp_sp": (GPT, _cfg(GPT, 2, tp=2, sequence_parallel=True), "1f1b", "fp32"),
    "gpt_zero3": (GPT, _cfg(GPT, 2, zero=3), "1f1b", "fp32"),
    "cp": (LLAMA, _cfg(LLAMA, 2, cp=2), "1f1b", "fp32"),
    "bf16_zero3": (LLAMA, _cfg(LLAMA, 2, zero=3), "1f1b", "bf16"),
    "bf16_tp_autocast": (LLAMA, _cfg(LLAMA, 2, tp=2), "1f1b", "bf16"),
}
WORLD4 = {
    "tp_dp": (LLAMA, _cfg(LLAMA, 4, tp=2), "1f1b", "fp32"),
    "tp_zero3": (LLAMA, _cfg(LLAMA, 4, tp=2, zero=3), "1f1b", "fp32"),
    "pp_dp": (LLAMA, _cfg(LLAMA, 4, pp=2), "1f1b", "fp32"),
    "hsdp_2x2": (LLAMA, _cfg(LLAMA, 4, zero=2, dp_shard=2), "1f1b", "fp32"),
    "gpt_tp_dp_zero1": (GPT, _cfg(GPT, 4, tp=2, zero=1), "1f1b", "fp32"),
}
#: Layouts this backend cannot run, and a fragment of the reason they must report.
UNSUPPORTED_ON_CPU = {"cp": "context parallelism on cpu"}


def _full_params(par: object) -> dict[str, torch.Tensor]:
    """Full (unsharded) parameters by their reference-model names; a collective over each part's mesh."""
    from torch.distributed.tensor import DTensor

    out = {}
    for part in par.parts:
        module = getattr(part, "module", part)
        for name, _ in module.named_parameters():
            clean = re.sub(r"parametrizations\.(\w+)\.original", r"\1", name)
            owner, _, attr = clean.rpartition(".")
            t = getattr(module.get_submodule(owner), attr)
            t = t.full_tensor() if isinstance(t, DTensor) else t
            out[clean.replace("_checkpoint_wrapped_module.", "")] = t.detach().cpu().clone()
    return out


def _run_layouts(rank: int, cases: dict[str, tuple[ModelSpec, ParallelConfig, str]]) -> dict[str, dict]:
    """Rank body: train every layout for STEPS steps; losses and full parameters (or the unsupported reason)."""
    import torch.distributed as dist

    out: dict[str, dict] = {}
    for name, (spec, cfg, schedule, precision) in cases.items():
        try:
            par = parallelize(spec, cfg, seq_len=SEQ, seed=SEED, pp_schedule=schedule, precision=precision)
        except UnsupportedLayout as e:
            out[name] = {"unsupported": str(e)}
            dist.barrier()
            continue
        opt = build_optimizer(par, "sgd", lr=LR, momentum=0.9)
        losses = [train_step(par, opt, step, seed=SEED) for step in range(STEPS)]
        out[name] = {"losses": losses, "params": _full_params(par)}
        dist.barrier()
    return out


def _merge(ranks: list[dict[str, dict]], name: str) -> dict:
    """One layout's result: rank 0's losses (all ranks agree) and the union of every rank's parameters."""
    first = ranks[0][name]
    if "unsupported" in first:
        return first
    for r in ranks:
        assert r[name]["losses"] == pytest.approx(first["losses"], rel=1e-6), "ranks disagree on the loss"
    params: dict[str, torch.Tensor] = {}
    for r in ranks:
        params |= r[name]["params"]
    return {"losses": first["losses"], "params": params}


@pytest.fixture(scope="module")
def results() -> dict[str, dict]:
    ranks2 = run_ranks(_run_layouts, 2, (WORLD2,), timeout_s=240)
    ranks4 = run_ranks(_run_layouts, 4, (WORLD4,), timeout_s=240)
    merged = {name: _merge(ranks2, name) for name in WORLD2}
    return merged | {name: _merge(ranks4, name) for name in WORLD4}


@pytest.fixture(scope="module")
def references() -> dict[str, tuple[list[float], dict[str, torch.Tensor]]]:
    return {spec.name: reference_run(spec) for spec in (LLAMA, GPT)}


FP32 = [n for n, case in (WORLD2 | WORLD4).items() if case[3] == "fp32" and n not in UNSUPPORTED_ON_CPU]


@pytest.mark.parametrize("name", FP32)
def test_layout_matches_single_process(name: str, results: dict, references: dict) -> None:
    spec = (WORLD2 | WORLD4)[name][0]
    ref_losses, ref_params = references[spec.name]
    got = results[name]
    assert "unsupported" not in got, got.get("unsupported")
    assert got["losses"] == pytest.approx(ref_losses, rel=LOSS_RTOL)
    assert got["params"].keys() == ref_params.keys()
    for pname, ref in ref_params.items():
        torch.testing.assert_close(got["params"][pname], ref, atol=PARAM_ATOL, rtol=0, msg=f"{name}: {pname}")
    assert all(math.isfinite(x) for x in got["losses"])


@pytest.mark.parametrize("name", [n for n, case in WORLD2.items() if case[3] == "bf16"])
def test_bf16_runs_close_to_fp32(name: str, results: dict, references: dict) -> None:
    """bf16 (FSDP MixedPrecisionPolicy or autocast) trains and stays within bf16 rounding of fp32."""
    ref_losses, _ = references[WORLD2[name][0].name]
    assert results[name]["losses"] == pytest.approx(ref_losses, rel=2e-2)
    assert results[name]["losses"] != pytest.approx(ref_losses, rel=1e-7), "bf16 ran in fp32"


@pytest.mark.parametrize("name", list(UNSUPPORTED_ON_CPU))
def test_unsupported_layout_reports_reason(name: str, results: dict) -> None:
    if torch.cuda.is_available():
        pytest.skip("runs on GPUs")
    assert UNSUPPORTED_ON_CPU[name] in results[name]["unsupported"]
