"""What the local stack's servers share: ``with Server(...) as s:`` starts it, leaving stops it."""

from __future__ import annotations

from types import TracebackType
from typing import TypeVar

_S = TypeVar("_S", bound="LocalService")


class LocalService:
    """A local server with ``start()`` (returning itself) and an idempotent ``stop()``."""

    def start(self: _S) -> _S:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def stop(self) -> None:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def __enter__(self: _S) -> _S:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
