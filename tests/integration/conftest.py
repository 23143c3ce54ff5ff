"""Fixtures shared by the integration tests."""

from __future__ import annotations

import pytest

from tests.integration.studydb import make_study_db


@pytest.fixture(scope="session")
def study_db(tmp_path_factory) -> str:
    """URL of a 40-trial study written by the driver without Ray, plus its script-named copy."""
    return make_study_db(tmp_path_factory.mktemp("db") / "study.db")
