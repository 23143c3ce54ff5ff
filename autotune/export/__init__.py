"""Launch-config exporters: a ParallelConfig becomes Megatron-LM flags, a DeepSpeed config or a
torchtitan job config. Each is an :class:`Exporter`; look one up with :func:`get_exporter`."""

from __future__ import annotations

from autotune.errors import SpecError
from autotune.export.base import Exporter, check_exportable
from autotune.export.deepspeed import DeepSpeedExporter, launcher_args
from autotune.export.megatron import MegatronExporter
from autotune.export.torchtitan import TorchtitanExporter

__all__ = [
    "Exporter",
    "EXPORTERS",
    "get_exporter",
    "check_exportable",
    "MegatronExporter",
    "DeepSpeedExporter",
    "TorchtitanExporter",
    "launcher_args",
]

EXPORTERS: dict[str, Exporter] = {
    e.name: e for e in (MegatronExporter(), DeepSpeedExporter(), TorchtitanExporter())
}
"""Every exporter by name, in the order error messages list them."""


def get_exporter(name: str) -> Exporter:
    """The exporter called ``name``; raises :class:`SpecError` listing the allowed names."""
    if name not in EXPORTERS:
        raise SpecError(f"format: unknown {name!r} (allowed: {', '.join(EXPORTERS)})")
    return EXPORTERS[name]
