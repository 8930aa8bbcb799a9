"""The Models tab: every model and version with size, date and its state on each Triton replica.

The table is HTML (it renders anywhere); a model and a version are picked in dropdowns under
it for Load, Unload and Delete (which asks for confirmation first). Every action runs in the
background and refreshes the table when it is done.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import ipywidgets as W

from modelrepo.errors import TritonError
from modelrepo.repo import VersionInfo, format_bytes
from modelrepo.widgets._base import TabBase, button, row
from modelrepo.widgets._html import message_html, state_html, table_html
from modelrepo.widgets._task import Task

if TYPE_CHECKING:
    from modelrepo.repo import ModelRepo
    from modelrepo.triton.control import StatusTable

__all__ = ["ModelsTab", "RepositoryView", "VersionRow"]

#: The state shown for a version that a reachable replica does not serve.
NOT_LOADED = "-"
#: The version choice "whatever the model's config.pbtxt says" (0: Triton has no version 0;
#: None would read as "nothing selected" in a Dropdown).
_AS_CONFIGURED = ("as configured", 0)


@dataclass
class VersionRow:
    """One line of the table: a version on the repository (or only on Triton) and its states."""

    model: str
    version: int | None
    info: VersionInfo | None
    states: dict[str, tuple[str, str]] = field(default_factory=dict)  # replica -> (state, reason)


@dataclass
class RepositoryView:
    """What one refresh read: models, versions and states (a snapshot the tab renders)."""

    models: list[str]
    rows: list[VersionRow]
    replicas: list[str]
    triton_note: str = ""  # why there are no replica columns, if there are none
    read_at: float = field(default_factory=time.time)

    def versions(self, model: str) -> list[int]:
        return [
            r.version for r in self.rows if r.model == model and r.info and r.version is not None
        ]

    def ready_models(self) -> list[str]:
        """Models with a version READY on at least one replica."""
        ready = {r.model for r in self.rows if any(s == "READY" for s, _ in r.states.values())}
        return sorted(ready)


def read_repository(repo: ModelRepo) -> RepositoryView:
    """One listing per model plus one index request per replica."""
    models = repo.list_models()
    infos = {m: repo.list_versions(m, detail=True) for m in models}
    status: StatusTable | None = None
    note = ""
    if repo.triton is None:
        note = "No Triton configured: pass triton= to ModelRepo to see and change replica states."
    else:
        try:
            status = repo.status()
        except TritonError as exc:
            note = f"Triton status unavailable: {exc.message}"
    rows: list[VersionRow] = []
    for model in models:
        rows += [VersionRow(model, v.version, v) for v in infos[model]]  # type: ignore[union-attr]
        if not infos[model]:
            rows.append(VersionRow(model, None, None))
    if status is not None:
        _merge_states(rows, status)
    return RepositoryView(models, rows, list(status.replicas) if status else [], note)


def _merge_states(rows: list[VersionRow], status: StatusTable) -> None:
    """Put each replica's state on the matching version row; add rows only Triton knows."""
    by_key = {(r.model, r.version): r for r in rows}
    for srow in status.rows:
        if srow.version is None:
            continue  # a model Triton lists but serves no version of: "-" everywhere
        target = by_key.get((srow.model, srow.version))
        if target is None:  # served, but no longer (or not yet) on this repository
            target = VersionRow(srow.model, srow.version, None)
            rows.append(target)
            by_key[(srow.model, srow.version)] = target
        target.states = {rep: (s.state, s.reason) for rep, s in srow.replicas.items()}
    for r in rows:
        for rep in status.replicas:
            if rep in status.unreachable:
                r.states[rep] = ("UNREACHABLE", status.unreachable[rep])
            else:
                r.states.setdefault(rep, (NOT_LOADED, ""))
    rows.sort(key=lambda r: (r.model, r.version or 0))


def _when(info: VersionInfo | None) -> str:
    if info is None or info.modified is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(info.modified))


def render_view(view: RepositoryView) -> str:
    """The table of a snapshot: one row per version, one column per replica."""
    headers = ["model", "version", "size", "files", "modified", *view.replicas]
    cells, attrs = [], []
    for r in view.rows:
        cells.append(
            [
                r.model,
                "(none)" if r.version is None else str(r.version),
                format_bytes(r.info.size) if r.info else "",
                str(r.info.files) if r.info else "",
                _when(r.info) if r.info else ("not on the repository" if r.version else ""),
                *(state_html(*r.states.get(rep, (NOT_LOADED, ""))) for rep in view.replicas),
            ]
        )
        attrs.append(
            {
                "class": "modelrepo-version-row",
                "data-model": r.model,
                "data-version": "" if r.version is None else str(r.version),
            }
        )
    raw = frozenset(range(5, 5 + len(view.replicas)))
    table = table_html(
        headers,
        cells,
        row_attrs=attrs,
        raw_columns=raw,
        css_class="modelrepo-models",
        empty="No model on the repository yet: push one in the Push tab.",
    )
    stamp = time.strftime("%H:%M:%S", time.localtime(view.read_at))
    foot = f"<div style='color:#757575;font-size:12px'>read at {stamp}"
    if view.replicas:
        foot += " · state per Triton replica (columns); '-' = not loaded"
    foot += "</div>"
    note = message_html(view.triton_note, "warning") if view.triton_note else ""
    return table + foot + note


class ModelsTab(TabBase):
    """The models table with Refresh, Load, Unload and Delete version (confirmed)."""

    title = "Models"

    def __init__(self, repo: ModelRepo) -> None:
        super().__init__(repo)
        self.view: RepositoryView | None = None
        #: Called with each new snapshot (the panel feeds the RPS tab's model list).
        self.on_view: Callable[[RepositoryView], None] | None = None
        self.table = W.HTML("<i>reading the repository...</i>")
        self.model = W.Dropdown(description="model", options=[], layout=W.Layout(width="300px"))
        self.version = W.Dropdown(
            description="version", options=[_AS_CONFIGURED], layout=W.Layout(width="220px")
        )
        self.refresh_button = button(
            "Refresh", "", "refresh", "read the repository and Triton again"
        )
        self.load_button = button("Load", "success", "play", "load on every Triton replica")
        self.unload_button = button("Unload", "", "pause", "unload from every Triton replica")
        self.delete_button = button(
            "Delete version", "danger", "trash", "delete the chosen version"
        )
        self.confirm_text = W.HTML()
        self.confirm_button = button("Yes, delete", "danger", "check")
        self.keep_button = button("Keep it", "", "times")
        self.confirm_box = row(self.confirm_text, self.confirm_button, self.keep_button)
        self.confirm_box.layout.display = "none"
        self.result = W.HTML()
        self.model.observe(lambda _: self._offer_versions(), names="value")
        self.refresh_button.on_click(lambda _: self.refresh())
        self.load_button.on_click(lambda _: self.load())
        self.unload_button.on_click(lambda _: self.unload())
        self.delete_button.on_click(lambda _: self.ask_delete())
        self.confirm_button.on_click(lambda _: self.delete())
        self.keep_button.on_click(lambda _: self._hide_confirm())
        self.busy_widgets = [
            self.refresh_button,
            self.load_button,
            self.unload_button,
            self.delete_button,
            self.confirm_button,
            self.model,
            self.version,
        ]
        self.box = W.VBox(
            [
                self.table,
                row(self.model, self.version),
                row(self.refresh_button, self.load_button, self.unload_button, self.delete_button),
                self.confirm_box,
                self.message,
                self.result,
            ]
        )

    # -- reading ---------------------------------------------------------------------------
    def refresh(self) -> Task | None:
        """Read the repository and every replica's state again, in the background."""
        return self.start("refresh", lambda task: self._refresh(), doing="Reading the repository")

    def _refresh(self, select: str | None = None) -> RepositoryView:
        view = read_repository(self.repo)
        self.view = view
        self.table.value = render_view(view)
        current = select or self.model.value
        self.model.options = view.models
        if current in view.models:
            self.model.value = current
        elif view.models:
            self.model.value = view.models[0]
        self._offer_versions()
        if self.on_view is not None:
            self.on_view(view)
        return view

    @contextlib.contextmanager
    def _refreshed(self) -> Iterator[None]:
        """Refresh the table after an action, failed or not (an error keeps its own box)."""
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                self._refresh()

    def _offer_versions(self) -> None:
        name = self.model.value
        versions = self.view.versions(name) if self.view is not None and name else []
        current = self.version.value
        self.version.options = [_AS_CONFIGURED] + [(f"v{v}", v) for v in versions]
        self.version.value = current if current in versions else 0

    # -- actions --------------------------------------------------------------------------
    def _chosen(self) -> str | None:
        name = self.model.value
        if not name:
            self.say("Choose a model first (push one in the Push tab if the list is empty).")
            return None
        return name

    def load(self) -> Task | None:
        """Load the chosen model (the chosen version, or as its config says) on every replica."""
        name, version = self._chosen(), self.version.value or None
        if name is None:
            return None
        what = f"{name}" + (f" v{version}" if version else "")

        def work(task: Task) -> None:
            self.result.value = ""
            self.say(f"Loading {what} on every Triton replica...", "running")
            with self._refreshed():
                result = self.repo.load(name, version=version, strict=True)
            self.result.value = result._repr_html_()
            self.say(
                f"Loaded {what} on {len(result.replicas)} replica(s) in {result.seconds:.1f} s.",
                "success",
            )

        return self.start(f"load {what}", work, doing=f"Loading {what}")

    def unload(self) -> Task | None:
        """Unload the chosen model from every replica."""
        name = self._chosen()
        if name is None:
            return None

        def work(task: Task) -> None:
            self.result.value = ""
            self.say(f"Unloading {name} from every Triton replica...", "running")
            with self._refreshed():
                result = self.repo.unload(name)
            self.result.value = result._repr_html_()
            result.raise_for_errors()
            self.say(f"Unloaded {name} in {result.seconds:.1f} s.", "success")

        return self.start(f"unload {name}", work, doing=f"Unloading {name}")

    def ask_delete(self) -> None:
        """Show the confirmation line; nothing is deleted until "Yes, delete" is pressed."""
        name, version = self._chosen(), self.version.value or None
        if name is None:
            return
        if version is None:
            self.say("Choose the version to delete in the version list.", "warning")
            return
        self.confirm_text.value = (
            f"<b style='color:#b71c1c'>Delete {name} version {version}? "
            "Its files are removed from the repository.</b>"
        )
        self.confirm_box.layout.display = "flex"

    def _hide_confirm(self) -> None:
        self.confirm_box.layout.display = "none"

    def delete(self) -> Task | None:
        """Delete the chosen version (after confirmation); refused while Triton serves it."""
        self._hide_confirm()
        name, version = self._chosen(), self.version.value or None
        if name is None or version is None:
            return None

        def work(task: Task) -> None:
            self.say(f"Deleting {name} version {version}...", "running")
            with self._refreshed():
                self.repo.delete_version(name, version)
            self.say(f"Deleted {name} version {version}.", "success")

        return self.start(f"delete {name} v{version}", work, doing=f"Deleting {name} v{version}")
