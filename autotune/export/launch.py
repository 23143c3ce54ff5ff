"""Launch scripts shared by the exporters: a bash script that sets the environment and runs one launcher.

A script is a header comment, ``export NAME=value`` lines, and one command (launcher, its options,
the training entry point, the entry point's flags), one token group per line with backslash
continuations, then ``"$@"`` so a user appends flags (data, optimizer, schedule) on the command line
(a flag given twice takes its last value in argparse and in tyro); only a tyro subcommand follows it.

Multi-node launches read the usual variables on every node: ``NODE_RANK`` (0 on the first node) and
``MASTER_ADDR`` (the first node's address); ``MASTER_PORT`` defaults to 29500.
"""

from __future__ import annotations

import shlex

from autotune.errors import InfeasibleConfig
from autotune.spec import ClusterSpec, ModelSpec

__all__ = ["Flag", "format_flags", "render_script", "torchrun_launcher", "deepspeed_launcher", "rope_base",
           "vocab_divisor", "MAX_VOCAB_DIVISOR"]

Flag = tuple[str, int | str | None]
"""A command-line flag and its value (None for a switch)."""

MAX_VOCAB_DIVISOR = 128
"""Megatron's ``--make-vocab-size-divisible-by`` default; the exporters never ask for more."""


def _token(value: int | str) -> str:
    text = str(value)
    return text if text.startswith('"$') else shlex.quote(text)


def format_flags(flags: list[Flag]) -> str:
    """One flag per line, continued with backslashes, newline-terminated (values shell-quoted)."""
    lines = [flag if value is None else f"{flag} {_token(value)}" for flag, value in flags]
    return " \\\n".join(lines) + "\n"


def torchrun_launcher(cluster: ClusterSpec) -> list[str]:
    """``torchrun`` with one process per GPU on each of the cluster's nodes."""
    nodes = cluster.node_counts[0]
    cmd = f"torchrun --nnodes {nodes} --nproc-per-node {cluster.gpus_per_node}"
    if nodes == 1:
        return [cmd + " --standalone"]
    return [cmd, '--node-rank "$NODE_RANK" --master-addr "$MASTER_ADDR" --master-port "${MASTER_PORT:-29500}"']


def deepspeed_launcher(cluster: ClusterSpec) -> list[str]:
    """The ``deepspeed`` launcher: GPUs per node, and for several nodes the hostfile (one line per node,
    ``HOST slots=N``) and the first node's address."""
    nodes = cluster.node_counts[0]
    cmd = f"deepspeed --num_nodes {nodes} --num_gpus {cluster.gpus_per_node}"
    if nodes == 1:
        return [cmd]
    return [cmd, '--hostfile "${HOSTFILE:-hostfile}"',
            '--master_addr "$MASTER_ADDR" --master_port "${MASTER_PORT:-29500}"']


def render_script(header: list[str], env: dict[str, str], command: list[str], flags: list[Flag],
                  last: tuple[str, ...] = ()) -> str:
    """The bash script: ``header`` comment lines, ``env`` exports, then ``command`` lines, ``flags``, the
    script's own arguments and ``last`` (a subcommand, which must follow every option)."""
    lines = ["#!/usr/bin/env bash", *(f"# {line}" if line else "#" for line in header), "set -euo pipefail"]
    lines += [f"export {name}={shlex.quote(value)}" for name, value in env.items()]
    body = command + format_flags(flags).rstrip("\n").split(" \\\n") + ['"$@"', *last]
    return "\n".join(lines) + "\n" + " \\\n  ".join(body) + "\n"


def rope_base(framework: str, model: ModelSpec) -> int:
    """``rope_theta`` as the integer the Megatron parsers take (``type=int``); refuses a fractional base."""
    if not float(model.rope_theta).is_integer():
        raise InfeasibleConfig(f"{framework}: rope_theta={model.rope_theta} is not supported"
                               " (the RoPE base flag takes an integer)")
    return int(model.rope_theta)


def vocab_divisor(vocab: int, tp: int) -> int:
    """The largest ``--make-vocab-size-divisible-by`` (a power of two, at most 128) that leaves ``vocab``
    unpadded: Megatron pads the vocabulary to a multiple of divisor · tp
    (``vocab_size_with_padding``), so an exact vocabulary needs divisor · tp to divide it.

    1 when even tp does not divide it (Megatron then pads to the next multiple of tp).
    """
    divisor = MAX_VOCAB_DIVISOR
    while divisor > 1 and vocab % (divisor * tp):
        divisor //= 2
    return divisor
