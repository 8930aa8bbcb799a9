"""Background work for the panel: one thread per action, so the notebook never blocks.

A button handler runs in the kernel's main thread; anything slower than a blink (a push, a
load on every replica, an RPS sweep) runs in a :class:`Task` thread instead, reports through
widget traits (safe from any thread in ipykernel) and can be cancelled. Cancelling is
cooperative where the work offers a hook (the RPS engine's progress callback), and otherwise
behaves like Ctrl-C in that thread (:func:`run_interruptible`): the library's own
``finally`` blocks clean up exactly as they do for a notebook user pressing Interrupt.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["Task", "TaskCancelled", "run_interruptible"]

#: How often a controller looks at its worker and at the Cancel button (seconds).
_TICK_S = 0.05


class TaskCancelled(KeyboardInterrupt):
    """Raised inside a task's work when the user pressed Cancel (a KeyboardInterrupt, so code
    that cleans up after Ctrl-C cleans up after Cancel too)."""


class Task:
    """``fn(task)`` in a daemon thread; ``on_error`` gets any exception, ``on_finally`` runs last.

    ``fn`` checks :attr:`cancelled` (or calls :meth:`check`) at points where stopping is safe.
    """

    def __init__(
        self,
        name: str,
        fn: Callable[[Task], Any],
        *,
        on_error: Callable[[BaseException], None],
        on_finally: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self._fn = fn
        self._on_error = on_error
        self._on_finally = on_finally
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"modelrepo-panel-{name}")
        self._thread.daemon = True
        self.result: Any = None
        self.error: BaseException | None = None
        self.started = time.monotonic()

    def start(self) -> Task:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self.result = self._fn(self)
        except BaseException as exc:  # shown in the panel: a task must never die silently
            self.error = exc
            self._on_error(exc)
        finally:
            if self._on_finally is not None:
                self._on_finally()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        """Ask the work to stop at its next safe point."""
        self._cancel.set()

    def check(self) -> None:
        """Raise :class:`TaskCancelled` if Cancel was pressed."""
        if self._cancel.is_set():
            raise TaskCancelled(self.name)

    def wait_cancel(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True as soon as Cancel is pressed."""
        return self._cancel.wait(seconds)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the work to end; True if it did within ``timeout``."""
        self._thread.join(timeout)
        return not self._thread.is_alive()


def _raise_in_thread(thread: threading.Thread, exc_type: type[BaseException]) -> bool:
    """Schedule ``exc_type`` in ``thread`` (delivered at its next Python instruction)."""
    ident = thread.ident
    if ident is None or not thread.is_alive():
        return False
    done = ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(ident), ctypes.py_object(exc_type)
    )
    if done > 1:  # pragma: no cover - never expected: undo, as CPython's docs require
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), None)
        return False
    return done == 1


def run_interruptible(task: Task, work: Callable[[], Any]) -> Any:
    """Run ``work()`` in a worker thread that the task's Cancel can interrupt.

    Cancel raises :class:`TaskCancelled` inside ``work`` once, like Ctrl-C would: work with
    no cancellation hook of its own (``ModelRepo.push``) stops after the call it is in (the
    current file) and runs its own clean-up. Returns what ``work`` returned or re-raises.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = work()
        except BaseException as exc:
            box["error"] = exc

    task.check()  # cancelled before the work even started
    worker = threading.Thread(target=target, name=f"{task.name}-work", daemon=True)
    worker.start()
    interrupted = False
    while worker.is_alive():
        if task.cancelled and not interrupted:
            interrupted = True  # once: a second one could land in the work's own clean-up
            _raise_in_thread(worker, TaskCancelled)
        worker.join(_TICK_S)
    if "error" in box:
        raise box["error"]
    return box.get("result")
