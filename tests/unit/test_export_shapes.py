"""Exporters spell the shapes beyond Llama (head_dim, squared ReLU, q/k norm, windows) or refuse them by name."""

from __future__ import annotations

import pytest

from autotune.catalog import get_model
from autotune.config import derive
from autotune.errors import InfeasibleConfig
from autotune.export import get_exporter
from autotune.spec import ClusterSpec, ModelSpec, TrainingSpec
from tests.contract.launchers import flags, read_script

TRAINING = TrainingSpec(seq_len=4096, global_batch=64)
CLUSTER = ClusterSpec(gpu="h100", gpus_per_node=8, nodes=1)


def _render(fmt: str, model: ModelSpec, **layout) -> str:
    return get_exporter(fmt).render(model, TRAINING, CLUSTER, derive(model, TRAINING, CLUSTER.gpus, **layout))


def _megatron(model: ModelSpec) -> dict:
    return flags(read_script(_render("megatron", model, tp=2), "pretrain_gpt.py").args)


def test_megatron_minitron_flags() -> None:
    # 24 heads x 128 on h = 3072 (Megatron's default kv_channels would be 128 too: 3072 / 24), squared ReLU.
    f = _megatron(get_model("minitron-4b"))
    assert "--squared-relu" in f and "--swiglu" not in f and "--kv-channels" not in f
    assert f["--normalization"] == "LayerNorm" and f["--num-query-groups"] == "8"


def test_megatron_qwen3_flags() -> None:
    # Qwen3-32B: head_dim 128 but h / heads = 5120 / 64 = 80, so --kv-channels 128 (Qwen3-8B: 4096 / 32 = 128).
    f = _megatron(get_model("qwen3-32b"))
    assert f["--kv-channels"] == "128" and "--qk-layernorm" in f and "--swiglu" in f


def test_megatron_phi3_window() -> None:
    # Every layer windowed to 2047 keys: flash-attn (left, right) = (2046, 0), no skip frequency.
    f = _megatron(get_model("phi3-mini"))
    assert f["--window-size"] == "2046,0" and "--window-attn-skip-freq" not in f


def test_megatron_windows_with_full_layers() -> None:
    m = get_model("qwen3-8b").model_copy(update={"sliding_window": 4096, "full_attention_every": 4})
    f = _megatron(m)
    assert (f["--window-size"], f["--window-attn-skip-freq"]) == ("4095,0", "4")


@pytest.mark.parametrize("fmt,preset,match", [
    ("megatron", "gemma2-9b", "activation=geglu is not supported"),
    ("megatron", "olmo2-7b", "norm_placement=post is not supported"),
    ("deepspeed", "minitron-4b", "activation=relu2 is not supported"),
    ("deepspeed", "qwen3-8b", "qk_norm=True is not supported"),
    ("deepspeed", "phi3-mini", "sliding_window=2047 is not supported"),
    ("torchtitan", "qwen3-8b", "is not a registered torchtitan"),
])
def test_refused_by_name(fmt: str, preset: str, match: str) -> None:
    with pytest.raises(InfeasibleConfig, match=match):
        _render(fmt, get_model(preset), zero=1 if fmt != "torchtitan" else 3)
