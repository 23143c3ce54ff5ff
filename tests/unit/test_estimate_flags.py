"""``autotune estimate`` has a flag for every layout field and training switch, each one takes effect, and a
bad value names its flag and the allowed values.

The field lists are read from ParallelConfig and TrainingSpec themselves, so a field added later without
a flag fails here. Effects are checked against hand arithmetic: bytes per parameter (ZeRO paper: Adam
mixed precision 2 + 4 + 12 B; momentum SGD keeps one fp32 state), the attention score matrices flash
attention does not store (Korthikanti et al. 2022: 2·a·s² bytes per sequence per layer without dropout,
versus a fp32 log-sum-exp per head and token), seed 001's step count and cost = GPU-hours x price.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import typer

from autotune.cli import app
from autotune.config import ParallelConfig
from autotune.results.reproduce import flag
from autotune.spec import TrainingSpec

ESTIMATE = typer.main.get_command(app).commands["estimate"]  # type: ignore[attr-defined]
OPTIONS = {p.name: p for p in ESTIMATE.params}
LAYOUT_FIELDS = [f.name for f in dataclasses.fields(ParallelConfig) if f.name not in ("dp", "grad_accum")]
TRAINING_FIELDS = list(TrainingSpec.model_fields)
BOOL_FIELDS = {f.name for f in dataclasses.fields(ParallelConfig) if f.type == "bool"} | {
    name for name, f in TrainingSpec.model_fields.items() if f.annotation is bool}
BASE = ["estimate", "--model", "llama3-8b", "--gpu", "h100-sxm", "--gpus", "16", "--seq-len", "2048",
        "--global-batch", "64", "--json"]
#: A non-default value for every layout field (two layouts: GPipe cannot interleave).
INTERLEAVED = {"tp": 2, "pp": 2, "cp": 2, "vpp": 2, "zero": 1, "dp_shard": 1, "micro_batch": 2, "recompute": "full",
               "recompute_layers": 3, "sequence_parallel": True, "tp_comm_overlap": True,
               "overlap_grad_reduce": False, "overlap_param_gather": False}
GPIPE = {"pp": 4, "pp_schedule": "gpipe", "zero": 3, "dp_shard": 2, "recompute": "selective"}
#: The expert-parallel fields, on a mixture-of-experts preset (a dense model refuses them).
EXPERT = {"ep": 4, "etp": 2}


def _args(values: dict) -> list[str]:
    out: list[str] = []
    for name, value in values.items():
        out += ([flag(name) if value else f"--no-{flag(name)[2:]}"] if isinstance(value, bool)
                else [flag(name), str(value)])
    return out


def _run(cli, extra: list[str]) -> dict:
    code, out, err = cli(BASE + extra)
    assert code == 0, err
    return json.loads(out)


@pytest.mark.parametrize("name", LAYOUT_FIELDS + TRAINING_FIELDS)
def test_every_field_has_its_flag(name: str) -> None:
    assert name in OPTIONS, f"estimate has no {flag(name)} for field {name}"
    opt = OPTIONS[name]
    assert flag(name) in opt.opts
    if name in BOOL_FIELDS:
        assert f"--no-{flag(name)[2:]}" in opt.secondary_opts
    assert opt.default is None, f"{flag(name)}: left out, the spec's value or the field's default applies"


def test_every_layout_flag_reaches_the_layout(cli) -> None:
    assert set(INTERLEAVED) | set(GPIPE) | set(EXPERT) == set(LAYOUT_FIELDS)
    for values in (INTERLEAVED, GPIPE):
        cfg = _run(cli, _args(values))["config"]
        assert {k: cfg[k] for k in values} == values
    i = BASE.index("llama3-8b")
    code, out, err = cli(BASE[:i] + ["mixtral-8x7b"] + BASE[i + 1:] + _args(EXPERT))
    assert code == 0, err
    assert {k: json.loads(out)["config"][k] for k in EXPERT} == EXPERT
    # 16 GPUs / (tp 2 * pp 2 * cp 2) = dp 2; 64 / (micro-batch 2 * dp 2) = 16 micro-batches
    cfg = _run(cli, _args(INTERLEAVED))["config"]
    assert (cfg["dp"], cfg["grad_accum"], cfg["dp_replicate"]) == (2, 16, 2)


def test_sp_is_an_alias() -> None:
    assert {"--sequence-parallel", "--sp"} <= set(OPTIONS["sequence_parallel"].opts)


def test_optimizer_and_grad_buffers_bytes_per_param(cli) -> None:
    adam = _run(cli, ["--zero", "0"])["memory_gib"]
    sgd = _run(cli, ["--optimizer", "sgd"])["memory_gib"]
    low = _run(cli, ["--grad-buffers", "low"])["memory_gib"]
    both = _run(cli, ["--grad-buffers", "both"])["memory_gib"]
    fp32 = _run(cli, ["--precision", "fp32"])["memory_gib"]
    assert sgd["optimizer"] / adam["optimizer"] == pytest.approx(8 / 12)  # fp32 master + momentum vs + 2 moments
    assert low["gradients"] / adam["gradients"] == pytest.approx(2 / 4)
    assert both["gradients"] / adam["gradients"] == pytest.approx(6 / 4)
    assert fp32["weights"] / adam["weights"] == pytest.approx(4 / 2)


def test_flash_attention_drops_the_score_matrices(cli) -> None:
    """Llama-3-8B (no dropout), s = 2048, b = 1, one stage: 32 layers x 2048 tokens x (2·a·s − 4·a) bytes."""
    flash = _run(cli, ["--flash-attention"])["memory_gib"]["activations"]
    plain = _run(cli, ["--no-flash-attention"])["memory_gib"]["activations"]
    a, s, layers = 32, 2048, 32
    assert plain - flash == pytest.approx(layers * s * (2 * a * s - 4 * a) / 2**30, rel=1e-9)


def test_dataset_size_and_price(cli) -> None:
    by_samples = _run(cli, ["--samples", "1000", "--epochs", "2.5", "--price-per-gpu-hour", "2.5"])
    assert by_samples["training_steps"] == math.ceil(1000 * 2.5 / 64) == 40
    assert by_samples["gpu_hours"] == pytest.approx(40 * by_samples["step_time_s"] / 3600 * 16)
    assert by_samples["cost"] == pytest.approx(by_samples["gpu_hours"] * 2.5)
    by_tokens = _run(cli, ["--tokens", "1e9"])
    assert by_tokens["training_steps"] == math.ceil(1e9 / 2048 / 64) == 7630
    assert "cost" not in by_tokens


@pytest.mark.parametrize("extra,message", [
    (["--optimizer", "adamw"], "error: --optimizer: Input should be 'adam' or 'sgd' (got 'adamw')"),
    (["--grad-buffers", "fp16"], "error: --grad-buffers: Input should be 'fp32', 'low' or 'both' (got 'fp16')"),
    (["--pp-schedule", "zb"], "error: --pp-schedule: pp_schedule='zb' must be one of 1f1b, gpipe"),
    (["--zero", "4"], "error: --zero: zero=4 must be one of 0, 1, 2, 3"),
    (["--micro-batch", "0"], "error: --micro-batch: micro_batch=0 must be a positive integer"),
    (["--epochs", "0"], "error: --epochs: Input should be greater than 0 (got 0.0)"),
    (["--samples", "-3"], "error: --samples: Input should be greater than 0 (got -3)"),
    (["--price-per-gpu-hour", "-1"], "error: --price-per-gpu-hour: Input should be greater than 0 (got -1.0)"),
    (["--samples", "10", "--tokens", "1e9"], "error: training: give either tokens or samples (+ epochs), not both"),
    (["--tp-comm-overlap"], "error: tp_comm_overlap needs tp > 1 (tp=1)"),
    (["--gpus-per-node", "0"], "error: --gpus-per-node: must be a positive integer (got 0)"),
    (["--model", '{"layers": 0}'], "error: --model: layers: Input should be greater than 0 (got 0)"),
    (["--model", "{layers"], "error: --model: inline model is not a valid JSON object"),
])
def test_bad_value_names_the_flag(extra, message, cli) -> None:
    code, _, err = cli(BASE + extra)
    assert code == 2 and err.startswith(message) and err.count("\n") == 1, err


def test_inline_model_equals_the_preset(cli) -> None:
    """An inline JSON model with the preset's fields gives the preset's estimate (the form ``best`` prints)."""
    from autotune.catalog import get_model

    inline = json.dumps(get_model("llama3-8b").model_dump(mode="json"))
    preset = _run(cli, ["--tp", "2"])
    i = BASE.index("llama3-8b")
    code, out, err = cli(BASE[:i] + [inline] + BASE[i + 1:] + ["--tp", "2"])
    assert code == 0, err
    assert json.loads(out)["step_time_s"] == preset["step_time_s"] and json.loads(out)["params"] == 8_030_261_248
