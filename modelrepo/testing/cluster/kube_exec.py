"""Exec through the real ``kubernetes`` client, reading WebSocket frames directly.

The client's ``WSClient.update()`` appends every frame to a growing buffer (and, in
kubernetes 37, to a capture of all output), which turns a large download quadratic; reading
``client.sock`` frames directly is what a transfer tool does. Used by tests and the exec
benchmark of this package.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

STDIN, STDOUT, STDERR, STATUS, CLOSE = 0, 1, 2, 3, 255


@dataclass
class ExecResult:
    """What an exec produced."""

    stdout: bytes
    stderr: bytes
    status: dict[str, Any] | None
    protocol: str
    dropped: bool = False

    @property
    def returncode(self) -> int | None:
        """0, the ExitCode cause of a Failure status, or None without a status."""
        if self.status is None:
            return None
        if self.status.get("status") == "Success":
            return 0
        for cause in (self.status.get("details") or {}).get("causes") or []:
            if cause.get("reason") == "ExitCode":
                return int(cause["message"])
        return -1


def open_exec(
    core_api: Any,
    pod: str,
    command: list[str],
    *,
    namespace: str = "default",
    stdin: bool = False,
    container: str | None = None,
) -> Any:
    """Start an exec; return the client's WSClient (``.sock`` is the websocket)."""
    from kubernetes.stream import stream

    kwargs: dict[str, Any] = {
        "command": command,
        "stdin": stdin,
        "stdout": True,
        "stderr": True,
        "tty": False,
        "_preload_content": False,
        "binary": True,
    }
    if container:
        kwargs["container"] = container
    return stream(core_api.connect_get_namespaced_pod_exec, pod, namespace, **kwargs)


def run_exec(
    core_api: Any,
    pod: str,
    command: list[str],
    *,
    namespace: str = "default",
    stdin: Iterable[bytes] | bytes | None = None,
    close_stdin: bool = True,
    on_stdout: Callable[[bytes], None] | None = None,
    container: str | None = None,
) -> ExecResult:
    """Run ``command`` in a pod; send ``stdin`` (then close it on v5); collect the output.

    ``on_stdout`` receives stdout chunks as they arrive instead of collecting them.
    """
    from websocket import ABNF, WebSocketConnectionClosedException

    ws = open_exec(
        core_api, pod, command, namespace=namespace, stdin=stdin is not None, container=container
    )
    protocol = ws.subprotocol or ""
    if stdin is not None:
        chunks = [stdin] if isinstance(stdin, bytes) else stdin
        try:
            for chunk in chunks:
                ws.sock.send(bytes([STDIN]) + chunk, ABNF.OPCODE_BINARY)
            if close_stdin and protocol.startswith("v5"):
                ws.sock.send(bytes([CLOSE, STDIN]), ABNF.OPCODE_BINARY)
        except (WebSocketConnectionClosedException, OSError):  # the stream was cut
            ws.close()
            return ExecResult(b"", b"", None, protocol, dropped=True)
    out: list[bytes] = []
    err: list[bytes] = []
    status = None
    dropped = False
    try:
        while True:
            try:
                opcode, frame = ws.sock.recv_data_frame(True)
            except (WebSocketConnectionClosedException, ConnectionError, OSError):
                dropped = True
                break
            if opcode == ABNF.OPCODE_CLOSE:
                break
            data = frame.data
            if not data:
                continue
            if data[0] == STDOUT:
                if on_stdout is not None:
                    on_stdout(data[1:])
                else:
                    out.append(data[1:])
            elif data[0] == STDERR:
                err.append(data[1:])
            elif data[0] == STATUS:
                status = json.loads(data[1:])
    finally:
        ws.close()
    return ExecResult(
        b"".join(out), b"".join(err), status, protocol, dropped=dropped and status is None
    )
