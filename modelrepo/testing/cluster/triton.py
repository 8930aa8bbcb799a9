"""Real Triton servers as the pods of a Deployment-like set on a LocalCluster.

Each replica is a Pod object (label ``app=<name>``, its own loopback pod IP, the claim as a
volume) whose "container" is a :class:`~modelrepo.testing.triton.LocalTriton` serving the
claim's host folder on that IP, in explicit model-control mode. The pod turns Ready when
Triton answers ``/v2/health/ready``; a Service ``<name>`` and its Endpoints list the replicas,
as in a cluster, so code can find every replica through the API. Killing or deleting a
replica's pod stops its Triton.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import socket
import time
from typing import TYPE_CHECKING, Any

from modelrepo.errors import LocalStackError
from modelrepo.testing.cluster.kubelet import VIRTUAL_ANNOTATION

if TYPE_CHECKING:
    from modelrepo.testing.cluster.cluster import LocalCluster
    from modelrepo.testing.triton import LocalTriton

TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"


def _port_free(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((address, port))
        except OSError:
            return False
    return True


def _common_port(addresses: list[str], preferred: int) -> int:
    """``preferred`` if it is free on every address, else a port free on all of them."""
    if all(_port_free(a, preferred) for a in addresses):
        return preferred
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((addresses[0], 0))
            port = int(s.getsockname()[1])
        if all(_port_free(a, port) for a in addresses):
            return port
    raise LocalStackError(
        "no port is free on every replica address", hint="stop other servers listening on 127.0.0.x"
    )


class TritonDeployment:
    """Triton replicas on a LocalCluster (see the module docstring); made by ``deploy_triton``."""

    def __init__(
        self,
        cluster: LocalCluster,
        *,
        name: str,
        claim: str,
        namespace: str = "default",
        replicas: int = 1,
        mount_path: str = "/models",
        port: int = 8000,
        startup_timeout: float = 120.0,
        **triton_options: Any,
    ) -> None:
        if replicas < 1:
            raise ValueError("replicas must be at least 1")
        self.cluster = cluster
        self.name = name
        self.claim = claim
        self.namespace = namespace
        self.replicas = replicas
        self.mount_path = mount_path
        self.preferred_port = port
        self.port: int | None = None
        self.startup_timeout = startup_timeout
        self.triton_options = triton_options
        self._servers: dict[str, LocalTriton] = {}
        self._pods: list[str] = []

    # -- what callers use ----------------------------------------------------------------
    @property
    def pods(self) -> list[str]:
        """The replicas' pod names."""
        return list(self._pods)

    @property
    def urls(self) -> list[str]:
        """``ip:port`` of every running replica (what ``tritonclient.http`` takes)."""
        return [self._servers[p].url for p in self._pods if p in self._servers]

    @property
    def servers(self) -> dict[str, LocalTriton]:
        """Pod name -> its LocalTriton."""
        return dict(self._servers)

    @property
    def service(self) -> str:
        return self.name

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> TritonDeployment:
        """Create the Service and the pods, start one Triton per pod, wait until all are Ready."""
        from modelrepo.testing.triton import LocalTriton, locate_triton

        locate_triton()  # fail early, with the install hint, when Triton is missing
        repository = self.cluster.pvc_path(self.claim, self.namespace)
        if repository is None:
            raise LocalStackError(
                f"PersistentVolumeClaim {self.namespace}/{self.claim} does not exist (or is "
                "not bound), so there is nothing for Triton to serve.",
                hint=f"create it first: cluster.create_pvc({self.claim!r}, "
                f"namespace={self.namespace!r})",
            )
        labels = {"app": self.name, "app.kubernetes.io/name": "triton"}
        deployment = self.cluster.create(self._deployment(labels), self.namespace)
        owner = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": self.name,
            "uid": deployment["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
        self.cluster.create(self._service(labels), self.namespace)
        for _ in range(self.replicas):
            pod = self.cluster.create(self._pod(labels, owner), self.namespace)
            self._pods.append(pod["metadata"]["name"])
        addresses = [
            self.cluster.wait_for_pod(p, self.namespace)["status"]["podIP"] for p in self._pods
        ]
        self.port = _common_port(addresses, self.preferred_port)
        if self.port != self.preferred_port:
            self._retarget_ports()
        servers = {
            pod: LocalTriton(
                repository=repository,
                http_address=ip,
                http_port=self.port,
                model_control_mode="explicit",
                startup_timeout=self.startup_timeout,
                **self.triton_options,
            )
            for pod, ip in zip(self._pods, addresses, strict=True)
        }
        self._servers = servers
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(servers)) as pool:
            futures = {pod: pool.submit(server.start) for pod, server in servers.items()}
            errors = [f.exception() for f in futures.values() if f.exception()]
        if errors:
            raise errors[0]  # type: ignore[misc]
        kubelet = self.cluster._kubelet
        assert kubelet is not None
        for pod, server in servers.items():
            self.cluster.call(
                lambda pod=pod, server=server: (
                    kubelet.on_stop(self.namespace, pod, server.stop),
                    kubelet.set_ready(self.namespace, pod, True),
                )
            )
        self._mark_available()
        self._wait_endpoints(addresses)
        return self

    def _retarget_ports(self) -> None:
        """Make the pods' declared ports the ones their Tritons use (Endpoints read them)."""
        store = self.cluster._store
        assert store is not None and self.port is not None
        from modelrepo.testing.cluster.resources import lookup

        pods = lookup("", "v1", "pods")
        http = self.port

        def change(obj: dict[str, Any]) -> None:
            for port in obj["spec"]["containers"][0].get("ports") or []:
                if port.get("name") == "http":
                    port["containerPort"] = http

        for pod in self._pods:
            self.cluster.call(lambda pod=pod: store.mutate(pods, self.namespace, pod, change))

    def _mark_available(self) -> None:
        store = self.cluster._store
        assert store is not None
        from modelrepo.testing.cluster.resources import lookup

        deployments = lookup("apps", "v1", "deployments")
        count = len(self._servers)

        def change(obj: dict[str, Any]) -> None:
            obj["status"] = {
                "observedGeneration": obj["metadata"].get("generation", 1),
                "replicas": count,
                "updatedReplicas": count,
                "readyReplicas": count,
                "availableReplicas": count,
            }

        self.cluster.call(lambda: store.mutate(deployments, self.namespace, self.name, change))

    def _wait_endpoints(self, addresses: list[str]) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            endpoints = self.cluster.get("Endpoints", self.name, self.namespace) or {}
            ready = {
                a["ip"] for s in endpoints.get("subsets") or [] for a in s.get("addresses") or []
            }
            if ready >= set(addresses):
                return
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop every replica's Triton and delete the pods, Service and Deployment."""
        servers, self._servers = self._servers, {}
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(len(servers), 1)) as pool:
            list(pool.map(lambda s: s.stop(), servers.values()))
        if self.cluster._loop is not None:
            for kind, api_version in (("Service", "v1"), ("Deployment", "apps/v1")):
                with contextlib.suppress(Exception):
                    self.cluster.delete(
                        kind,
                        self.name,
                        self.namespace,
                        api_version=api_version,
                        propagation="Background",
                    )
            for pod in self._pods:
                with contextlib.suppress(Exception):
                    self.cluster.delete("Pod", pod, self.namespace, grace_period=0)
        self._pods = []
        self.cluster._forget(self)

    def __enter__(self) -> TritonDeployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"TritonDeployment({self.name!r}, claim={self.claim!r}, urls={self.urls})"

    # -- manifests -----------------------------------------------------------------------
    def _container(self) -> dict[str, Any]:
        return {
            "name": "triton",
            "image": TRITON_IMAGE,
            "args": [
                "tritonserver",
                f"--model-repository={self.mount_path}",
                "--model-control-mode=explicit",
            ],
            "ports": [
                {"name": "http", "containerPort": self.preferred_port},
                {"name": "grpc", "containerPort": self.preferred_port + 1},
                {"name": "metrics", "containerPort": self.preferred_port + 2},
            ],
            "volumeMounts": [{"name": "models", "mountPath": self.mount_path}],
        }

    def _volumes(self) -> list[dict[str, Any]]:
        return [{"name": "models", "persistentVolumeClaim": {"claimName": self.claim}}]

    def _deployment(self, labels: dict[str, str]) -> dict[str, Any]:
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": self.name, "labels": dict(labels)},
            "spec": {
                "replicas": self.replicas,
                "selector": {"matchLabels": {"app": self.name}},
                "template": {
                    "metadata": {"labels": dict(labels)},
                    "spec": {"containers": [self._container()], "volumes": self._volumes()},
                },
            },
        }

    def _service(self, labels: dict[str, str]) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": self.name, "labels": dict(labels)},
            "spec": {
                "selector": {"app": self.name},
                "ports": [{"name": "http", "port": self.preferred_port, "targetPort": "http"}],
            },
        }

    def _pod(self, labels: dict[str, str], owner: dict[str, Any]) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "generateName": f"{self.name}-",
                "labels": dict(labels),
                "annotations": {VIRTUAL_ANNOTATION: "gated"},
                "ownerReferences": [owner],
            },
            "spec": {"containers": [self._container()], "volumes": self._volumes()},
        }
