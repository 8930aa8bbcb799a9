"""A configured Kubernetes API client: kubeconfig or in-cluster, retries, readable errors.

Every other transport module talks to the API server through :class:`KubeAPI` so that
retries (429 with Retry-After, 5xx, dropped connections) and the translation of
``ApiException`` into :class:`~modelrepo.errors.ClusterError` happen in one place.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from modelrepo.errors import ClusterError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Status codes worth another try: the server asked us to slow down or was briefly unwell.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to retry a failed API call before giving up."""

    attempts: int = 6
    base_delay: float = 0.25
    max_delay: float = 8.0
    max_retry_after: float = 60.0
    #: (connect, read) seconds for one request; a request that hangs is retried.
    request_timeout: tuple[float, float] = (10.0, 60.0)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (exponential, jittered)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        backoff = min(self.max_delay, self.base_delay * (2**attempt))
        return backoff * (0.5 + random.random() / 2)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date), None if absent."""
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _is_connection_error(exc: BaseException) -> bool:
    import urllib3.exceptions

    return isinstance(
        exc, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError
    ) and not isinstance(exc, urllib3.exceptions.LocationParseError)


class KubeAPI:
    """One API server connection: the ``kubernetes`` ApiClient plus namespace and retries.

    Build it with :func:`connect`. ``call`` runs any ``kubernetes`` client method with retries
    and error translation; ``core`` is a ``CoreV1Api`` on this client.
    """

    def __init__(
        self,
        api_client: Any,
        namespace: str,
        *,
        context: str | None = None,
        retry: RetryPolicy | None = None,
        identity: str | None = None,
    ) -> None:
        from kubernetes import client

        self.api_client = api_client
        self.configuration = api_client.configuration
        self.namespace = namespace
        self.context = context
        self.retry = retry or RetryPolicy()
        #: Who this client acts as (kubeconfig file, context and user; or the in-cluster
        #: service account). Process-wide helpers are shared only between equal identities,
        #: so one user's calls never run with another's credentials.
        self.identity = identity or f"client-{id(api_client):x}"
        self.core = client.CoreV1Api(api_client)

    @property
    def host(self) -> str:
        """The API server URL (identifies the cluster)."""
        return str(self.configuration.host)

    def call(
        self,
        fn: Callable[..., T],
        *args: Any,
        action: str,
        idempotent: bool = True,
        **kwargs: Any,
    ) -> T:
        """Call ``fn(*args, **kwargs)``, retrying transient failures; errors become ClusterError.

        429 is retried for every call (the server did not act on it). 5xx and connection
        errors are retried only when ``idempotent`` (a POST may have been applied already).
        ``action`` names the call for error messages, e.g. ``"create pods"``.
        """
        from kubernetes.client.exceptions import ApiException

        policy = self.retry
        kwargs.setdefault("_request_timeout", policy.request_timeout)
        for attempt in range(policy.attempts):
            last = attempt == policy.attempts - 1
            try:
                return fn(*args, **kwargs)
            except ApiException as exc:
                status = int(exc.status or 0)
                retryable = status == 429 or (idempotent and status in RETRY_STATUSES)
                if not retryable or last:
                    raise api_error(exc, action, namespace=kwargs.get("namespace")) from exc
                headers = exc.headers or {}
                wait = policy.delay(attempt, parse_retry_after(headers.get("Retry-After")))
                log.info("%s: HTTP %s, retrying in %.2fs", action, status, wait)
            except Exception as exc:
                if not _is_connection_error(exc) or not idempotent or last:
                    if _is_connection_error(exc):
                        raise ClusterError(
                            f"could not reach the Kubernetes API at {self.host} to {action}: {exc}",
                            hint="check the cluster is up, your network/VPN, and the "
                            "kubeconfig's server address (`kubectl cluster-info`)",
                        ) from exc
                    raise
                wait = policy.delay(attempt)
                log.info("%s: connection error %s, retrying in %.2fs", action, exc, wait)
            time.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        """Release the HTTP connection pool."""
        with contextlib.suppress(Exception):  # best effort at shutdown
            self.api_client.close()


def _status_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if body:
        try:
            doc = json.loads(body)
        except (TypeError, ValueError):
            return str(body)[:300]
        if isinstance(doc, dict) and doc.get("message"):
            return str(doc["message"])
    return str(getattr(exc, "reason", "") or exc)


def api_error(exc: Any, action: str, *, namespace: str | None = None) -> ClusterError:
    """Translate an ``ApiException`` from ``action`` into a ClusterError that says what to do.

    ``action`` is "<verb> <resource>[ <name>]" (e.g. ``"get persistentvolumeclaims models"``)
    so a 403 can name the exact RBAC rule that is missing.
    """
    status = int(getattr(exc, "status", 0) or 0)
    detail = _status_message(exc)
    where = f" in namespace {namespace!r}" if namespace else ""
    words = action.split()
    verb, resource = [*words, "", ""][:2]
    name = " ".join(words[2:])
    if status == 401:
        hint = (
            "your credentials were rejected: refresh them (e.g. log in again) or check the "
            "kubeconfig user"
        )
    elif status == 403:
        rule = f"verb {verb!r} on resource {resource!r}" if verb and resource else action
        hint = (
            f"ask a cluster admin for an RBAC Role granting {rule}{where} "
            "(modelrepo's documented Role lists everything it needs)"
        )
    elif status == 404 and resource == "persistentvolumeclaims":
        hint = (
            f"create the PVC {name!r}{where} or check the namespace "
            "(`kubectl get pvc -n <namespace>`)"
        )
    elif status == 404:
        hint = f"check that the {resource or 'object'} exists{where} and the namespace is right"
    elif status == 409:
        hint = "the object already exists or changed meanwhile; retry the call"
    elif status == 422:
        hint = "the API server rejected the object as invalid; see the message above"
    elif status == 429:
        hint = "the API server is throttling requests; wait a little and retry"
    elif status >= 500:
        hint = "the API server failed; retry later or check the control plane's health"
    else:
        hint = "see the API server's message above"
    return ClusterError(
        f"Kubernetes API refused to {action}{where}: HTTP {status}: {detail}", hint=hint
    )


def _context_entry(kubeconfig: str | None, context: str | None) -> dict[str, Any]:
    """The kubeconfig's context entry in use (``{}`` when there is none)."""
    from kubernetes import config

    contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)
    chosen = active
    if context is not None:
        chosen = next((c for c in contexts if c.get("name") == context), None)
    return chosen or {}


def _has_kubeconfig(kubeconfig: str | None) -> bool:
    if kubeconfig is not None:
        return True
    env = os.environ.get("KUBECONFIG")
    if env:
        return any(Path(p).expanduser().exists() for p in env.split(os.pathsep) if p)
    return Path("~/.kube/config").expanduser().exists()


def connect(
    kubeconfig: str | os.PathLike[str] | None = None,
    context: str | None = None,
    namespace: str | None = None,
    *,
    retry: RetryPolicy | None = None,
) -> KubeAPI:
    """Build a :class:`KubeAPI` from a kubeconfig (path, ``$KUBECONFIG``, ``~/.kube/config``).

    Falls back to the in-cluster service account when no kubeconfig exists and the process
    runs in a pod. ``namespace`` defaults to the context's namespace, else ``"default"``.
    The user's kubeconfig file is never rewritten (token refreshes stay in memory).
    """
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    path = os.fspath(kubeconfig) if kubeconfig is not None else None
    configuration = client.Configuration()
    in_cluster = not _has_kubeconfig(path) and "KUBERNETES_SERVICE_HOST" in os.environ
    try:
        if in_cluster:
            config.load_incluster_config(client_configuration=configuration)
            identity = "in-cluster service account"
            if namespace is None and _IN_CLUSTER_NAMESPACE.exists():
                namespace = _IN_CLUSTER_NAMESPACE.read_text().strip() or None
        else:
            config.load_kube_config(
                config_file=path,
                context=context,
                client_configuration=configuration,
                persist_config=False,
            )
            entry = _context_entry(path, context)
            source = os.path.abspath(
                os.path.expanduser(path or os.environ.get("KUBECONFIG") or "~/.kube/config")
            )
            user = (entry.get("context") or {}).get("user")
            identity = f"{source}#{entry.get('name')}#{user}"
            if namespace is None:
                namespace = (entry.get("context") or {}).get("namespace")
    except (ConfigException, OSError, ValueError) as exc:
        source = path or os.environ.get("KUBECONFIG") or "~/.kube/config"
        raise ClusterError(
            f"could not load Kubernetes credentials from {source}"
            + (f" (context {context!r})" if context else "")
            + f": {exc}",
            hint="pass kubeconfig=<path> (and context=<name>) or set $KUBECONFIG; "
            "`kubectl config get-contexts` lists the contexts",
        ) from exc
    # Our own retry loop handles failures; urllib3's hidden retries would hide 429s.
    configuration.retries = 1
    api_client = client.ApiClient(configuration)
    return KubeAPI(
        api_client, namespace or "default", context=context, retry=retry, identity=identity
    )
