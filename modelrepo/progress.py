"""Byte progress for transfers: a ``tqdm.auto`` bar (a widget in Jupyter, a bar in a terminal).

fsspec reports progress through ``Callback`` objects, one child per file for multi-file
copies (or one byte-counting callback for a batched ``put_files``); :class:`BytesProgress`
turns all of them into one bar of bytes, rate and ETA, and can tell a listener (a notebook
panel) how far it is.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

from fsspec.callbacks import Callback

#: Told ``(bytes done, bytes in all)`` after every change; called from the transfer's threads.
ProgressListener = Callable[[int, int], None]


class BytesProgress(Callback):
    """One byte-counting bar fed by the callback's own updates and by every per-file child."""

    def __init__(
        self,
        total: int,
        desc: str,
        *,
        enabled: bool = True,
        listener: ProgressListener | None = None,
        **tqdm_kwargs: Any,
    ):
        super().__init__()
        self._lock = threading.Lock()
        self.total = total
        self.bytes_done = 0
        self.listener = listener
        self.bar = None
        if enabled and total > 0:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total,
                desc=desc,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                dynamic_ncols=True,
                **tqdm_kwargs,
            )

    def add_bytes(self, n: int) -> None:
        """Count ``n`` more bytes (negative when a chunk is sent again)."""
        if not n:
            return
        with self._lock:
            self.bytes_done += n
            done = self.bytes_done
            if self.bar is not None:
                self.bar.update(n)
        if self.listener is not None:
            self.listener(done, self.total)

    def bytes_callback(self) -> Callback:
        """A callback whose ``relative_update(n)`` are bytes (a batched ``put_files`` call)."""
        return _FileBytes(self)

    # fsspec's multi-file copies count files on the parent and bytes on a child per file.
    def branched(self, path_1: Any, path_2: Any, **kwargs: Any) -> Callback:
        try:  # an upload's source: its size, for a filesystem that reports no bytes
            size = os.path.getsize(path_1)
        except (OSError, TypeError):
            size = None
        return _FileBytes(self, expected=size)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> BytesProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _FileBytes(Callback):
    """Per-file callback: forwards byte increments to the shared bar."""

    def __init__(self, parent: BytesProgress, expected: int | None = None) -> None:
        super().__init__()
        self._parent = parent
        self._seen = 0
        self._expected = expected

    def close(self) -> None:
        """The file is done: count what a silent filesystem (local ``cp``) did not report."""
        if self._expected is not None and self._seen < self._expected:
            self._parent.add_bytes(self._expected - self._seen)
            self._seen = self._expected

    def call(self, hook_name: str | None = None, **kwargs: Any) -> None:
        delta = (self.value or 0) - self._seen
        if delta:
            self._seen += delta
            self._parent.add_bytes(delta)
