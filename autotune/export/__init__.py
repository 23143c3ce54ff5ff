"""Launch-config exporters: a ParallelConfig becomes a Megatron-LM (core_v0.19.0) or torchtitan (0.3.0)
launch script, or a DeepSpeed (0.19) config with its Megatron-DeepSpeed launch script. Each is an
:class:`Exporter`; look one up with :func:`get_exporter`."""

from __future__ import annotations

from autotune.errors import SpecError
from autotune.export.base import Exporter, check_exportable
from autotune.export.deepspeed import DeepSpeedExporter, launch_script
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
    "launch_script",
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
