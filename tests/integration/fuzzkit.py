"""Hypothesis strategies for bad input and one runner that classifies what the CLI did with it.

Shared by ``tests/integration/test_fuzz_inputs.py`` and ``benchmarks/fuzz_inputs.py``. Five kinds of
input: study specs (fields set to random types and values, deleted, unknown keys added, or the YAML
text itself garbled), model YAML, Hugging Face ``config.json``, search-space YAML and CLI flags.

Every case runs ``autotune.cli.main`` in-process. ``estimate`` cases run for real (no DB, no Ray).
``submit`` cases run the CLI's own validation path — spec, model, GPU, space, objective, evaluator,
storage, the driver's specialised space — with :meth:`Driver.open` (the sampler path) and
``open_db_study`` in :mod:`autotune.study.run` (the analytic stage of ``sampler: auto``, the default)
replaced by stubs that raise :class:`Valid` (and first draw a point of the space, which evaluates every
``when``), so a valid case never starts a study and an invalid one must fail before the study is created.
:func:`auto_specs` fuzzes the ``auto`` default and ``training.global_batch`` lists. :func:`run` returns
``ok`` (worked, or valid up to the study), ``exit2`` (one line ``error: <field>: ...``, no traceback,
DB file unchanged) or ``other: <why>`` (a bug).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import traceback
from pathlib import Path
from typing import Any
from unittest import mock

import yaml
from hypothesis import strategies as st

from autotune.cli import main
from autotune.study import run as study_run
from autotune.study.driver import Driver

__all__ = ["Valid", "run", "specs", "auto_specs", "model_yamls", "hf_configs", "spaces", "estimate_flags",
           "submit_flags", "prepare"]

BASE_SPEC: dict[str, Any] = {
    "name": "fuzz", "model": "llama3-8b", "cluster": {"gpu": "h100-sxm", "gpus_per_node": 8, "nodes": 1},
    "training": {"seq_len": 4096, "global_batch": 64, "precision": "bf16", "tokens": 1e11},
    "search": {"space": "megatron", "sampler": "tpe", "n_trials": 10, "evaluator": "analytic", "workers": 2,
               "seed": 0},
    "objective": "throughput",
}
BASE_AUTO_SPEC: dict[str, Any] = BASE_SPEC | {
    "training": BASE_SPEC["training"] | {"global_batch": [32, 64]},
    "search": {k: v for k, v in BASE_SPEC["search"].items() if k not in ("sampler", "n_trials")}}
"""An analytic study on the ``auto`` sampler (the default, so not named) over two global batch sizes."""
BASE_MODEL: dict[str, Any] = {"layers": 8, "hidden": 1024, "heads": 16, "kv_heads": 4, "ffn_hidden": 4096,
                              "vocab": 32000, "activation": "swiglu", "tied_embeddings": False, "norm": "rmsnorm",
                              "bias": "none", "position_embedding": "rope", "max_seq_len": 4096, "dropout": False}
BASE_HF: dict[str, dict[str, Any]] = {
    "LlamaForCausalLM": {"num_hidden_layers": 8, "hidden_size": 1024, "num_attention_heads": 16,
                         "num_key_value_heads": 4, "intermediate_size": 4096, "vocab_size": 32000,
                         "tie_word_embeddings": False, "max_position_embeddings": 4096},
    "GPT2LMHeadModel": {"n_layer": 8, "n_embd": 1024, "n_head": 16, "n_inner": None, "vocab_size": 50257,
                        "n_positions": 1024},
    "GPTNeoXForCausalLM": {"num_hidden_layers": 8, "hidden_size": 1024, "num_attention_heads": 16,
                           "intermediate_size": 4096, "vocab_size": 50432, "max_position_embeddings": 2048},
    "Gemma3ForCausalLM": {"num_hidden_layers": 6, "hidden_size": 1152, "num_attention_heads": 4,
                          "num_key_value_heads": 1, "head_dim": 256, "intermediate_size": 6912, "vocab_size": 32000,
                          "sliding_window": 512, "sliding_window_pattern": 6,
                          "layer_types": ["sliding_attention"] * 5 + ["full_attention"]},
    "NemotronForCausalLM": {"num_hidden_layers": 8, "hidden_size": 1024, "num_attention_heads": 12, "head_dim": 128,
                            "num_key_value_heads": 4, "intermediate_size": 4096, "vocab_size": 32000,
                            "attention_bias": False, "mlp_bias": False},
    "Olmo2ForCausalLM": {"num_hidden_layers": 8, "hidden_size": 1024, "num_attention_heads": 16,
                         "intermediate_size": 4096, "vocab_size": 32000, "rope_parameters": {"rope_theta": 5e5}},
}
BASE_SPACE: dict[str, Any] = {
    "name": "fuzzspace", "framework": "any",
    "dimensions": {"tp": {"choices": [1, 2, 4]}, "pp": {"range": [1, 4]},
                   "sequence_parallel": {"choices": [False, True], "when": "tp > 1", "default": False},
                   "micro_batch": {"choices": [1, 2]}, "recompute": {"choices": ["none", "full"]}},
    "fixed": {"zero": 1},
}
WORDS = ["bf16", "fp8", "tpe", "grid", "megatron", "fsdp", "llama3-8b", "h100-sxm", "cpu", "analytic", "measure",
         "-1", "0", "1e400", "nan", "inf", "../../etc/passwd", "a/b.yaml", "x.json", "tp > 1", "tp >", "tp in [1, 2]",
         "__import__('os')", "[1, 2]", "{a: 1}", "~", "", " ", "yes", "null"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 17), st.integers(-2**70, 2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12), st.sampled_from(WORDS))
values = st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(st.text(max_size=6), scalars, max_size=2))


class Valid(Exception):  # noqa: N818 - a signal, not an error
    """Raised instead of opening the study: the submit passed every check before the study starts."""


def _paths(d: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        out.append(prefix + k)
        if isinstance(v, dict):
            out += _paths(v, prefix + k + ".")
    return out


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any], extra_keys: list[str]) -> tuple[dict[str, Any], list[str]]:
    """``base`` with 1-3 fields set to random values, deleted, or unknown keys added; and the paths touched."""
    data = json.loads(json.dumps(base))
    touched = []
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(base) + extra_keys))
        *parents, leaf = path.split(".")
        node = data
        for p in parents:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        if draw(st.integers(0, 5)) == 0:
            node.pop(leaf, None)
        else:
            node[leaf] = draw(values)
        touched.append(path)
    return data, touched


@st.composite
def garbled(draw: st.DrawFn, text: str) -> str:
    """``text`` with a few characters inserted, deleted or replaced (often no longer valid YAML)."""
    chars = list(text)
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(chars)))
        op = draw(st.sampled_from(["ins", "del", "rep"]))
        c = draw(st.sampled_from(list(":{}[],-'\"#&*!|>%@` \n\t\\")))
        if op == "ins":
            chars.insert(i, c)
        elif i < len(chars):
            chars[i:i + 1] = [] if op == "del" else [c]
    return "".join(chars)


def _dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False)


def _either(draw: st.DrawFn, base: dict[str, Any], extra: list[str]) -> str:
    if draw(st.integers(0, 4)) == 0:
        return draw(garbled(_dump(base)))
    return _dump(draw(mutated(base, extra))[0])


@st.composite
def specs(draw: st.DrawFn) -> str:
    """A study spec's YAML text."""
    return _either(draw, BASE_SPEC, ["rack", "cluster.rack", "training.lr", "search.pruner", "objective.x"])


batch_values = st.one_of(st.integers(-2, 130), st.sampled_from([2**31, 2**70, 1.5, 8.0, True, "8", "a", None]), values)


@st.composite
def auto_specs(draw: st.DrawFn) -> str:
    """A ``sampler: auto`` study spec's YAML text: ``training.global_batch`` set to a random list (or value)
    half the time, otherwise the usual mutations of any field."""
    if draw(st.booleans()):
        data = json.loads(json.dumps(BASE_AUTO_SPEC))
        data["training"]["global_batch"] = draw(st.one_of(st.lists(batch_values, max_size=4), batch_values))
        return _dump(data)
    return _either(draw, BASE_AUTO_SPEC, ["search.sampler", "search.fidelities", "training.lr"])


@st.composite
def model_yamls(draw: st.DrawFn) -> str:
    """A model YAML file's text."""
    return _either(draw, BASE_MODEL, ["family", "experts", "rope_theta"])


@st.composite
def hf_configs(draw: st.DrawFn) -> str:
    """A Hugging Face config.json's text."""
    arch = draw(st.sampled_from(list(BASE_HF)))
    base = {"architectures": [arch], **BASE_HF[arch]}
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(garbled(json.dumps(base)))
    if kind == 1:
        return json.dumps(draw(values))
    data, _ = draw(mutated(base, ["num_local_experts", "model_type", "n_routed_experts"]))
    return json.dumps(data, allow_nan=True)


@st.composite
def spaces(draw: st.DrawFn) -> str:
    """A search-space YAML's text (conditions, ranges and choices fuzzed too)."""
    extra = ["dimensions.cp", "dimensions.bogus", "dimensions.tp.when", "dimensions.pp.choices",
             "dimensions.vpp", "fixed.nodes", "fixed.bogus", "derived", "unknown"]
    return _either(draw, BASE_SPACE, extra)


INT_FLAGS = ["--gpus", "--gpus-per-node", "--seq-len", "--global-batch", "--tp", "--pp", "--cp", "--vpp", "--zero",
             "--dp-shard", "--micro-batch", "--recompute-layers"]
STR_FLAGS = {"--model": ["llama3-8b", "gpt3-175b", "nope", "x.json", "a/b.yaml"], "--gpu": ["h100-sxm", "cpu", "tpu"],
             "--precision": ["bf16", "fp8", "int4"], "--recompute": ["none", "selective", "full", "half"]}
flag_value = st.one_of(st.integers(-2, 16).map(str), st.integers(-2**40, 2**40).map(str), st.sampled_from(WORDS),
                       st.text(max_size=6))


@st.composite
def estimate_flags(draw: st.DrawFn) -> list[str]:
    """``estimate`` arguments: a valid base with random flags overridden, repeated or unknown."""
    args = ["estimate", "--model", "llama3-8b", "--gpu", "h100-sxm", "--gpus", "8", "--seq-len", "4096",
            "--global-batch", "64"]
    for _ in range(draw(st.integers(1, 4))):
        flag = draw(st.sampled_from(INT_FLAGS + list(STR_FLAGS) + ["--tokens", "--sp", "--json", "--bogus"]))
        if flag in ("--sp", "--json"):
            args.append(flag)
        elif flag in STR_FLAGS:
            args += [flag, draw(st.one_of(st.sampled_from(STR_FLAGS[flag]), flag_value))]
        else:
            args += [flag, draw(flag_value)]
    return args


@st.composite
def submit_flags(draw: st.DrawFn) -> list[str]:
    """``submit`` override flags with random values."""
    flags = ["--name", "--n-trials", "--timeout", "--sampler", "--evaluator", "--workers", "--seed", "--bogus"]
    args: list[str] = []
    for _ in range(draw(st.integers(1, 3))):
        flag = draw(st.sampled_from(flags))
        args += [flag, draw(st.one_of(flag_value, st.sampled_from(["tpe", "grid", "analytic", "dryrun", "x/../y"])))]
    return args


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else ""


def _stub_open(self: Driver, create: bool) -> None:
    next(self.space.points(), None)
    self.space.sample(lambda name, choices: choices[-1])
    raise Valid


def _stub_open_db_study(plan: Any, storage: Any, create: bool) -> None:
    next(plan.space.points(), None)
    plan.space.sample(lambda name, choices: choices[-1])
    raise Valid


LINE = re.compile(r"^error: (\S.*?: \S|[\w*]+=\S|[a-z_]+ needs |.*'--[a-z-]+'|No such option: --"
                  r"|Got unexpected extra argument)")
"""``error: <field>: <problem>`` (the field may be an unknown key), a layout's ``<field>=<value> ...`` or
``<flag> needs ...``, or Click's usage error naming the flag."""


def run(args: list[str], db: Path) -> str:
    """Run the CLI on ``args``; classify the outcome as ``ok``, ``exit2`` or ``other: ...``."""
    before = _sha(db)
    out, err = io.StringIO(), io.StringIO()
    code: Any = 0
    try:
        with mock.patch.object(Driver, "open", _stub_open), \
                mock.patch.object(study_run, "open_db_study", _stub_open_db_study), \
                contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main(args)
    except Valid:
        code = 0
    except SystemExit as e:
        code = e.code
    except Exception as e:  # noqa: BLE001 - the point is to find these
        where = traceback.extract_tb(e.__traceback__)[-1]
        return f"other: {type(e).__name__}: {e} at {Path(where.filename).name}:{where.lineno} for {args}"
    text = err.getvalue()
    if _sha(db) != before:
        return f"other: DB changed by {args}"
    if code in (0, None):
        return "ok"
    if code != 2:
        return f"other: exit {code}: {text[-300:]} for {args}"
    if "Traceback" in text or text.count("\n") != 1 or not LINE.match(text):
        return f"other: bad message {text!r} for {args}"
    return "exit2"


def prepare(tmp: Path) -> Path:
    """A directory with an initialised, empty SQLite study DB; returns the DB path."""
    from autotune.store.storage import Storage

    db = tmp / "fuzz.db"
    store = Storage(f"sqlite:///{db}")
    store.optuna()
    store.close()
    return db
