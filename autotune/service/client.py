"""The HTTP client of the service, used by ``autotune submit|best|studies|trials|export --server URL``.

The token comes from ``$AUTOTUNE_TOKEN``; without it, a client of a loopback URL reads the token file a
server given no tokens writes (:mod:`autotune.service.local_token`). Every failure is a one-line
:class:`ServerError` (an :class:`AutotuneError`, so the CLI exits 2 with it): the server's error message
as it is (422, 404, 409, 413, 429), ``server: unauthorized (set AUTOTUNE_TOKEN)`` for 401, and ``server:
cannot reach URL: ...`` when nothing answers. Every wait is bounded (:data:`TIMEOUT_S`; a progress stream
by :data:`STREAM_IDLE_S` without a line, the server sending a keep-alive line every 15 s).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from autotune.errors import AutotuneError
from autotune.service.local_token import read_token, token_path
from autotune.service.settings import is_loopback

__all__ = ["Client", "ServerError", "TIMEOUT_S", "STREAM_IDLE_S", "PAGE"]

TIMEOUT_S = 60.0
"""Longest wait for one response (a submit plans the study before it answers)."""
CONNECT_S = 5.0
"""Longest wait for the connection."""
STREAM_IDLE_S = 60.0
"""Longest a progress stream may stay silent."""
PAGE = 1000
"""Evaluations fetched per request (the server's largest page)."""


def _host(url: str) -> str:
    try:
        return httpx.URL(url).host
    except httpx.InvalidURL:
        return ""


class ServerError(AutotuneError):
    """The service refused a request or could not be reached; the message is one line."""


class Client:
    """A session with one autotune server."""

    def __init__(self, url: str, token: str | None = None) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=f"{self.url}/api/v1", headers=headers,
                                  timeout=httpx.Timeout(TIMEOUT_S, connect=CONNECT_S))

    @classmethod
    def from_env(cls, url: str) -> Client:
        """A client of ``url`` with the token in ``$AUTOTUNE_TOKEN``; unset, for a loopback ``url``, the token
        in the local token file (none if there is no such file)."""
        token = os.environ.get("AUTOTUNE_TOKEN") or None
        if token is None and is_loopback(_host(url)):
            token = read_token(token_path())
        return cls(url, token)

    def _check(self, response: httpx.Response) -> httpx.Response:
        if response.status_code == 401:
            raise ServerError("server: unauthorized (set AUTOTUNE_TOKEN)")
        if response.status_code >= 400:
            try:
                message = response.json()["detail"]["message"]
            except (ValueError, KeyError, TypeError):
                message = f"server: HTTP {response.status_code} from {self.url}"
            raise ServerError(" ".join(str(message).split()))
        return response

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._check(self._http.request(method, path, **kwargs))
        except httpx.TransportError as e:
            raise ServerError(f"server: cannot reach {self.url}: {' '.join(str(e).split()) or type(e).__name__}") \
                from e

    def health(self) -> dict[str, Any]:
        """``GET /health``."""
        return self._request("GET", "/health").json()

    def submit(self, spec: dict[str, Any], resume: bool = False) -> dict[str, Any]:
        """Submit a spec mapping; the study's state."""
        return self._request("POST", "/studies", params={"resume": "true"} if resume else None,
                             content=json.dumps(spec), headers={"Content-Type": "application/json"}).json()

    def state(self, name: str) -> dict[str, Any]:
        """A study's state."""
        return self._request("GET", f"/studies/{name}").json()

    def _lines(self, name: str) -> Iterator[str]:
        timeout = httpx.Timeout(TIMEOUT_S, connect=CONNECT_S, read=STREAM_IDLE_S)
        try:
            with self._http.stream("GET", f"/studies/{name}/events", timeout=timeout) as response:
                if response.status_code >= 400:
                    response.read()
                    self._check(response)
                yield from response.iter_lines()
        except httpx.TransportError as e:
            raise ServerError(f"server: progress stream of {name!r} from {self.url} broke: "
                              f"{' '.join(str(e).split()) or type(e).__name__}") from e

    def follow(self, name: str, on_state: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Follow a study's progress stream to its end; ``on_state`` gets every state; returns the last."""
        event, last = None, None
        for line in self._lines(name):
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data = json.loads(line[5:])
                if event == "error":
                    raise ServerError(data["message"])
                last = data
                if on_state:
                    on_state(data)
                if event == "end":
                    return data
        if last is None:
            raise ServerError(f"server: the progress stream of {name!r} ended without a state")
        return self.state(name)

    def best(self, name: str, top: int = 5) -> dict[str, Any]:
        """The ``best --json`` object (also when no layout fits)."""
        return self._request("GET", f"/studies/{name}/best", params={"top": top, "require_fit": "false"}).json()

    def studies(self) -> list[dict[str, Any]]:
        """Every study's state with its ``record`` (the ``autotune studies --json`` row, null until stored)."""
        return self._request("GET", "/studies", params={"records": "true"}).json()["studies"]

    def evaluations(self, name: str, status: str | None, sort: str, limit: int | None) -> list[dict[str, Any]]:
        """A study's evaluations (``trials --json`` items), sorted, at most ``limit``, fetched page by page."""
        items: list[dict[str, Any]] = []
        while limit is None or len(items) < limit:
            page = min(PAGE, limit - len(items)) if limit is not None else PAGE
            params = {"sort": sort, "offset": len(items), "limit": page} | ({"status": status} if status else {})
            got = self._request("GET", f"/studies/{name}/evaluations", params=params).json()
            items += got["items"]
            if not got["items"] or len(items) >= got["total"]:
                break
        return items

    def export(self, name: str, fmt: str, trial: int | None, config_path: str) -> tuple[str, str | None]:
        """The launch configuration and, for deepspeed, its launch script (as ``export_texts``)."""
        params: dict[str, Any] = {"config_path": config_path} | ({"trial": trial} if trial is not None else {})
        text = self._request("GET", f"/studies/{name}/export/{fmt}", params=params).text
        if fmt != "deepspeed":
            return text, None
        script = self._request("GET", f"/studies/{name}/export/{fmt}", params=params | {"part": "launch"}).text
        return text, script
