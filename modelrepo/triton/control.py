"""Control every replica of a Triton deployment: repository index, load, unload, status.

Each Triton pod keeps its own model state, so a load sent through a Kubernetes Service reaches
one replica only. :class:`TritonReplicas` addresses each replica, in parallel, and reports
each replica's outcome with Triton's own message, because "loaded on 2 of 3" is the case a
user must see.

Triton must run with ``--model-control-mode=explicit``; in any other mode it answers
load/unload with an error this module turns into a :class:`~modelrepo.errors.TritonError`
that says so.
"""

from __future__ import annotations

import base64
import html
import http.client
import json
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar
from urllib.parse import quote, urlsplit

from modelrepo._tables import html_table, text_table
from modelrepo.errors import TritonError

__all__ = [
    "LoadResult",
    "ReplicaOutcome",
    "ReplicaState",
    "StatusRow",
    "StatusTable",
    "TritonReplicas",
]

T = TypeVar("T")

#: What Triton answers to load/unload unless it runs with --model-control-mode=explicit
#: (checked on Triton 2.51 in both "poll" and "none" modes, HTTP 503).
_NOT_EXPLICIT = "explicit model load / unload is not allowed"
_EXPLICIT_HINT = (
    "Start Triton with --model-control-mode=explicit (in Kubernetes: add it to the "
    "tritonserver args of the Deployment); modelrepo loads and unloads models explicitly."
)
#: Triton's answer when it cannot read a model's folder or config (details only in its log).
_POLL_FAILED = "failed to poll from model repository"

Outcome = Literal["ok", "error", "unreachable", "timeout", "pending"]


# --- HTTP: the one place this module talks to Triton -----------------------------------------


class _Unreachable(Exception):
    """No connection to the replica (refused, no route, connect timeout)."""


class _Timeout(Exception):
    """Connected, but Triton did not answer in time."""


@dataclass(frozen=True)
class _Response:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    def error(self) -> str:
        """Triton's own error text (its ``{"error": ...}`` body), or the raw body."""
        try:
            data = self.json()
        except ValueError:
            data = None
        if isinstance(data, dict) and "error" in data:
            return str(data["error"])
        return self.body.decode(errors="replace").strip() or f"HTTP {self.status}"


def _split_url(url: str) -> tuple[str, str, int]:
    """``host:port`` or ``http(s)://host:port`` -> (scheme, host, port)."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TritonError(
            f"Cannot read the Triton URL {url!r}.",
            hint="Give the HTTP endpoint as 'host:port' or 'http://host:port' (port 8000 "
            "by default in Triton).",
        )
    default = 443 if parts.scheme == "https" else 8000
    return parts.scheme, parts.hostname, parts.port or default


def _request(
    url: str,
    method: str,
    path: str,
    body: Any = None,
    *,
    timeout: float,
    connect_timeout: float,
) -> _Response:
    """One HTTP request to one replica; JSON in, raw bytes out."""
    scheme, host, port = _split_url(url)
    cls = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
    conn = cls(host, port, timeout=min(connect_timeout, timeout))
    try:
        try:
            conn.connect()
        except OSError as e:
            raise _Unreachable(str(e) or type(e).__name__) from e
        assert conn.sock is not None
        conn.sock.settimeout(timeout)
        data = json.dumps(body).encode() if body is not None else b""
        headers = {"Content-Type": "application/json"} if body is not None else {}
        try:
            conn.request(method, path, body=data if method == "POST" else None, headers=headers)
            resp = conn.getresponse()
            return _Response(resp.status, resp.read())
        except TimeoutError as e:
            raise _Timeout(f"no answer within {timeout:g} s") from e
        except (ConnectionError, http.client.HTTPException) as e:
            raise _Unreachable(f"connection lost: {e or type(e).__name__}") from e
    finally:
        conn.close()


# --- result objects ----------------------------------------------------------------------------


def _first_line(text: str, limit: int = 120) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


@dataclass(frozen=True)
class ReplicaOutcome:
    """What one replica answered to a load or unload."""

    replica: str
    outcome: Outcome
    message: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.outcome in ("ok", "pending")


@dataclass
class LoadResult:
    """Outcome of a load or unload on every replica; ``.ok`` when none failed."""

    model: str
    action: Literal["load", "unload"]
    replicas: list[ReplicaOutcome]
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.replicas)

    @property
    def errors(self) -> list[ReplicaOutcome]:
        return [r for r in self.replicas if not r.ok]

    def raise_for_errors(self) -> LoadResult:
        """Raise :class:`TritonError` quoting each failing replica's message; else return self."""
        failed = self.errors
        if not failed:
            return self
        lines = [
            f"Could not {self.action} model {self.model!r} on {len(failed)} of "
            f"{len(self.replicas)} Triton replica(s):"
        ]
        for r in failed:
            text = r.message.strip().rstrip(";")
            message = "\n      ".join(line for line in text.splitlines() if line.strip())
            lines.append(f"  {r.replica}: {r.outcome}: {message}")
        hints = []
        if any(r.outcome == "error" for r in failed):
            hints.append(
                "Fix what Triton says (model files, config.pbtxt) and try again; "
                "the Triton server log has the details."
            )
        if any(r.outcome == "unreachable" for r in failed):
            hints.append("Check that Triton runs at the unreachable address(es).")
        if any(r.outcome == "timeout" for r in failed):
            hints.append("Triton may still be working: check .status() or raise timeout=.")
        raise TritonError("\n".join(lines), hint=" ".join(hints))

    def _rows(self) -> list[list[str]]:
        return [[r.replica, r.outcome, f"{r.seconds:.2f}", r.message] for r in self.replicas]

    def __repr__(self) -> str:
        rows = [[a, b, c, _first_line(m, 400)] for a, b, c, m in self._rows()]
        head = (
            f"LoadResult({self.action} {self.model!r}: "
            f"{'ok' if self.ok else 'FAILED'}, {self.seconds:.2f} s)"
        )
        return head + "\n" + text_table(["replica", "outcome", "seconds", "message"], rows)

    def _repr_html_(self) -> str:
        rows = [
            [html.escape(a), html.escape(b), c, f"<pre style='margin:0'>{html.escape(m)}</pre>"]
            for a, b, c, m in self._rows()
        ]
        caption = f"{self.action} {self.model}: {'ok' if self.ok else 'FAILED'}"
        headers = ["replica", "outcome", "seconds", "message"]
        return html_table(headers, rows, caption=caption, escape=False)


#: Triton's model states, plus what this table adds: a model folder never loaded
#: (NOT_LOADED), missing from one replica's repository (ABSENT), a replica that did not
#: answer (UNREACHABLE).
State = Literal[
    "READY", "LOADING", "UNLOADING", "UNAVAILABLE", "NOT_LOADED", "ABSENT", "UNREACHABLE"
]


@dataclass(frozen=True)
class ReplicaState:
    """One model version's state on one replica, with Triton's reason when it gives one."""

    state: str
    reason: str = ""


@dataclass
class StatusRow:
    """One model version (``None``: no version known) across the replicas."""

    model: str
    version: int | None
    replicas: dict[str, ReplicaState]


@dataclass
class StatusTable:
    """The repository index and each model's state on every replica."""

    replicas: list[str]
    rows: list[StatusRow]
    unreachable: dict[str, str] = field(default_factory=dict)

    @property
    def models(self) -> list[str]:
        return sorted({r.model for r in self.rows})

    def ready(self, model: str, version: int | None = None) -> bool:
        """Whether ``model`` (that version, or any) is READY on every replica."""
        return all(
            any(
                r.model == model
                and (version is None or r.version == version)
                and r.replicas[rep].state == "READY"
                for r in self.rows
            )
            for rep in self.replicas
        )

    def loaded_versions(self, model: str) -> list[int]:
        """Versions of ``model`` READY or LOADING on at least one replica."""
        return sorted(
            r.version
            for r in self.rows
            if r.model == model
            and r.version is not None
            and any(s.state in ("READY", "LOADING") for s in r.replicas.values())
        )

    def _cells(self) -> tuple[list[str], list[tuple[StatusRow, list[ReplicaState]]]]:
        headers = ["model", "version", *self.replicas]
        return headers, [(r, [r.replicas[rep] for rep in self.replicas]) for r in self.rows]

    def __repr__(self) -> str:
        headers, cells = self._cells()
        rows, notes = [], []
        for row, states in cells:
            line = [row.model, "-" if row.version is None else str(row.version)]
            for rep, s in zip(self.replicas, states, strict=True):
                line.append(s.state + ("*" if s.reason else ""))
                if s.reason and s.state != "UNREACHABLE":
                    notes.append(
                        f"  * {row.model} {line[1]} on {rep}: {_first_line(s.reason, 300)}"
                    )
            rows.append(line)
        text = f"StatusTable ({len(self.replicas)} replica(s))\n" + text_table(headers, rows)
        notes += [f"  * {rep}: unreachable: {msg}" for rep, msg in self.unreachable.items()]
        return text + ("\n" + "\n".join(notes) if notes else "")

    def _repr_html_(self) -> str:
        colors = {"READY": "#2e7d32", "UNAVAILABLE": "#c62828", "UNREACHABLE": "#c62828"}
        headers, cells = self._cells()
        rows = []
        for row, states in cells:
            line = [html.escape(row.model), "-" if row.version is None else str(row.version)]
            for s in states:
                color = colors.get(s.state, "#555")
                reason = (
                    f"<br><small>{html.escape(_first_line(s.reason, 200))}</small>"
                    if s.reason
                    else ""
                )
                line.append(
                    f"<span style='color:{color}' title='{html.escape(s.reason)}'>"
                    f"{s.state}</span>{reason}"
                )
            rows.append(line)
        caption = f"Triton status ({len(self.replicas)} replica(s))"
        return html_table(headers, rows, caption=caption, escape=False)


# --- the client ---------------------------------------------------------------------------------


def _version(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


class TritonReplicas:
    """The HTTP endpoints of every Triton replica serving one model repository.

    ``urls`` are ``host:port`` or ``http://host:port``. Requests go to all replicas at once
    (one thread each); ``timeout`` bounds each quick request (index, unload, status), while
    :meth:`load` has its own, longer timeout because loading a large model takes minutes.
    """

    def __init__(
        self, urls: str | Sequence[str], *, timeout: float = 30.0, connect_timeout: float = 5.0
    ) -> None:
        urls = [urls] if isinstance(urls, str) else list(urls)
        if not urls:
            raise TritonError(
                "No Triton URL given.", hint="Pass at least one 'host:port' of a Triton replica."
            )
        self._endpoints: dict[str, str] = {}
        for url in urls:
            scheme, host, port = _split_url(url)
            name = f"{host}:{port}" if scheme == "http" else f"{scheme}://{host}:{port}"
            self._endpoints[name] = f"{scheme}://{host}:{port}"
        self.timeout = timeout
        self.connect_timeout = connect_timeout

    @property
    def urls(self) -> list[str]:
        """The replicas as ``host:port`` (the names used in results)."""
        return list(self._endpoints)

    def __repr__(self) -> str:
        return f"TritonReplicas({self.urls!r})"

    # --- plumbing ---------------------------------------------------------------------------

    def _call(self, replica: str, method: str, path: str, body: Any = None, **kw: Any) -> _Response:
        kw.setdefault("timeout", self.timeout)
        return _request(
            self._endpoints[replica], method, path, body, connect_timeout=self.connect_timeout, **kw
        )

    def _each(self, fn: Callable[[str], T]) -> dict[str, T]:
        """Run ``fn(replica)`` on every replica in parallel; results in replica order."""
        if len(self._endpoints) == 1:
            return {r: fn(r) for r in self._endpoints}
        with ThreadPoolExecutor(len(self._endpoints), thread_name_prefix="triton") as pool:
            futures = {r: pool.submit(fn, r) for r in self._endpoints}
            return {r: f.result() for r, f in futures.items()}

    def _each_or_raise(self, what: str, fn: Callable[[str], _Response]) -> dict[str, Any]:
        """Like :meth:`_each` for data requests: any failing replica raises, all quoted."""

        def one(replica: str) -> tuple[Any, str | None]:
            try:
                resp = fn(replica)
            except (_Unreachable, _Timeout) as e:
                return None, f"unreachable: {e}"
            if resp.status != 200:
                return None, f"HTTP {resp.status}: {resp.error()}"
            return resp.json(), None

        answers = self._each(one)
        failed = {r: err for r, (_, err) in answers.items() if err}
        if failed:
            raise TritonError(
                f"Could not get the {what} from {len(failed)} of {len(answers)} Triton "
                "replica(s):\n" + "\n".join(f"  {r}: {err}" for r, err in failed.items()),
                hint="Check that Triton runs at those addresses and answers on its HTTP port.",
            )
        return {r: data for r, (data, _) in answers.items()}

    # --- data requests ----------------------------------------------------------------------

    def server_metadata(self) -> dict[str, dict[str, Any]]:
        """``GET /v2`` on every replica: name, version, extensions."""
        return self._each_or_raise("server metadata", lambda r: self._call(r, "GET", "/v2"))

    def index(self, *, ready: bool = False) -> dict[str, list[dict[str, Any]]]:
        """``POST /v2/repository/index`` on every replica: Triton's raw entries per replica."""
        body = {"ready": True} if ready else None
        return self._each_or_raise(
            "repository index", lambda r: self._call(r, "POST", "/v2/repository/index", body)
        )

    def status(self, name: str | None = None) -> StatusTable:
        """Each model's state (per version) on every replica; unreachable replicas are shown."""

        def one(replica: str) -> list[dict[str, Any]] | str:
            try:
                resp = self._call(replica, "POST", "/v2/repository/index")
            except (_Unreachable, _Timeout) as e:
                return str(e)
            if resp.status != 200:
                return f"HTTP {resp.status}: {resp.error()}"
            return list(resp.json() or [])

        answers = self._each(one)
        unreachable = {r: a for r, a in answers.items() if isinstance(a, str)}
        # (model, version) -> replica -> state; a model listed without version: NOT_LOADED
        table: dict[tuple[str, int | None], dict[str, ReplicaState]] = {}
        present: dict[str, set[str]] = {}
        for replica, entries in answers.items():
            if isinstance(entries, str):
                continue
            for e in entries:
                model = str(e.get("name", ""))
                if name is not None and model != name:
                    continue
                present.setdefault(model, set()).add(replica)
                if "state" in e:
                    key = (model, _version(e.get("version")))
                    state = ReplicaState(str(e["state"]), str(e.get("reason", "")))
                    table.setdefault(key, {})[replica] = state
        if name is not None:
            present.setdefault(name, set())
        for model in present:
            if not any(m == model for m, _ in table):
                table[(model, None)] = {}
        rows = []
        for model, version in sorted(table, key=lambda k: (k[0], k[1] is not None, k[1] or 0)):
            states = {}
            for replica in self._endpoints:
                if replica in unreachable:
                    states[replica] = ReplicaState("UNREACHABLE", unreachable[replica])
                elif replica not in present[model]:
                    states[replica] = ReplicaState("ABSENT")
                else:
                    states[replica] = table[(model, version)].get(
                        replica, ReplicaState("NOT_LOADED")
                    )
            rows.append(StatusRow(model, version, states))
        return StatusTable(self.urls, rows, unreachable)

    # --- load / unload ----------------------------------------------------------------------

    def load(
        self,
        name: str,
        *,
        config: str | Mapping[str, Any] | None = None,
        files: Mapping[str, bytes] | None = None,
        wait: bool = True,
        timeout: float = 600.0,
    ) -> LoadResult:
        """Load (or reload) ``name`` on every replica at once; one outcome per replica.

        ``config`` is a model config in JSON (a string or a dict) that Triton uses *instead
        of* the folder's config.pbtxt (Triton does not merge them: pass the whole config).
        ``files`` maps ``"<version>/<file>"`` to bytes that Triton uses instead of the
        folder's files (needs ``config``). With ``wait=False`` a replica still loading after
        a second is reported ``pending``; Triton finishes the load on its own.
        Failed replicas do not raise: check ``.ok`` or call ``.raise_for_errors()``.
        """
        parameters: dict[str, Any] = {}
        if config is not None:
            parameters["config"] = self._config_json(name, config)
        if files:
            if config is None:
                raise TritonError(
                    f"Loading {name!r} with files= needs config= too.",
                    hint="Triton only accepts file overrides together with a config override.",
                )
            for path, data in files.items():
                parameters[f"file:{path}"] = base64.b64encode(data).decode()
        body = {"parameters": parameters} if parameters else None
        path = f"/v2/repository/models/{quote(name, safe='')}/load"

        def one(replica: str) -> ReplicaOutcome:
            start = time.monotonic()
            try:
                resp = self._call(replica, "POST", path, body, timeout=timeout if wait else 1.0)
            except _Unreachable as e:
                return ReplicaOutcome(replica, "unreachable", str(e), time.monotonic() - start)
            except _Timeout as e:
                outcome: Outcome = "timeout" if wait else "pending"
                msg = str(e) if wait else "Triton is still loading; see .status()"
                return ReplicaOutcome(replica, outcome, msg, time.monotonic() - start)
            return self._outcome(replica, name, resp, start)

        return self._run(name, "load", one)

    def unload(
        self,
        name: str,
        *,
        unload_dependents: bool = False,
        wait: bool = True,
        timeout: float | None = None,
    ) -> LoadResult:
        """Unload ``name`` on every replica; with ``wait``, until no version is still up.

        Triton answers an unload at once and unloads in the background (the model is
        UNLOADING while requests in flight finish), so ``wait`` polls the index.
        """
        limit = self.timeout if timeout is None else timeout
        body = {"parameters": {"unload_dependents": True}} if unload_dependents else None
        path = f"/v2/repository/models/{quote(name, safe='')}/unload"

        def one(replica: str) -> ReplicaOutcome:
            start = time.monotonic()
            try:
                resp = self._call(replica, "POST", path, body, timeout=limit)
                result = self._outcome(replica, name, resp, start)
                while wait and result.outcome == "ok" and self._still_up(replica, name):
                    if time.monotonic() - start > limit:
                        msg = f"still unloading after {limit:g} s; see .status()"
                        return ReplicaOutcome(replica, "timeout", msg, time.monotonic() - start)
                    time.sleep(0.1)
                seconds = time.monotonic() - start
                return ReplicaOutcome(replica, result.outcome, result.message, seconds)
            except _Unreachable as e:
                return ReplicaOutcome(replica, "unreachable", str(e), time.monotonic() - start)
            except _Timeout as e:
                return ReplicaOutcome(replica, "timeout", str(e), time.monotonic() - start)

        return self._run(name, "unload", one)

    def _still_up(self, replica: str, name: str) -> bool:
        resp = self._call(replica, "POST", "/v2/repository/index")
        entries = (resp.json() or []) if resp.status == 200 else []
        return any(
            e.get("name") == name and e.get("state") in ("READY", "UNLOADING", "LOADING")
            for e in entries
        )

    def _run(
        self, name: str, action: Literal["load", "unload"], fn: Callable[[str], ReplicaOutcome]
    ) -> LoadResult:
        start = time.monotonic()
        outcomes = list(self._each(fn).values())
        result = LoadResult(name, action, outcomes, time.monotonic() - start)
        wrong_mode = [r.replica for r in outcomes if _NOT_EXPLICIT in r.message]
        if wrong_mode:
            raise TritonError(
                f"Triton at {', '.join(wrong_mode)} refused to {action} {name!r}: it does not "
                "run in explicit model-control mode (Triton says: "
                f"{next(r.message for r in outcomes if _NOT_EXPLICIT in r.message)!r}).",
                hint=_EXPLICIT_HINT,
            )
        return result

    @staticmethod
    def _outcome(replica: str, name: str, resp: _Response, start: float) -> ReplicaOutcome:
        seconds = time.monotonic() - start
        if resp.status == 200:
            return ReplicaOutcome(replica, "ok", "", seconds)
        message = resp.error()
        if _POLL_FAILED in message:
            message += (
                f" (Triton could not read model {name!r} from its repository: check that "
                f"{name}/config.pbtxt exists there and parses, and that a config override "
                "is a complete, valid model config)"
            )
        return ReplicaOutcome(replica, "error", message, seconds)

    @staticmethod
    def _config_json(name: str, config: str | Mapping[str, Any]) -> str:
        if not isinstance(config, str):
            return json.dumps(config)
        try:
            json.loads(config)
        except ValueError as e:
            raise TritonError(
                f"The config override for {name!r} is not valid JSON: {e}.",
                hint="Pass the model config as a dict or a JSON string (Triton's JSON form "
                "of config.pbtxt), e.g. from google.protobuf.json_format.MessageToJson.",
            ) from e
        return config
