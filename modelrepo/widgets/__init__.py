"""Notebook widgets: :class:`ModelRepoPanel`, what ``ModelRepo.panel()`` returns.

Only ipywidgets' standard widgets are used, so the panel renders wherever ipywidgets does
(JupyterLab, Notebook 7, VS Code, Voila) without a front-end extension.
"""

from __future__ import annotations

from modelrepo.widgets.panel import ModelRepoPanel

__all__ = ["ModelRepoPanel"]
