"""LocalCluster leaves nothing behind, and says what it needs when it cannot start."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import psutil
import pytest
from kubernetes import client, config

from modelrepo.errors import LocalStackError
from modelrepo.testing.cluster import LocalCluster, sandbox
from modelrepo.testing.cluster.kube_exec import open_exec
from modelrepo.testing.cluster.manifests import busybox_pod


def _descendants() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def _mounts_under(path: Path) -> list[str]:
    return [line for line in Path("/proc/mounts").read_text().splitlines() if str(path) in line]


def test_stop_leaves_no_process_mount_or_folder() -> None:
    before = _descendants()
    threads_before = {t.ident for t in threading.enumerate()}
    with LocalCluster() as cluster:
        base = cluster.base_dir
        cluster.create_pvc("models")
        for name in ("a", "b"):
            cluster.create(busybox_pod(name, claim="models"))
        cluster.create(busybox_pod("done", restart_policy="Never", command=["true"]))
        for name in ("a", "b"):
            cluster.wait_for_pod(name)
        core = client.CoreV1Api(config.new_client_from_config(str(cluster.kubeconfig)))
        hanging = open_exec(core, "a", ["sleep", "300"])  # an exec still running at stop
        started = _descendants() - before
        assert len(started) >= 4  # per pod: setpriv/unshare + PID 1; plus the exec
        sandboxes = [
            p
            for p in psutil.process_iter(["cmdline"])
            if any(str(base) in part for part in p.info["cmdline"] or [])
        ]
        assert sandboxes
    hanging.close()
    assert not base.exists()
    assert not _mounts_under(base)
    _, alive = psutil.wait_procs(
        [psutil.Process(pid) for pid in started if psutil.pid_exists(pid)], timeout=5
    )
    assert not alive, [p.cmdline() for p in alive]
    assert not [
        p
        for p in psutil.process_iter(["cmdline"])
        if any(str(base) in part for part in p.info["cmdline"] or [])
    ]
    assert "LocalCluster" not in {
        t.name for t in threading.enumerate() if t.ident not in threads_before
    }


def test_a_given_base_dir_keeps_the_claims_data(tmp_path: Path) -> None:
    with LocalCluster(base_dir=tmp_path) as cluster:
        claim = cluster.create_pvc("keep")
        (claim / "model.txt").write_text("kept")
    assert (claim / "model.txt").read_text() == "kept"
    assert not (tmp_path / "pods").exists()


def test_stop_is_idempotent_and_reports_when_stopped() -> None:
    cluster = LocalCluster(sandbox=False)
    cluster.start()
    url = cluster.url
    cluster.stop()
    cluster.stop()
    assert url.startswith("https://127.0.0.1:")
    with pytest.raises(LocalStackError, match="not running"):
        _ = cluster.kubeconfig


def test_without_root_the_error_says_what_is_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    sandbox.host_tools.cache_clear()
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    try:
        with pytest.raises(LocalStackError) as err:
            LocalCluster().start()
        assert "root" in str(err.value) and "sandbox=False" in str(err.value)
    finally:
        monkeypatch.undo()
        sandbox.host_tools.cache_clear()


def test_the_busybox_is_chosen_env_first_then_the_environments_then_the_systems(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    venv_copy = Path(sys.prefix) / "bin" / "busybox"
    monkeypatch.setenv(sandbox.BUSYBOX_ENV, str(tmp_path / "missing"))
    expected = str(venv_copy) if venv_copy.exists() else "/bin/busybox"
    assert sandbox.busybox_path() == expected  # a missing override falls through
    monkeypatch.setenv(sandbox.BUSYBOX_ENV, "/bin/ls")
    assert sandbox.busybox_path() == "/bin/ls"
    sandbox.host_tools.cache_clear()
    try:
        with pytest.raises(LocalStackError) as err:
            sandbox.host_tools()  # /bin/ls is dynamically linked: not a busybox image root
        assert "static busybox" in str(err.value) and sandbox.BUSYBOX_ENV in str(err.value)
    finally:
        monkeypatch.undo()
        sandbox.host_tools.cache_clear()


def test_api_only_cluster_runs_pods_without_processes() -> None:
    with LocalCluster(sandbox=False) as cluster:
        cluster.create(busybox_pod("virtual"))
        pod = cluster.wait_for_pod("virtual")
        assert pod["status"]["podIP"].startswith("127.")
        result = cluster.kubectl("exec", "virtual", "--", "true")
        assert result.returncode != 0 and "sandbox=False" in result.stderr
