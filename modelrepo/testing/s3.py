"""A local S3 endpoint for the S3 routes (seed Option A): moto's server mode.

The same stand-in s3fs's own test-suite uses: a real HTTP S3 API on 127.0.0.1 that the real
``aws s3 sync`` (in a Job pod of ``LocalCluster``), s3fs and boto3 all talk to. moto keeps
its buckets in the process, shared by every server it runs; :meth:`LocalS3.stop` wipes them,
so one user's buckets never leak into the next.
"""

from __future__ import annotations

import base64
import logging
import os
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelrepo.errors import LocalStackError
from modelrepo.testing._service import LocalService

if TYPE_CHECKING:  # pragma: no cover
    import s3fs

__all__ = ["LocalS3"]


class LocalS3(LocalService):
    """``with LocalS3() as s3:`` an S3 endpoint at ``s3.endpoint_url`` with fixed test keys."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        access_key: str = "test-key",
        secret_key: str = "test-secret",
        region: str = "us-east-1",
    ) -> None:
        self.host, self.port = host, port
        self.region = region
        #: The environment variables (and Secret keys) an AWS client reads its keys from.
        self.credentials = {"AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key}
        self._server: Any = None

    @property
    def endpoint_url(self) -> str:
        """``http://host:port`` of the running server (``endpoint_url=`` of every client)."""
        if self._server is None:
            raise LocalStackError(
                "this LocalS3 has not been started",
                hint="use it as a context manager (`with LocalS3() as s3:`) or call .start()",
            )
        return f"http://{self.host}:{self.port}"

    def start(self) -> LocalS3:
        try:
            from moto.server import ThreadedMotoServer
        except ImportError as exc:
            raise LocalStackError(
                "LocalS3 needs moto's server mode",
                hint="pip install 'modelrepo[dev]' (or 'moto[server]')",
            ) from exc
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request
        server = ThreadedMotoServer(ip_address=self.host, port=self.port, verbose=False)
        server.start()
        self.port = int(server.get_host_and_port()[1])
        self._server = server
        return self

    def stop(self) -> None:
        """Wipe every bucket (moto's state is process-wide) and stop the server."""
        server, self._server = self._server, None
        if server is None:
            return
        try:
            reset = urllib.request.Request(
                f"http://{self.host}:{self.port}/moto-api/reset", method="POST"
            )
            urllib.request.urlopen(reset, timeout=10).close()
        finally:
            server.stop()

    def filesystem(self) -> s3fs.S3FileSystem:
        """An s3fs filesystem on this endpoint with its keys (a fresh instance each call)."""
        import s3fs

        return s3fs.S3FileSystem(
            key=self.credentials["AWS_ACCESS_KEY_ID"],
            secret=self.credentials["AWS_SECRET_ACCESS_KEY"],
            endpoint_url=self.endpoint_url,
            skip_instance_cache=True,
        )

    def upload(self, folder: str | os.PathLike[str], url: str) -> list[str]:
        """Copy a local folder to ``s3://bucket/prefix`` (the bucket is made if missing).

        Returns the keys written, sorted, as ``bucket/prefix/...``.
        """
        if not url.startswith("s3://") or len(url) <= len("s3://"):
            raise LocalStackError(f"not an S3 URL: {url!r}", hint="use s3://bucket/prefix")
        fs = self.filesystem()
        target = url[len("s3://") :].rstrip("/")
        bucket = target.split("/", 1)[0]
        if not fs.exists(bucket):
            fs.mkdir(bucket)
        fs.put(str(Path(folder)) + "/", target, recursive=True)
        return sorted(fs.find(target))

    def secret_manifest(self, name: str, namespace: str = "default") -> dict[str, Any]:
        """A Kubernetes Secret holding the keys, for ``push(via="job", secret=name)``."""
        data = {k: base64.b64encode(v.encode()).decode() for k, v in self.credentials.items()}
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace},
            "type": "Opaque",
            "data": data,
        }

    def __repr__(self) -> str:
        where = f"http://{self.host}:{self.port}" if self._server else "stopped"
        return f"LocalS3({where})"
