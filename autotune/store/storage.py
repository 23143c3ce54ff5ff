"""Persistence: Optuna's RDB tables plus autotune's own, in one database (any SQLAlchemy URL).

autotune's tables (SQLAlchemy 2 ORM): ``autotune_studies`` (the spec as submitted and the versions that
produced it), ``autotune_evaluations`` (one row per evaluated or rejected layout: fidelity, layout,
full estimate or measurement, typed status and reason, wall time, worker host, cache key) and
``autotune_schema`` (schema version). The driver is the only writer; workers never open the DB.
SQLite gets WAL journaling and a busy timeout so several drivers can share one file.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import re
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import optuna
from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Text,
    create_engine,
    event,
    func,
    insert,
    inspect,
    select,
    update,
)
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import (
    ArgumentError,
    IntegrityError,
    NoSuchModuleError,
    OperationalError,
    ProgrammingError,
    SQLAlchemyError,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from autotune.errors import StorageError

__all__ = ["DEFAULT_URL", "SCHEMA_VERSION", "Storage", "EvaluationRecord", "mask_url", "storage_url"]

DEFAULT_URL = "sqlite:///autotune.db"
SCHEMA_VERSION = 1
HEARTBEAT_S = 2
GRACE_S = 6


class _Base(DeclarativeBase):
    pass


class _Schema(_Base):
    __tablename__ = "autotune_schema"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(Integer)


class _Study(_Base):
    __tablename__ = "autotune_studies"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True, index=True)
    spec_json: Mapped[str] = mapped_column(Text)
    autotune_version: Mapped[str] = mapped_column(String(32))
    cost_model_version: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, server_default=func.now())


class _Evaluation(_Base):
    __tablename__ = "autotune_evaluations"
    # (study, fidelity, trial) covers the count append_stage takes before every chunk: without it each count
    # reads every stored row of the study, so a stage of n rows cost O(n^2 / CHUNK) row reads.
    __table_args__ = (Index("ix_autotune_evaluations_stage", "study", "fidelity", "trial"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study: Mapped[str] = mapped_column(String(128), index=True)
    trial: Mapped[int] = mapped_column(Integer)
    fidelity: Mapped[str] = mapped_column(String(16))
    cache_key: Mapped[str | None] = mapped_column(String(64), index=True, nullable=True)
    layout_json: Mapped[str] = mapped_column(Text)
    metrics_json: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    reason_kind: Mapped[str | None] = mapped_column(String(200), nullable=True)
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    wall_s: Mapped[float] = mapped_column(Float, default=0.0)
    host: Mapped[str] = mapped_column(String(128), default="")
    cached: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, server_default=func.now())


@dataclass(frozen=True)
class EvaluationRecord:
    """One row of ``autotune_evaluations`` as plain data."""

    study: str
    trial: int
    fidelity: str
    layout: dict[str, Any]
    metrics: dict[str, Any]
    status: str
    reason: str | None = None
    reason_kind: str | None = None
    value: float | None = None
    wall_s: float = 0.0
    host: str = ""
    cache_key: str | None = None
    cached: bool = False


def storage_url(url: str | None) -> str:
    """The storage URL to use: the argument, else $AUTOTUNE_STORAGE, else ``sqlite:///autotune.db``."""
    return url or os.environ.get("AUTOTUNE_STORAGE") or DEFAULT_URL


def _parse(url: str) -> URL:
    try:
        return make_url(url)
    except (ArgumentError, ValueError) as e:
        raise StorageError(f"storage: cannot parse URL {mask_url(url)!r} (expected an SQLAlchemy URL such as "
                           "sqlite:///autotune.db or postgresql+psycopg://user@host/db)") from e


def mask_url(url: str) -> str:
    """The URL with any password replaced by *** (also in a URL that does not parse)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return re.sub(r"(://[^/@:]*:).*@", r"\1***@", url)


_T = TypeVar("_T")
_RACE_WORDS = ("already exists", "unique", "duplicate", "locked")


def _racing(create: Callable[[], _T], attempts: int = 6) -> _T:
    """``create()`` (tables on a DB's first use), retried while concurrent drivers race to create them."""
    for attempt in range(attempts):
        try:
            return create()
        except (OperationalError, IntegrityError, ProgrammingError) as e:
            if attempt == attempts - 1 or not any(w in str(e).lower() for w in _RACE_WORDS):
                raise
            time.sleep(0.1 * (attempt + 1) + 0.2 * random.random())
    raise AssertionError("unreachable")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _row(e: _Evaluation) -> EvaluationRecord:
    return EvaluationRecord(
        study=e.study, trial=e.trial, fidelity=e.fidelity, layout=json.loads(e.layout_json),
        metrics=json.loads(e.metrics_json), status=e.status, reason=e.reason, reason_kind=e.reason_kind,
        value=e.value, wall_s=e.wall_s, host=e.host, cache_key=e.cache_key, cached=e.cached,
    )


def _columns(r: EvaluationRecord) -> dict[str, Any]:
    return dict(study=r.study, trial=r.trial, fidelity=r.fidelity, cache_key=r.cache_key,
                layout_json=json.dumps(r.layout, sort_keys=True), metrics_json=json.dumps(r.metrics),
                status=r.status, reason=r.reason, reason_kind=r.reason_kind, value=r.value, wall_s=r.wall_s,
                host=r.host, cached=r.cached)


def _reason_key(status: str, kind: str | None, reason: str | None) -> str:
    """How a rejected row is counted: ``status: reason kind`` (the reason itself where it has no kind)."""
    return f"{status}: {kind or reason or ''}"


def _stage_count(s: Session, study: str, fidelity: str, numbered: bool) -> int:
    """Rows of a study's bulk stage at ``fidelity``: numbered (trial >= 0) or unnumbered (trial -1)."""
    e = _Evaluation
    which = e.trial >= 0 if numbered else e.trial == -1
    return int(s.scalar(select(func.count()).select_from(e).where(e.study == study, e.fidelity == fidelity,
                                                                  which)) or 0)


def _evaluation(r: EvaluationRecord) -> _Evaluation:
    return _Evaluation(**_columns(r))


class Storage:
    """autotune's tables and Optuna's RDBStorage over one database URL.

    ``create=False`` (read-only commands) refuses to create a missing SQLite file or tables.
    """

    def __init__(self, url: str | None = None, *, create: bool = True) -> None:
        self.url = storage_url(url)
        parsed = _parse(self.url)
        self.display_url = mask_url(self.url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        if self.is_sqlite and parsed.database not in (None, "", ":memory:"):
            path = Path(parsed.database)
            if not create and not path.exists():
                raise StorageError(f"storage: {self.display_url} does not exist (run `autotune submit` first)")
            if create and not path.parent.exists():
                raise StorageError(f"storage: directory {path.parent} of {self.display_url} does not exist")
        self.engine = self._engine(parsed)
        self._init_schema(create)
        self._optuna: optuna.storages.RDBStorage | None = None

    def _engine(self, parsed: URL) -> Engine:
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if self.is_sqlite:
            kwargs["connect_args"] = {"timeout": 30}
        try:
            engine = create_engine(parsed, **kwargs)
        except (NoSuchModuleError, ArgumentError, ImportError) as e:
            raise StorageError(f"storage: unsupported URL {self.display_url}: {e}") from e
        if self.is_sqlite:
            event.listen(engine, "connect", _sqlite_pragmas)
        return engine

    def _create_schema(self, create: bool) -> None:
        tables = set(inspect(self.engine).get_table_names())
        if _Schema.__tablename__ not in tables:
            if not create:
                raise StorageError(f"storage: {self.display_url} holds no autotune studies")
            _Base.metadata.create_all(self.engine)
            with Session(self.engine) as s, s.begin():
                if s.get(_Schema, 1) is None:
                    s.add(_Schema(id=1, version=SCHEMA_VERSION))

    def _scrub(self, text: str) -> str:
        """``text`` with the URL's password, if any, replaced by ***."""
        password = _parse(self.url).password
        return text.replace(str(password), "***") if password else text

    def _init_schema(self, create: bool) -> None:
        try:
            _racing(lambda: self._create_schema(create))
            with Session(self.engine) as s:
                row = s.get(_Schema, 1)
            if row is not None and row.version != SCHEMA_VERSION:
                raise StorageError(f"storage: schema version {row.version} in {self.display_url}, "
                                   f"this autotune reads version {SCHEMA_VERSION}")
        except OperationalError as e:
            raise StorageError(f"storage: cannot open {self.display_url}: "
                               f"{self._scrub(' '.join(str(e.orig).split()))}") from e
        except SQLAlchemyError as e:
            raise StorageError(f"storage: {self.display_url}: {type(e).__name__}") from e

    def optuna(self) -> optuna.storages.RDBStorage:
        """Optuna's RDBStorage on the same DB, with heartbeats and retry of trials of a dead driver."""
        if self._optuna is None:
            kwargs = {"connect_args": {"timeout": 30}} if self.is_sqlite else {"pool_pre_ping": True}
            with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna, and what resume needs
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self._optuna = _racing(lambda: optuna.storages.RDBStorage(
                    self.url, engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3),
                ))
            if self.is_sqlite:
                event.listen(self._optuna.engine, "connect", _sqlite_pragmas)
                self._optuna.engine.dispose()
        return self._optuna

    # studies -------------------------------------------------------------------------------------
    def add_study(self, name: str, spec: dict[str, Any], autotune_version: str, cost_model_version: str) -> None:
        """Record a submitted study (its spec as given); a no-op if a concurrent driver recorded it first."""
        try:
            with Session(self.engine) as s, s.begin():
                s.add(_Study(name=name, spec_json=json.dumps(spec, sort_keys=True),
                             autotune_version=autotune_version, cost_model_version=cost_model_version))
        except IntegrityError:
            if self.study_spec(name) is None:
                raise

    def study_spec(self, name: str) -> dict[str, Any] | None:
        """The spec a study was submitted with, or None if there is no such study."""
        with Session(self.engine) as s:
            row = s.scalar(select(_Study).where(_Study.name == name))
            return None if row is None else json.loads(row.spec_json)

    def require_spec(self, study: str, field: str = "study") -> dict[str, Any]:
        """The spec ``study`` was submitted with; :class:`StorageError` naming ``field`` when it does not exist."""
        spec = self.study_spec(study)
        if spec is None:
            raise StorageError(f"{field}: no study named {study!r} in {self.display_url} (see `autotune studies`)")
        return spec

    def studies(self) -> list[dict[str, Any]]:
        """Every study with its evaluation counts."""
        with Session(self.engine) as s:
            counts = dict(s.execute(select(_Evaluation.study, func.count()).group_by(_Evaluation.study)).all())
            ok = dict(s.execute(select(_Evaluation.study, func.count()).where(_Evaluation.status == "ok")
                                .group_by(_Evaluation.study)).all())
            rows = s.scalars(select(_Study).order_by(_Study.id)).all()
            return [{"name": r.name, "created_at": r.created_at.isoformat() if r.created_at else None,
                     "evaluations": counts.get(r.name, 0), "ok": ok.get(r.name, 0),
                     "autotune_version": r.autotune_version, "cost_model_version": r.cost_model_version,
                     "spec": json.loads(r.spec_json)} for r in rows]

    # evaluations ---------------------------------------------------------------------------------
    def add_evaluations(self, records: list[EvaluationRecord], session: Session | None = None) -> None:
        """Write evaluation rows in one transaction, or add them to ``session``'s open transaction."""
        if not records:
            return
        if session is not None:
            session.add_all(_evaluation(r) for r in records)
            return
        with Session(self.engine) as s, s.begin():
            s.add_all(_evaluation(r) for r in records)

    def stage_rows(self, study: str, fidelity: str, numbered: bool) -> int:
        """How many rows of a study's bulk stage at ``fidelity`` are stored: rows numbered 0, 1, ... when
        ``numbered``, else the unnumbered (trial -1) rows of a multi-fidelity stage."""
        with Session(self.engine) as s:
            return _stage_count(s, study, fidelity, numbered)

    def append_stage(self, study: str, start: int, records: list[EvaluationRecord], *, numbered: bool) -> int:
        """Store rows ``start .. start + len(records)`` of a study's bulk stage (rows are produced in one
        deterministic order) in one transaction; return how many were new.

        The transaction first writes the study's ``autotune_studies`` row, so SQLite takes its write lock
        and PostgreSQL locks the row before the stored rows are counted: drivers appending the same stage
        at once never store a row twice, and a driver killed mid-insert leaves whole chunks only.
        """
        if not records:
            return 0
        fidelity = records[0].fidelity
        with Session(self.engine) as s, s.begin():
            locked = s.execute(update(_Study).where(_Study.name == study).values(name=_Study.name)).rowcount
            if locked != 1:
                self.require_spec(study)
            stored = _stage_count(s, study, fidelity, numbered)
            if stored < start:
                raise StorageError(f"study: {study!r} holds {stored} rows of its {fidelity} stage, fewer than the "
                                   f"{start} before this chunk (rows were deleted?)")
            new = records[stored - start:]
            if new:  # a Core executemany: the ORM's bulk path costs as much again per row
                s.execute(insert(_Evaluation.__table__), [_columns(r) for r in new])
            return len(new)

    def rejection_counts(self, study: str) -> tuple[int, Counter[str]]:
        """(all rows, rejections by ``status: reason kind``) of a study, counted in the database."""
        e = _Evaluation
        with Session(self.engine) as s:
            total = int(s.scalar(select(func.count()).select_from(e).where(e.study == study)) or 0)
            groups = s.execute(select(e.status, e.reason_kind, e.reason, func.count()).where(
                e.study == study, e.status != "ok").group_by(e.status, e.reason_kind, e.reason)).all()
        counts: Counter[str] = Counter()
        for status, kind, reason, n in groups:
            counts[_reason_key(status, kind, reason)] += n
        return total, counts

    def rejection_counts_where(self, study: str, keep: Callable[[dict[str, Any]], bool]) -> tuple[int, Counter[str]]:
        """:meth:`rejection_counts` over the rows whose layout passes ``keep``, read row by row without their
        metrics (layouts are JSON text, which SQL cannot filter the same way on every backend)."""
        e = _Evaluation
        total, counts = 0, Counter[str]()
        with Session(self.engine) as s:
            rows = s.execute(select(e.layout_json, e.status, e.reason_kind, e.reason).where(e.study == study)
                             .execution_options(yield_per=5000))
            for layout, status, kind, reason in rows:
                if keep(json.loads(layout)):
                    total += 1
                    if status != "ok":
                        counts[_reason_key(status, kind, reason)] += 1
        return total, counts

    def cached(self, keys: list[str]) -> dict[str, EvaluationRecord]:
        """Earlier evaluations (any study) with these cache keys, not themselves cache hits."""
        if not keys:
            return {}
        with Session(self.engine) as s:
            rows = s.scalars(select(_Evaluation).where(_Evaluation.cache_key.in_(keys),
                                                       _Evaluation.cached.is_(False))).all()
            return {r.cache_key: _row(r) for r in rows if r.cache_key}

    def evaluations(self, study: str, status: str | None = None) -> list[EvaluationRecord]:
        """A study's evaluation rows in trial order."""
        with Session(self.engine) as s:
            q = select(_Evaluation).where(_Evaluation.study == study)
            if status is not None:
                q = q.where(_Evaluation.status == status)
            return [_row(r) for r in s.scalars(q.order_by(_Evaluation.trial, _Evaluation.id)).all()]

    def close(self) -> None:
        """Release connections."""
        self.engine.dispose()
        if self._optuna is not None:
            self._optuna.remove_session()
            self._optuna.engine.dispose()

    # the service's reads: records without counting, counts by aggregate, rows by page -------------
    def study_entries(self, name: str | None = None) -> list[dict[str, Any]]:
        """The :meth:`studies` rows without their counts (of study ``name`` only, when given): name, created_at,
        autotune_version, cost_model_version and spec, in creation order, with no row of evaluations read."""
        q = select(_Study).order_by(_Study.id)
        with Session(self.engine) as s:
            rows = s.scalars(q if name is None else q.where(_Study.name == name)).all()
            return [{"name": r.name, "created_at": r.created_at.isoformat() if r.created_at else None,
                     "autotune_version": r.autotune_version, "cost_model_version": r.cost_model_version,
                     "spec": json.loads(r.spec_json)} for r in rows]

    def status_counts(self, study: str | None = None) -> dict[str, dict[str, int]]:
        """Evaluation rows by study and status (of ``study`` only, when given), in one ``GROUP BY`` query."""
        e = _Evaluation
        q = select(e.study, e.status, func.count()).group_by(e.study, e.status)
        out: dict[str, dict[str, int]] = {}
        with Session(self.engine) as s:
            for name, status, n in s.execute(q if study is None else q.where(e.study == study)):
                out.setdefault(name, {})[status] = int(n)
        return out

    def _filtered(self, q: Any, study: str, status: str | None, fidelity: str | None) -> Any:
        e = _Evaluation
        q = q.where(e.study == study)
        if status is not None:
            q = q.where(e.status == status)
        return q if fidelity is None else q.where(e.fidelity == fidelity)

    def evaluation_count(self, study: str, status: str | None = None, fidelity: str | None = None) -> int:
        """How many rows of ``study`` have ``status`` and ``fidelity`` (either None: any), counted in the database."""
        with Session(self.engine) as s:
            return int(s.scalar(self._filtered(select(func.count()).select_from(_Evaluation), study, status,
                                               fidelity)) or 0)

    def evaluation_page(self, study: str, status: str | None = None, fidelity: str | None = None, *,
                        offset: int = 0, limit: int | None = None) -> list[EvaluationRecord]:
        """One page of the rows :meth:`evaluations` lists (trial order), also filtered by ``fidelity``,
        with ``LIMIT``/``OFFSET`` in the query."""
        e = _Evaluation
        q = self._filtered(select(e), study, status, fidelity).order_by(e.trial, e.id).offset(offset).limit(limit)
        with Session(self.engine) as s:
            return [_row(r) for r in s.scalars(q).all()]

    def evaluation_metrics(self, study: str, status: str | None = None, fidelity: str | None = None,
                           after_id: int = 0) -> list[tuple[int, int, str, dict[str, Any]]]:
        """``(row id, trial, fidelity, metrics)`` of the filtered rows with an id above ``after_id``, in trial
        order: what a sort key or a running best needs, without the layout and the other columns."""
        e = _Evaluation
        q = self._filtered(select(e.id, e.trial, e.fidelity, e.metrics_json), study, status, fidelity)
        with Session(self.engine) as s:
            rows = s.execute(q.where(e.id > after_id).order_by(e.trial, e.id)).all()
        return [(i, t, f, json.loads(m)) for i, t, f, m in rows]

    def evaluations_by_id(self, ids: list[int]) -> list[EvaluationRecord]:
        """The rows with these ids, in the order given (ids not stored are left out)."""
        if not ids:
            return []
        with Session(self.engine) as s:
            found = {r.id: r for r in s.scalars(select(_Evaluation).where(_Evaluation.id.in_(ids))).all()}
            return [_row(found[i]) for i in ids if i in found]
