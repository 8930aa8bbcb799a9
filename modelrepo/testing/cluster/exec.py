"""``pods/<p>/exec`` over WebSocket: the ``v5.channel.k8s.io`` and ``v4.channel.k8s.io`` protocols.

Each binary message starts with a channel byte: 0 stdin, 1 stdout, 2 stderr, 3 the final
``Status`` (JSON), 4 terminal resize (ignored); v5 adds 255 "close channel" (``255, 0`` =
end of stdin). Output is streamed as the process writes it, in chunks of up to 1 MiB; a slow
client stalls the pipe reader, so the process blocks instead of filling our memory. stdin
frames go straight to the process pipe, and the next frame is not read until it is drained.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from modelrepo.testing.cluster import sandbox
from modelrepo.testing.cluster.errors import StatusError, bad_request
from modelrepo.testing.cluster.protocol import V4, V5

if TYPE_CHECKING:
    from modelrepo.testing.cluster.faults import ExecDrop, Faults
    from modelrepo.testing.cluster.kubelet import Kubelet

SUPPORTED = (V5, V4)
_STDIN, _STDOUT, _STDERR, _STATUS, _RESIZE, _CLOSE = 0, 1, 2, 3, 4, 255
#: What nsenter says when the container's namespaces are gone (its PID 1 has exited).
_NOT_ENTERED = b"nsenter: cannot open /proc/"


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes")


def exit_status(code: int, command: list[str]) -> dict[str, Any]:
    """The channel-3 ``Status`` a real kubelet sends for an exit code."""
    if code == 0:
        return {"metadata": {}, "status": "Success"}
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"command terminated with non-zero exit code: error executing command "
        f"[{' '.join(command)}], exit code {code}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
    }


def _runtime_failure(reason: str) -> bytes:
    """The channel-3 frame for a command the container runtime could not start."""
    status = {
        "metadata": {},
        "status": "Failure",
        "reason": "InternalError",
        "message": f"error executing command in container: {reason}",
    }
    return bytes([_STATUS]) + json.dumps(status).encode()


class _Dropped(Exception):
    """A fault hook cut the stream."""


async def handle_exec(
    request: web.Request,
    kubelet: Kubelet,
    faults: Faults,
    protocols: tuple[str, ...],
    namespace: str,
    name: str,
) -> web.StreamResponse:
    """Upgrade to WebSocket, run the command in the pod's container, stream it."""
    query = request.query
    command = query.getall("command", [])
    if not command:
        raise bad_request("you must specify at least 1 command")
    # the pod is checked first, so that kubectl's SPDY fallback still shows the real reason
    _, process = _target(kubelet, namespace, name, query.get("container"))
    if request.headers.get("Upgrade", "").lower() != "websocket":
        raise bad_request(
            "Upgrade request required: LocalCluster serves exec over WebSocket "
            "only (kubectl >= 1.30, kubernetes python client)"
        )
    offered = [
        p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()
    ]
    chosen = next((p for p in protocols if p in offered), None)
    if chosen is None:
        raise bad_request(
            f"unable to upgrade connection: requested protocol(s) are not supported: {offered}; "
            f"supports {list(protocols)}"
        )
    want_stdin = _truthy(query.get("stdin"))
    want_stdout = _truthy(query.get("stdout"))
    want_stderr = _truthy(query.get("stderr"))
    spec = process.spec
    kwargs: dict[str, Any] = {}
    if spec.gid:
        kwargs["group"] = spec.gid
    if spec.groups:
        kwargs["extra_groups"] = spec.groups
    ws = web.WebSocketResponse(protocols=(chosen,), compress=False, max_msg_size=0, autoping=True)
    await ws.prepare(request)
    try:
        spawned = await sandbox.spawn(
            process.exec_argv(command), stdin=want_stdin, env=spec.env, **kwargs
        )
    except OSError as exc:
        await ws.send_bytes(_runtime_failure(str(exc)))
        await ws.close()
        return ws
    drop = faults.exec_drop(name, command)
    v5 = chosen == V5
    proc = spawned.process

    not_entered: list[bytes] = []  # nsenter could not join the container: it is gone

    async def pump(reader: sandbox.PipeReader, channel: int, forward: bool) -> None:
        prefix = bytes([channel])
        first = True
        while True:
            chunks = await reader.read()
            if not chunks:
                return
            if first and channel == _STDERR and chunks[0].startswith(_NOT_ENTERED):
                not_entered.append(b"".join(chunks))
            first = False
            if not forward or not_entered:
                continue
            if drop is not None and drop.direction == "stdout":
                chunks = _count(drop, chunks)
            await ws.send_bytes(b"".join([prefix, *chunks]))
            if drop is not None and drop.direction == "stdout" and drop.seen >= drop.n_bytes:
                raise _Dropped

    async def feed() -> None:
        stdin = proc.stdin
        async for msg in ws:
            if msg.type not in (WSMsgType.BINARY, WSMsgType.TEXT):
                continue
            data = msg.data if isinstance(msg.data, bytes) else msg.data.encode()
            if not data:
                continue
            channel = data[0]
            if channel == _STDIN and stdin is not None:
                payload = memoryview(data)[1:]
                if drop is not None and drop.direction == "stdin":
                    room = drop.n_bytes - drop.seen
                    if len(payload) >= room:
                        payload = payload[:room]
                        drop.seen += len(payload)
                        with contextlib.suppress(ConnectionError, BrokenPipeError):
                            stdin.write(payload)
                            await stdin.drain()
                        raise _Dropped
                    drop.seen += len(payload)
                if stdin.is_closing():
                    continue
                try:
                    stdin.write(payload)
                    await stdin.drain()
                except (ConnectionError, BrokenPipeError):
                    stdin.close()
            elif (
                channel == _CLOSE
                and v5
                and len(data) > 1
                and data[1] == _STDIN
                and stdin is not None
                and not stdin.is_closing()
            ):
                with contextlib.suppress(ConnectionError, BrokenPipeError):
                    await stdin.drain()
                stdin.close()
        # the client went away: nothing more will come

    feeder = asyncio.ensure_future(feed())
    outputs = asyncio.ensure_future(
        asyncio.gather(
            pump(spawned.stdout, _STDOUT, want_stdout),
            pump(spawned.stderr, _STDERR, want_stderr),
        )
    )
    try:
        done, _ = await asyncio.wait({feeder, outputs}, return_when=asyncio.FIRST_COMPLETED)
        if outputs in done:
            outputs.result()
            feeder.cancel()
            with contextlib.suppress(BaseException):
                await feeder
            code = sandbox.exit_code(await proc.wait())
            if not_entered and code:
                # As a container runtime reports an exec into a stopped container: the
                # command never ran, so it is an error status, not the command's exit code.
                detail = not_entered[0].decode(errors="replace").strip()
                await ws.send_bytes(_runtime_failure(f"container not running ({detail})"))
            else:
                status = exit_status(code, command)
                await ws.send_bytes(bytes([_STATUS]) + json.dumps(status).encode())
            await ws.close()
        else:
            feeder.result()
            # The client closed its side; real servers let the process finish its output.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(outputs), 1.0)
    except _Dropped:
        if drop is not None:
            faults.exec_dropped(name, drop)
        if request.transport is not None:
            request.transport.abort()
        if drop is not None and drop.direction == "stdin" and proc.stdin is not None:
            # as a kubelet does when the connection is lost: the process reads what arrived,
            # then EOF; it is killed if it does not end soon after
            with contextlib.suppress(ConnectionError, BrokenPipeError):
                await proc.stdin.drain()
            proc.stdin.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(proc.wait(), 1.0)
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        _kill(proc)
        for task in (feeder, outputs):
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(feeder, outputs, return_exceptions=True)
        spawned.stdout.close()
        spawned.stderr.close()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(proc.wait(), 5)
    return ws


def _count(drop: ExecDrop, chunks: list[bytes]) -> list[bytes]:
    """Pass chunks until the drop's budget is reached; cut the last one at the limit."""
    out: list[bytes] = []
    for chunk in chunks:
        room = drop.n_bytes - drop.seen
        if room <= 0:
            break
        piece = chunk[:room] if len(chunk) > room else chunk
        drop.seen += len(piece)
        out.append(piece)
    return out


def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


def _target(
    kubelet: Kubelet, namespace: str, name: str, container: str | None
) -> tuple[str, sandbox.ContainerProcess]:
    """The container process to exec in, or the error a real server gives."""
    pod = kubelet.store.find(kubelet_pods(), namespace, name)
    if pod is None:
        raise StatusError(404, f'pods "{name}" not found', details={"name": name, "kind": "pods"})
    phase = pod.get("status", {}).get("phase")
    if phase in ("Succeeded", "Failed"):
        raise bad_request(
            f"cannot exec into a container in a completed pod; current phase is {phase}"
        )
    names = [c["name"] for c in pod["spec"]["containers"]]
    container = container or names[0]
    if container not in names:
        raise bad_request(f"container {container} is not valid for pod {name}")
    runtime = kubelet.runtime(namespace, name)
    state = runtime.containers.get(container) if runtime else None
    if not kubelet.sandboxed:
        raise bad_request(
            "this LocalCluster runs without sandboxes (sandbox=False): its pods "
            "have no processes to exec into; start it with sandbox=True as root"
        )
    if state is None or state.process is None:
        raise bad_request(f'unable to upgrade connection: container not found ("{container}")')
    return container, state.process


def kubelet_pods() -> Any:
    from modelrepo.testing.cluster.kubelet import PODS

    return PODS
