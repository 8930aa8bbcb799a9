"""Kubernetes transport: API client (retries, readable errors), exec over WebSocket, helper pod.

Layers, each importing only the ones above it in this list: ``api`` (a configured
``kubernetes`` ApiClient), ``exec`` (run a command in a pod, v5/v4 channel protocols),
``helper`` (the claim's helper pod: create, reuse, recreate, delete, reap).
"""

from modelrepo.transport.api import KubeAPI, RetryPolicy, api_error, connect
from modelrepo.transport.exec import (
    PROTOCOLS,
    V4,
    V5,
    ExecClient,
    ExecError,
    ExecRefused,
    ExecResult,
    ExecStreamDropped,
)
from modelrepo.transport.helper import (
    MOUNT_PATH,
    HelperOptions,
    HelperPod,
    cleanup,
    get_helper,
)

__all__ = [
    "MOUNT_PATH",
    "PROTOCOLS",
    "V4",
    "V5",
    "ExecClient",
    "ExecError",
    "ExecRefused",
    "ExecResult",
    "ExecStreamDropped",
    "HelperOptions",
    "HelperPod",
    "KubeAPI",
    "RetryPolicy",
    "api_error",
    "cleanup",
    "connect",
    "get_helper",
]
