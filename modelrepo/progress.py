"""Byte progress for transfers: a ``tqdm.auto`` bar (a widget in Jupyter, a bar in a terminal).

fsspec reports progress through ``Callback`` objects, one child per file for multi-file
copies; :class:`BytesProgress` turns all of them into one bar of bytes, rate and ETA.
"""

from __future__ import annotations

import threading
from typing import Any

from fsspec.callbacks import Callback


class BytesProgress(Callback):
    """One byte-counting bar fed by every per-file callback of a put/get."""

    def __init__(self, total: int, desc: str, *, enabled: bool = True, **tqdm_kwargs: Any):
        super().__init__()
        self._lock = threading.Lock()
        self.bytes_done = 0
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
        if n <= 0:
            return
        with self._lock:
            self.bytes_done += n
            if self.bar is not None:
                self.bar.update(n)

    # The parent callback counts files; bytes come from the children.
    def branched(self, path_1: Any, path_2: Any, **kwargs: Any) -> Callback:
        return _FileBytes(self)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> BytesProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _FileBytes(Callback):
    """Per-file callback: forwards byte increments to the shared bar."""

    def __init__(self, parent: BytesProgress) -> None:
        super().__init__()
        self._parent = parent
        self._seen = 0

    def call(self, hook_name: str | None = None, **kwargs: Any) -> None:
        delta = (self.value or 0) - self._seen
        if delta > 0:
            self._seen += delta
            self._parent.add_bytes(delta)
