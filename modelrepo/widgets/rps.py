"""The RPS tab: a concurrency (or request-rate) sweep whose chart and table grow step by step.

The sweep is ``ModelRepo.measure_rps`` in a background thread; its ``progress=`` callback
(called after warm-up, each window and each step) updates the status line, and after each
step redraws the chart (``RPSReport.plot()`` as a PNG in an ``Output`` widget: no plotting
extension needed in the browser) and the table. Cancel stops at the next window and keeps
the finished steps, the way Ctrl-C does.
"""

from __future__ import annotations

import base64
import io
import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import ipywidgets as W

from modelrepo.errors import ModelRepoError
from modelrepo.widgets._base import TabBase, button, row
from modelrepo.widgets._task import Task

if TYPE_CHECKING:
    from modelrepo.repo import ModelRepo
    from modelrepo.triton.rps import RPSProgress, RPSReport, RPSStep

__all__ = ["RPSTab", "figure_png", "parse_levels", "show_png"]

# the report's own table, with the spacing notebook front ends give tables in cell outputs
_TABLE_STYLE = (
    "<style>.modelrepo-rps td,.modelrepo-rps th{padding:3px 8px;white-space:nowrap;"
    "border-bottom:1px solid #e0e0e0;font-size:12px}</style>"
)
_DEFAULT_LEVELS = {"concurrency": "1, 2, 4, 8, 16", "request_rate": "100, 200, 400, 800"}


def parse_levels(text: str, mode: str) -> list[float] | list[int]:
    """``"1, 2, 4"`` -> ``[1, 2, 4]`` (ints for concurrency, floats for request rates)."""
    items = [t for t in re.split(r"[\s,;]+", text.strip()) if t]
    what = "concurrency levels" if mode == "concurrency" else "request rates"
    example = _DEFAULT_LEVELS[mode]
    if not items:
        raise ModelRepoError(f"no {what} given", hint=f"type a list such as {example}")
    try:
        values = [int(t) if mode == "concurrency" else float(t) for t in items]
    except ValueError:
        raise ModelRepoError(
            f"cannot read {what} from {text!r}",
            hint=f"use positive {'whole ' if mode == 'concurrency' else ''}numbers separated "
            f"by commas, e.g. {example}",
        ) from None
    if any(v <= 0 or math.isinf(v) for v in values):
        raise ModelRepoError(f"{what} must be positive: {text!r}", hint=f"e.g. {example}")
    return values


def figure_png(figure: Any, dpi: int = 90) -> bytes:
    """A matplotlib Figure as PNG bytes (Agg; no pyplot, no GUI backend)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def show_png(output: W.Output, png: bytes, text: str) -> None:
    """Replace what ``output`` shows with one PNG image (thread-safe: one trait assignment)."""
    output.outputs = (
        {
            "output_type": "display_data",
            "data": {"image/png": base64.b64encode(png).decode("ascii"), "text/plain": text},
            "metadata": {},
        },
    )


class RPSTab(TabBase):
    """Model, load levels, duration: Run; chart and table update after every step."""

    title = "RPS"

    def __init__(self, repo: ModelRepo) -> None:
        super().__init__(repo)
        self.model = W.Dropdown(description="model", options=[], layout=W.Layout(width="300px"))
        self.version = W.Text(
            description="version",
            placeholder="as loaded",
            layout=W.Layout(width="180px"),
        )
        self.mode = W.ToggleButtons(
            options=[("concurrency", "concurrency"), ("request rate /s", "request_rate")],
            value="concurrency",
            style={"button_width": "120px"},
        )
        self.levels = W.Text(
            value=_DEFAULT_LEVELS["concurrency"],
            description="levels",
            layout=W.Layout(width="300px"),
        )
        self.duration = W.FloatText(
            value=5.0, description="duration s", layout=W.Layout(width="180px")
        )
        self.warmup = W.FloatText(
            value=1.0, description="warm-up s", layout=W.Layout(width="180px")
        )
        self.batch_size = W.IntText(value=1, description="batch", layout=W.Layout(width="140px"))
        self.run_button = button("Run", "primary", "play", "measure every level")
        self.cancel_button = button("Cancel", "warning", "stop", "stop and keep finished steps")
        self.cancel_button.disabled = True
        self.progress = W.IntProgress(value=0, min=0, max=1, layout=W.Layout(width="300px"))
        self.status = W.HTML()
        self.chart = W.Output(layout=W.Layout(min_height="60px"))
        self.table = W.HTML()
        self.report: RPSReport | None = None
        self.mode.observe(self._mode_changed, names="value")
        self.run_button.on_click(lambda _: self.run())
        self.cancel_button.on_click(lambda _: self.cancel())
        self.busy_widgets = [
            self.run_button,
            self.model,
            self.version,
            self.mode,
            self.levels,
            self.duration,
            self.warmup,
            self.batch_size,
        ]
        self.box = W.VBox(
            [
                row(self.model, self.version, self.batch_size),
                row(self.mode, self.levels),
                row(self.duration, self.warmup, self.run_button, self.cancel_button),
                row(self.progress, self.status),
                self.message,
                self.chart,
                self.table,
            ]
        )

    def set_models(self, names: Sequence[str], ready: Sequence[str] = ()) -> None:
        """Offer these models, preferring one that is READY somewhere."""
        current = self.model.value
        self.model.options = list(names)
        if current in names:
            self.model.value = current
        elif ready or names:
            self.model.value = (list(ready) or list(names))[0]

    def _mode_changed(self, change: dict) -> None:
        old, new = change["old"], change["new"]
        if self.levels.value.strip() in ("", _DEFAULT_LEVELS.get(old, "")):
            self.levels.value = _DEFAULT_LEVELS[new]

    # -- the sweep -----------------------------------------------------------------------
    def run(self) -> Task | None:
        """Start a sweep with the values in the form (what the Run button does)."""
        name = self.model.value
        mode = self.mode.value
        try:
            if not name:
                raise ModelRepoError(
                    "no model chosen",
                    hint="push and load a model first, then press Refresh in the Models tab",
                )
            levels = parse_levels(self.levels.value, mode)
        except ModelRepoError as exc:
            self.show_error(exc, "Measuring RPS")
            return None
        version = self.version.value.strip() or None
        options: dict[str, Any] = {
            "concurrency": levels if mode == "concurrency" else None,
            "request_rate": levels if mode == "request_rate" else None,
            "duration": float(self.duration.value),
            "warmup": float(self.warmup.value),
            "batch_size": int(self.batch_size.value),
            "version": int(version) if version and version.isdigit() else version,
        }
        self.progress.max = len(levels)
        self.progress.value = 0
        self.progress.bar_style = "info"
        self.status.value = ""
        self.table.value = ""
        self.chart.outputs = ()
        self.report = None
        return self.start(
            f"RPS sweep of {name}",
            lambda task: self._run(task, name, mode, options),
            doing=f"Measuring RPS of {name}",
            on_error=lambda _: setattr(self.progress, "bar_style", "danger"),
        )

    def _run(self, task: Task, name: str, mode: str, options: dict[str, Any]) -> RPSReport:
        from modelrepo.triton.rps import RPSReport

        self.say(f"Checking {name} on Triton...", "running")
        steps: list[RPSStep] = []
        partial = RPSReport(
            model=name,
            version=None if options["version"] is None else str(options["version"]),
            urls=self.repo.triton_urls(),
            mode=mode,
            batch_size=options["batch_size"],
            settings={"duration": options["duration"]},
        )

        def progress(event: RPSProgress) -> None:
            task.check()  # Cancel: KeyboardInterrupt here ends the run like Ctrl-C would
            self.progress.value = event.step_index + (1 if event.phase == "step" else 0)
            rate = "" if math.isnan(event.window_rps) else f": {event.window_rps:,.0f} req/s"
            what = {"warmup": "warming up", "window": f"window {event.window}", "step": "done"}
            self.status.value = (
                f"<span style='font-size:13px'>step {event.step_index + 1}/"
                f"{event.steps_total} {event.load} {what.get(event.phase, event.phase)}"
                f"{rate} · {event.elapsed_s:.0f} s</span>"
            )
            if event.phase == "step" and event.step is not None:
                steps.append(event.step)
                partial.steps = list(steps)
                self._draw(partial)

        self.say(f"Measuring {name}...", "running")
        report = self.repo.measure_rps(name, progress=progress, **options)
        self.report = report
        self._draw(report)
        self.progress.value = len(report.steps)
        if report.interrupted:
            self.progress.bar_style = "warning"
            self.say(
                f"Cancelled: kept the {len(report.steps)} finished step(s) of {self.progress.max}.",
                "warning",
            )
        else:
            self.progress.bar_style = "success"
            best = report.best()
            summary = (
                f" Best: {best.rps:,.0f} requests/s at {best.load}." if best is not None else ""
            )
            self.say(f"Measured {len(report.steps)} step(s).{summary}", "success")
        return report

    def _draw(self, report: RPSReport) -> None:
        self.table.value = _TABLE_STYLE + f'<div class="modelrepo-rps">{report._repr_html_()}</div>'
        if any(s.requests > 0 for s in report.steps):
            show_png(self.chart, figure_png(report.plot()), f"RPS chart of {report.model}")
