"""The node agent: runs each Pod's containers in sandboxes and reports their status.

One asyncio task per pod follows the real lifecycle: scheduled (or Unschedulable while a
claim is missing), Pending/ContainerCreating, init containers in order, containers Running
(with restarts per ``restartPolicy``), then Succeeded/Failed; ``activeDeadlineSeconds`` ends a
pod with ``DeadlineExceeded``; deletion sends SIGTERM, waits the grace period (capped, so
tests stay fast) and kills. Container output goes to CRI-format log files read by
``pods/<p>/log``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import itertools
import logging
import os
import re
import secrets
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelrepo.testing.cluster import sandbox
from modelrepo.testing.cluster.resources import lookup
from modelrepo.testing.cluster.store import Event, Obj, Store, now_rfc3339

if TYPE_CHECKING:
    from modelrepo.testing.cluster.faults import Faults

log = logging.getLogger(__name__)

NODE_NAME = "local-node"
PODS = lookup("", "v1", "pods")
PVCS = lookup("", "v1", "persistentvolumeclaims")
SECRETS = lookup("", "v1", "secrets")
CONFIGMAPS = lookup("", "v1", "configmaps")
assert PODS and PVCS and SECRETS and CONFIGMAPS

VIRTUAL_ANNOTATION = "local-cluster.modelrepo.io/virtual"
_VAR_RE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
_RESTART_DELAY = 1.0


class PodIPs:
    """Loopback addresses handed to pods (127.0.0.2 upward), unique across clusters."""

    _used: set[str] = set()  # shared on purpose by every cluster in a process
    _next = itertools.count(2)

    @classmethod
    def allocate(cls) -> str:
        for _ in range(65000):
            n = next(cls._next) % 65024
            ip = str(ipaddress.IPv4Address("127.0.0.0") + 256 + n) if n >= 254 else f"127.0.0.{n}"
            if n >= 2 and ip not in cls._used:
                cls._used.add(ip)
                return ip
        raise RuntimeError("no free loopback address for a pod")

    @classmethod
    def release(cls, ip: str | None) -> None:
        if ip:
            cls._used.discard(ip)


def _rfc3339_micro() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LogWriter:
    """Writes a container's stdout/stderr to a CRI-format file (``<ts> <stream> F <line>``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = open(path, "ab", buffering=0)  # noqa: SIM115 - closed in close()
        self._partial: dict[str, bytes] = {"stdout": b"", "stderr": b""}

    def write(self, stream: str, data: bytes) -> None:
        buffer = self._partial[stream] + data
        lines = buffer.split(b"\n")
        self._partial[stream] = lines.pop()
        out = []
        stamp = _rfc3339_micro().encode()
        for line in lines:
            out.append(b"%s %s F %s\n" % (stamp, stream.encode(), line))
        if len(self._partial[stream]) > 16384:
            out.append(b"%s %s P %s\n" % (stamp, stream.encode(), self._partial[stream]))
            self._partial[stream] = b""
        if out:
            self._file.write(b"".join(out))

    def close(self) -> None:
        for stream, rest in self._partial.items():
            if rest:
                self._file.write(
                    b"%s %s F %s\n" % (_rfc3339_micro().encode(), stream.encode(), rest)
                )
        self._partial = {"stdout": b"", "stderr": b""}
        self._file.close()


@dataclass
class ContainerState:
    """What the kubelet knows about one container of a pod."""

    name: str
    spec: Obj
    init: bool = False
    process: sandbox.ContainerProcess | None = None
    restart_count: int = 0
    state: Obj = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: Obj = field(default_factory=dict)
    container_id: str = ""
    log_path: Path | None = None
    killed_by: str = ""
    gated: bool = False

    def status(self, image: str) -> Obj:
        running = "running" in self.state
        out: Obj = {
            "name": self.name,
            "image": image,
            "imageID": f"docker.io/library/{sandbox._normalize(image)}@sha256:" + "0" * 64,
            "ready": running and not self.init and not self.gated,
            "started": running,
            "restartCount": self.restart_count,
            "state": self.state,
            "lastState": self.last_state,
        }
        if self.container_id:
            out["containerID"] = self.container_id
        return out


@dataclass
class PodRuntime:
    """The kubelet's state for one pod."""

    namespace: str
    name: str
    uid: str
    directory: Path
    containers: dict[str, ContainerState] = field(default_factory=dict)
    pod_ip: str = ""
    task: asyncio.Task[None] | None = None
    deleting: bool = False
    phase_reason: str = ""
    phase_message: str = ""
    failed: bool = False
    readonly: set[str] = field(default_factory=set)
    on_stop: list[Callable[[], None]] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)


class Kubelet:
    """Runs pods of one cluster; the API layer calls ``delete_pod``, exec uses ``container``."""

    def __init__(
        self,
        store: Store,
        base_dir: Path,
        *,
        images: sandbox.ImageRegistry,
        faults: Faults,
        sandboxed: bool,
        grace_cap: float,
        api_port: Callable[[], int],
        volume_dir: Callable[[str, str], Path | None],
    ) -> None:
        self.store = store
        self.base_dir = base_dir
        self.images = images
        self.faults = faults
        self.sandboxed = sandboxed
        self.grace_cap = grace_cap
        self.api_port = api_port
        self.volume_dir = volume_dir
        self.images_dir = base_dir.parent / "images"
        self.pods: dict[str, PodRuntime] = {}
        self._closing = False
        store.add_listener(self._on_event)

    # -- wiring --------------------------------------------------------------------------
    def _on_event(self, event: Event) -> None:
        if event.rtype is not PODS or self._closing:
            return
        meta = event.obj["metadata"]
        uid = meta["uid"]
        if event.type == "ADDED" and uid not in self.pods:
            runtime = PodRuntime(
                event.namespace,
                meta["name"],
                uid,
                self.base_dir / f"{event.namespace}_{meta['name']}_{uid[:8]}",
            )
            self.pods[uid] = runtime
            runtime.task = asyncio.get_running_loop().create_task(self._run_pod(runtime))
        elif event.type == "DELETED":
            runtime = self.pods.get(uid)
            if runtime is not None and not runtime.deleting:
                runtime.deleting = True
                asyncio.get_running_loop().create_task(self._terminate(runtime, 0))

    def runtime(self, namespace: str, name: str) -> PodRuntime | None:
        pod = self.store.find(PODS, namespace, name)
        return self.pods.get(pod["metadata"]["uid"]) if pod else None

    # -- status --------------------------------------------------------------------------
    def _update(self, runtime: PodRuntime, change: Callable[[Obj], None]) -> Obj | None:
        pod = self.store.find(PODS, runtime.namespace, runtime.name)
        if pod is None or pod["metadata"]["uid"] != runtime.uid:
            return None
        return self.store.mutate(PODS, runtime.namespace, runtime.name, change)

    def _publish(self, runtime: PodRuntime, phase: str | None = None) -> None:
        def change(pod: Obj) -> None:
            spec = pod["spec"]
            status = pod.setdefault("status", {})
            images = {
                c["name"]: c.get("image", "")
                for c in [*(spec.get("initContainers") or []), *spec["containers"]]
            }
            inits = [c for c in runtime.containers.values() if c.init]
            mains = [c for c in runtime.containers.values() if not c.init]
            if inits:
                status["initContainerStatuses"] = [c.status(images[c.name]) for c in inits]
            status["containerStatuses"] = [c.status(images[c.name]) for c in mains]
            if phase:
                status["phase"] = phase
            if runtime.pod_ip:
                status["podIP"] = runtime.pod_ip
                status["podIPs"] = [{"ip": runtime.pod_ip}]
                status["hostIP"] = "127.0.0.1"
                status["hostIPs"] = [{"ip": "127.0.0.1"}]
            if runtime.phase_reason:
                status["reason"] = runtime.phase_reason
                status["message"] = runtime.phase_message
            all_ready = bool(mains) and all(c.status("")["ready"] for c in mains)
            inits_done = all(
                "terminated" in c.state and c.state["terminated"]["exitCode"] == 0 for c in inits
            )
            terminal = status.get("phase") in ("Succeeded", "Failed")
            _set_conditions(
                status,
                {
                    "PodReadyToStartContainers": bool(runtime.pod_ip),
                    "Initialized": inits_done,
                    "Ready": all_ready and not terminal,
                    "ContainersReady": all_ready and not terminal,
                    "PodScheduled": True,
                },
            )

        self._update(runtime, change)

    # -- lifecycle -----------------------------------------------------------------------
    async def _run_pod(self, runtime: PodRuntime) -> None:
        try:
            await self._lifecycle(runtime)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the kubelet must survive any pod's failure
            log.exception("pod %s/%s failed in the emulator", runtime.namespace, runtime.name)
            runtime.phase_reason = "InternalError"
            runtime.phase_message = f"LocalCluster kubelet error: {exc}"
            self._publish(runtime, "Failed")
        finally:
            runtime.done.set()

    async def _lifecycle(self, runtime: PodRuntime) -> None:
        pod = self.store.find(PODS, runtime.namespace, runtime.name)
        if pod is None:
            return
        spec = pod["spec"]
        if not await self._schedule(runtime, spec):
            return
        delay = self.faults.pod_start_delay(runtime.namespace, runtime.name)
        if delay:
            await asyncio.sleep(delay)
        if runtime.deleting or runtime.failed:
            return
        runtime.pod_ip = PodIPs.allocate()
        for c in spec.get("initContainers") or []:
            runtime.containers[c["name"]] = ContainerState(
                c["name"], c, init=True, state={"waiting": {"reason": "PodInitializing"}}
            )
        for c in spec["containers"]:
            runtime.containers[c["name"]] = ContainerState(c["name"], c)
        self._update(runtime, lambda p: p["status"].update(startTime=now_rfc3339()))
        self._publish(runtime, "Pending")
        runtime.directory.mkdir(parents=True, exist_ok=True)
        deadline_task = None
        if spec.get("activeDeadlineSeconds"):
            deadline_task = asyncio.get_running_loop().create_task(
                self._deadline(runtime, float(spec["activeDeadlineSeconds"]))
            )
        try:
            if pod["metadata"].get("annotations", {}).get(VIRTUAL_ANNOTATION) or (
                not self.sandboxed
            ):
                await self._run_virtual(runtime)
                return
            try:
                volumes = await self._prepare_volumes(runtime, pod)
            except _ConfigError as exc:
                for c in runtime.containers.values():
                    c.state = {"waiting": {"reason": exc.reason, "message": str(exc)}}
                self._publish(runtime)
                await runtime.done.wait()
                return
            policy = spec.get("restartPolicy", "Always")
            for c in [c for c in runtime.containers.values() if c.init]:
                while not runtime.deleting and not runtime.failed:
                    code = await self._run_container(runtime, pod, c, volumes)
                    if code == 0:
                        break
                    if policy == "Never" or runtime.deleting:
                        runtime.failed = True
                        break
                    await asyncio.sleep(_RESTART_DELAY)
                if runtime.failed or runtime.deleting:
                    break
            if not runtime.failed and not runtime.deleting:
                mains = [c for c in runtime.containers.values() if not c.init]
                await asyncio.gather(
                    *(self._keep_running(runtime, pod, c, volumes, policy) for c in mains)
                )
            if runtime.deleting:
                return
            codes = [
                c.state.get("terminated", {}).get("exitCode", 1)
                for c in runtime.containers.values()
                if not c.init
            ]
            failed = runtime.failed or any(codes)
            self._publish(runtime, "Failed" if failed else "Succeeded")
        finally:
            if deadline_task is not None:
                deadline_task.cancel()

    async def _schedule(self, runtime: PodRuntime, spec: Obj) -> bool:
        """Bind the pod to the node once its claims exist; False if it was deleted first."""
        claims = [
            v["persistentVolumeClaim"]["claimName"]
            for v in spec.get("volumes") or []
            if isinstance(v.get("persistentVolumeClaim"), dict)
        ]
        warned = ""
        while not runtime.deleting and not runtime.failed:
            missing = [c for c in claims if self.volume_dir(runtime.namespace, c) is None]
            if not missing:
                break
            message = (
                f'0/1 nodes are available: persistentvolumeclaim "{missing[0]}" not '
                "found. preemption: 0/1 nodes are available: 1 Preemption is not "
                "helpful for scheduling."
            )
            if message != warned:
                warned = message

                def unschedulable(pod: Obj, message: str = message) -> None:
                    _set_conditions(
                        pod["status"],
                        {"PodScheduled": False},
                        reason="Unschedulable",
                        message=message,
                    )

                self._update(runtime, unschedulable)
            await asyncio.sleep(0.25)
        if runtime.deleting or runtime.failed:
            return False

        def bind(pod: Obj) -> None:
            pod["spec"]["nodeName"] = NODE_NAME
            _set_conditions(pod["status"], {"PodScheduled": True})

        self._update(runtime, bind)
        return True

    async def _run_virtual(self, runtime: PodRuntime) -> None:
        """A pod without processes (deploy_triton's replicas, or sandbox=False): Running."""
        pod = self.store.find(PODS, runtime.namespace, runtime.name) or {}
        gated = pod.get("metadata", {}).get("annotations", {}).get(VIRTUAL_ANNOTATION) == "gated"
        started = {"running": {"startedAt": now_rfc3339()}}
        for c in runtime.containers.values():
            c.state = {"terminated": {"exitCode": 0, "reason": "Completed"}} if c.init else started
            c.container_id = "containerd://" + secrets.token_hex(32)
            c.gated = gated and not c.init
        self._publish(runtime, "Running")
        await runtime.done.wait()

    def set_ready(self, namespace: str, name: str, ready: bool) -> None:
        """Open (or close) the readiness gate of a virtual pod's containers."""
        runtime = self.runtime(namespace, name)
        if runtime is None:
            return
        for c in runtime.containers.values():
            c.gated = not ready
        self._publish(runtime)

    def on_stop(self, namespace: str, name: str, callback: Callable[[], None]) -> None:
        """Call ``callback`` (in a worker thread) once the pod is killed, fails or is deleted.

        A virtual pod's "container" (a Triton replica) is a host process owned by someone
        else; this is how it learns that the pod is gone.
        """
        runtime = self.runtime(namespace, name)
        if runtime is not None:
            runtime.on_stop.append(callback)

    async def _run_stop_hooks(self, runtime: PodRuntime) -> None:
        hooks, runtime.on_stop = runtime.on_stop, []
        loop = asyncio.get_running_loop()
        for hook in hooks:
            with contextlib.suppress(Exception):
                await loop.run_in_executor(None, hook)

    async def _keep_running(
        self,
        runtime: PodRuntime,
        pod: Obj,
        c: ContainerState,
        volumes: dict[str, Path],
        policy: str,
    ) -> None:
        while not runtime.deleting and not runtime.failed:
            code = await self._run_container(runtime, pod, c, volumes)
            if runtime.deleting or runtime.failed or c.killed_by:
                return
            if policy == "Never" or (policy == "OnFailure" and code == 0):
                return
            await asyncio.sleep(_RESTART_DELAY)
            if runtime.deleting or runtime.failed:
                return
            c.restart_count += 1
            c.last_state = c.state

    async def _run_container(
        self, runtime: PodRuntime, pod: Obj, c: ContainerState, volumes: dict[str, Path]
    ) -> int:
        """Start one container, follow it to its exit; the exit code."""
        try:
            launch_spec, image_ok = self._launch_spec(runtime, pod, c, volumes)
        except _ConfigError as exc:
            c.state = {"waiting": {"reason": exc.reason, "message": str(exc)}}
            self._publish(runtime)
            await runtime.done.wait()
            return 1
        if not image_ok:
            image = c.spec.get("image", "")
            c.state = {
                "waiting": {
                    "reason": "ErrImagePull",
                    "message": (
                        f'failed to pull and unpack image "{image}": LocalCluster\'s image '
                        "registry has no such image (register it with cluster.images.register)"
                    ),
                }
            }
            self._publish(runtime)
            await runtime.done.wait()
            return 1
        container_dir = runtime.directory / c.name
        container_dir.mkdir(parents=True, exist_ok=True)
        c.log_path = container_dir / f"{c.restart_count}.log"
        started = now_rfc3339()
        c.container_id = "containerd://" + secrets.token_hex(32)
        try:
            process = await sandbox.launch(launch_spec, container_dir / "spec.json")
        except sandbox.StartError as exc:
            c.state = {
                "terminated": {
                    "exitCode": 128,
                    "reason": "StartError",
                    "message": str(exc),
                    "startedAt": started,
                    "finishedAt": now_rfc3339(),
                    "containerID": c.container_id,
                }
            }
            self._publish(
                runtime, "Failed" if pod["spec"].get("restartPolicy") == "Never" else None
            )
            return 128
        c.process = process
        c.state = {"running": {"startedAt": started}}
        if runtime.deleting or runtime.failed:  # killed while it was starting
            c.killed_by = "Error"
            process.signal(signal.SIGKILL)
        elif not c.init:
            self._publish(runtime, "Running")
        else:
            self._publish(runtime)
        writer = LogWriter(c.log_path)
        try:
            await asyncio.gather(
                _pump_log(process.spawned.stdout, writer, "stdout"),
                _pump_log(process.spawned.stderr, writer, "stderr"),
            )
            code = await process.wait()
            failure = await process.start_error()
            if c.killed_by and code != 0:
                # The kubelet's SIGKILL: a runtime reports 137 whatever stage the container
                # (or our sandbox's launcher) had reached.
                code = 137
        finally:
            writer.close()
        c.process = None
        reason = "Completed" if code == 0 else "Error"
        if c.killed_by:
            reason = c.killed_by
        c.state = {
            "terminated": {
                "exitCode": code,
                "reason": reason,
                "startedAt": started,
                "finishedAt": now_rfc3339(),
                "containerID": c.container_id,
            }
        }
        if failure:
            c.state["terminated"].update(reason="StartError", message=failure)
        if not runtime.deleting:
            self._publish(runtime)
        return code

    def _launch_spec(
        self, runtime: PodRuntime, pod: Obj, c: ContainerState, volumes: dict[str, Path]
    ) -> tuple[sandbox.LaunchSpec, bool]:
        spec = pod["spec"]
        image = self.images.resolve(c.spec.get("image", ""))
        if image is None:
            return sandbox.LaunchSpec(Path(), "", [], {}, []), False
        root = runtime.directory / c.name / "rootfs"
        hostname = spec.get("hostname") or runtime.name
        mounts = sandbox.build_rootfs(
            root,
            hostname=hostname[:63],
            pod_ip=runtime.pod_ip,
            image=image,
            bin_dir=sandbox.shared_bin(self.images_dir),
        )
        for m in c.spec.get("volumeMounts") or []:
            source = volumes[m["name"]]
            if m.get("subPath"):
                source = source / m["subPath"]
                source.mkdir(parents=True, exist_ok=True)
            mounts.append(
                {
                    "source": str(source),
                    "target": m["mountPath"],
                    "readonly": bool(m.get("readOnly")) or m["name"] in runtime.readonly,
                }
            )
        env = self._environment(runtime, pod, c, image)
        command = list(c.spec.get("command") or image.entrypoint)
        args = c.spec.get("args")
        if args is None:
            args = [] if c.spec.get("command") else list(image.cmd)
        argv = [_expand(a, env) for a in [*command, *args]]
        if not argv:
            raise _ConfigError("CreateContainerConfigError", "no command specified")
        uid, gid, groups = _identity(spec, c.spec)
        if _security(spec, c.spec, "runAsNonRoot") and uid == 0:
            raise _ConfigError(
                "CreateContainerConfigError",
                "container has runAsNonRoot and image will run as root "
                f'(pod: "{runtime.name}_{runtime.namespace}", '
                f"container: {c.name})",
            )
        return sandbox.LaunchSpec(
            root=root,
            hostname=hostname[:63],
            argv=argv,
            env=env,
            mounts=mounts,
            uid=uid,
            gid=gid,
            groups=groups,
            cwd=c.spec.get("workingDir") or "/",
        ), True

    def _environment(
        self, runtime: PodRuntime, pod: Obj, c: ContainerState, image: sandbox.Image
    ) -> dict[str, str]:
        env: dict[str, str] = {
            "PATH": ":".join([*image.path, sandbox.DEFAULT_PATH]),
            "HOSTNAME": runtime.name,
            "HOME": "/root",
            "KUBERNETES_SERVICE_HOST": "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": str(self.api_port()),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(self.api_port()),
            **image.env,
        }
        uid = _identity(pod["spec"], c.spec)[0]
        if uid:
            env["HOME"] = "/"
        for source in c.spec.get("envFrom") or []:
            prefix = source.get("prefix", "")
            data = (
                self._ref_data(runtime.namespace, source.get("secretRef"), SECRETS, True)
                if source.get("secretRef")
                else self._ref_data(
                    runtime.namespace, source.get("configMapRef"), CONFIGMAPS, False
                )
            )
            for key, value in data.items():
                env[prefix + key] = value
        for item in c.spec.get("env") or []:
            name = item.get("name")
            if not name:
                continue
            if "value" in item:
                env[name] = _expand(str(item["value"]), env)
            elif "valueFrom" in item:
                value = self._value_from(runtime, pod, item["valueFrom"])
                if value is not None:
                    env[name] = value
            else:
                env[name] = ""
        return env

    def _ref_data(
        self, namespace: str, ref: Obj | None, rtype: Any, encoded: bool
    ) -> dict[str, str]:
        if not ref:
            return {}
        obj = self.store.find(rtype, namespace, ref.get("name", ""))
        if obj is None:
            if ref.get("optional"):
                return {}
            kind = "secret" if encoded else "configmap"
            raise _ConfigError(
                "CreateContainerConfigError", f'{kind} "{ref.get("name")}" not found'
            )
        data = obj.get("data") or {}
        if encoded:
            return {k: base64.b64decode(v).decode(errors="replace") for k, v in data.items()}
        return dict(data)

    def _value_from(self, runtime: PodRuntime, pod: Obj, source: Obj) -> str | None:
        for key, rtype, encoded in (
            ("secretKeyRef", SECRETS, True),
            ("configMapKeyRef", CONFIGMAPS, False),
        ):
            ref = source.get(key)
            if ref:
                data = self._ref_data(runtime.namespace, ref, rtype, encoded)
                if ref.get("key") not in data:
                    if ref.get("optional"):
                        return None
                    raise _ConfigError(
                        "CreateContainerConfigError",
                        f"couldn't find key {ref.get('key')} in "
                        f"{key[:-6]} {runtime.namespace}/{ref.get('name')}",
                    )
                return data[ref["key"]]
        field_ref = source.get("fieldRef")
        if field_ref:
            path = field_ref.get("fieldPath", "")
            values = {
                "metadata.name": runtime.name,
                "metadata.namespace": runtime.namespace,
                "metadata.uid": runtime.uid,
                "spec.nodeName": NODE_NAME,
                "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default"),
                "status.podIP": runtime.pod_ip,
                "status.hostIP": "127.0.0.1",
            }
            return values.get(path, "")
        return None

    async def _prepare_volumes(self, runtime: PodRuntime, pod: Obj) -> dict[str, Path]:
        """Host folders for the pod's volumes (claims, emptyDirs, secrets, configMaps)."""
        spec = pod["spec"]
        volumes: dict[str, Path] = {}
        readonly = runtime.readonly
        fs_group = (spec.get("securityContext") or {}).get("fsGroup")
        for volume in spec.get("volumes") or []:
            name = volume["name"]
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]
                path = self.volume_dir(runtime.namespace, claim["claimName"])
                if path is None:
                    raise _ConfigError(
                        "FailedMount", f'persistentvolumeclaim "{claim["claimName"]}" not found'
                    )
                if claim.get("readOnly"):
                    readonly.add(name)
                if fs_group is not None:
                    await asyncio.get_running_loop().run_in_executor(
                        None, _apply_fs_group, path, int(fs_group)
                    )
                volumes[name] = path
            elif "secret" in volume or "configMap" in volume:
                secret = "secret" in volume
                ref = volume["secret" if secret else "configMap"] or {}
                data = self._ref_data(
                    runtime.namespace,
                    {
                        "name": ref.get("secretName" if secret else "name"),
                        "optional": ref.get("optional"),
                    },
                    SECRETS if secret else CONFIGMAPS,
                    secret,
                )
                path = runtime.directory / "volumes" / name
                path.mkdir(parents=True, exist_ok=True)
                items = ref.get("items")
                for key, value in data.items():
                    targets = (
                        [i["path"] for i in items or [] if i.get("key") == key] if items else [key]
                    )
                    for target in targets:
                        file = path / target
                        file.parent.mkdir(parents=True, exist_ok=True)
                        file.write_text(value)
                        file.chmod(int(ref.get("defaultMode", 0o644)))
                readonly.add(name)
                volumes[name] = path
            elif "hostPath" in volume:
                volumes[name] = Path(volume["hostPath"]["path"])
            else:  # emptyDir and anything else: a fresh folder
                path = runtime.directory / "volumes" / name
                path.mkdir(parents=True, exist_ok=True)
                path.chmod(0o777)
                if fs_group is not None:
                    os.chown(path, 0, int(fs_group))
                volumes[name] = path
        return volumes

    async def _deadline(self, runtime: PodRuntime, seconds: float) -> None:
        await asyncio.sleep(seconds)
        if runtime.deleting or runtime.done.is_set():
            return
        pod = self.store.find(PODS, runtime.namespace, runtime.name)
        if pod is None or pod["status"].get("phase") in ("Succeeded", "Failed"):
            return
        runtime.phase_reason = "DeadlineExceeded"
        runtime.phase_message = "Pod was active on the node longer than the specified deadline"
        await self.fail_pod(runtime, "DeadlineExceeded")

    async def fail_pod(self, runtime: PodRuntime, reason: str) -> None:
        """Kill every container and end the pod Failed (no restart)."""
        runtime.failed = True
        await self._run_stop_hooks(runtime)
        for c in runtime.containers.values():
            if c.process is not None:
                c.killed_by = "Error"
                c.process.signal(signal.SIGKILL)
        for c in runtime.containers.values():
            if c.process is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(c.process.wait(), 10)
        # _lifecycle publishes Failed once its containers have ended; a virtual pod or one
        # still waiting (image, config) has no process: publish here.
        if all(c.process is None for c in runtime.containers.values()):
            for c in runtime.containers.values():
                if "terminated" not in c.state:
                    c.state = {
                        "terminated": {
                            "exitCode": 137,
                            "reason": c.killed_by or "Error",
                            "finishedAt": now_rfc3339(),
                        }
                    }
            self._publish(runtime, "Failed")
            runtime.done.set()

    # -- deletion ------------------------------------------------------------------------
    async def delete_pod(self, namespace: str, name: str, grace: float) -> None:
        """Graceful deletion: SIGTERM, wait (capped), SIGKILL, then remove the object."""
        runtime = self.runtime(namespace, name)
        if runtime is None:
            with contextlib.suppress(Exception):
                self.store.remove(PODS, namespace, name)
            return
        runtime.deleting = True
        await self._terminate(runtime, grace)
        pod = self.store.find(PODS, namespace, name)
        if pod is not None and pod["metadata"]["uid"] == runtime.uid:
            self.store.remove(PODS, namespace, name)

    async def _terminate(self, runtime: PodRuntime, grace: float) -> None:
        runtime.deleting = True
        runtime.done.set()
        await self._run_stop_hooks(runtime)
        processes = [c.process for c in runtime.containers.values() if c.process is not None]
        for p in processes:
            p.signal(signal.SIGTERM)
        wait = min(grace, self.grace_cap)
        if processes and wait > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(p.wait() for p in processes)), wait)
        for p in processes:
            p.signal(signal.SIGKILL)
        for p in processes:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(p.wait(), 10)
        if runtime.task is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(runtime.task), 5)
        PodIPs.release(runtime.pod_ip)
        self.pods.pop(runtime.uid, None)
        await asyncio.get_running_loop().run_in_executor(
            None, shutil.rmtree, runtime.directory, True
        )

    async def close(self) -> None:
        """Kill every pod's processes (cluster shutdown)."""
        self._closing = True
        await asyncio.gather(
            *(self._terminate(r, 0) for r in list(self.pods.values())), return_exceptions=True
        )


class _ConfigError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


async def _pump_log(reader: sandbox.PipeReader, writer: LogWriter, stream: str) -> None:
    while True:
        chunks = await reader.read()
        if not chunks:
            reader.close()
            return
        for chunk in chunks:
            writer.write(stream, chunk)


def _expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion in command/args/env values (``$$`` escapes)."""
    return _VAR_RE.sub(lambda m: env.get(m.group(1), m.group(0)), text).replace("$$(", "$(")


def _security(pod_spec: Obj, container: Obj, key: str) -> Any:
    value = (container.get("securityContext") or {}).get(key)
    if value is None:
        value = (pod_spec.get("securityContext") or {}).get(key)
    return value


def _identity(pod_spec: Obj, container: Obj) -> tuple[int, int, list[int]]:
    """(uid, gid, supplementary groups) from the pod's and container's securityContext."""
    uid = int(_security(pod_spec, container, "runAsUser") or 0)
    gid_value = _security(pod_spec, container, "runAsGroup")
    gid = int(gid_value) if gid_value is not None else 0
    pod_sc = pod_spec.get("securityContext") or {}
    groups = [int(g) for g in pod_sc.get("supplementalGroups") or []]
    if pod_sc.get("fsGroup") is not None:
        groups.append(int(pod_sc["fsGroup"]))
    return uid, gid, sorted(set(groups))


def _apply_fs_group(path: Path, gid: int) -> None:
    """``fsGroupChangePolicy: OnRootMismatch``: make the claim group-writable for ``gid``."""
    if path.stat().st_gid == gid:
        return
    for current, _, files in os.walk(path):
        os.chown(current, -1, gid)
        os.chmod(current, os.stat(current).st_mode | 0o2070)
        for name in files:
            file = os.path.join(current, name)
            if not os.path.islink(file):
                os.chown(file, -1, gid)
                os.chmod(file, os.stat(file).st_mode | 0o060)


def _set_conditions(
    status: Obj, values: dict[str, bool], *, reason: str = "", message: str = ""
) -> None:
    conditions = {c["type"]: c for c in status.get("conditions") or []}
    stamp = now_rfc3339()
    for kind, ok in values.items():
        old = conditions.get(kind)
        value = "True" if ok else "False"
        if old is not None and old.get("status") == value and not reason:
            continue
        entry: Obj = {
            "type": kind,
            "status": value,
            "lastProbeTime": None,
            "lastTransitionTime": stamp
            if old is None or old.get("status") != value
            else old.get("lastTransitionTime", stamp),
        }
        if reason:
            entry["reason"] = reason
            entry["message"] = message
        elif kind in ("Ready", "ContainersReady") and not ok:
            entry["reason"] = (
                "ContainersNotReady"
                if kind == "ContainersReady"
                else "PodCompleted"
                if status.get("phase") in ("Succeeded", "Failed")
                else "ContainersNotReady"
            )
        conditions[kind] = entry
    order = ["PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled"]
    status["conditions"] = sorted(
        conditions.values(),
        key=lambda c: order.index(c["type"]) if c["type"] in order else len(order),
    )


def monotonic() -> float:
    return time.monotonic()
