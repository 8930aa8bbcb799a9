"""The Push tab: a folder or URL in, the next version out, with a byte progress bar.

``ModelRepo.push`` runs in a worker thread; its ``progress=`` hook tells the bar here each
byte count the transfer confirms (instead of a tqdm bar), at most ten redraws a second.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import ipywidgets as W

from modelrepo.repo import format_bytes
from modelrepo.store import check_model_name
from modelrepo.widgets._base import TabBase, button, describe, row
from modelrepo.widgets._html import message_html
from modelrepo.widgets._task import Task, TaskCancelled, run_interruptible

if TYPE_CHECKING:
    from modelrepo.repo import ModelRepo, PushResult

__all__ = ["PushTab"]

#: Seconds between two redraws of the bar (the first and last bytes always show).
_REDRAW_S = 0.1


class PushTab(TabBase):
    """Source, model name, version, load-after: Push; Cancel keeps nothing half-published."""

    title = "Push"

    def __init__(self, repo: ModelRepo) -> None:
        super().__init__(repo)
        wide = W.Layout(width="520px")
        self.source = W.Text(
            description="source",
            placeholder="./model_repository/<model>  or  s3://bucket/prefix/<model>",
            layout=wide,
        )
        self.model = W.Text(
            description="model", placeholder="model name", layout=W.Layout(width="300px")
        )
        self.version = W.IntText(
            value=0,
            description="version",
            tooltip="0 = the next free version",
            layout=W.Layout(width="180px"),
        )
        self.load_after = W.Checkbox(
            value=False, description="load on Triton afterwards", indent=False
        )
        self.push_button = button("Push", "primary", "upload", "publish as a new version")
        self.cancel_button = button("Cancel", "warning", "stop", "stop after the current file")
        self.cancel_button.disabled = True
        self.progress = W.FloatProgress(value=0.0, min=0.0, max=1.0, layout=W.Layout(width="420px"))
        self.progress_label = W.HTML()
        self.result = W.HTML()
        self.result_value: PushResult | None = None
        #: Called with (model, version) after a successful push (the panel refreshes Models).
        self.on_pushed: Callable[[str, int], None] | None = None
        self.push_button.on_click(lambda _: self.push())
        self.cancel_button.on_click(lambda _: self.cancel())
        self.source.observe(self._guess_name, names="value")
        self.busy_widgets = [
            self.push_button,
            self.source,
            self.model,
            self.version,
            self.load_after,
        ]
        hint = W.HTML(
            "<span style='color:#555'>A model folder (config.pbtxt + 1/, 2/ ...) becomes the "
            "next version; files already on the repository are linked, not sent. version 0 = "
            "next free number.</span>"
        )
        self.box = W.VBox(
            [
                hint,
                self.source,
                row(self.model, self.version, self.load_after),
                row(self.push_button, self.cancel_button),
                row(self.progress, self.progress_label),
                self.message,
                self.result,
            ]
        )

    def _guess_name(self, change: dict) -> None:
        """Fill the model name from the source folder's name when it is still empty."""
        text = str(change["new"] or "").rstrip("/")
        if text and not self.model.value:
            base = text.rsplit("/", 1)[-1]
            if base and not base.isdigit():
                self.model.value = base

    # -- the push ------------------------------------------------------------------------
    def push(self) -> Task | None:
        """Start a push with the values in the form (what the Push button does)."""
        name = self.model.value.strip()
        source = self.source.value.strip() or None
        version = int(self.version.value) or None
        load = bool(self.load_after.value)
        self.result.value = ""
        self.result_value = None
        self.progress.value = 0.0
        self.progress.bar_style = "info"
        self.progress_label.value = ""
        return self.start(
            f"push {name}",
            lambda task: self._run(task, name, source, version, load),
            doing=f"Pushing {name or '(no name)'}",
            on_error=lambda _: setattr(self.progress, "bar_style", "danger"),
        )

    def _run(
        self, task: Task, name: str, source: str | None, version: int | None, load: bool
    ) -> PushResult | None:
        check_model_name(name)
        repo = self.repo
        before = repo.list_versions(name)
        started = time.monotonic()
        shown = [0.0]

        def bytes_sent(done: int, total: int) -> None:
            now = time.monotonic()
            if done < total and shown[0] and now - shown[0] < _REDRAW_S:
                return
            shown[0] = now
            self._show_bytes(done, total, now - started)

        self.say(f"Pushing {name} to {describe(repo)[0]}...", "running")
        try:
            result: PushResult = run_interruptible(
                task,
                lambda: repo.push(
                    name, source=source, version=version, load=load, progress=bytes_sent
                ),
            )
        except TaskCancelled:
            self._report_cancel(name, before)
            return None
        published = result.bytes_sent + result.bytes_skipped
        self._show_bytes(published, published, result.seconds)
        self.progress.value = 1.0
        self.progress.bar_style = "success"
        self.result_value = result
        loaded = ""
        if result.loaded is not None:
            loaded = getattr(result.loaded, "_repr_html_", lambda: "")()
        self.result.value = result._repr_html_() + loaded
        self.say(
            f"Published {name} version {result.version} "
            f"({format_bytes(result.bytes_sent)} sent, "
            f"{format_bytes(result.bytes_skipped)} already there) in {result.seconds:.1f} s.",
            "success",
        )
        if self.on_pushed is not None:
            self.on_pushed(name, result.version)
        return result

    def _show_bytes(self, done: int, total: int | None, seconds: float) -> None:
        rate = f" · {format_bytes(done / seconds)}/s" if seconds > 0 and done else ""
        if total:
            self.progress.value = min(1.0, done / total)
            text = f"{format_bytes(done)} of {format_bytes(total)} ({100 * done / total:.0f}%)"
        else:
            text = f"{format_bytes(done)}"
        self.progress_label.value = f"<span style='font-size:13px'>{text}{rate}</span>"

    def _report_cancel(self, name: str, before: list[int]) -> None:
        self.progress.bar_style = "warning"
        try:
            after = self.repo.list_versions(name)
        except Exception as exc:  # the cancel message must still appear
            self.show_error(exc, "Listing versions after the cancelled push")
            return
        new = sorted(set(after) - set(before))
        if new:
            text = (
                f"Cancelled after {name} version {new[-1]} was published: it is kept "
                f"(anything after publishing, such as loading, was skipped). Versions: {after}."
            )
        else:
            text = (
                f"Cancelled: nothing was published, the staging folder was removed. "
                f"Versions of {name} are unchanged: {after or 'none'}."
            )
        self.message.value = message_html(text, "warning")
