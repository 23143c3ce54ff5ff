"""Read an exported launch script back, and hand its flags to the launchers' own argument parsers.

- Megatron-LM core_v0.19.0: ``parse_args`` + ``validate_args`` of ``megatron/training/arguments.py``.
  megatron-core's wheel does not ship ``megatron/training``, so the tests need a checkout:
  ``MEGATRON_LM_PATH`` (it also needs ``triton`` importable; Python 3.11 lacks ``typing.override``,
  which the harness takes from typing_extensions). ``get_device_arch_version`` is pinned to 9 (Hopper,
  the catalog's H100), where ``validate_args`` asserts ``CUDA_DEVICE_MAX_CONNECTIONS=1`` for tp/cp > 1.
- Megatron-DeepSpeed: ``megatron/arguments.py`` of a checkout at ``MEGATRON_DEEPSPEED_PATH`` (with
  deepspeed installed); not on PyPI.
- torchtitan 0.3.0: ``ConfigManager.parse_args`` and ``ParallelDims`` (pip install torchtitan==0.3.0).

Each parser runs in one subprocess for a batch of scripts (the two Megatrons are both ``megatron``).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class Script:
    """A launch script, split into what runs it."""

    env: dict[str, str]
    launcher: list[str]
    args: list[str]
    """The entry point's own arguments (``"$@"`` left out; only subcommands may follow it)."""


def read_script(text: str, entry: str) -> Script:
    """Split ``text`` at ``entry`` (``pretrain_gpt.py`` or ``torchtitan.train``)."""
    assert text.startswith("#!/usr/bin/env bash\n")
    env, body = {}, []
    for line in text.splitlines():
        if line.startswith("export "):
            name, value = line.removeprefix("export ").split("=", 1)
            env[name] = shlex.split(value)[0]
        elif not line.startswith("#") and line != "set -euo pipefail":
            body.append(line.removesuffix(" \\").strip())
    tokens = shlex.split(" ".join(body))
    at = tokens.index(entry)
    assert tokens.count("$@") == 1 and all(":" in t for t in tokens[tokens.index("$@") + 1:])  # only subcommands
    return Script(env, tokens[:at], [t for t in tokens[at + 1:] if t != "$@"])


def flags(args: list[str]) -> dict[str, str | bool]:
    """``--flag value`` / ``--switch`` pairs of an argument list."""
    out: dict[str, str | bool] = {}
    for i, tok in enumerate(args):
        if tok.startswith("--") or ":" in tok:
            nxt = args[i + 1] if i + 1 < len(args) else "--"
            out[tok] = True if nxt.startswith("--") or ":" in nxt else nxt
    return out


_MEGATRON_LM = r"""
import json, os, sys, typing, typing_extensions
typing.override = getattr(typing, "override", typing_extensions.override)
import megatron.training.arguments as A
from megatron.core.tokenizers.utils.build_tokenizer import vocab_size_with_padding
A.get_device_arch_version = lambda: 9
A.torch.cuda.get_device_capability = lambda *a, **k: (9, 0)  # --moe-grouped-gemm asserts sm80+: as on Hopper
out = []
base = dict(os.environ)
for case in json.load(sys.stdin):
    os.environ.clear(); os.environ.update(base | case["env"])
    sys.argv = ["pretrain_gpt.py", *case["args"]]
    try:
        args = A.parse_args()
        args.world_size = case["world"]
        A.validate_args(args)
        out.append(dict(tp=args.tensor_model_parallel_size, pp=args.pipeline_model_parallel_size,
                        cp=args.context_parallel_size, dp=args.data_parallel_size, micro=args.micro_batch_size,
                        global_batch=args.global_batch_size, rotary_base=args.rotary_base,
                        vocab=vocab_size_with_padding(args.vocab_size, args, logging_enabled=False)))
    except (AssertionError, SystemExit, ValueError) as e:
        out.append(dict(error=f"{type(e).__name__}: {e}"))
print("RESULT " + json.dumps(out))
"""

_MEGATRON_DEEPSPEED = r"""
import json, os, sys
import megatron.arguments as A
from megatron.tokenizer.tokenizer import _vocab_size_with_padding
out = []
for case in json.load(sys.stdin):
    sys.argv = ["pretrain_gpt.py", *case["args"]]
    try:
        args = A.parse_args()
        args.world_size = case["world"]
        A.validate_args(args)
        out.append(dict(tp=args.tensor_model_parallel_size, pp=args.pipeline_model_parallel_size,
                        dp=args.data_parallel_size, micro=args.micro_batch_size, global_batch=args.global_batch_size,
                        layers=args.num_layers, kv_heads=args.num_key_value_heads, rope_theta=args.rope_theta,
                        partition_activations=args.partition_activations,
                        contiguous=args.contigious_checkpointing, deepspeed_config=args.deepspeed_config,
                        vocab=_vocab_size_with_padding(args.vocab_size + 1, args)))
    except (AssertionError, SystemExit, ValueError) as e:
        out.append(dict(error=f"{type(e).__name__}: {e}"))
print("RESULT " + json.dumps(out))
"""


def _checkout(var: str, probe: str, what: str) -> str:
    path = os.environ.get(var)
    if not path or not os.path.isfile(os.path.join(path, probe)):
        pytest.skip(f"{what} is not installable from PyPI: set {var} to a checkout ({probe} missing)")
    return path


def _run(code: str, path: str, cases: list[dict]) -> list[dict]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (path, os.environ.get("PYTHONPATH")) if p))
    done = subprocess.run([sys.executable, "-c", code], input=json.dumps(cases), capture_output=True, text=True,
                          env=env, timeout=600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, done.stderr[-3000:]
    return json.loads(lines[-1].removeprefix("RESULT "))


def megatron_lm(cases: list[tuple[Script, int]]) -> list[dict]:
    """Megatron-LM's parse + validate for each (script, world size); a dict of parsed values or ``error``."""
    path = _checkout("MEGATRON_LM_PATH", "megatron/training/arguments.py", "Megatron-LM (megatron/training)")
    try:
        import triton  # noqa: F401
    except ImportError:
        pytest.skip("Megatron-LM core_v0.19.0 imports triton (pip install triton)")
    return _run(_MEGATRON_LM, path, [dict(env=s.env, args=s.args, world=w) for s, w in cases])


def megatron_deepspeed(cases: list[tuple[Script, int]]) -> list[dict]:
    """Megatron-DeepSpeed's parse + validate for each (script, world size)."""
    path = _checkout("MEGATRON_DEEPSPEED_PATH", "megatron/arguments.py", "Megatron-DeepSpeed")
    pytest.importorskip("deepspeed", reason="Megatron-DeepSpeed's parser imports deepspeed (pip install deepspeed)")
    return _run(_MEGATRON_DEEPSPEED, path, [dict(env=s.env, args=s.args, world=w) for s, w in cases])


def torchtitan_config(script: Script, world: int):
    """torchtitan's parsed config and its validated ParallelDims for ``script`` on ``world`` ranks."""
    manager = pytest.importorskip("torchtitan.config.manager",
                                  reason="torchtitan is not installed (pip install torchtitan==0.3.0)")
    from torchtitan.distributed.parallel_dims import ParallelDims

    config = manager.ConfigManager().parse_args(list(script.args))
    return config, ParallelDims.from_config(config.parallelism, world)
