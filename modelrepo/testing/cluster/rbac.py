"""RBAC-lite: users with bearer tokens, and Roles/ClusterRoles bound to them, enforced.

The admin user of the kubeconfig (group ``system:masters``) may do anything. Any other user
(``cluster.add_user(name)``) may do what the stored RBAC objects grant it: RoleBindings in
the request's namespace and ClusterRoleBindings, whose subjects name the user or one of its
groups, pointing at Roles/ClusterRoles whose rules match the API group, resource (with its
subresource, ``pods/exec``), verb and resource name. Discovery is open to every user.
Denials are answered as the real server words them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from modelrepo.testing.cluster.errors import StatusError
from modelrepo.testing.cluster.resources import lookup
from modelrepo.testing.cluster.store import Obj, Store

ROLES = lookup("rbac.authorization.k8s.io", "v1", "roles")
ROLE_BINDINGS = lookup("rbac.authorization.k8s.io", "v1", "rolebindings")
CLUSTER_ROLES = lookup("rbac.authorization.k8s.io", "v1", "clusterroles")
CLUSTER_ROLE_BINDINGS = lookup("rbac.authorization.k8s.io", "v1", "clusterrolebindings")
assert ROLES and ROLE_BINDINGS and CLUSTER_ROLES and CLUSTER_ROLE_BINDINGS

ADMIN_GROUP = "system:masters"


@dataclass(frozen=True)
class User:
    """An authenticated caller."""

    name: str
    groups: tuple[str, ...] = field(default=("system:authenticated",))

    @property
    def is_admin(self) -> bool:
        return ADMIN_GROUP in self.groups


@dataclass(frozen=True)
class Request:
    """What a request asks to do, in RBAC's terms."""

    verb: str
    group: str
    resource: str  # plural, or "plural/subresource"
    namespace: str | None
    name: str | None


def _matches(values: list[str] | None, value: str) -> bool:
    return bool(values) and ("*" in values or value in (values or []))


def _rule_allows(rule: Obj, req: Request) -> bool:
    if not _matches(rule.get("verbs"), req.verb):
        return False
    if not _matches(rule.get("apiGroups"), req.group):
        return False
    resources = rule.get("resources") or []
    sub = req.resource.partition("/")[2]
    if not ("*" in resources or req.resource in resources or (sub and f"*/{sub}" in resources)):
        return False
    names = rule.get("resourceNames") or []
    return not names or (req.name is not None and req.name in names)


def _bound(binding: Obj, user: User) -> bool:
    for subject in binding.get("subjects") or []:
        kind, name = subject.get("kind"), subject.get("name")
        if kind == "User" and name == user.name:
            return True
        if kind == "Group" and name in user.groups:
            return True
    return False


def _role_rules(store: Store, ref: Obj, namespace: str) -> list[Obj]:
    if ref.get("kind") == "ClusterRole":
        role = store.find(CLUSTER_ROLES, "", ref.get("name", ""))
    else:
        role = store.find(ROLES, namespace, ref.get("name", ""))
    return list((role or {}).get("rules") or [])


def allowed(store: Store, user: User, req: Request) -> bool:
    """Whether RBAC grants ``req`` to ``user``."""
    if user.is_admin:
        return True
    for binding in store.list(CLUSTER_ROLE_BINDINGS):
        if _bound(binding, user) and any(
            _rule_allows(r, req) for r in _role_rules(store, binding.get("roleRef") or {}, "")
        ):
            return True
    if req.namespace:
        for binding in store.list(ROLE_BINDINGS, req.namespace):
            if _bound(binding, user) and any(
                _rule_allows(r, req)
                for r in _role_rules(store, binding.get("roleRef") or {}, req.namespace)
            ):
                return True
    return False


def forbidden(user: User, req: Request) -> StatusError:
    """The 403 a real server sends for a denied request."""
    base = req.resource.split("/")[0]
    what = f'{base} "{req.name}"' if req.name and req.verb not in ("create",) else base
    where = f' in the namespace "{req.namespace}"' if req.namespace else " at the cluster scope"
    details: dict[str, Any] = {"kind": base}
    if req.group:
        details["group"] = req.group
    if req.name:
        details["name"] = req.name
    return StatusError(
        403,
        f'{what} is forbidden: User "{user.name}" cannot {req.verb} resource '
        f'"{req.resource}" in API group "{req.group}"{where}',
        reason="Forbidden",
        details=details,
    )


def verb_for(method: str, *, has_name: bool, watch: bool, subresource: str | None) -> str:
    """The RBAC verb of an HTTP request."""
    if subresource in ("exec", "attach", "portforward"):
        return "create"  # also for the WebSocket GET, as servers >= 1.30 check
    if method == "GET":
        if watch:
            return "watch"
        return "get" if has_name else "list"
    return {
        "POST": "create",
        "PUT": "update",
        "PATCH": "patch",
        "DELETE": "delete" if has_name else "deletecollection",
    }.get(method, method.lower())


def _proto_fields(buf: bytes) -> dict[int, list[Any]]:
    """Decode one protobuf message into field number -> values (bytes for length-delimited)."""
    out: dict[int, list[Any]] = {}
    i = 0

    def varint() -> int:
        nonlocal i
        shift = result = 0
        while True:
            byte = buf[i]
            i += 1
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result
            shift += 7

    while i < len(buf):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            value: Any = varint()
        elif wire == 2:
            length = varint()
            value = buf[i : i + length]
            i += length
        elif wire == 1:
            value, i = buf[i : i + 8], i + 8
        elif wire == 5:
            value, i = buf[i : i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        out.setdefault(number, []).append(value)
    return out


def access_review_from_protobuf(data: bytes) -> dict[str, Any]:
    """The JSON form of a protobuf SelfSubjectAccessReview (kubectl auth can-i sends one).

    Envelope: ``k8s\\0`` + runtime.Unknown{2: raw}; raw = {2: spec}; spec =
    {1: resourceAttributes, 2: nonResourceAttributes}; ResourceAttributes = {1 namespace,
    2 verb, 3 group, 4 version, 5 resource, 6 subresource, 7 name}.
    """
    if not data.startswith(b"k8s\x00"):
        raise ValueError("not a Kubernetes protobuf envelope")
    raw = _proto_fields(data[4:]).get(2, [b""])[0]
    spec = _proto_fields(_proto_fields(raw).get(2, [b""])[0])
    body: dict[str, Any] = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "metadata": {},
        "spec": {},
    }
    if 1 in spec:
        attrs = _proto_fields(spec[1][0])
        names = {
            1: "namespace",
            2: "verb",
            3: "group",
            4: "version",
            5: "resource",
            6: "subresource",
            7: "name",
        }
        body["spec"]["resourceAttributes"] = {
            key: attrs[n][0].decode() for n, key in names.items() if n in attrs
        }
    elif 2 in spec:
        attrs = _proto_fields(spec[2][0])
        body["spec"]["nonResourceAttributes"] = {
            "path": attrs.get(1, [b""])[0].decode(),
            "verb": attrs.get(2, [b""])[0].decode(),
        }
    return body
