"""Fixtures shared by the integration tests."""

from __future__ import annotations

import pytest

from tests.integration.studydb import make_study_db


@pytest.fixture(scope="session")
def study_db(tmp_path_factory) -> str:
    """URL of a 40-trial study written by the driver without Ray, plus its script-named copy."""
    return make_study_db(tmp_path_factory.mktemp("db") / "study.db")


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray runtime with 2 CPUs for the session (drivers join it instead of starting their own)."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


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
