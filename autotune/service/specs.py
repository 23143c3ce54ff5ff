"""Request bodies to spec mappings: YAML or JSON by Content-Type, and no references to the server's files.

A spec given to ``autotune submit`` may name a model, GPU or search-space *file*; one sent to the service
may not, since the server would read its own disk for a remote caller (and echo parse errors of the file
back): there, ``model``, ``cluster.gpu`` and ``search.space`` take catalog names or inline mappings only.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from autotune.errors import SpecError

__all__ = ["YAML_TYPES", "JSON_TYPES", "parse_body", "refuse_paths"]

YAML_TYPES = ("application/yaml", "text/yaml", "application/x-yaml")
"""Content types read as YAML (RFC 9512 registers application/yaml)."""
JSON_TYPES = ("application/json",)
"""Content types read as JSON."""
_FILE_SUFFIXES = (".yaml", ".yml", ".json", ".toml")
_REFERENCES = (("model",), ("cluster", "gpu"), ("search", "space"))


def parse_body(body: bytes, content_type: str | None) -> dict[str, Any]:
    """The mapping a request body holds; :class:`SpecError` (field ``spec``) when it holds none."""
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind not in YAML_TYPES + JSON_TYPES:
        raise SpecError(f"spec: Content-Type must be one of {', '.join(YAML_TYPES + JSON_TYPES)} "
                        f"(got {kind or 'none'!r})")
    try:
        text = body.decode("utf-8")
        data = json.loads(text) if kind in JSON_TYPES else yaml.safe_load(text)
    except (UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SpecError(f"spec: the request body is not valid {'JSON' if kind in JSON_TYPES else 'YAML'}: "
                        f"{first}") from e
    if not isinstance(data, dict):
        raise SpecError(f"spec: the request body must hold a mapping of fields, got {type(data).__name__}")
    return data


def refuse_paths(data: dict[str, Any], shipped_spaces: list[str]) -> None:
    """:class:`SpecError` when ``model``, ``cluster.gpu`` or ``search.space`` names a file on the server."""
    for path in _REFERENCES:
        node: Any = data
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if not isinstance(node, str):
            continue
        field = ".".join(path)
        if path == ("search", "space") and node not in shipped_spaces:
            raise SpecError(f"{field}: the service takes a shipped space ({', '.join(shipped_spaces)}), "
                            f"not {node!r}")
        if "/" in node or "\\" in node or node.lower().endswith(_FILE_SUFFIXES):
            raise SpecError(f"{field}: the service takes a catalog name or an inline mapping, not a file "
                            f"path ({node!r})")
