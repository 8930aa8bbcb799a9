"""Find every Triton replica behind a Service name through the Kubernetes API.

Loading a model through a Service reaches one pod at random; each Triton replica keeps its
own model state, so modelrepo addresses the pods themselves: the Service's Endpoints (or,
without a Service, the pods labelled ``app=<name>``). Measuring what clients of the Service
see is the exception: :func:`service_address` gives its cluster DNS name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from modelrepo.errors import ClusterError

if TYPE_CHECKING:
    from modelrepo.transport.api import KubeAPI

DEFAULT_HTTP_PORT = 8000


def _http_port(ports: list[tuple[str | None, int]]) -> int:
    """The port named ``http`` (Triton's convention), else 8000, else the first one."""
    for name, port in ports:
        if name == "http":
            return int(port)
    numbers = [int(port) for _, port in ports]
    if DEFAULT_HTTP_PORT in numbers or not numbers:
        return DEFAULT_HTTP_PORT
    return numbers[0]


def service_urls(service: str, api: KubeAPI) -> list[str]:
    """``host:port`` of every ready pod behind ``service`` (or labelled ``app=<service>``)."""
    ns = api.namespace
    try:
        endpoints = api.call(
            api.core.read_namespaced_endpoints, service, ns, action=f"get endpoints {service}"
        )
    except ClusterError:
        endpoints = None  # no such Service: look for pods labelled app=<service>
    urls: list[str] = []
    if endpoints is not None:
        for subset in endpoints.subsets or []:
            port = _http_port([(p.name, p.port) for p in subset.ports or []])
            urls += [f"{a.ip}:{port}" for a in subset.addresses or []]
    if not urls:
        pods = api.call(
            api.core.list_namespaced_pod, ns, label_selector=f"app={service}", action="list pods"
        ).items
        for pod in pods:
            if pod.status and pod.status.phase == "Running" and pod.status.pod_ip:
                port = _http_port(
                    [(p.name, p.container_port) for c in pod.spec.containers for p in c.ports or []]
                )
                urls.append(f"{pod.status.pod_ip}:{port}")
    if not urls:
        raise ClusterError(
            f"no running Triton pod found for {service!r} in namespace {ns!r}",
            hint="check the Service name (kubectl get svc) and that its pods are Ready, "
            "or pass triton= the replica URLs directly",
        )
    return sorted(urls)


def service_address(service: str, api: KubeAPI) -> str:
    """``<service>.<namespace>.svc:<port>``: the Service's own address, load-balanced by the
    cluster over its ready pods (resolvable from inside the cluster, as pod IPs are)."""
    ns = api.namespace
    try:
        svc = api.call(
            api.core.read_namespaced_service, service, ns, action=f"get service {service}"
        )
    except ClusterError as exc:
        raise ClusterError(
            f"no Service {service!r} in namespace {ns!r} to send the load through",
            hint="check the name (kubectl get svc), or use replicas='all' to address the "
            "Triton pods themselves",
        ) from exc
    port = _http_port([(p.name, p.port) for p in svc.spec.ports or []])
    return f"{service}.{ns}.svc:{port}"


def triton_addresses(target: str, replicas: str, api: Callable[[], KubeAPI]) -> list[str]:
    """What ``--triton``/``triton=`` names: a URL (anything with ``:``) as given, or a Service
    name, as every pod behind it (``"all"``) or its own address (``"service"``).

    ``api`` is called only for a name, so a URL needs no kubeconfig.
    """
    if ":" in target:
        return [target]
    if replicas == "service":
        return [service_address(target, api())]
    return service_urls(target, api())
