"""Spec loading: YAML and TOML, unknown keys, one-line errors naming the field, HF import."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autotune.catalog import resolve_gpu, resolve_model
from autotune.catalog.hf import from_hf_config
from autotune.errors import SpecError
from autotune.spec import load_spec

GOOD = """
name: llama3-8b-h100x8
model: llama3-8b
cluster: {gpu: h100-sxm, gpus_per_node: 8, nodes: 1}
training: {seq_len: 8192, global_batch: 512, precision: bf16, tokens: 1.0e12}
search: {space: megatron, sampler: tpe, n_trials: 200, evaluator: analytic}
objective: throughput
"""


def write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_yaml_and_toml_load_the_same(tmp_path) -> None:
    y = load_spec(write(tmp_path, GOOD))
    toml = """name = "llama3-8b-h100x8"\nmodel = "llama3-8b"\nobjective = "throughput"
[cluster]\ngpu = "h100-sxm"\ngpus_per_node = 8\nnodes = 1
[training]\nseq_len = 8192\nglobal_batch = 512\nprecision = "bf16"\ntokens = 1.0e12
[search]\nspace = "megatron"\nsampler = "tpe"\nn_trials = 200\nevaluator = "analytic"\n"""
    assert load_spec(write(tmp_path, toml, "spec.toml")) == y
    assert y.training.total_steps() == pytest.approx(1e12 / 8192 / 512, rel=1e-3)


@pytest.mark.parametrize("old,new,expect", [
    ("precision: bf16", "precision: bf17", "training.precision: Input should be 'fp32', 'bf16', 'fp16' or 'fp8'"),
    ("nodes: 1}", "nodes: 1, racks: 2}", "cluster.racks: unknown field (allowed: gpu, gpus_per_node, nodes,"),
    ("seq_len: 8192", "seq_len: -1", "training.seq_len: Input should be greater than 0"),
    ("sampler: tpe", "sampler: cmaes",
     "search.sampler: Input should be 'auto', 'tpe', 'gp', 'random', 'nsga2', 'grid' or 'thompson'"),
    ("objective: throughput", "objective: speed", "objective: Input should be 'throughput'"),
    ("name: llama3-8b-h100x8", "name: ../../etc", "name: String should match pattern"),
])
def test_errors_name_field_and_allowed_values(tmp_path, old, new, expect) -> None:
    with pytest.raises(SpecError) as e:
        load_spec(write(tmp_path, GOOD.replace(old, new)))
    assert expect in str(e.value)
    assert "\n" not in str(e.value)


def test_not_yaml_and_not_mapping(tmp_path) -> None:
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(write(tmp_path, "name: [unclosed"))
    with pytest.raises(SpecError, match="must hold a mapping"):
        load_spec(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(SpecError, match="file not found"):
        load_spec(tmp_path / "missing.yaml")


def test_model_yaml_and_unknown_preset(tmp_path) -> None:
    p = write(tmp_path, "family: llama\nlayers: 2\nhidden: 64\nheads: 4\nkv_heads: 2\nffn_hidden: 128\n"
                        "vocab: 100\n", "mine.yaml")
    m = resolve_model(str(p))
    assert (m.activation, m.norm, m.n_kv_heads) == ("swiglu", "rmsnorm", 2)
    with pytest.raises(SpecError, match="unknown preset 'llama9'"):
        resolve_model("llama9")
    bad = write(tmp_path, "layers: 2\nhidden: 65\nheads: 4\nvocab: 100\n", "bad.yaml")
    with pytest.raises(SpecError, match="hidden=65 is not divisible by heads=4"):
        resolve_model(str(bad))


def test_gpu_file(tmp_path) -> None:
    p = write(tmp_path, "memory_gib: 24\npeak_tflops: {bf16: 100, fp32: 10}\nhbm_gbps: 900\n"
                        "intra_node_gbps: 32\ninter_node_gbps: 12.5\n", "rtx.yaml")
    assert resolve_gpu(str(p)).memory_gib == 24
    with pytest.raises(SpecError, match="cluster.gpu.gemm_eff_max: Input should be less than or equal to 0.85"):
        resolve_gpu(str(write(tmp_path, p.read_text() + "gemm_eff_max: 0.99\n", "fast.yaml")))


LLAMA3_8B_HF = {"architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336,
                "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
                "vocab_size": 128256, "tie_word_embeddings": False, "max_position_embeddings": 8192}


def test_hf_llama_matches_preset(tmp_path) -> None:
    d = tmp_path / "Meta-Llama-3-8B"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(LLAMA3_8B_HF))
    m = resolve_model(str(d / "config.json"))
    assert m.param_count() == resolve_model("llama3-8b").param_count()
    assert m.name == "Meta-Llama-3-8B"


def test_hf_gpt2_124m() -> None:
    # GPT-2 small: 124,439,808 parameters (tied; 1024 learned positions).
    cfg = {"architectures": ["GPT2LMHeadModel"], "n_embd": 768, "n_layer": 12, "n_head": 12,
           "vocab_size": 50257, "n_positions": 1024, "n_inner": None}
    assert from_hf_config(cfg).param_count() == 124_439_808


def test_hf_qwen_and_neox() -> None:
    qwen = {"architectures": ["Qwen2ForCausalLM"], "hidden_size": 3584, "intermediate_size": 18944,
            "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4, "vocab_size": 152064}
    assert from_hf_config(qwen).param_count() / 1e9 == pytest.approx(7.62, rel=0.01)
    # Pythia-1.4B (GPT-NeoX): 1,414,647,808 parameters.
    neox = {"architectures": ["GPTNeoXForCausalLM"], "hidden_size": 2048, "intermediate_size": 8192,
            "num_attention_heads": 16, "num_hidden_layers": 24, "vocab_size": 50304}
    assert from_hf_config(neox).param_count() == 1_414_647_808


@pytest.mark.parametrize("cfg,match", [
    ({"architectures": ["JambaForCausalLM"], "num_experts": 16}, "unsupported architecture 'JambaForCausalLM'"),
    ({"architectures": ["T5ForConditionalGeneration"]}, "unsupported architecture 'T5ForConditionalGeneration'"),
    ({"architectures": ["LlamaForCausalLM"], "hidden_size": 64}, "config.json field 'num_hidden_layers' is missing"),
])
def test_hf_refuses_clearly(cfg, match) -> None:
    with pytest.raises(SpecError, match=match):
        from_hf_config(cfg)
