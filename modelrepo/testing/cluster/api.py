"""The REST front: routing, auth, CRUD, watch, logs and exec, as kube-apiserver answers them.

Every request goes through one handler that parses the URL the way the real server lays it
out (``/api/v1/namespaces/<ns>/<plural>/<name>/<subresource>``,
``/apis/<group>/<version>/...``); errors are ``Status`` objects with the real reasons.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from aiohttp import web

from modelrepo.testing.cluster import exec as exec_stream
from modelrepo.testing.cluster import kinds, openapi, rbac, resources, tables
from modelrepo.testing.cluster.errors import (
    StatusError,
    already_exists,
    bad_request,
    conflict,
    invalid,
    not_found,
)
from modelrepo.testing.cluster.patch import json_patch, merge_patch, strategic_merge_patch
from modelrepo.testing.cluster.resources import ResourceType, lookup
from modelrepo.testing.cluster.selectors import field_selector, label_selector
from modelrepo.testing.cluster.store import (
    Event,
    Obj,
    Store,
    now_rfc3339,
    random_suffix,
    validate_name,
)

if TYPE_CHECKING:
    from modelrepo.testing.cluster.faults import Faults
    from modelrepo.testing.cluster.kubelet import Kubelet

log = logging.getLogger(__name__)

NAMESPACES = lookup("", "v1", "namespaces")
PODS = lookup("", "v1", "pods")
JOBS = lookup("batch", "v1", "jobs")
assert NAMESPACES and PODS and JOBS

_WATCH_DEFAULT_TIMEOUT = 1800.0
# kinds whose DELETE answers with the object rather than a Status (ReturnDeletedObject)
_RETURNS_DELETED_OBJECT = frozenset(
    {"pods", "persistentvolumeclaims", "persistentvolumes", "services", "serviceaccounts"}
)


@dataclass(frozen=True)
class Target:
    """What a URL names."""

    rtype: ResourceType
    namespace: str | None
    name: str | None
    subresource: str | None


@dataclass(frozen=True)
class RequestRecord:
    """One request as the server saw it (for tests counting round-trips)."""

    method: str
    path: str
    status: int
    seconds: float


class ApiServer:
    """Builds the aiohttp application of one cluster."""

    def __init__(
        self,
        store: Store,
        kubelet: Kubelet,
        faults: Faults,
        *,
        version: str,
        tokens: dict[str, rbac.User],
        exec_protocols: tuple[str, ...],
        on_delete: Callable[[ResourceType, Obj], None] | None = None,
        anonymous: rbac.User | None = None,
    ) -> None:
        self.store = store
        self.kubelet = kubelet
        self.faults = faults
        self.version = version
        self.tokens = tokens
        self.exec_protocols = exec_protocols
        self.on_delete = on_delete
        self.anonymous = anonymous
        self.requests: deque[RequestRecord] = deque(maxlen=10000)
        self._tasks: set[asyncio.Task[Any]] = set()
        self.stopping = asyncio.Event()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    def background(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- entry point ---------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        status = 500
        try:
            response = await self._handle(request)
            status = response.status
            return response
        except StatusError as exc:
            status = exc.code
            return web.json_response(exc.status(), status=exc.code, headers=exc.headers)
        except Exception as exc:
            log.exception("LocalCluster API error on %s %s", request.method, request.path_qs)
            status = 500
            err = StatusError(500, f"LocalCluster internal error: {exc!r}")
            return web.json_response(err.status(), status=500)
        finally:
            self.requests.append(
                RequestRecord(request.method, request.path_qs, status, time.monotonic() - started)
            )

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        fault = self.faults.request_fault(request.method, request.path_qs)
        if fault is not None:
            await self._fault(fault)
        path = request.path.rstrip("/") or "/"
        segments = [s for s in path.split("/") if s]
        # open to anyone, as system:public-info-viewer makes them on a real server
        if path in ("/healthz", "/livez", "/readyz"):
            return web.Response(text="ok")
        if path == "/version":
            return web.json_response(self._version())
        user = self._authenticate(request)
        if segments[:1] == ["openapi"]:
            return self._openapi(segments)
        if segments[:1] == ["api"]:
            if len(segments) == 1:
                return web.json_response(resources.api_versions())
            prefix, group, version, rest = 2, "", segments[1], segments[2:]
        elif segments[:1] == ["apis"]:
            if len(segments) == 1:
                return web.json_response(resources.api_group_list())
            if len(segments) == 2:
                doc = resources.api_group(segments[1])
                if doc is None:
                    raise StatusError(404, "the server could not find the requested resource")
                return web.json_response(doc)
            prefix, group, version, rest = 3, segments[1], segments[2], segments[3:]
        else:
            raise StatusError(404, "the server could not find the requested resource")
        del prefix
        if not rest:
            doc = resources.resource_list(group, version)
            if doc is None:
                raise StatusError(404, "the server could not find the requested resource")
            return web.json_response(doc)
        target = self._target(group, version, rest)
        if target.rtype.group in ("authorization.k8s.io", "authentication.k8s.io"):
            return await self._review(request, target, user)
        self._authorize(request, target, user)
        return await self._dispatch(request, target)

    def _openapi(self, segments: list[str]) -> web.Response:
        if segments[1:2] == ["v3"]:
            if len(segments) == 2:
                return web.json_response(openapi.root())
            rest = segments[2:]
            if rest[:1] == ["api"] and len(rest) == 2:
                return web.json_response(openapi.document("", rest[1]))
            if rest[:1] == ["apis"] and len(rest) == 3:
                return web.json_response(openapi.document(rest[1], rest[2]))
        raise StatusError(
            404,
            "the server could not find the requested resource (LocalCluster "
            "serves only a minimal /openapi/v3)",
        )

    async def _fault(self, fault: Any) -> None:
        if fault.status == 0:
            await asyncio.sleep(fault.seconds)
            raise StatusError(
                504,
                "the server was unable to return a response in the time "
                "allotted, but may still be processing the request",
                reason="Timeout",
            )
        headers = {}
        details: dict[str, Any] | None = None
        if fault.status == 429:
            retry = fault.retry_after if fault.retry_after is not None else 1
            headers["Retry-After"] = str(int(retry) if float(retry).is_integer() else retry)
            details = {"retryAfterSeconds": int(retry)}
            message = "Too many requests, please try again later."
        else:
            message = (
                "LocalCluster injected fault: an error on the server has prevented the "
                "request from succeeding"
            )
        raise StatusError(fault.status, message, details=details, headers=headers)

    def _authenticate(self, request: web.Request) -> rbac.User:
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        user = self.tokens.get(token)
        if user is None and self.anonymous is not None and not token:
            user = self.anonymous
        if user is None:
            raise StatusError(401, "Unauthorized")
        return user

    def _authorize(self, request: web.Request, t: Target, user: rbac.User) -> None:
        if user.is_admin:
            return
        req = self._rbac_request(request, t)
        if not rbac.allowed(self.store, user, req):
            raise rbac.forbidden(user, req)

    def _rbac_request(self, request: web.Request, t: Target) -> rbac.Request:
        verb = rbac.verb_for(
            request.method,
            has_name=t.name is not None,
            watch=request.query.get("watch") in ("1", "true"),
            subresource=t.subresource,
        )
        resource = f"{t.rtype.plural}/{t.subresource}" if t.subresource else t.rtype.plural
        return rbac.Request(verb, t.rtype.group, resource, t.namespace, t.name)

    async def _review(self, request: web.Request, t: Target, user: rbac.User) -> web.Response:
        """SelfSubjectAccessReview (``kubectl auth can-i``), SelfSubjectReview (whoami)."""
        if request.method != "POST" or t.name is not None:
            raise StatusError(405, f"only create is served for {t.rtype.plural}")
        if "protobuf" in request.headers.get("Content-Type", ""):
            if t.rtype.kind == "SelfSubjectReview":
                body: Any = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
            else:
                try:
                    body = rbac.access_review_from_protobuf(await request.read())
                except (ValueError, IndexError) as exc:
                    raise bad_request(f"could not decode the protobuf body: {exc}") from exc
        else:
            body = await self._body(request)
        if not isinstance(body, dict):
            raise bad_request("the body of the request must be a JSON object")
        body.setdefault("metadata", {})
        if t.rtype.kind == "SelfSubjectReview":
            body["status"] = {"userInfo": {"username": user.name, "groups": list(user.groups)}}
            return _json(body, 201)
        spec = body.get("spec") or {}
        attrs = spec.get("resourceAttributes")
        if attrs is None:  # nonResourceAttributes: discovery and the like are open
            body["status"] = {"allowed": True}
            return _json(body, 201)
        resource = attrs.get("resource", "")
        if attrs.get("subresource"):
            resource = f"{resource}/{attrs['subresource']}"
        req = rbac.Request(
            attrs.get("verb", ""),
            attrs.get("group", ""),
            resource,
            attrs.get("namespace") or None,
            attrs.get("name") or None,
        )
        ok = rbac.allowed(self.store, user, req)
        body["status"] = {"allowed": ok}
        return _json(body, 201)

    def _version(self) -> Obj:
        major, minor = self.version.split(".")[:2]
        return {
            "major": major,
            "minor": minor,
            "gitVersion": f"v{major}.{minor}.0",
            "gitCommit": "0" * 40,
            "gitTreeState": "clean",
            "buildDate": "2025-01-01T00:00:00Z",
            "goVersion": "go1.23.0",
            "compiler": "gc",
            "platform": "linux/amd64",
            "emulationMajor": major,
            "emulationMinor": minor,
        }

    def _target(self, group: str, version: str, rest: list[str]) -> Target:
        namespace: str | None = None
        if rest[0] == "namespaces" and len(rest) >= 3:
            candidate = lookup(group, version, rest[2])
            if candidate is not None and candidate.namespaced:
                namespace = rest[1]
                rest = rest[2:]
        rtype = lookup(group, version, rest[0])
        if rtype is None:
            raise StatusError(404, "the server could not find the requested resource")
        if rtype.namespaced and namespace is None and len(rest) > 1:
            raise StatusError(404, "the server could not find the requested resource")
        name = rest[1] if len(rest) > 1 else None
        sub = "/".join(rest[2:]) if len(rest) > 2 else None
        if sub and sub not in rtype.subresources and sub != "finalize":
            raise StatusError(404, "the server could not find the requested resource")
        return Target(rtype, namespace, name, sub)

    # -- dispatch ------------------------------------------------------------------------
    async def _dispatch(self, request: web.Request, t: Target) -> web.StreamResponse:
        method = request.method
        q = request.query
        if t.subresource == "exec" and t.rtype is PODS and t.namespace and t.name:
            if method not in ("GET", "POST"):
                raise StatusError(405, f"method {method} not allowed on pods/exec")
            return await exec_stream.handle_exec(
                request, self.kubelet, self.faults, self.exec_protocols, t.namespace, t.name
            )
        if t.subresource == "log" and t.rtype is PODS and t.namespace and t.name:
            return await self._logs(request, t.namespace, t.name)
        if t.subresource in ("attach", "portforward", "eviction", "scale"):
            raise StatusError(
                405,
                f"LocalCluster does not serve {t.rtype.plural}/{t.subresource}",
                reason="MethodNotAllowed",
            )
        ns = t.namespace or ""
        if t.name is None:
            if method == "GET":
                if q.get("watch") in ("1", "true"):
                    return await self._watch(request, t)
                return self._list(request, t)
            if method == "POST":
                return await self._create(request, t)
            if method == "DELETE":
                return await self._delete_collection(request, t)
            raise StatusError(405, f"method {method} not allowed on a collection")
        if method == "GET":
            obj = self.store.get(t.rtype, ns, t.name)
            return self._respond_object(request, t.rtype, obj)
        if method == "PUT":
            return await self._replace(request, t)
        if method == "PATCH":
            return await self._patch(request, t)
        if method == "DELETE":
            return await self._delete(request, t)
        if method == "POST" and t.rtype is PODS:
            raise StatusError(405, "method POST not allowed on a pod")
        raise StatusError(405, f"method {method} not allowed")

    def _respond_object(
        self, request: web.Request, rtype: ResourceType, obj: Obj, status: int = 200
    ) -> web.Response:
        if tables.wants_table(request.headers.get("Accept", "")):
            body = tables.table(
                rtype,
                [obj],
                obj["metadata"].get("resourceVersion", ""),
                request.query.get("includeObject", "PartialObjectMetadata"),
            )
            return web.json_response(body, status=status)
        return _json(obj, status)

    # -- list / watch --------------------------------------------------------------------
    def _selected(self, request: web.Request) -> Callable[[Obj], bool]:
        labels = label_selector(request.query.get("labelSelector"))
        fields = field_selector(request.query.get("fieldSelector"))
        return lambda obj: labels(obj) and fields(obj)

    def _list(self, request: web.Request, t: Target) -> web.Response:
        if t.namespace and t.rtype.namespaced:
            self._require_namespace(t.namespace, create=False)
        pick = self._selected(request)
        items = [o for o in self.store.list(t.rtype, t.namespace) if pick(o)]
        rv = str(self.store.resource_version)
        limit = int(request.query.get("limit") or 0)
        cont = request.query.get("continue")
        start = int(cont) if cont and cont.isdigit() else 0
        list_meta: Obj = {"resourceVersion": rv}
        if limit and start + limit < len(items):
            list_meta["continue"] = str(start + limit)
            list_meta["remainingItemCount"] = len(items) - start - limit
            items = items[start : start + limit]
        else:
            items = items[start:]
        if tables.wants_table(request.headers.get("Accept", "")):
            return web.json_response(
                tables.table(
                    t.rtype,
                    items,
                    rv,
                    request.query.get("includeObject", "PartialObjectMetadata"),
                    list_meta=list_meta,
                )
            )
        body = {
            "kind": f"{t.rtype.kind}List",
            "apiVersion": t.rtype.api_version,
            "metadata": list_meta,
            "items": items,
        }
        return _json(body)

    async def _watch(self, request: web.Request, t: Target) -> web.StreamResponse:
        pick = self._selected(request)
        rv_text = request.query.get("resourceVersion", "")
        timeout = float(request.query.get("timeoutSeconds") or _WATCH_DEFAULT_TIMEOUT)
        table = tables.wants_table(request.headers.get("Accept", ""))
        queue = self.store.open_watch()
        try:
            backlog: list[tuple[str, Obj]] = []
            expired = False
            if rv_text in ("", "0"):
                backlog = [("ADDED", o) for o in self.store.list(t.rtype, t.namespace) if pick(o)]
            else:
                try:
                    since = int(rv_text)
                except ValueError:
                    raise bad_request(f"invalid resourceVersion {rv_text!r}") from None
                history = self.store.history_since(since)
                if history is None:
                    expired = True
                else:
                    for event in history:
                        mapped = _map_event(event, t, pick)
                        if mapped:
                            backlog.append(mapped)
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            response.enable_chunked_encoding()
            await response.prepare(request)
            if expired:
                err = StatusError(
                    410,
                    f"too old resource version: {rv_text} ({self.store.first_rv})",
                    reason="Expired",
                )
                await response.write(
                    json.dumps({"type": "ERROR", "object": err.status()}).encode() + b"\n"
                )
                return response
            for kind, obj in backlog:
                await response.write(self._event_line(t.rtype, kind, obj, table, request))
            deadline = time.monotonic() + timeout
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    event = await asyncio.wait_for(queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
                if event is None:
                    break
                mapped = _map_event(event, t, pick)
                if mapped:
                    await response.write(
                        self._event_line(t.rtype, mapped[0], mapped[1], table, request)
                    )
            return response
        except (ConnectionError, asyncio.CancelledError):
            return web.StreamResponse()
        finally:
            self.store.close_watch(queue)

    def _event_line(
        self, rtype: ResourceType, kind: str, obj: Obj, table: bool, request: web.Request
    ) -> bytes:
        if table:
            obj = tables.table(
                rtype,
                [obj],
                obj["metadata"].get("resourceVersion", ""),
                request.query.get("includeObject", "PartialObjectMetadata"),
            )
        return json.dumps({"type": kind, "object": obj}, separators=(",", ":")).encode() + b"\n"

    # -- create / update -----------------------------------------------------------------
    async def _body(self, request: web.Request) -> Any:
        raw = await request.read()
        if not raw:
            return {}
        content_type = request.headers.get("Content-Type", "")
        try:
            if "yaml" in content_type:
                return yaml.safe_load(raw)
            return json.loads(raw)
        except (ValueError, yaml.YAMLError) as exc:
            raise bad_request(f"the body of the request was in an unknown format: {exc}") from exc

    def _require_namespace(self, namespace: str, *, create: bool) -> None:
        ns = self.store.find(NAMESPACES, "", namespace)
        if ns is None:
            raise not_found("", "namespaces", namespace)
        if create and ns["metadata"].get("deletionTimestamp"):
            raise StatusError(
                403,
                f"unable to create new content in namespace {namespace} "
                "because it is being terminated",
                reason="Forbidden",
            )

    def _check_kind(self, rtype: ResourceType, body: Any) -> Obj:
        if not isinstance(body, dict):
            raise bad_request("the body of the request must be a JSON object")
        kind = body.get("kind")
        api_version = body.get("apiVersion")
        if kind and kind != rtype.kind:
            raise bad_request(
                f"the API version in the data ({api_version}) does not match the "
                f"expected API version ({rtype.api_version})"
                if api_version and api_version != rtype.api_version
                else f"kind {kind} does not match the resource {rtype.plural}"
            )
        if api_version and api_version != rtype.api_version:
            raise bad_request(
                f"the API version in the data ({api_version}) does not match the "
                f"expected API version ({rtype.api_version})"
            )
        return body

    async def _create(self, request: web.Request, t: Target) -> web.Response:
        body = self._check_kind(t.rtype, await self._body(request))
        ns = t.namespace or ""
        body_ns = (body.get("metadata") or {}).get("namespace")
        if t.rtype.namespaced:
            if body_ns and body_ns != ns:
                raise bad_request(
                    "the namespace of the provided object does not match the "
                    "namespace sent on the request"
                )
            self._require_namespace(ns, create=True)
        obj = self.create_object(t.rtype, ns, body, dry_run=_dry_run(request))
        return _json(obj, 201)

    def create_object(
        self, rtype: ResourceType, namespace: str, body: Obj, *, dry_run: bool = False
    ) -> Obj:
        """Default, validate and store (or only check, for dryRun) a new object."""
        body = copy.deepcopy(body)
        meta = body.setdefault("metadata", {})
        for key in (
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "deletionTimestamp",
            "generation",
            "managedFields",
        ):
            meta.pop(key, None)
        prepare = kinds.PREPARE.get((rtype.group, rtype.kind))
        name = meta.get("name")
        problem = validate_name(rtype, name) if isinstance(name, str) and name else None
        name_causes = (
            [("FieldValueInvalid", "metadata.name", f'Invalid value: "{name}": {problem}')]
            if problem
            else []
        )
        try:
            if prepare is not None:
                prepare(body)
        except StatusError as exc:
            if exc.code != 422 or not name_causes:
                raise
            causes = [
                (c["reason"], c["field"], c["message"])
                for c in (exc.details or {}).get("causes", [])
            ]
            raise invalid(rtype.kind, rtype.group, str(name), name_causes + causes) from None
        if name_causes:
            raise invalid(rtype.kind, rtype.group, str(name), name_causes)
        if rtype.kind == "Job" and rtype.group == "batch":
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = next(
                    n
                    for n in (f"{meta['generateName']}{random_suffix()}" for _ in range(99))
                    if self.store.find(rtype, namespace, n) is None
                )
            meta["uid"] = str(uuid.uuid4())
            kinds.label_job(body)
        if dry_run:
            if not meta.get("name") and not meta.get("generateName"):
                raise invalid(
                    rtype.kind,
                    rtype.group,
                    "",
                    [
                        (
                            "FieldValueRequired",
                            "metadata.name",
                            "Required value: name or generateName is required",
                        )
                    ],
                )
            probe = copy.deepcopy(body)
            probe["metadata"].setdefault("name", meta.get("generateName", "") + "dryrun")
            if self.store.find(rtype, namespace, probe["metadata"]["name"]) is not None:
                raise already_exists(rtype.group, rtype.plural, probe["metadata"]["name"])
            probe["apiVersion"] = rtype.api_version
            probe["kind"] = rtype.kind
            probe["metadata"]["uid"] = str(uuid.uuid4())
            probe["metadata"]["creationTimestamp"] = now_rfc3339()
            if rtype.namespaced:
                probe["metadata"]["namespace"] = namespace
            return probe
        return self.store.create(rtype, namespace, body)

    async def _replace(self, request: web.Request, t: Target) -> web.Response:
        body = self._check_kind(t.rtype, await self._body(request))
        assert t.name is not None
        if t.subresource not in (None, "status"):
            raise StatusError(405, f"PUT on {t.subresource} is not served")
        if _dry_run(request):
            current = self.store.get(t.rtype, t.namespace or "", t.name)
            return _json({**current, **{k: v for k, v in body.items() if k != "metadata"}})
        obj = self.store.replace(
            t.rtype, t.namespace or "", t.name, body, subresource=t.subresource
        )
        return _json(obj)

    async def _patch(self, request: web.Request, t: Target) -> web.Response:
        assert t.name is not None
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
        patch = await self._body(request)
        current = self.store.get(t.rtype, t.namespace or "", t.name)
        if content_type == "application/json-patch+json":
            new = json_patch(current, patch)
        elif content_type == "application/merge-patch+json":
            new = merge_patch(current, patch)
        elif content_type == "application/strategic-merge-patch+json":
            if t.rtype.group not in (
                "",
                "apps",
                "batch",
                "rbac.authorization.k8s.io",
                "networking.k8s.io",
                "policy",
                "discovery.k8s.io",
                "storage.k8s.io",
            ):
                raise StatusError(
                    415,
                    "strategic merge patch is not supported for this type",
                    reason="UnsupportedMediaType",
                )
            new = strategic_merge_patch(current, patch)
        else:
            raise StatusError(
                415,
                f"the body of the request was in an unknown format - "
                f"accepted media types include: application/json-patch+json, "
                f"application/merge-patch+json, "
                f"application/strategic-merge-patch+json (got "
                f"{content_type or 'none'}; server-side apply is not served)",
                reason="UnsupportedMediaType",
            )
        if not isinstance(new, dict):
            raise StatusError(422, "the patch would make the object empty", reason="Invalid")
        given_rv = (
            (patch.get("metadata") or {}).get("resourceVersion")
            if isinstance(patch, dict)
            else None
        )
        if _dry_run(request):
            return _json(new)
        obj = self.store.replace(
            t.rtype,
            t.namespace or "",
            t.name,
            new,
            check_rv=bool(given_rv),
            subresource=t.subresource,
        )
        return self._respond_object(request, t.rtype, obj)

    # -- delete --------------------------------------------------------------------------
    async def _delete_options(self, request: web.Request) -> Obj:
        body = await self._body(request)
        options = dict(body) if isinstance(body, dict) else {}
        q = request.query
        if "gracePeriodSeconds" in q:
            options["gracePeriodSeconds"] = int(q["gracePeriodSeconds"])
        if "propagationPolicy" in q:
            options["propagationPolicy"] = q["propagationPolicy"]
        if "orphanDependents" in q:
            options["orphanDependents"] = q["orphanDependents"] == "true"
        if _dry_run(request):
            options["dryRun"] = ["All"]
        return options

    async def _delete(self, request: web.Request, t: Target) -> web.Response:
        assert t.name is not None
        options = await self._delete_options(request)
        obj = self.store.get(t.rtype, t.namespace or "", t.name)
        if options.get("dryRun"):
            return _json(obj)
        preconditions = options.get("preconditions") or {}
        if preconditions.get("uid") and preconditions["uid"] != obj["metadata"]["uid"]:
            raise conflict(
                t.rtype.group,
                t.rtype.plural,
                t.name,
                "Precondition failed: UID in precondition: "
                f"{preconditions['uid']}, UID in object meta: "
                f"{obj['metadata']['uid']}",
            )
        result = await self.delete_object(t.rtype, t.namespace or "", t.name, options)
        return _json(result)

    async def delete_object(
        self, rtype: ResourceType, namespace: str, name: str, options: Obj | None = None
    ) -> Obj:
        """Delete with the real semantics: graceful pods, cascading owners, namespaces."""
        options = options or {}
        obj = self.store.get(rtype, namespace, name)
        policy = options.get("propagationPolicy")
        if policy is None:
            if options.get("orphanDependents") is True:
                policy = "Orphan"
            elif rtype is JOBS:
                policy = "Orphan"  # batch/v1 Jobs keep their pods by default (legacy)
            else:
                policy = "Background"
        if rtype is PODS:
            grace = options.get("gracePeriodSeconds")
            if grace is None:
                grace = obj["spec"].get("terminationGracePeriodSeconds", 30)
            if obj["metadata"].get("deletionTimestamp"):
                return obj
            if int(grace) == 0:
                return self._remove(rtype, namespace, name, policy)
            stamp = now_rfc3339()

            def mark(pod: Obj) -> None:
                pod["metadata"]["deletionTimestamp"] = stamp
                pod["metadata"]["deletionGracePeriodSeconds"] = int(grace)

            marked = self.store.mutate(rtype, namespace, name, mark) or obj
            self.background(self.kubelet.delete_pod(namespace, name, float(grace)))
            return marked
        if rtype is NAMESPACES:
            if obj["metadata"].get("deletionTimestamp"):
                return obj

            def terminating(ns: Obj) -> None:
                ns["metadata"]["deletionTimestamp"] = now_rfc3339()
                ns["status"] = {"phase": "Terminating"}

            marked = self.store.mutate(rtype, namespace, name, terminating) or obj
            self.background(self._finish_namespace(name))
            return marked
        return self._remove(rtype, namespace, name, policy)

    def _remove(self, rtype: ResourceType, namespace: str, name: str, policy: str) -> Obj:
        final = self.store.remove(rtype, namespace, name)
        if self.on_delete is not None:
            self.on_delete(rtype, final)
        if policy != "Orphan":
            self.background(self._collect(final["metadata"]["uid"], namespace))
        else:
            self._orphan(final["metadata"]["uid"], namespace)
        meta = final["metadata"]
        if rtype.plural in _RETURNS_DELETED_OBJECT and not rtype.group:
            return final
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": {
                "name": name,
                "group": rtype.group,
                "kind": rtype.plural,
                "uid": meta["uid"],
            },
        }

    def _dependents(self, uid: str, namespace: str) -> list[tuple[ResourceType, Obj]]:
        out = []
        for rtype in resources.RESOURCE_TYPES:
            if not rtype.namespaced:
                continue
            for obj in self.store.list(rtype, namespace):
                refs = obj["metadata"].get("ownerReferences") or []
                if any(r.get("uid") == uid for r in refs):
                    out.append((rtype, obj))
        return out

    def _orphan(self, uid: str, namespace: str) -> None:
        for rtype, obj in self._dependents(uid, namespace):

            def drop(o: Obj) -> None:
                refs = [
                    r for r in o["metadata"].get("ownerReferences") or [] if r.get("uid") != uid
                ]
                if refs:
                    o["metadata"]["ownerReferences"] = refs
                else:
                    o["metadata"].pop("ownerReferences", None)

            self.store.mutate(rtype, namespace, obj["metadata"]["name"], drop)

    async def _collect(self, uid: str, namespace: str) -> None:
        """The garbage collector: delete what the removed object owned."""
        for rtype, obj in self._dependents(uid, namespace):
            with contextlib.suppress(StatusError):
                await self.delete_object(
                    rtype, namespace, obj["metadata"]["name"], {"propagationPolicy": "Background"}
                )

    async def _finish_namespace(self, name: str) -> None:
        for rtype in resources.RESOURCE_TYPES:
            if not rtype.namespaced:
                continue
            for obj in self.store.list(rtype, name):
                with contextlib.suppress(StatusError):
                    await self.delete_object(
                        rtype, name, obj["metadata"]["name"], {"propagationPolicy": "Background"}
                    )
        for _ in range(600):
            if not self.store.list(PODS, name):
                break
            await asyncio.sleep(0.05)
        with contextlib.suppress(StatusError):
            self.store.remove(NAMESPACES, "", name)

    async def _delete_collection(self, request: web.Request, t: Target) -> web.Response:
        options = await self._delete_options(request)
        pick = self._selected(request)
        items = [o for o in self.store.list(t.rtype, t.namespace) if pick(o)]
        if not options.get("dryRun"):
            for obj in items:
                with contextlib.suppress(StatusError):
                    await self.delete_object(
                        t.rtype,
                        obj["metadata"].get("namespace", ""),
                        obj["metadata"]["name"],
                        options,
                    )
        return _json(
            {
                "kind": f"{t.rtype.kind}List",
                "apiVersion": t.rtype.api_version,
                "metadata": {"resourceVersion": str(self.store.resource_version)},
                "items": items,
            }
        )

    # -- logs ----------------------------------------------------------------------------
    async def _logs(self, request: web.Request, namespace: str, name: str) -> web.StreamResponse:
        q = request.query
        pod = self.store.get(PODS, namespace, name)
        names = [
            c["name"]
            for c in [*(pod["spec"].get("initContainers") or []), *pod["spec"]["containers"]]
        ]
        container = q.get("container")
        if not container:
            mains = [c["name"] for c in pod["spec"]["containers"]]
            if len(mains) > 1:
                raise bad_request(
                    f"a container name must be specified for pod {name}, choose "
                    f"one of: [{' '.join(mains)}]"
                )
            container = mains[0]
        if container not in names:
            raise bad_request(f"container {container} is not valid for pod {name}")
        runtime = self.kubelet.runtime(namespace, name)
        state = runtime.containers.get(container) if runtime else None
        previous = q.get("previous") in ("1", "true")
        if state is None or state.log_path is None:
            reason = "ContainerCreating"
            if state is not None and "waiting" in state.state:
                reason = state.state["waiting"].get("reason", reason)
            raise bad_request(
                f'container "{container}" in pod "{name}" is waiting to start: {reason}'
            )
        path = state.log_path
        if previous:
            if state.restart_count == 0:
                raise bad_request(
                    f'previous terminated container "{container}" in pod "{name}" not found'
                )
            path = path.with_name(f"{state.restart_count - 1}.log")
        follow = q.get("follow") in ("1", "true") and not previous
        tail = int(q["tailLines"]) if q.get("tailLines") else None
        limit = int(q["limitBytes"]) if q.get("limitBytes") else None
        timestamps = q.get("timestamps") in ("1", "true")
        since = _since(q)
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        sent = 0
        offset = 0
        first = True
        try:
            while True:
                lines, offset = _read_log(path, offset)
                if first and tail is not None:
                    lines = lines[-tail:] if tail > 0 else []
                first = False
                out = b"".join(
                    _render(line, timestamps) for line in lines if since is None or line[0] >= since
                )
                if limit is not None:
                    out = out[: max(limit - sent, 0)]
                if out:
                    await response.write(out)
                    sent += len(out)
                if not follow or (limit is not None and sent >= limit):
                    break
                current = self.kubelet.runtime(namespace, name)
                still = current is runtime and state.log_path == path and ("running" in state.state)
                if not still:
                    lines, offset = _read_log(path, offset)
                    out = b"".join(_render(line, timestamps) for line in lines)
                    if out:
                        await response.write(out)
                    break
                await asyncio.sleep(0.1)
        except (ConnectionError, asyncio.CancelledError):
            pass
        return response


def _since(q: Any) -> str | None:
    if q.get("sinceTime"):
        return str(q["sinceTime"]).encode().decode()
    if q.get("sinceSeconds"):
        then = datetime.now(timezone.utc).timestamp() - int(q["sinceSeconds"])
        return datetime.fromtimestamp(then, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return None


def _read_log(path: Path, offset: int) -> tuple[list[tuple[str, str, str, bytes]], int]:
    """Complete CRI lines after ``offset``: (timestamp, stream, tag, content)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1
    lines = []
    for raw in data[:end].split(b"\n")[:-1]:
        parts = raw.split(b" ", 3)
        if len(parts) == 4:
            lines.append((parts[0].decode(), parts[1].decode(), parts[2].decode(), parts[3]))
    return lines, offset + end


def _render(line: tuple[str, str, str, bytes], timestamps: bool) -> bytes:
    stamp, _, tag, content = line
    body = content if tag == "P" else content + b"\n"
    return (stamp.encode() + b" " + body) if timestamps else body


def _map_event(event: Event, t: Target, pick: Callable[[Obj], bool]) -> tuple[str, Obj] | None:
    """An event as this watch should see it (selector transitions become ADDED/DELETED)."""
    if event.rtype is not t.rtype:
        return None
    if t.namespace is not None and t.rtype.namespaced and event.namespace != t.namespace:
        return None
    now = pick(event.obj)
    if event.type == "MODIFIED":
        before = event.old is not None and pick(event.old)
        if now and before:
            return "MODIFIED", event.obj
        if now:
            return "ADDED", event.obj
        if before:
            return "DELETED", event.obj
        return None
    return (event.type, event.obj) if now else None


def _dry_run(request: web.Request) -> bool:
    return bool(request.query.get("dryRun"))


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(body, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
    )
