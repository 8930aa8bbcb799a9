"""The notebooks in ``notebooks/`` run top to bottom (nbclient, a real kernel): any error fails.

Each runs against the local stack (LocalCluster + real Triton replicas) exactly as a user
would run it; the kernel is this test's own Python (a kernelspec written to a temp folder),
so the notebooks see the same installed modelrepo.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
ALL = ["quickstart", "option_a_s3_job", "option_b_build_job", "option_c_manifests"]
CELL_TIMEOUT_S = 300
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def _read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kernelspec folder whose only kernel is this interpreter."""
    kernels = tmp_path_factory.mktemp("kernels")
    spec = kernels / "modelrepo-test"
    spec.mkdir()
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec.joinpath("kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "modelrepo tests", "language": "python"})
    )
    return kernels


def execute(name: str, kernel_dir: Path, workdir: Path) -> nbformat.NotebookNode:
    """Run every cell in ``workdir``; CellExecutionError (with the cell and traceback) on error.

    The executed copy is kept in ``workdir`` to read when a run fails.
    """
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    book = _read(name)
    manager = KernelManager(
        kernel_name="modelrepo-test",
        kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernel_dir)]),
    )
    client = NotebookClient(
        book,
        km=manager,
        timeout=CELL_TIMEOUT_S,
        allow_errors=False,
        resources={"metadata": {"path": str(workdir)}},
    )
    try:
        client.execute()
    finally:
        nbformat.write(book, workdir / f"{name}.executed.ipynb")
    errors = [o for c in book.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, errors
    return book


def outputs_with(book: nbformat.NotebookNode, mime: str) -> list[dict]:
    return [
        o
        for c in book.cells
        if c.cell_type == "code"
        for o in c.outputs
        if mime in o.get("data", {})
    ]


@pytest.mark.parametrize("name", ALL)
def test_notebook_is_committed_clean(name: str):
    """Committed without outputs, valid, for the ipykernel ``python3`` kernel."""
    book = _read(name)
    nbformat.validate(book)
    assert book.metadata.kernelspec.name == "python3"
    for cell in book.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]
    assert any("cleanup" in c.metadata.get("tags", []) for c in book.cells)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_quickstart_runs(kernel_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MODELREPO_CACHE_DIR", str(tmp_path / "cache"))
    book = execute("quickstart", kernel_dir, tmp_path)
    assert outputs_with(book, WIDGET_MIME), "the panel was not displayed"
    charts = outputs_with(book, "image/png")
    assert charts, "report.plot() showed no image"
    assert base64.b64decode(charts[0]["data"]["image/png"]).startswith(b"\x89PNG")
    assert any(
        "requests/s at concurrency" in o.get("text", "")
        for c in book.cells
        for o in c.get("outputs", [])
    )


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", ["option_a_s3_job", "option_b_build_job", "option_c_manifests"])
def test_option_notebook_runs(
    name: str, kernel_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("MODELREPO_CACHE_DIR", str(tmp_path / "cache"))
    execute(name, kernel_dir, tmp_path)
