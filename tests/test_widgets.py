"""ModelRepoPanel driven as a user would (button clicks, typed values) against a real Triton.

The repository is a local folder (``file://``) served by a real LocalTriton in explicit
mode: every state in the table, every load error and every RPS figure comes from Triton.
"""

from __future__ import annotations

import base64
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelrepo import ModelRepo
from modelrepo.errors import ModelRepoError
from modelrepo.testing import LocalTriton
from modelrepo.testing.models import (
    BROKEN_MODEL_MESSAGE,
    write_add_one_model,
    write_broken_model,
)
from modelrepo.widgets import ModelRepoPanel
from modelrepo.widgets._html import error_html
from modelrepo.widgets.rps import parse_levels

WAIT_S = 120.0


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTriton]:
    claim = tmp_path_factory.mktemp("claim")
    with LocalTriton(repository=claim) as server:
        yield server


@pytest.fixture
def repo(triton: LocalTriton, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModelRepo:
    monkeypatch.setenv("MODELREPO_CACHE_DIR", str(tmp_path / "cache"))
    return ModelRepo.from_url(f"file://{triton.repository}", triton=triton.url, progress=False)


def unique(prefix: str) -> str:
    """A model name no other test of the module uses (they share one Triton)."""
    return f"{prefix}_{time.monotonic_ns() % 10**9}"


def version_rows(panel: ModelRepoPanel, model: str) -> dict[str, list[str]]:
    """version -> the states shown in its row (one per replica), read from the table's HTML."""
    rows = {}
    for match in re.finditer(
        r'<tr class="modelrepo-version-row" data-model="([^"]*)" data-version="([^"]*)">(.*?)</tr>',
        panel.models.table.value,
    ):
        if match.group(1) == model:
            rows[match.group(2)] = re.findall(r'data-state="([^"]*)"', match.group(3))
    return rows


def settle(panel: ModelRepoPanel) -> None:
    assert panel.wait(WAIT_S), "the panel's background work did not finish"


# -- the Models tab --------------------------------------------------------------------------


@pytest.mark.slow
def test_models_table_shows_versions_sizes_and_replica_states(repo: ModelRepo, tmp_path: Path):
    name = unique("tbl")
    source = write_add_one_model(tmp_path / "src", name)
    (source / "1" / "weights.bin").write_bytes(b"\x07" * 3 * 1024 * 1024)
    repo.push(name, source=source)
    repo.push(name, source=source)
    repo.load(name, version=2)

    panel = repo.panel()
    settle(panel)

    assert panel.errors == {}
    rows = version_rows(panel, name)
    assert set(rows) == {"1", "2"}
    assert rows["2"] == ["READY"]
    assert rows["1"] == ["-"]
    table = panel.models.table.value
    assert "3.0 MiB" in table  # size of each version
    assert triton_column(repo) in table  # one column per replica
    assert name in panel.models.model.options
    assert name in panel.rps.model.options
    panel.models.model.value = name
    assert panel.models.version.label == "as configured"  # load follows config.pbtxt
    assert [label for label, _ in panel.models.version.options] == ["as configured", "v1", "v2"]

    # Unload through the panel: the table follows
    panel.models.model.value = name
    panel.models.unload_button.click()
    settle(panel)
    assert panel.errors == {}
    assert version_rows(panel, name)["2"] == ["UNAVAILABLE"]  # what Triton says...
    assert ">unloaded</span>" in panel.models.table.value  # ...shown as what it means
    assert repo.status(name).loaded_versions(name) == []

    # Load a pinned version through the panel
    panel.models.version.value = 1
    panel.models.load_button.click()
    settle(panel)
    assert panel.errors == {}
    assert version_rows(panel, name) == {"1": ["READY"], "2": ["UNAVAILABLE"]}
    assert "Loaded" in panel.models.message.value
    repo.unload(name)


def triton_column(repo: ModelRepo) -> str:
    return repo.replicas().urls[0]


@pytest.mark.slow
def test_delete_version_asks_first_then_deletes(repo: ModelRepo, tmp_path: Path):
    name = unique("del")
    source = write_add_one_model(tmp_path / "src", name)
    repo.push(name, source=source)
    repo.push(name, source=source)
    panel = repo.panel()
    settle(panel)
    panel.models.model.value = name
    panel.models.version.value = 1

    panel.models.delete_button.click()
    assert panel.models.confirm_box.layout.display == "flex"
    assert f"Delete {name} version 1?" in panel.models.confirm_text.value
    panel.models.keep_button.click()
    assert panel.models.confirm_box.layout.display == "none"
    settle(panel)
    assert repo.list_versions(name) == [1, 2]  # "Keep it" deleted nothing

    panel.models.delete_button.click()
    panel.models.confirm_button.click()
    settle(panel)
    assert panel.errors == {}
    assert repo.list_versions(name) == [2]
    assert set(version_rows(panel, name)) == {"2"}


@pytest.mark.slow
def test_load_error_shows_tritons_message_in_a_red_box(repo: ModelRepo, tmp_path: Path):
    name = unique("broken")
    repo.push(name, source=write_broken_model(tmp_path / "src", name))
    panel = repo.panel()
    settle(panel)
    panel.models.model.value = name
    panel.models.load_button.click()
    settle(panel)

    box = panel.models.message.value
    assert 'class="modelrepo-error"' in box
    assert BROKEN_MODEL_MESSAGE in box  # Triton's own reason, per replica
    assert "What to do:" in box
    assert "Loading" in box and "failed" in box
    assert "Models" in panel.errors
    # the buttons are usable again after the failure
    assert not panel.models.load_button.disabled


def test_panel_without_triton_still_lists_versions(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("MODELREPO_CACHE_DIR", str(tmp_path / "cache"))
    claim = tmp_path / "claim"
    repo = ModelRepo.from_url(f"file://{claim}", progress=False)
    repo.push("add_one", source=write_add_one_model(tmp_path / "src", "add_one"))
    panel = ModelRepoPanel(repo)
    settle(panel)
    assert panel.errors == {}
    assert version_rows(panel, "add_one") == {"1": []}
    assert "No Triton configured" in panel.models.table.value


# -- the Push tab -----------------------------------------------------------------------------


def test_push_through_the_panel_creates_a_version(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("MODELREPO_CACHE_DIR", str(tmp_path / "cache"))
    repo = ModelRepo.from_url(f"file://{tmp_path / 'claim'}", progress=False)
    source = write_add_one_model(tmp_path / "model_repository", "add_one")
    (source / "1" / "weights.bin").write_bytes(b"\x01" * 2_000_000)
    panel = repo.panel()
    settle(panel)

    panel.push.source.value = str(source)
    assert panel.push.model.value == "add_one"  # guessed from the folder name
    panel.push.push_button.click()
    settle(panel)

    assert panel.errors == {}
    assert repo.list_versions("add_one") == [1]
    assert panel.push.progress.value == 1.0
    assert panel.push.progress.bar_style == "success"
    assert "100%" in panel.push.progress_label.value
    assert panel.push.result_value is not None and panel.push.result_value.version == 1
    assert "Published add_one version 1" in panel.push.message.value
    # the Models tab shows (and selects) the new version
    assert version_rows(panel, "add_one") == {"1": []}
    assert panel.models.model.value == "add_one"

    # a second push of the same files links them: version 2, nothing sent
    panel.push.push_button.click()
    settle(panel)
    assert repo.list_versions("add_one") == [1, 2]
    assert panel.push.result_value.bytes_sent == 0
    assert "0 B sent" in panel.push.message.value


def test_push_errors_show_in_the_panel(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("MODELREPO_CACHE_DIR", str(tmp_path / "cache"))
    repo = ModelRepo.from_url(f"file://{tmp_path / 'claim'}", progress=False)
    panel = repo.panel()
    settle(panel)

    panel.push.model.value = "../evil"
    panel.push.push_button.click()
    settle(panel)
    assert "invalid model name" in panel.push.message.value
    assert "What to do:" in panel.push.message.value
    assert panel.push.progress.bar_style == "danger"

    panel.push.model.value = "ghost"
    panel.push.source.value = str(tmp_path / "nowhere")
    panel.push.push_button.click()
    settle(panel)
    assert 'class="modelrepo-error"' in panel.push.message.value
    assert "nowhere" in panel.push.message.value
    assert repo.list_models() == []


@pytest.mark.slow
def test_cancelled_push_leaves_no_partial_version(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("MODELREPO_CACHE_DIR", str(tmp_path / "cache"))
    claim = tmp_path / "claim"
    repo = ModelRepo.from_url(f"file://{claim}", progress=False)
    source = write_add_one_model(tmp_path / "src", "big")
    chunk = bytes(range(256)) * 4096  # 1 MiB
    for i in range(40):
        (source / "1" / f"shard-{i:03d}.bin").write_bytes(chunk * 8 + i.to_bytes(4, "big"))
    panel = ModelRepoPanel(repo, refresh=False)
    panel.push.source.value = str(source)

    panel.push.push_button.click()
    meta = claim / "big" / ".modelrepo"
    deadline = time.monotonic() + 60
    while not list(meta.glob("staging-*")) and time.monotonic() < deadline:
        time.sleep(0.005)  # bytes are moving once the staging folder exists
    panel.push.cancel_button.click()
    settle(panel)

    message = panel.push.message.value
    assert "Cancelled" in message, message
    published = repo.list_versions("big")
    # whatever the moment the cancel landed, the repository is consistent and says so
    if published:
        assert published == [1] and "version 1 was published" in message
        assert len(list((claim / "big" / "1").iterdir())) == 42
    else:
        assert "nothing was published" in message
    assert not list(meta.glob("staging-*"))
    assert not list((meta / "reserved").iterdir())
    assert panel.push.progress.bar_style == "warning"
    assert not panel.push.push_button.disabled and panel.push.cancel_button.disabled


def test_push_progress_hook_gets_bytes_sent_of_bytes_to_send(tmp_path: Path):
    """``push(progress=f)`` tells f every byte count, ending at the total; no tqdm bar."""
    source = write_add_one_model(tmp_path / "src", "m")
    for i in range(3):
        (source / "1" / f"w{i}.bin").write_bytes(bytes([i]) * (100_000 + i))
    repo = ModelRepo.from_url(f"file://{tmp_path / 'claim'}")
    told: list[tuple[int, int]] = []
    result = repo.push("m", source=str(source), progress=lambda d, t: told.append((d, t)))
    total = result.bytes_sent
    assert told and all(t == total for _, t in told)
    assert told[-1][0] == total and len(told) >= 3
    assert [d for d, _ in told] == sorted(d for d, _ in told)
    again = repo.push("m", source=str(source), progress=lambda d, t: told.append((d, t)))
    assert again.bytes_sent == 0 and told[-1][0] == total  # nothing to send: not called


# -- the RPS tab ------------------------------------------------------------------------------


@pytest.fixture
def loaded_model(repo: ModelRepo, tmp_path: Path) -> Iterator[str]:
    name = unique("rps")
    repo.push(name, source=write_add_one_model(tmp_path / "src", name), load=True)
    yield name
    repo.unload(name)


def png_of(panel: ModelRepoPanel) -> bytes:
    outputs = panel.rps.chart.outputs
    assert len(outputs) == 1
    return base64.b64decode(outputs[0]["data"]["image/png"])


@pytest.mark.slow
def test_rps_tab_draws_chart_and_table_after_every_step(repo: ModelRepo, loaded_model: str):
    panel = repo.panel()
    settle(panel)
    assert panel.rps.model.value == loaded_model or loaded_model in panel.rps.model.options
    panel.rps.model.value = loaded_model
    panel.rps.levels.value = "1, 2"
    panel.rps.duration.value = 0.9
    panel.rps.warmup.value = 0.2
    charts: list[tuple[bool, int]] = []  # (still running, steps in the table) at each redraw
    panel.rps.chart.observe(
        lambda change: charts.append((panel.rps.busy, panel.rps.table.value.count("<tr>") - 1)),
        names="outputs",
    )

    panel.rps.run_button.click()
    settle(panel)

    assert panel.errors == {}, panel.rps.message.value
    report = panel.rps.report
    assert report is not None and [s.concurrency for s in report.steps] == [1, 2]
    assert all(s.rps > 0 for s in report.steps)
    assert png_of(panel).startswith(b"\x89PNG\r\n\x1a\n")
    table = panel.rps.table.value
    assert "c=1" in table and "c=2" in table
    # live: the chart was drawn while the sweep ran, with one step, before the end
    assert (True, 1) in charts, charts
    assert panel.rps.progress.value == 2 and panel.rps.progress.bar_style == "success"
    assert "Best:" in panel.rps.message.value


@pytest.mark.slow
def test_rps_cancel_keeps_finished_steps(repo: ModelRepo, loaded_model: str):
    panel = ModelRepoPanel(repo, refresh=False)
    panel.rps.set_models([loaded_model])
    panel.rps.levels.value = "1, 2, 4"
    panel.rps.duration.value = 0.9
    panel.rps.warmup.value = 0.2
    first_step = threading.Event()
    panel.rps.progress.observe(
        lambda change: first_step.set() if change["new"] >= 1 else None, names="value"
    )
    panel.rps.run_button.click()
    assert first_step.wait(60)
    panel.rps.cancel_button.click()
    settle(panel)

    report = panel.rps.report
    assert report is not None and report.interrupted
    assert 1 <= len(report.steps) < 3
    assert "Cancelled: kept" in panel.rps.message.value
    assert png_of(panel).startswith(b"\x89PNG")
    assert panel.rps.progress.bar_style == "warning"


@pytest.mark.slow
def test_rps_errors_show_in_the_panel(repo: ModelRepo, tmp_path: Path):
    name = unique("idle")
    repo.push(name, source=write_add_one_model(tmp_path / "src", name))  # not loaded
    panel = ModelRepoPanel(repo, refresh=False)
    panel.rps.run_button.click()
    assert "no model chosen" in panel.rps.message.value
    panel.rps.set_models(["other", name], ready=[name])
    assert panel.rps.model.value == name

    panel.rps.levels.value = "one, two"
    panel.rps.run_button.click()
    assert "cannot read concurrency levels" in panel.rps.message.value
    assert panel.rps.task is None  # refused before any work started

    panel.rps.levels.value = "1"
    panel.rps.duration.value = 0.5
    panel.rps.run_button.click()
    settle(panel)
    box = panel.rps.message.value
    assert 'class="modelrepo-error"' in box and "What to do:" in box
    assert name in box


def test_parse_levels():
    assert parse_levels("1, 2 4;8", "concurrency") == [1, 2, 4, 8]
    assert parse_levels("100, 250.5", "request_rate") == [100.0, 250.5]
    for bad in ("", "0", "1.5", "-2", "x"):
        with pytest.raises(ModelRepoError):
            parse_levels(bad, "concurrency")


def test_error_box_escapes_and_explains():
    box = error_html(ModelRepoError("bad <b>name</b>", hint="use & fix"), doing="Pushing x")
    assert "bad &lt;b&gt;name&lt;/b&gt;" in box and "use &amp; fix" in box
    assert "Pushing x failed" in box and "traceback" not in box
    surprise = error_html(RuntimeError("boom"))
    assert "RuntimeError: boom" in surprise and "<details>" in surprise


# -- a PVC repository (helper pod over the Kubernetes exec API) ---------------------------


@pytest.mark.slow
def test_push_progress_over_a_pvc_repository(tmp_path: Path, monkeypatch):
    """Through the helper pod the bar moves while bytes travel, then the version appears."""
    from modelrepo.testing import LocalCluster

    monkeypatch.setenv("MODELREPO_CACHE_DIR", str(tmp_path / "cache"))
    source = write_add_one_model(tmp_path / "src", "add_one")
    block = bytes(range(256)) * 4096  # 1 MiB
    for i in range(4):
        (source / "1" / f"part-{i}.bin").write_bytes(block * 48 + bytes([i]))
    with LocalCluster() as cluster:
        claim_dir = Path(cluster.create_pvc("models"))
        repo = ModelRepo(
            pvc="models", namespace="default", kubeconfig=cluster.kubeconfig, progress=False
        )
        with repo:
            panel = repo.panel()
            settle(panel)
            assert panel.errors == {}
            assert "pvc://models/" in panel.header.value
            seen: list[float] = []
            panel.push.progress.observe(lambda c: seen.append(c["new"]), names="value")
            panel.push.source.value = str(source)
            panel.push.push_button.click()
            settle(panel)
            assert panel.errors == {}, panel.push.message.value
            assert repo.list_versions("add_one") == [1]
        assert (claim_dir / "add_one" / "1" / "part-3.bin").stat().st_size == 48 * 2**20 + 1
    assert any(0 < v < 1 for v in seen), seen  # moved while the transfer ran
    assert seen[-1] == 1.0
