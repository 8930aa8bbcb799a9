"""``LocalCluster``: a Kubernetes API emulator on 127.0.0.1 that real ``kubectl`` accepts.

The server (aiohttp) runs on its own event loop in a background thread, so a test can use
the cluster from the same process; everything it starts (pod sandboxes, exec'd processes,
Triton replicas) is stopped by :meth:`LocalCluster.stop`, by the ``with`` block's exit, at
interpreter exit, and (through ``PR_SET_PDEATHSIG``) by the kernel if this process dies.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from modelrepo.errors import LocalStackError
from modelrepo.testing._service import LocalService

if TYPE_CHECKING:
    from aiohttp import web

    from modelrepo.testing.cluster.api import ApiServer, RequestRecord
    from modelrepo.testing.cluster.controllers import Controllers
    from modelrepo.testing.cluster.kubelet import Kubelet
    from modelrepo.testing.cluster.store import Store
    from modelrepo.testing.cluster.tls import ServerCertificate
    from modelrepo.testing.cluster.triton import TritonDeployment

from modelrepo.testing.cluster.faults import Faults
from modelrepo.testing.cluster.protocol import V4, V5
from modelrepo.testing.cluster.sandbox import ImageRegistry

T = TypeVar("T")

_SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
_CALL_TIMEOUT = 60.0


class LocalCluster(LocalService):
    """A local Kubernetes API server with pods that run in busybox-like sandboxes.

    ``version`` is what ``/version`` reports (kubectl's dispatcher picks the matching
    kubectl release; exec needs >= 1.30, which speaks WebSocket). ``exec_protocols`` are the
    exec subprotocols offered, in order of preference. ``base_dir`` holds the claims' host
    folders and the pods' root folders (a temporary folder, removed on stop, by default; a
    given folder keeps its ``volumes/``). ``sandbox=False`` runs no pod processes (an
    API-only cluster that needs no root). ``grace_period_cap`` bounds how long a pod
    deletion waits for SIGTERM before SIGKILL. ``tls=True`` serves HTTPS with a throwaway CA
    written into the kubeconfig and checks the bearer token (kubectl sends no token over plain
    HTTP); ``tls=False`` serves HTTP and treats every caller as the admin.
    """

    def __init__(
        self,
        *,
        version: str = "1.33",
        host: str = "127.0.0.1",
        port: int = 0,
        base_dir: str | Path | None = None,
        sandbox: bool = True,
        exec_protocols: tuple[str, ...] = (V5, V4),
        images: ImageRegistry | None = None,
        grace_period_cap: float = 1.0,
        tls: bool = True,
    ) -> None:
        parts = version.split(".")
        if len(parts) < 2 or not all(p.isdigit() for p in parts[:2]):
            raise ValueError(f"version must look like '1.33', got {version!r}")
        unknown = [p for p in exec_protocols if p not in (V5, V4)]
        if unknown or not exec_protocols:
            raise ValueError(
                f"exec_protocols must be taken from {(V5, V4)}, got {exec_protocols!r}"
            )
        self.version = f"{parts[0]}.{parts[1]}"
        self.host = host
        self._port = port
        self._given_dir = Path(base_dir) if base_dir is not None else None
        self.sandbox = sandbox
        self.exec_protocols = tuple(exec_protocols)
        self.images = images or ImageRegistry()
        self.grace_period_cap = grace_period_cap
        self.tls = tls
        self._certificate: ServerCertificate | None = None
        self.faults = Faults()
        self.token = secrets.token_hex(16)
        self.context = "local-cluster"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._store: Store | None = None
        self._api: ApiServer | None = None
        self._kubelet: Kubelet | None = None
        self._controllers: Controllers | None = None
        self._deployments: list[TritonDeployment] = []
        self._base: Path | None = None
        self._kubeconfig: Path | None = None
        self._finalizer: weakref.finalize | None = None
        self._lock = threading.Lock()

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> LocalCluster:
        """Start the API server (idempotent); raise LocalStackError when it cannot."""
        with self._lock:
            if self._loop is not None:
                return self
            if self.sandbox:
                from modelrepo.testing.cluster.sandbox import host_tools

                host_tools()
            if self._given_dir is not None:
                self._given_dir.mkdir(parents=True, exist_ok=True)
                self._base = self._given_dir
            else:
                self._base = Path(tempfile.mkdtemp(prefix="modelrepo-cluster-"))
            loop = asyncio.new_event_loop()
            ready: concurrent.futures.Future[None] = concurrent.futures.Future()
            thread = threading.Thread(
                target=self._serve, args=(loop, ready), name="LocalCluster", daemon=True
            )
            self._loop, self._thread = loop, thread
            thread.start()
            try:
                ready.result(timeout=30)
            except BaseException as exc:
                self._halt_loop()
                self._remove_base()
                self._loop = None
                raise LocalStackError(
                    f"LocalCluster could not start: {exc}",
                    hint="see the error above; port busy? pass port=0",
                ) from exc
            self._kubeconfig = self._write_kubeconfig()
            self._finalizer = weakref.finalize(self, _stop_at_exit, weakref.ref(self))
            atexit.register(self._finalizer)
            return self

    def _serve(
        self, loop: asyncio.AbstractEventLoop, ready: concurrent.futures.Future[None]
    ) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._startup())
        except BaseException as exc:
            ready.set_exception(exc)
            return
        ready.set_result(None)
        loop.run_forever()

    async def _startup(self) -> None:
        from aiohttp import web

        from modelrepo.testing.cluster.api import ApiServer
        from modelrepo.testing.cluster.controllers import Controllers
        from modelrepo.testing.cluster.kubelet import Kubelet
        from modelrepo.testing.cluster.rbac import ADMIN_GROUP, User
        from modelrepo.testing.cluster.resources import lookup
        from modelrepo.testing.cluster.store import Store

        assert self._base is not None
        store = Store()
        (self._base / "pods").mkdir(parents=True, exist_ok=True)
        holder: dict[str, Controllers] = {}
        kubelet = Kubelet(
            store,
            self._base / "pods",
            images=self.images,
            faults=self.faults,
            sandboxed=self.sandbox,
            grace_cap=self.grace_period_cap,
            api_port=lambda: self.port,
            volume_dir=lambda ns, claim: holder["c"].volume_dir(ns, claim),
        )
        admin = User("admin", (ADMIN_GROUP, "system:authenticated"))
        api = ApiServer(
            store,
            kubelet,
            self.faults,
            version=self.version,
            tokens={self.token: admin},
            exec_protocols=self.exec_protocols,
            anonymous=None if self.tls else admin,
        )
        controllers = Controllers(store, api, self._base / "volumes")
        holder["c"] = controllers
        self._store, self._api, self._kubelet, self._controllers = store, api, kubelet, controllers
        namespaces = lookup("", "v1", "namespaces")
        nodes = lookup("", "v1", "nodes")
        assert namespaces and nodes
        for name in _SYSTEM_NAMESPACES:
            api.create_object(namespaces, "", {"metadata": {"name": name}})
        store.create(nodes, "", _node())
        runner = web.AppRunner(
            api.app(), access_log=None, handle_signals=False, shutdown_timeout=1.0
        )
        await runner.setup()
        ssl_context = None
        if self.tls:
            import ssl

            from modelrepo.testing.cluster.tls import make_certificate

            self._certificate = make_certificate(self._base / "pki", self.host)
            ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ssl_context.load_cert_chain(self._certificate.cert_file, self._certificate.key_file)
        site = web.TCPSite(
            runner, self.host, self._port, reuse_address=True, ssl_context=ssl_context
        )
        await site.start()
        self._runner = runner
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        self._port = sockets[0].getsockname()[1]
        services = lookup("", "v1", "services")
        endpoints = lookup("", "v1", "endpoints")
        assert services and endpoints
        api.create_object(
            services,
            "default",
            {
                "metadata": {
                    "name": "kubernetes",
                    "labels": {"component": "apiserver", "provider": "kubernetes"},
                },
                "spec": {
                    "clusterIP": "10.96.0.1",
                    "ports": [
                        {"name": "https", "port": 443, "protocol": "TCP", "targetPort": self._port}
                    ],
                },
            },
        )
        api.create_object(
            endpoints,
            "default",
            {
                "metadata": {"name": "kubernetes"},
                "subsets": [
                    {
                        "addresses": [{"ip": self.host}],
                        "ports": [{"name": "https", "port": self._port, "protocol": "TCP"}],
                    }
                ],
            },
        )
        await asyncio.sleep(0)

    def stop(self) -> None:
        """Stop every pod, Triton replica and the server; remove the temporary folders."""
        with self._lock:
            loop = self._loop
            if loop is None:
                return
            if self._finalizer is not None:
                atexit.unregister(self._finalizer)
                self._finalizer.detach()
            for deployment in list(self._deployments):
                with contextlib.suppress(Exception):
                    deployment.stop()
            self._deployments.clear()
            if loop.is_running():
                with contextlib.suppress(Exception):
                    asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(60)
            self._halt_loop()
            self._loop = None
            self._remove_base()

    async def _shutdown(self) -> None:
        assert self._kubelet and self._store and self._controllers
        self._controllers.close()
        await self._kubelet.close()
        self._store.end_watches()
        if self._runner is not None:
            await self._runner.cleanup()

    def _halt_loop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None:
            return
        if loop.is_running():
            loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(timeout=30)
        if not loop.is_running():
            with contextlib.suppress(Exception):
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for task in pending:
                    task.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.close()

    def _remove_base(self) -> None:
        base = self._base
        if base is None:
            return
        if self._given_dir is None:
            shutil.rmtree(base, ignore_errors=True)
        else:
            shutil.rmtree(base / "pods", ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                (base / "kubeconfig").unlink()

    # -- connection ----------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """The API server's URL (``https://127.0.0.1:<port>``, or http with ``tls=False``)."""
        self._require()
        return f"{'https' if self.tls else 'http'}://{self.host}:{self._port}"

    @property
    def kubeconfig(self) -> Path:
        """Path of a kubeconfig (context ``local-cluster``, namespace ``default``)."""
        self._require()
        assert self._kubeconfig is not None
        return self._kubeconfig

    @property
    def base_dir(self) -> Path:
        self._require()
        assert self._base is not None
        return self._base

    def add_user(self, name: str, *, groups: tuple[str, ...] = ()) -> Path:
        """A user with its own token and no rights until RBAC grants some; its kubeconfig.

        Grant rights as in a cluster: create a Role (or ClusterRole) and a RoleBinding whose
        subject is ``{"kind": "User", "name": name}`` (``kubectl apply`` or ``create``).
        """
        from modelrepo.testing.cluster.rbac import User

        api = self._api
        assert api is not None
        token = secrets.token_hex(16)
        user = User(name, (*groups, "system:authenticated"))
        self.call(lambda: api.tokens.__setitem__(token, user))
        return self._write_kubeconfig(user=name, token=token)

    def _write_kubeconfig(self, user: str = "admin", token: str | None = None) -> Path:
        assert self._base is not None
        path = self._base / ("kubeconfig" if user == "admin" else f"kubeconfig-{user}")
        token = token or self.token
        ca = ""
        if self._certificate is not None:
            import base64

            data = base64.b64encode(self._certificate.ca_pem).decode()
            ca = f"    certificate-authority-data: {data}\n"
        path.write_text(
            "apiVersion: v1\nkind: Config\n"
            f"clusters:\n- name: {self.context}\n  cluster:\n{ca}    server: {self.url}\n"
            f"contexts:\n- name: {self.context}\n  context:\n    cluster: {self.context}\n"
            f"    user: {user}\n    namespace: default\n"
            f"current-context: {self.context}\n"
            f"users:\n- name: {user}\n  user:\n    token: {token}\n"
            "preferences: {}\n"
        )
        path.chmod(0o600)
        return path

    def _require(self) -> None:
        if self._loop is None:
            raise LocalStackError(
                "The LocalCluster is not running.",
                hint="use `with LocalCluster() as cluster:` or call .start()",
            )

    def call(
        self, fn: Callable[[], T] | Coroutine[Any, Any, T], timeout: float = _CALL_TIMEOUT
    ) -> T:
        """Run ``fn`` (a function or a coroutine) on the server's loop; return its result."""
        self._require()
        assert self._loop is not None

        async def runner() -> T:
            if asyncio.iscoroutine(fn):
                return await fn
            assert callable(fn)
            return fn()

        return asyncio.run_coroutine_threadsafe(runner(), self._loop).result(timeout)

    def kubectl(
        self,
        *args: str,
        input: bytes | str | None = None,
        timeout: float = 120,
        check: bool = False,
        kubeconfig: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run the real ``kubectl`` against this cluster (text output; own discovery cache).

        ``kubeconfig`` picks another user's (see :meth:`add_user`); the admin's by default.
        """
        kubectl = shutil.which("kubectl")
        if kubectl is None:
            raise LocalStackError(
                "kubectl is not installed.", hint="install kubectl (>= 1.30 for exec and cp)"
            )
        data = input.decode() if isinstance(input, bytes) else input
        return subprocess.run(
            [
                kubectl,
                f"--kubeconfig={kubeconfig or self.kubeconfig}",
                f"--cache-dir={self.base_dir / 'kube-cache'}",
                *args,
            ],
            input=data,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )

    # -- objects -------------------------------------------------------------------------
    def _rtype(self, api_version: str, kind: str) -> Any:
        from modelrepo.testing.cluster.resources import by_kind

        group = api_version.split("/")[0] if "/" in api_version else ""
        rtype = by_kind(group, kind)
        if rtype is None:
            raise LocalStackError(
                f"LocalCluster does not serve {kind} ({api_version}).",
                hint="see modelrepo/testing/cluster/resources.py",
            )
        return rtype

    def create(self, manifest: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
        """Create any served object from a manifest (like ``kubectl create -f``)."""
        rtype = self._rtype(manifest.get("apiVersion", "v1"), manifest.get("kind", ""))
        ns = namespace or (manifest.get("metadata") or {}).get("namespace") or "default"
        assert self._api is not None
        api = self._api
        return self.call(lambda: api.create_object(rtype, ns if rtype.namespaced else "", manifest))

    def get(
        self, kind: str, name: str, namespace: str = "default", *, api_version: str = "v1"
    ) -> dict[str, Any] | None:
        """The stored object (a copy), or None."""
        import copy

        rtype = self._rtype(api_version, kind)
        store = self._store
        assert store is not None
        found = self.call(lambda: store.find(rtype, namespace if rtype.namespaced else "", name))
        return copy.deepcopy(found) if found is not None else None

    def list(
        self, kind: str, namespace: str | None = "default", *, api_version: str = "v1"
    ) -> list[dict[str, Any]]:
        """Objects of a kind (copies), in one namespace or all (``None``)."""
        import copy

        rtype = self._rtype(api_version, kind)
        store = self._store
        assert store is not None
        return copy.deepcopy(self.call(lambda: store.list(rtype, namespace)))

    def delete(
        self,
        kind: str,
        name: str,
        namespace: str = "default",
        *,
        api_version: str = "v1",
        grace_period: int | None = None,
        propagation: str | None = None,
    ) -> None:
        """Delete an object with the API's semantics (graceful pods, cascading owners)."""
        rtype = self._rtype(api_version, kind)
        options: dict[str, Any] = {}
        if grace_period is not None:
            options["gracePeriodSeconds"] = grace_period
        if propagation is not None:
            options["propagationPolicy"] = propagation
        assert self._api is not None
        self.call(
            self._api.delete_object(rtype, namespace if rtype.namespaced else "", name, options)
        )

    def create_namespace(self, name: str) -> None:
        """Create a namespace (no error if it exists)."""
        from modelrepo.testing.cluster.errors import StatusError

        with contextlib.suppress(StatusError):
            self.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})

    def create_pvc(
        self,
        name: str,
        namespace: str = "default",
        *,
        access_modes: tuple[str, ...] = ("ReadWriteOnce",),
        size: str = "10Gi",
    ) -> Path:
        """Create a PersistentVolumeClaim (Bound at once); return its host folder."""
        if self.get("Namespace", namespace) is None:
            self.create_namespace(namespace)
        self.create(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {
                    "accessModes": list(access_modes),
                    "resources": {"requests": {"storage": size}},
                },
            }
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            path = self.pvc_path(name, namespace)
            if path is not None:
                return path
            time.sleep(0.01)
        raise LocalStackError(
            f"PersistentVolumeClaim {namespace}/{name} was not bound.",
            hint="this is a LocalCluster bug; see its log",
        )

    def pvc_path(self, name: str, namespace: str = "default") -> Path | None:
        """The host folder backing a bound claim, or None."""
        controllers = self._controllers
        assert controllers is not None
        return self.call(lambda: controllers.volume_dir(namespace, name))

    # -- pods ----------------------------------------------------------------------------
    def wait_for_pod(
        self,
        name: str,
        namespace: str = "default",
        *,
        phase: str | tuple[str, ...] = "Running",
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        """Wait until a pod reaches ``phase`` (one of them); return it."""
        wanted = (phase,) if isinstance(phase, str) else tuple(phase)
        deadline = time.monotonic() + timeout
        pod: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            pod = self.get("Pod", name, namespace)
            if pod is not None and pod.get("status", {}).get("phase") in wanted:
                return pod
            time.sleep(0.02)
        state = pod.get("status") if pod else "missing"
        raise LocalStackError(
            f"pod {namespace}/{name} did not reach {'/'.join(wanted)} within "
            f"{timeout:.0f}s; status: {state}",
            hint="check the pod's log with cluster.pod_log()",
        )

    def pod_log(self, name: str, namespace: str = "default", container: str | None = None) -> str:
        """The current log of a pod's container (stdout and stderr interleaved)."""
        from modelrepo.testing.cluster.api import _read_log, _render

        kubelet = self._kubelet
        assert kubelet is not None

        def read() -> str:
            runtime = kubelet.runtime(namespace, name)
            if runtime is None:
                return ""
            states = list(runtime.containers.values())
            state = (
                next((c for c in states if c.name == container), None)
                if container
                else next((c for c in states if not c.init), None)
            )
            if state is None or state.log_path is None:
                return ""
            lines, _ = _read_log(state.log_path, 0)
            return b"".join(_render(line, False) for line in lines).decode(errors="replace")

        return self.call(read)

    def kill_pod(self, name: str, namespace: str = "default") -> None:
        """Fault: SIGKILL the pod's containers (exit 137); the pod ends Failed, no restart."""
        kubelet = self._kubelet
        assert kubelet is not None

        async def kill() -> None:
            runtime = kubelet.runtime(namespace, name)
            if runtime is None:
                raise LocalStackError(
                    f"no running pod {namespace}/{name} to kill",
                    hint="check the name with cluster.list('Pod')",
                )
            runtime.phase_reason = ""
            await kubelet.fail_pod(runtime, "Killed")

        self.call(kill())

    def delay_pod_start(
        self, name_regex: str, seconds: float, *, namespace: str | None = None
    ) -> None:
        """Fault: matching pods stay Pending for ``seconds`` (see :class:`Faults`)."""
        self.faults.delay_pod_start(name_regex, seconds, namespace=namespace)

    @property
    def requests(self) -> list[RequestRecord]:
        """The requests served so far (method, path with query, status, seconds)."""
        api = self._api
        assert api is not None
        return self.call(lambda: list(api.requests))

    # -- Triton --------------------------------------------------------------------------
    def deploy_triton(
        self,
        name: str = "triton",
        *,
        claim: str,
        namespace: str = "default",
        replicas: int = 1,
        mount_path: str = "/models",
        **triton_options: Any,
    ) -> TritonDeployment:
        """Run real Triton servers as the pods of a Deployment-like set (see triton.py)."""
        from modelrepo.testing.cluster.triton import TritonDeployment

        deployment = TritonDeployment(
            self,
            name=name,
            claim=claim,
            namespace=namespace,
            replicas=replicas,
            mount_path=mount_path,
            **triton_options,
        )
        self._deployments.append(deployment)
        try:
            deployment.start()
        except BaseException:
            self._deployments.remove(deployment)
            deployment.stop()
            raise
        return deployment

    def _forget(self, deployment: TritonDeployment) -> None:
        with contextlib.suppress(ValueError):
            self._deployments.remove(deployment)

    def __repr__(self) -> str:
        state = f"url={self.url!r}" if self._loop is not None else "stopped"
        return f"LocalCluster(version={self.version!r}, {state})"


def _stop_at_exit(ref: weakref.ref[LocalCluster]) -> None:
    cluster = ref()
    if cluster is not None:
        cluster.stop()


def _node() -> dict[str, Any]:
    from modelrepo.testing.cluster.kubelet import NODE_NAME
    from modelrepo.testing.cluster.store import now_rfc3339

    stamp = now_rfc3339()
    return {
        "metadata": {
            "name": NODE_NAME,
            "labels": {
                "kubernetes.io/hostname": NODE_NAME,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "node-role.kubernetes.io/control-plane": "",
            },
        },
        "spec": {},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": NODE_NAME},
            ],
            "capacity": {"cpu": "2", "memory": "8Gi", "pods": "110"},
            "allocatable": {"cpu": "2", "memory": "8Gi", "pods": "110"},
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "kubelet is posting ready status",
                    "lastHeartbeatTime": stamp,
                    "lastTransitionTime": stamp,
                }
            ],
            "nodeInfo": {
                "kubeletVersion": "v1.33.0",
                "operatingSystem": "linux",
                "architecture": "amd64",
                "containerRuntimeVersion": "local://1.0",
                "osImage": "LocalCluster",
                "kernelVersion": "",
                "kubeProxyVersion": "",
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
        },
    }
