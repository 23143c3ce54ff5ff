"""The service's record of the studies it runs, kept in the study storage (table ``autotune_service_runs``),
so a restarted server knows which studies it was running and resumes them.

One row per study the service was asked to run: its state (:data:`STATES`), the spec it runs, the name of
the token that submitted it, the driver's process id, its last progress figures and its error. A state
leaves :data:`ACTIVE` once (conditional updates), so a driver finishing as a user cancels records one of
the two outcomes, never both.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import DateTime, Integer, String, Text, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from autotune.store.storage import Storage

__all__ = ["STATES", "ACTIVE", "Run", "Runs"]

STATES = ("queued", "running", "completed", "cancelled", "failed")
"""A study's states in the service, in the order a run goes through them."""
ACTIVE = ("queued", "running")
"""States in which the service owes the study a driver."""


class _Base(DeclarativeBase):
    pass


class _Run(_Base):
    __tablename__ = "autotune_service_runs"
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    spec_json: Mapped[str] = mapped_column(Text)
    token: Mapped[str] = mapped_column(String(64), default="")
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    progress_json: Mapped[str] = mapped_column(Text, default="{}")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    submitted_at: Mapped[dt.datetime] = mapped_column(DateTime, server_default=func.now())
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)


@dataclass(frozen=True)
class Run:
    """One row of ``autotune_service_runs`` as plain data."""

    name: str
    state: str
    spec: dict[str, Any]
    token: str
    pid: int | None
    progress: dict[str, Any]
    error: str | None
    started_at: str | None
    finished_at: str | None


def _iso(t: dt.datetime | None) -> str | None:
    return None if t is None else t.isoformat()


def _plain(r: _Run) -> Run:
    return Run(name=r.name, state=r.state, spec=json.loads(r.spec_json), token=r.token, pid=r.pid,
               progress=json.loads(r.progress_json or "{}"), error=r.error, started_at=_iso(r.started_at),
               finished_at=_iso(r.finished_at))


class Runs:
    """The ``autotune_service_runs`` table of one storage (created on first use)."""

    def __init__(self, storage: Storage) -> None:
        self.engine = storage.engine
        _Base.metadata.create_all(self.engine)

    def get(self, name: str) -> Run | None:
        """The run of study ``name``, or None."""
        with Session(self.engine) as s:
            row = s.get(_Run, name)
            return None if row is None else _plain(row)

    def all(self) -> dict[str, Run]:
        """Every run by study name."""
        with Session(self.engine) as s:
            return {r.name: _plain(r) for r in s.scalars(select(_Run)).all()}

    def active(self, token: str | None = None) -> list[Run]:
        """Runs in an :data:`ACTIVE` state (of one token's submissions when ``token`` is given)."""
        q = select(_Run).where(_Run.state.in_(ACTIVE))
        if token is not None:
            q = q.where(_Run.token == token)
        with Session(self.engine) as s:
            return [_plain(r) for r in s.scalars(q).all()]

    def queue(self, name: str, spec: dict[str, Any], token: str) -> bool:
        """Record ``name`` as queued with ``spec``: a new row, or a finished run queued again; False if the
        study is already active."""
        now = dt.datetime.now()
        values = dict(state="queued", spec_json=json.dumps(spec, sort_keys=True), token=token, pid=None,
                      progress_json="{}", error=None, submitted_at=now, started_at=None, finished_at=None)
        try:
            with Session(self.engine) as s, s.begin():
                s.add(_Run(name=name, **values))
            return True
        except IntegrityError:
            with Session(self.engine) as s, s.begin():
                q = update(_Run).where(_Run.name == name, _Run.state.not_in(ACTIVE)).values(**values)
                return s.execute(q).rowcount == 1

    def move(self, name: str, state: str, *, error: str | None = None, pid: int | None = None) -> bool:
        """Set an active run's state (``running`` records ``pid`` and the start time; a final state the
        finish time and ``error``); False when the run was not active."""
        now = dt.datetime.now()
        values: dict[str, Any] = {"state": state}
        if state == "running":
            values |= {"pid": pid, "started_at": now, "finished_at": None}
        elif state not in ACTIVE:
            values |= {"finished_at": now, "error": error}
        with Session(self.engine) as s, s.begin():
            q = update(_Run).where(_Run.name == name, _Run.state.in_(ACTIVE)).values(**values)
            return s.execute(q).rowcount == 1

    def progress(self, name: str, figures: dict[str, Any]) -> None:
        """Store a running study's latest progress figures."""
        with Session(self.engine) as s, s.begin():
            s.execute(update(_Run).where(_Run.name == name, _Run.state.in_(ACTIVE))
                      .values(progress_json=json.dumps(figures)))
