"""``ModelRepoPanel``: the whole repository in one notebook widget (``repo.panel()``).

Built only from ipywidgets' standard widgets (Tab, VBox, HBox, Button, Dropdown, Text, HTML,
Output, progress bars), with charts as PNG images in an ``Output``: it renders in JupyterLab,
Notebook 7, VS Code and Voila with no front-end extension to install. Long work runs in
background threads, shows progress, can be cancelled, and errors appear in the panel as a
red box with the message and what to do.
"""

from __future__ import annotations

import html
import time
from typing import TYPE_CHECKING, Any

import ipywidgets as W

from modelrepo.widgets._base import TabBase, describe
from modelrepo.widgets.models import ModelsTab, RepositoryView
from modelrepo.widgets.push import PushTab
from modelrepo.widgets.rps import RPSTab

if TYPE_CHECKING:
    from modelrepo.repo import ModelRepo

__all__ = ["ModelRepoPanel"]


class ModelRepoPanel(W.VBox):
    """Models (versions, sizes, states per replica; load / unload / delete), Push and RPS tabs.

    >>> panel = repo.panel()  # the last expression of a cell displays it
    >>> panel.push.model.value = "add_one"; panel.push.push_button.click(); panel.wait()

    Every control is an attribute (``panel.models``, ``panel.push``, ``panel.rps`` and their
    widgets), so a notebook or a test can drive the panel as a user would.
    """

    def __init__(self, repo: ModelRepo, *, refresh: bool = True, **kwargs: Any) -> None:
        self.repo = repo
        self.models = ModelsTab(repo)
        self.push = PushTab(repo)
        self.rps = RPSTab(repo)
        self.header = W.HTML(_header_html(repo))
        self.tabs = W.Tab(children=[t.box for t in self._tabs])
        for i, tab in enumerate(self._tabs):
            self.tabs.set_title(i, tab.title)
        self.models.on_view = self._view_changed
        self.push.on_pushed = self._pushed
        super().__init__([self.header, self.tabs], **kwargs)
        self.add_class("modelrepo-panel")
        if refresh:
            self.models.refresh()

    @property
    def _tabs(self) -> tuple[TabBase, ...]:
        return (self.models, self.push, self.rps)

    def _view_changed(self, view: RepositoryView) -> None:
        self.rps.set_models(view.models, ready=view.ready_models())

    def _pushed(self, model: str, version: int) -> None:
        """After a push (in its thread): show the new version, selected, in the Models tab."""
        try:
            self.models._refresh(select=model)
        except Exception as exc:
            self.models.show_error(exc, "Reading the repository")

    def refresh(self) -> None:
        """Read the repository and the replicas' states again (the Refresh button)."""
        self.models.refresh()

    @property
    def busy(self) -> bool:
        """Whether any tab is still working in the background."""
        return any(t.busy for t in self._tabs)

    def wait(self, timeout: float = 120.0) -> bool:
        """Block until no tab is working (for scripts and tests); True if all finished in time.

        Loops until every tab is idle at the same moment, so work one tab hands to another
        (a push selecting its model in the Models tab) is waited for too.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for tab in self._tabs:
                tab.wait(max(0.0, deadline - time.monotonic()))
            if not self.busy:
                return True
        return not self.busy

    @property
    def errors(self) -> dict[str, BaseException]:
        """The error each tab shows right now (empty when none does)."""
        return {t.title: t.last_error for t in self._tabs if t.last_error is not None}


def _header_html(repo: ModelRepo) -> str:
    where, triton = describe(repo)
    return (
        "<div style='font-size:13px;margin-bottom:4px'><b>modelrepo</b> · repository "
        f"<code>{html.escape(where)}</code> · Triton <code>{html.escape(triton)}</code></div>"
    )
