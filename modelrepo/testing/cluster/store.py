"""The object store: what etcd plus the generic registry do in a real API server.

Objects are plain dicts keyed by (group, plural, namespace, name). A stored dict is never
mutated in place: every change stores a new dict, so events and readers can share them
without copies. Only the event-loop thread touches the store.

Each change bumps one global ``resourceVersion`` and is kept in a bounded history, so a watch
can resume from a ``resourceVersion`` (or gets 410 Expired, as from a real server).
"""

from __future__ import annotations

import asyncio
import copy
import re
import secrets
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from modelrepo.testing.cluster.errors import (
    StatusError,
    already_exists,
    conflict,
    invalid,
    not_found,
)
from modelrepo.testing.cluster.resources import ResourceType

Obj = dict[str, Any]
Key = tuple[str, str, str, str]

_HISTORY = 20000
_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_LABEL_KINDS = {"Namespace", "Service", "Pod"}


def now_rfc3339() -> str:
    """The current time as the API server writes timestamps."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def random_suffix(n: int = 5) -> str:
    """A suffix like the server's ``generateName`` ones (consonants and digits)."""
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    return "".join(secrets.choice(alphabet) for _ in range(n))


@dataclass(frozen=True)
class Event:
    """One change: ``ADDED``, ``MODIFIED`` or ``DELETED`` with the object after it."""

    type: str
    rtype: ResourceType
    namespace: str
    obj: Obj
    old: Obj | None
    rv: int


Listener = Callable[[Event], None]


def validate_name(rtype: ResourceType, name: str) -> str | None:
    """Why a name is refused, or None."""
    if rtype.kind in _DNS_LABEL_KINDS and rtype.kind != "Pod":
        if len(name) > 63 or not _LABEL_RE.match(name):
            return (
                "a lowercase RFC 1123 label must consist of lower case alphanumeric "
                "characters or '-', and must start and end with an alphanumeric character"
            )
        return None
    if len(name) > 253 or not _NAME_RE.match(name):
        return (
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
            "characters, '-' or '.', and must start and end with an alphanumeric character"
        )
    return None


class Store:
    """CRUD with resourceVersions, history and change listeners."""

    def __init__(self) -> None:
        self._objects: dict[Key, Obj] = {}
        self._rv = 1000
        self._history: deque[Event] = deque(maxlen=_HISTORY)
        self._listeners: list[Listener] = []
        self._watchers: set[asyncio.Queue[Event | None]] = set()
        self.first_rv = self._rv

    # -- reading -------------------------------------------------------------------------
    @property
    def resource_version(self) -> int:
        return self._rv

    def get(self, rtype: ResourceType, namespace: str, name: str) -> Obj:
        """The stored object (read-only by convention) or 404."""
        obj = self._objects.get(self._key(rtype, namespace, name))
        if obj is None:
            raise not_found(rtype.group, rtype.plural, name)
        return obj

    def find(self, rtype: ResourceType, namespace: str, name: str) -> Obj | None:
        return self._objects.get(self._key(rtype, namespace, name))

    def list(self, rtype: ResourceType, namespace: str | None = None) -> list[Obj]:
        """Objects of a type, in one namespace or all, sorted by namespace and name."""
        items = [
            obj
            for (g, p, ns, _), obj in self._objects.items()
            if g == rtype.group and p == rtype.plural and (namespace is None or ns == namespace)
        ]
        items.sort(key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
        return items

    # -- writing -------------------------------------------------------------------------
    def create(self, rtype: ResourceType, namespace: str, obj: Obj) -> Obj:
        """Store a new object: fill name (generateName), uid, timestamps, resourceVersion."""
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise invalid(
                rtype.kind,
                rtype.group,
                "",
                [("FieldValueInvalid", "metadata", "must be an object")],
            )
        name = meta.get("name")
        if not name and meta.get("generateName"):
            for _ in range(20):
                candidate = f"{meta['generateName']}{random_suffix()}"
                if self.find(rtype, namespace, candidate) is None:
                    name = candidate
                    break
        if not name:
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
        problem = validate_name(rtype, name)
        if problem:
            raise invalid(
                rtype.kind,
                rtype.group,
                name,
                [("FieldValueInvalid", "metadata.name", f'Invalid value: "{name}": {problem}')],
            )
        if self.find(rtype, namespace, name) is not None:
            raise already_exists(rtype.group, rtype.plural, name)
        meta["name"] = name
        if rtype.namespaced:
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        meta["uid"] = meta.get("uid") or str(uuid.uuid4())  # the API layer may pre-assign
        meta["creationTimestamp"] = now_rfc3339()
        meta.pop("deletionTimestamp", None)
        meta.pop("selfLink", None)
        meta["generation"] = 1
        obj["apiVersion"] = rtype.api_version
        obj["kind"] = rtype.kind
        return self._put("ADDED", rtype, namespace, obj, None)

    def replace(
        self,
        rtype: ResourceType,
        namespace: str,
        name: str,
        obj: Obj,
        *,
        check_rv: bool = True,
        subresource: str | None = None,
    ) -> Obj:
        """Update an object (PUT semantics): resourceVersion must match when given."""
        old = self.get(rtype, namespace, name)
        new = copy.deepcopy(obj)
        meta = new.setdefault("metadata", {})
        given = meta.get("resourceVersion")
        if check_rv and given and str(given) != old["metadata"]["resourceVersion"]:
            raise conflict(
                rtype.group,
                rtype.plural,
                name,
                "the object has been modified; please apply your changes to the "
                "latest version and try again",
            )
        if meta.get("name", name) != name:
            raise StatusError(
                400,
                f"the name of the object ({meta.get('name')}) does not "
                f"match the name on the URL ({name})",
            )
        return self._store_update(rtype, namespace, old, new, subresource)

    def mutate(
        self, rtype: ResourceType, namespace: str, name: str, change: Callable[[Obj], None]
    ) -> Obj | None:
        """Controllers' updates: apply ``change`` to a copy and store it; None if gone."""
        old = self.find(rtype, namespace, name)
        if old is None:
            return None
        new = copy.deepcopy(old)
        change(new)
        if new == old:
            return old
        return self._store_update(rtype, namespace, old, new, "internal")

    def _store_update(
        self, rtype: ResourceType, namespace: str, old: Obj, new: Obj, subresource: str | None
    ) -> Obj:
        meta = new["metadata"]
        old_meta = old["metadata"]
        for fixed in ("uid", "creationTimestamp", "name", "namespace"):
            if fixed in old_meta:
                meta[fixed] = old_meta[fixed]
        if "deletionTimestamp" in old_meta:
            meta["deletionTimestamp"] = old_meta["deletionTimestamp"]
            if "deletionGracePeriodSeconds" in old_meta:
                meta["deletionGracePeriodSeconds"] = old_meta["deletionGracePeriodSeconds"]
        new["apiVersion"] = rtype.api_version
        new["kind"] = rtype.kind
        if subresource == "status":
            kept = copy.deepcopy(old)
            kept["status"] = new.get("status", {})
            new = kept
        elif subresource is None:
            if "status" in old:
                new["status"] = copy.deepcopy(old["status"])
            if new.get("spec") != old.get("spec"):
                meta["generation"] = int(old_meta.get("generation", 1)) + 1
            else:
                meta["generation"] = old_meta.get("generation", 1)
        if new == old:
            return old
        return self._put("MODIFIED", rtype, namespace, new, old)

    def remove(self, rtype: ResourceType, namespace: str, name: str) -> Obj:
        """Delete an object now (DELETED event)."""
        key = self._key(rtype, namespace, name)
        old = self._objects.get(key)
        if old is None:
            raise not_found(rtype.group, rtype.plural, name)
        del self._objects[key]
        self._rv += 1
        final = copy.deepcopy(old)
        final["metadata"]["resourceVersion"] = str(self._rv)
        self._emit(Event("DELETED", rtype, namespace, final, old, self._rv))
        return final

    def _put(
        self, kind: str, rtype: ResourceType, namespace: str, obj: Obj, old: Obj | None
    ) -> Obj:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        self._objects[self._key(rtype, namespace, obj["metadata"]["name"])] = obj
        self._emit(Event(kind, rtype, namespace, obj, old, self._rv))
        return obj

    def _key(self, rtype: ResourceType, namespace: str, name: str) -> Key:
        return (rtype.group, rtype.plural, namespace if rtype.namespaced else "", name)

    # -- events --------------------------------------------------------------------------
    def _emit(self, event: Event) -> None:
        self._history.append(event)
        for queue in list(self._watchers):
            queue.put_nowait(event)
        for listener in list(self._listeners):
            listener(event)

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener`` synchronously after each change (controllers)."""
        self._listeners.append(listener)

    def history_since(self, rv: int) -> Iterable[Event] | None:
        """Events after ``rv``, or None when that point fell out of the history."""
        if (
            rv < self._rv
            and self._history
            and self._history[0].rv > rv + 1
            and (len(self._history) == self._history.maxlen or rv < self.first_rv)
        ):
            return None
        return [e for e in self._history if e.rv > rv]

    def open_watch(self) -> asyncio.Queue[Event | None]:
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self._watchers.add(queue)
        return queue

    def close_watch(self, queue: asyncio.Queue[Event | None]) -> None:
        self._watchers.discard(queue)

    def end_watches(self) -> None:
        """Wake every watcher so streams end (server stopping)."""
        for queue in list(self._watchers):
            queue.put_nowait(None)
