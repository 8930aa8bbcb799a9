"""What every tab of the panel shares: a message area, and one background task at a time."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import ipywidgets as W

from modelrepo.widgets._html import error_html, message_html
from modelrepo.widgets._task import Task

if TYPE_CHECKING:
    from modelrepo.repo import ModelRepo


def button(description: str, style: str = "", icon: str = "", tooltip: str = "") -> W.Button:
    """A button as wide as its label (``style``: primary, success, warning, danger)."""
    return W.Button(
        description=description,
        button_style=style,
        icon=icon,
        tooltip=tooltip or description,
        layout=W.Layout(width="auto"),
    )


class TabBase:
    """A tab: widgets in :attr:`box`, a :attr:`message` line, work through :meth:`start`.

    While a task runs, the widgets in :attr:`busy_widgets` are disabled and the Cancel
    button (if any) is enabled, so a second click cannot start a second push or sweep.
    """

    title = ""

    def __init__(self, repo: ModelRepo) -> None:
        self.repo = repo
        self.message = W.HTML()
        self.task: Task | None = None
        self.last_error: BaseException | None = None
        self.busy_widgets: list[W.Widget] = []
        self.cancel_button: W.Button | None = None
        self._lock = threading.Lock()
        self.box: W.Box = W.VBox()

    # -- messages --------------------------------------------------------------------------
    def say(self, text: str, kind: str = "info") -> None:
        self.message.value = message_html(text, kind)

    def show_error(self, exc: BaseException, doing: str) -> None:
        self.last_error = exc
        self.message.value = error_html(exc, doing=doing)

    def clear(self) -> None:
        self.message.value = ""

    # -- background work --------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self.task is not None and self.task.running

    def start(
        self,
        name: str,
        work: Callable[[Task], Any],
        *,
        doing: str,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> Task | None:
        """Run ``work(task)`` in a background thread; its exception becomes the red box."""
        with self._lock:
            if self.busy:
                self.say(f"Busy with {self.task.name if self.task else 'a task'}: wait or cancel.")
                return None
            self.last_error = None
            self._set_busy(True)

            def failed(exc: BaseException) -> None:
                self.show_error(exc, doing)
                if on_error is not None:
                    on_error(exc)

            self.task = Task(name, work, on_error=failed, on_finally=lambda: self._set_busy(False))
            return self.task.start()

    def _set_busy(self, busy: bool) -> None:
        for widget in self.busy_widgets:
            widget.disabled = busy
        if self.cancel_button is not None:
            self.cancel_button.disabled = not busy

    def cancel(self) -> None:
        """Stop the running task at its next safe point."""
        task = self.task
        if task is not None and task.running:
            task.cancel()
            self.say(f"Cancelling {task.name} (it stops after the current step)...", "warning")

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the running task ends (for scripts and tests); True if it did."""
        task = self.task
        return task is None or task.join(timeout)


def row(*children: W.Widget) -> W.HBox:
    """Widgets side by side, wrapping onto the next line in a narrow notebook."""
    return W.HBox(list(children), layout=W.Layout(flex_flow="row wrap", align_items="center"))


def describe(repo: ModelRepo) -> tuple[str, str]:
    """(where the repository is, where Triton is) in the words a user typed them."""
    if repo.pvc:
        where = f"pvc://{repo.pvc}/{repo.root}" + (
            f" (namespace {repo.namespace})" if repo.namespace else ""
        )
    else:
        protocol = repo.fs.protocol[0] if isinstance(repo.fs.protocol, tuple) else repo.fs.protocol
        where = f"{protocol}://{repo.root}"
    triton = repo.triton
    if triton is None:
        return where, "none"
    return where, triton if isinstance(triton, str) else ", ".join(triton)
