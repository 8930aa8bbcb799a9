"""A minimal OpenAPI v3 surface: enough for ``kubectl apply`` to trust the server to validate.

kubectl (>= 1.27, ``--validate=strict`` by default) asks ``/openapi/v3`` whether the PATCH
operation of a kind takes the ``fieldValidation`` query parameter; if it does, kubectl skips
client-side schema validation (which would need the full schemas). So each group-version
document lists, per kind, the item path with a PATCH operation tagged with its
``x-kubernetes-group-version-kind`` and that parameter. No schemas are served.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from modelrepo.testing.cluster.resources import RESOURCE_TYPES, group_versions


def _gv_path(group: str, version: str) -> str:
    return f"api/{version}" if not group else f"apis/{group}/{version}"


def root() -> dict[str, Any]:
    """``GET /openapi/v3``: one entry per group-version."""
    paths = {}
    for group, versions in group_versions().items():
        for version in versions:
            doc = document(group, version)
            digest = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32]
            path = _gv_path(group, version)
            paths[path] = {"serverRelativeURL": f"/openapi/v3/{path}?hash={digest.upper()}"}
    return {"paths": paths}


def document(group: str, version: str) -> dict[str, Any]:
    """``GET /openapi/v3/<gv>``: PATCH operations that accept ``fieldValidation``."""
    paths: dict[str, Any] = {}
    for r in RESOURCE_TYPES:
        if r.group != group or r.version != version:
            continue
        base = "/api/v1" if not group else f"/apis/{group}/{version}"
        item = (
            f"{base}/namespaces/{{namespace}}/{r.plural}/{{name}}"
            if r.namespaced
            else f"{base}/{r.plural}/{{name}}"
        )
        gvk = {"group": group, "version": version, "kind": r.kind}
        params = [
            {"name": n, "in": "query", "schema": {"type": "string", "uniqueItems": True}}
            for n in ("dryRun", "fieldManager", "fieldValidation", "force")
        ]
        paths[item] = {
            "patch": {
                "operationId": f"patch{r.kind}",
                "parameters": params,
                "responses": {"200": {"description": "OK"}},
                "x-kubernetes-action": "patch",
                "x-kubernetes-group-version-kind": gvk,
            },
        }
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes (LocalCluster)", "version": "unversioned"},
        "paths": paths,
        "components": {"schemas": {}},
    }
