"""Small manifest builders for tests, demos and notebooks that talk to a LocalCluster."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def busybox_pod(
    name: str,
    *,
    claim: str | None = None,
    mount_path: str = "/models",
    command: Sequence[str] = ("sleep", "3600"),
    image: str = "busybox",
    labels: dict[str, str] | None = None,
    restart_policy: str = "Always",
    security_context: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    active_deadline_seconds: int | None = None,
) -> dict[str, Any]:
    """A one-container Pod manifest (a helper pod mounting ``claim`` at ``mount_path``)."""
    container: dict[str, Any] = {"name": "main", "image": image, "command": list(command)}
    spec: dict[str, Any] = {"containers": [container], "restartPolicy": restart_policy}
    if claim:
        container["volumeMounts"] = [{"name": "claim", "mountPath": mount_path}]
        spec["volumes"] = [{"name": "claim", "persistentVolumeClaim": {"claimName": claim}}]
    if env:
        container["env"] = [{"name": k, "value": v} for k, v in env.items()]
    if security_context:
        spec["securityContext"] = security_context
    if active_deadline_seconds is not None:
        spec["activeDeadlineSeconds"] = active_deadline_seconds
    metadata: dict[str, Any] = {"name": name}
    if labels:
        metadata["labels"] = dict(labels)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def job(
    name: str,
    *,
    command: Sequence[str],
    image: str = "busybox",
    claim: str | None = None,
    mount_path: str = "/models",
    backoff_limit: int = 0,
    ttl_seconds_after_finished: int | None = None,
    active_deadline_seconds: int | None = None,
) -> dict[str, Any]:
    """A batch/v1 Job manifest whose pod runs ``command`` (``restartPolicy: Never``)."""
    pod = busybox_pod(
        name,
        claim=claim,
        mount_path=mount_path,
        command=command,
        image=image,
        restart_policy="Never",
    )
    spec: dict[str, Any] = {
        "backoffLimit": backoff_limit,
        "template": {"metadata": {}, "spec": pod["spec"]},
    }
    if ttl_seconds_after_finished is not None:
        spec["ttlSecondsAfterFinished"] = ttl_seconds_after_finished
    if active_deadline_seconds is not None:
        spec["activeDeadlineSeconds"] = active_deadline_seconds
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": spec}
