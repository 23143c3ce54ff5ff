"""Calibrated hardware profiles: versioned GPU profiles stored beside the studies, exportable as YAML.

Table ``autotune_profiles`` (its own SQLAlchemy metadata, created on first use in any autotune DB): one
row per (name, version). Each ``autotune calibrate`` of a name adds version n+1 with the profile's
fields (a :class:`~autotune.spec.GPUSpec` without its name), the profile it started from, what it was
fitted on (microbenchmarks with their host and figures, or a study's measured trials) and the fit's
errors. A reference ``NAME`` means the latest version, ``NAME@V`` version V.

An exported YAML holds the GPUSpec fields at the top level plus a ``calibration`` comment block, so it
loads back as a GPU file (``cluster.gpu: path/to/profile.yaml``).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import ValidationError
from sqlalchemy import DateTime, Integer, String, Text, UniqueConstraint, func, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from autotune.errors import SpecError, StorageError
from autotune.spec import NAME_PATTERN, GPUSpec, format_validation_error
from autotune.store.storage import Storage

__all__ = ["Profile", "ProfileStore", "parse_ref", "to_yaml", "load_profile"]



class _Base(DeclarativeBase):
    pass


class _Profile(_Base):
    __tablename__ = "autotune_profiles"
    __table_args__ = (UniqueConstraint("name", "version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), index=True)
    version: Mapped[int] = mapped_column(Integer)
    base: Mapped[str] = mapped_column(String(128))
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
    """GPUSpec fields (without ``name``)."""
    source: dict[str, Any]
    """What it was fitted on (kind, host, data, figures) and the fit's errors."""
    created_at: str | None = None

    @property
    def ref(self) -> str:
        """``name@version``."""
        return f"{self.name}@{self.version}"

    def gpu(self) -> GPUSpec:
        """The profile as a GPUSpec named ``name@version``."""
        try:
            return GPUSpec.model_validate({**self.fields, "name": self.ref})
        except ValidationError as e:
            raise SpecError(format_validation_error(e, GPUSpec, prefix=f"profile {self.ref}: ")) from e


def parse_ref(ref: str) -> tuple[str, int | None]:
    """``NAME`` -> (NAME, None); ``NAME@V`` -> (NAME, V)."""
    m = re.fullmatch(f"({NAME_PATTERN.strip('^$')})(?:@(\\d+))?", ref)
    if m is None:
        raise SpecError(f"profile: {ref!r} is not NAME or NAME@VERSION (letters, digits, . _ -)")
    return m.group(1), int(m.group(2)) if m.group(2) else None


def _record(r: _Profile) -> Profile:
    return Profile(name=r.name, version=r.version, base=r.base, fields=json.loads(r.fields_json),
                   source=json.loads(r.source_json), created_at=r.created_at.isoformat() if r.created_at else None)


class ProfileStore:
    """Versioned profiles in a :class:`Storage`'s database."""

    def __init__(self, storage: Storage):
        self.storage = storage
        try:
            _Base.metadata.create_all(storage.engine)
        except SQLAlchemyError as e:
            raise StorageError(f"storage: cannot create the profiles table in {storage.display_url}: "
                               f"{type(e).__name__}") from e

    def add(self, name: str, gpu: GPUSpec, base: str, source: dict[str, Any]) -> Profile:
        """Store ``gpu`` as the next version of ``name``; returns the stored profile."""
        parse_ref(name)
        if "@" in name:
            raise SpecError(f"profile: name {name!r} must not contain '@'")
        fields = gpu.model_dump(mode="json", exclude={"name"})
        for _ in range(5):  # a concurrent calibrate may take the same version number: retry
            with Session(self.storage.engine) as s:
                last = s.scalar(select(func.max(_Profile.version)).where(_Profile.name == name)) or 0
                row = _Profile(name=name, version=last + 1, base=base, fields_json=json.dumps(fields, sort_keys=True),
                               source_json=json.dumps(source, sort_keys=True, default=float))
                s.add(row)
                try:
                    s.commit()
                except IntegrityError:
                    s.rollback()
                    continue
                return _record(row)
        raise StorageError(f"profile: could not add a version of {name!r} (concurrent writers)")

    def get(self, ref: str) -> Profile:
        """The profile ``NAME`` (latest version) or ``NAME@V``."""
        name, version = parse_ref(ref)
        with Session(self.storage.engine) as s:
            q = select(_Profile).where(_Profile.name == name)
            q = q.where(_Profile.version == version) if version else q.order_by(_Profile.version.desc())
            row = s.scalars(q.limit(1)).first()
            if row is None:
                known = ", ".join(p["ref"] for p in self.list()) or "none"
                raise SpecError(f"profile: no profile {ref!r} in {self.storage.display_url} (stored: {known}; "
                                "run `autotune calibrate --name NAME`)")
            return _record(row)

    def list(self) -> list[dict[str, Any]]:
        """Every stored version, oldest first, as plain data (name, version, ref, base, kind, created_at)."""
        with Session(self.storage.engine) as s:
            rows = s.scalars(select(_Profile).order_by(_Profile.name, _Profile.version)).all()
            out = []
            for r in rows:
                p = _record(r)
                out.append({"name": p.name, "version": p.version, "ref": p.ref, "base": p.base,
                            "kind": p.source.get("kind"), "created_at": p.created_at, "fields": p.fields,
                            "source": p.source})
            return out


def _comment(source: dict[str, Any], width: int = 100) -> list[str]:
    text = yaml.safe_dump({"calibration": source}, sort_keys=True, width=width, default_flow_style=None)
    return ["# " + line for line in text.splitlines()]


def to_yaml(profile: Profile) -> str:
    """A GPU YAML file of ``profile`` (loadable with ``cluster.gpu: FILE``); provenance in comments."""
    head = [f"# autotune profile {profile.ref}, calibrated from {profile.base} at {profile.created_at}",
            f"# Load it with `cluster.gpu: <this file>` or use `--profile {profile.ref}`."]
    body = yaml.safe_dump(profile.fields, sort_keys=True, default_flow_style=None)
    summary = {k: v for k, v in profile.source.items() if k not in ("data",)}
    return "\n".join([*head, *_comment(summary)]) + "\n" + body


def load_profile(ref: str, storage: str | None = None) -> GPUSpec:
    """The GPUSpec of stored profile ``NAME`` (latest) or ``NAME@V`` in the DB at ``storage``
    (the ``--profile`` option of estimate and submit)."""
    store = Storage(storage, create=False)
    try:
        return ProfileStore(store).get(ref).gpu()
    finally:
        store.close()
