"""Calibrated profiles: versioned GPU and stack profiles stored beside the studies, exportable as YAML.

Table ``autotune_profiles`` (its own SQLAlchemy metadata, created on first use in any autotune DB): one
row per (name, version). Each ``autotune calibrate`` of a name adds version n+1 with the profile's
fields (a :class:`~autotune.spec.GPUSpec` or :class:`~autotune.spec.StackSpec` without its name), its
``profile_kind`` (:data:`PROFILE_KINDS`; a name holds one kind), the profile it started from, what it was
fitted on (microbenchmarks with their host and figures, or a study's measured trials) and the fit's
errors. A reference ``NAME`` means the latest version, ``NAME@V`` version V. A table written before stack
profiles existed has no ``profile_kind`` column: it is added on first use, its rows GPU profiles.

An exported YAML holds the profile's fields at the top level plus a ``calibration`` comment block, so it
loads back as a GPU file (``cluster.gpu: path/to/profile.yaml``) or a stack file (``training.stack: ...``).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from typing import Any, TypeVar

import yaml
from pydantic import ValidationError
from sqlalchemy import DateTime, Integer, String, Text, UniqueConstraint, func, inspect, select, text
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from autotune.errors import SpecError, StorageError
from autotune.spec import NAME_PATTERN, GPUSpec, StackSpec, format_validation_error
from autotune.store.storage import Storage

__all__ = ["PROFILE_KINDS", "Profile", "ProfileStore", "parse_ref", "to_yaml", "load_profile", "load_stack_profile"]

#: What a stored profile describes, and the spec type its fields validate as.
PROFILE_KINDS: dict[str, type[GPUSpec] | type[StackSpec]] = {"gpu": GPUSpec, "stack": StackSpec}
_S = TypeVar("_S", GPUSpec, StackSpec)


class _Base(DeclarativeBase):
    pass


class _Profile(_Base):
    __tablename__ = "autotune_profiles"
    __table_args__ = (UniqueConstraint("name", "version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), index=True)
    version: Mapped[int] = mapped_column(Integer)
    base: Mapped[str] = mapped_column(String(128))
    profile_kind: Mapped[str] = mapped_column(String(16), server_default="gpu")
    fields_json: Mapped[str] = mapped_column(Text)
    source_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, server_default=func.now())


@dataclass(frozen=True)
class Profile:
    """One stored version of a calibrated profile."""

    name: str
    version: int
    base: str
    """The catalog name or profile reference the fit started from."""
    fields: dict[str, Any]
    """GPUSpec or StackSpec fields (without ``name``)."""
    source: dict[str, Any]
    """What it was fitted on (kind, host, data, figures) and the fit's errors."""
    created_at: str | None = None
    profile_kind: str = "gpu"
    """A key of :data:`PROFILE_KINDS`."""

    @property
    def ref(self) -> str:
        """``name@version``."""
        return f"{self.name}@{self.version}"

    def gpu(self) -> GPUSpec:
        """The profile as a GPUSpec named ``name@version``."""
        return self._validate("gpu", GPUSpec)

    def stack(self) -> StackSpec:
        """The profile as a StackSpec named ``name@version``."""
        return self._validate("stack", StackSpec)

    def _validate(self, kind: str, cls: type[_S]) -> _S:
        if self.profile_kind != kind:
            raise SpecError(f"profile: {self.ref} is a {self.profile_kind} profile, not a {kind} profile")
        try:
            return cls.model_validate({**self.fields, "name": self.ref})
        except ValidationError as e:
            raise SpecError(format_validation_error(e, cls, prefix=f"profile {self.ref}: ")) from e


def parse_ref(ref: str, field: str = "profile") -> tuple[str, int | None]:
    """``NAME`` -> (NAME, None); ``NAME@V`` -> (NAME, V); errors name ``field``."""
    m = re.fullmatch(f"({NAME_PATTERN.strip('^$')})(?:@(\\d+))?", ref)
    if m is None:
        raise SpecError(f"{field}: {ref!r} is not NAME or NAME@VERSION (letters, digits, . _ -)")
    return m.group(1), int(m.group(2)) if m.group(2) else None


def _record(r: _Profile) -> Profile:
    return Profile(name=r.name, version=r.version, base=r.base, fields=json.loads(r.fields_json),
                   source=json.loads(r.source_json), created_at=r.created_at.isoformat() if r.created_at else None,
                   profile_kind=r.profile_kind or "gpu")


def _kind_of(profile: GPUSpec | StackSpec) -> str:
    return next(k for k, cls in PROFILE_KINDS.items() if isinstance(profile, cls))


def _add_kind_column(storage: Storage) -> None:
    """Give a profiles table from before stack profiles its ``profile_kind`` column (every old row a GPU
    profile); a concurrent process adding it first is fine."""
    if "profile_kind" in {c["name"] for c in inspect(storage.engine).get_columns(_Profile.__tablename__)}:
        return
    try:
        with storage.engine.begin() as conn:
            conn.execute(text(f"ALTER TABLE {_Profile.__tablename__} ADD COLUMN profile_kind VARCHAR(16) "
                              "NOT NULL DEFAULT 'gpu'"))
    except SQLAlchemyError:
        if "profile_kind" not in {c["name"] for c in inspect(storage.engine).get_columns(_Profile.__tablename__)}:
            raise


class ProfileStore:
    """Versioned profiles in a :class:`Storage`'s database."""

    def __init__(self, storage: Storage):
        self.storage = storage
        try:
            _Base.metadata.create_all(storage.engine)
            _add_kind_column(storage)
        except SQLAlchemyError as e:
            raise StorageError(f"storage: cannot create the profiles table in {storage.display_url}: "
                               f"{type(e).__name__}") from e

    def add(self, name: str, profile: GPUSpec | StackSpec, base: str, source: dict[str, Any]) -> Profile:
        """Store ``profile`` (a GPU or a stack profile) as the next version of ``name``; returns the stored
        profile. A name holds one kind: adding a stack profile under a GPU profile's name is refused."""
        parse_ref(name)
        if "@" in name:
            raise SpecError(f"profile: name {name!r} must not contain '@'")
        kind = _kind_of(profile)
        fields = profile.model_dump(mode="json", exclude={"name"})
        for _ in range(5):  # a concurrent calibrate may take the same version number: retry
            with Session(self.storage.engine) as s:
                other = s.scalar(select(_Profile.profile_kind).where(_Profile.name == name,
                                                                     _Profile.profile_kind != kind).limit(1))
                if other is not None:
                    raise SpecError(f"profile: {name!r} already names a {other} profile in "
                                    f"{self.storage.display_url}; give the {kind} profile another name")
                last = s.scalar(select(func.max(_Profile.version)).where(_Profile.name == name)) or 0
                row = _Profile(name=name, version=last + 1, base=base, profile_kind=kind,
                               fields_json=json.dumps(fields, sort_keys=True),
                               source_json=json.dumps(source, sort_keys=True, default=float))
                s.add(row)
                try:
                    s.commit()
                except IntegrityError:
                    s.rollback()
                    continue
                return _record(row)
        raise StorageError(f"profile: could not add a version of {name!r} (concurrent writers)")

    def get(self, ref: str, kind: str | None = None, field: str = "profile") -> Profile:
        """The profile ``NAME`` (latest version) or ``NAME@V``, of ``kind`` when given (a profile of the
        other kind is an error); errors name ``field``."""
        name, version = parse_ref(ref, field)
        with Session(self.storage.engine) as s:
            q = select(_Profile).where(_Profile.name == name)
            q = q.where(_Profile.version == version) if version else q.order_by(_Profile.version.desc())
            row = s.scalars(q.limit(1)).first()
            if row is None or (kind is not None and row.profile_kind != kind):
                what = "stack profile" if kind == "stack" else "profile"
                known = ", ".join(p["ref"] for p in self.list() if kind in (None, p["profile_kind"])) or "none"
                hint = "--from-study STUDY --stack NAME" if kind == "stack" else "--name NAME"
                raise SpecError(f"{field}: no {what} {ref!r} in {self.storage.display_url} (stored: {known}; "
                                f"run `autotune calibrate {hint}`)")
            return _record(row)

    def list(self) -> list[dict[str, Any]]:
        """Every stored version, oldest first, as plain data (name, version, ref, base, profile_kind, kind: what
        it was fitted on, created_at, fields, source)."""
        with Session(self.storage.engine) as s:
            rows = s.scalars(select(_Profile).order_by(_Profile.name, _Profile.version)).all()
            out = []
            for r in rows:
                p = _record(r)
                out.append({"name": p.name, "version": p.version, "ref": p.ref, "base": p.base,
                            "profile_kind": p.profile_kind, "kind": p.source.get("kind"), "created_at": p.created_at,
                            "fields": p.fields, "source": p.source})
            return out


def _comment(source: dict[str, Any], width: int = 100) -> list[str]:
    text = yaml.safe_dump({"calibration": source}, sort_keys=True, width=width, default_flow_style=None)
    return ["# " + line for line in text.splitlines()]


def to_yaml(profile: Profile) -> str:
    """A GPU YAML file of a GPU profile (loadable with ``cluster.gpu: FILE``), a stack YAML file of a stack
    profile (``training.stack: FILE``); provenance in comments."""
    use = {"gpu": f"`cluster.gpu: <this file>` or use `--profile {profile.ref}`",
           "stack": f"`training.stack: <this file>` or use `--stack-profile {profile.ref}`"}[profile.profile_kind]
    head = [f"# autotune {profile.profile_kind} profile {profile.ref}, calibrated from {profile.base} at "
            f"{profile.created_at}", f"# Load it with {use}."]
    body = yaml.safe_dump(profile.fields, sort_keys=True, default_flow_style=None)
    summary = {k: v for k, v in profile.source.items() if k not in ("data",)}
    return "\n".join([*head, *_comment(summary)]) + "\n" + body


def load_profile(ref: str, storage: str | None = None) -> GPUSpec:
    """The GPUSpec of stored profile ``NAME`` (latest) or ``NAME@V`` in the DB at ``storage``
    (the ``--profile`` option of estimate and submit)."""
    store = Storage(storage, create=False)
    try:
        return ProfileStore(store).get(ref, kind="gpu").gpu()
    finally:
        store.close()


def load_stack_profile(ref: str, storage: str | None = None, field: str = "training.stack") -> StackSpec:
    """The StackSpec of stored stack profile ``NAME`` (latest) or ``NAME@V`` in the DB at ``storage``
    (``training.stack: NAME@V``, ``submit --stack-profile``); errors name ``field``."""
    try:
        store = Storage(storage, create=False)
    except StorageError as e:
        raise SpecError(f"{field}: {ref!r} is no catalog stack or file, and the stored stack profiles are not "
                        f"readable: {e}") from e
    try:
        return ProfileStore(store).get(ref, kind="stack", field=field).stack()
    finally:
        store.close()
