"""Shared fixtures."""

from __future__ import annotations

import pytest

from autotune.catalog import get_gpu, get_model
from autotune.cli import main
from autotune.spec import ModelSpec, TrainingSpec


@pytest.fixture
def gpt_small() -> ModelSpec:
    """A GPT-style model (MHA, GELU 4h, biases, LayerNorm, dropout) with round numbers."""
    return ModelSpec(name="gpt-small", layers=8, hidden=1024, heads=16, vocab=51200, activation="gelu",
                     tied_embeddings=True, norm="layernorm", bias="all", position_embedding="learned",
                     max_seq_len=2048, dropout=True)


@pytest.fixture
def llama8b() -> ModelSpec:
    """Llama-3-8B."""
    return get_model("llama3-8b")


@pytest.fixture
def h100():
    """The h100-sxm profile."""
    return get_gpu("h100-sxm")


@pytest.fixture
def training_8k() -> TrainingSpec:
    """bf16, seq 8192, global batch 512."""
    return TrainingSpec(seq_len=8192, global_batch=512)


@pytest.fixture
def cli(capsys):
    """Run the CLI in-process: ``cli([...]) -> (exit code, stdout, stderr)``."""

    def run(args: list[str]) -> tuple[int, str, str]:
        try:
            main(args)
            code = 0
        except SystemExit as e:
            code = int(e.code or 0)
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server on 127.0.0.1 for the session (tests/integration/postgres.py), stopped afterwards.

    Installed from Debian packages when missing; skipped, with the reason, only when that fails.
    """
    pytest.importorskip("psycopg", reason="psycopg is missing: pip install -e '.[dev]' (or '.[postgres]')")
    from tests.integration import postgres as pg

    try:
        server = pg.start()
    except pg.Unavailable as e:
        pytest.skip(f"PostgreSQL unavailable: {e}")
    yield server
    pg.stop(server)


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray runtime with 2 CPUs for the session (drivers join it instead of starting their own)."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()
