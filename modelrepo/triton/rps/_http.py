"""Blocking JSON requests to Triton for what happens before a run: metadata, config, readiness.

Why a separate small client: the run itself uses raw sockets on its own event loop; these few
requests are made once, from the caller's thread, and their failures must become errors that
say which server, which model, and what to do.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from modelrepo.errors import TritonError

Endpoint = tuple[str, int]
DEFAULT_PORT = 8000


def parse_url(url: str) -> Endpoint:
    """``host:port`` or ``http://host:port`` -> (host, port); HTTPS is not supported."""
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme != "http":
        raise TritonError(
            f"URL {url!r} uses {parts.scheme!r}; the RPS client speaks plain HTTP only",
            hint="pass host:port of Triton's HTTP endpoint (e.g. a port-forward to 8000)",
        )
    if not parts.hostname:
        raise TritonError(f"URL {url!r} has no host", hint="pass host:port, e.g. 127.0.0.1:8000")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError as exc:
        raise TritonError(f"URL {url!r} has a bad port", hint="pass host:port") from exc
    return parts.hostname, port


def endpoint_text(endpoint: Endpoint) -> str:
    return f"{endpoint[0]}:{endpoint[1]}"


def request_json(
    endpoint: Endpoint, method: str, path: str, *, timeout: float = 10.0
) -> tuple[int, Any]:
    """(status, decoded JSON or text) of one request; unreachable servers raise TritonError."""
    conn = http.client.HTTPConnection(endpoint[0], endpoint[1], timeout=timeout)
    try:
        conn.request(method, path, body=b"" if method == "POST" else None)
        resp = conn.getresponse()
        raw = resp.read()
    except OSError as exc:
        raise TritonError(
            f"cannot reach Triton at {endpoint_text(endpoint)} ({method} {path}): {exc}",
            hint="check the URL, that the server runs, and any port-forward to it",
        ) from exc
    finally:
        conn.close()
    try:
        body: Any = json.loads(raw) if raw else None
    except ValueError:
        body = raw.decode("utf-8", "replace")
    return resp.status, body


def model_path(model: str, version: str | None = None) -> str:
    return f"/v2/models/{model}" + (f"/versions/{version}" if version else "")


def _error_text(body: Any) -> str:
    if isinstance(body, dict) and "error" in body:
        return str(body["error"])
    return str(body)


def _index(endpoint: Endpoint) -> list[dict[str, Any]] | None:
    try:
        status, body = request_json(endpoint, "POST", "/v2/repository/index")
    except TritonError:
        return None
    return body if status == 200 and isinstance(body, list) else None


def model_error(endpoint: Endpoint, model: str, version: str | None, answer: Any) -> TritonError:
    """Why ``model`` cannot be measured on this server, from its repository index."""
    where = endpoint_text(endpoint)
    index = _index(endpoint)
    load_hint = (
        f"load it first: repo.load({model!r}), `modelrepo load {model}` in a terminal, "
        f"or POST /v2/repository/models/{model}/load"
    )
    if index is None:
        return TritonError(
            f"Triton at {where} cannot serve model {model!r}: {_error_text(answer)}",
            hint=load_hint,
        )
    entries = [e for e in index if e.get("name") == model]
    if not entries:
        names = sorted({str(e.get("name")) for e in index})
        return TritonError(
            f"Triton at {where} has no model {model!r} in its repository",
            hint=f"available models: {', '.join(names) if names else 'none'}; "
            "check the name, or push the model first",
        )
    ready = sorted(str(e.get("version")) for e in entries if e.get("state") == "READY")
    if ready and version is not None:
        return TritonError(
            f"model {model!r} version {version} is not loaded on Triton at {where} "
            f"(loaded versions: {', '.join(ready)})",
            hint="pass one of the loaded versions, or change the model's version_policy and "
            "load it again",
        )
    states = ", ".join(
        (f"version {e['version']}: " if e.get("version") else "")
        + str(e.get("state") or "not loaded")
        + (f" ({e['reason']})" if e.get("reason") else "")
        for e in entries
    )
    return TritonError(
        f"model {model!r} is not loaded on Triton at {where} (state: {states})", hint=load_hint
    )


def describe_model(
    endpoints: Sequence[Endpoint], model: str, version: str | None, *, timeout: float = 10.0
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Metadata and config of ``model``, after checking it is ready on every endpoint."""
    path = model_path(model, version)
    metadata: dict[str, Any] | None = None
    for endpoint in endpoints:
        status, body = request_json(endpoint, "GET", path, timeout=timeout)
        if status != 200 or not isinstance(body, dict):
            raise model_error(endpoint, model, version, body)
        metadata = metadata or body
        status, body = request_json(endpoint, "GET", path + "/ready", timeout=timeout)
        if status != 200:
            raise model_error(endpoint, model, version, body)
    assert metadata is not None
    status, config = request_json(endpoints[0], "GET", f"/v2/models/{model}/config")
    if status != 200 or not isinstance(config, dict):
        raise TritonError(
            f"cannot read the config of model {model!r} from {endpoint_text(endpoints[0])}: "
            f"{_error_text(config)}",
            hint="check that the model is loaded and the server is healthy",
        )
    return metadata, config
