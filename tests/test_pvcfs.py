"""PVCFileSystem on LocalCluster: semantics, errors, hostile names, confinement, round-trips,
verified chunked transfers with dropped streams (v5 and v4), resume, and a killed helper."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import fsspec
import pytest
from fsspec.callbacks import Callback

from modelrepo.fs import PVCFileSystem, PVCPathError
from modelrepo.fs import _shell as sh
from modelrepo.testing import LocalCluster
from modelrepo.testing.cluster import V4, V5

pytestmark = pytest.mark.slow

MiB = 1 << 20


# The cluster (claim "models"), claim_dir and fs fixtures: tests/conftest.py
FS_OPTIONS = {"chunk_size": 4 * MiB, "small_file_limit": 1 * MiB}


def sessions(fs: PVCFileSystem) -> int:
    return fs.helper.exec_client.sessions


def sent(fs: PVCFileSystem) -> int:
    return fs.helper.exec_client.stdin_bytes


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- registration and URLs -------------------------------------------------------------------


def test_fsspec_finds_the_protocol_and_urls(cluster: LocalCluster, claim_dir: Path) -> None:
    assert fsspec.get_filesystem_class("pvc") is PVCFileSystem
    kc = str(cluster.kubeconfig)
    with fsspec.open("pvc://models/urls/a.txt", "wb", kubeconfig=kc) as f:
        f.write(b"via url")
    assert (claim_dir / "urls/a.txt").read_bytes() == b"via url"
    fs2 = fsspec.filesystem("pvc", claim="models", namespace="default", kubeconfig=kc)
    assert fs2.cat("pvc://models/urls/a.txt") == b"via url"
    assert fs2.unstrip_protocol("/urls/a.txt") == "pvc://models/urls/a.txt"
    with fsspec.open("pvc://models/urls/a.txt", "rb", kubeconfig=kc) as f:
        assert f.read() == b"via url"


def test_root_option_confines_paths(cluster: LocalCluster, claim_dir: Path) -> None:
    sub = PVCFileSystem(
        "models", kubeconfig=str(cluster.kubeconfig), root="/tenant", skip_instance_cache=True
    )
    sub.pipe_file("/x.txt", b"t")
    assert (claim_dir / "tenant/x.txt").read_bytes() == b"t"
    assert sub.ls("/", detail=False) == ["/x.txt"]


# -- semantics and errors ----------------------------------------------------------------------


def test_basic_file_operations(fs: PVCFileSystem, claim_dir: Path) -> None:
    fs.pipe_file("/basic/a.bin", b"0123456789")
    assert fs.cat_file("/basic/a.bin") == b"0123456789"
    assert fs.cat_file("/basic/a.bin", 2, 5) == b"234"
    assert fs.cat_file("/basic/a.bin", -3) == b"789"
    assert fs.cat_file("/basic/a.bin", 8, 100) == b"89"
    info = fs.info("/basic/a.bin")
    assert info["type"] == "file" and info["size"] == 10
    assert fs.modified("/basic/a.bin").tzinfo is not None
    assert fs.isdir("/basic") and fs.isfile("/basic/a.bin")
    fs.cp_file("/basic/a.bin", "/basic/b.bin")
    fs.link("/basic/a.bin", "/basic/c.bin")
    assert (claim_dir / "basic/c.bin").stat().st_ino == (claim_dir / "basic/a.bin").stat().st_ino
    assert fs.sha256(["/basic/a.bin", "/basic/b.bin"]) == {
        "/basic/a.bin": sha(b"0123456789"),
        "/basic/b.bin": sha(b"0123456789"),
    }
    fs.mv("/basic/b.bin", "/basic/d.bin")
    assert sorted(fs.ls("/basic", detail=False)) == ["/basic/a.bin", "/basic/c.bin", "/basic/d.bin"]
    assert fs.du("/basic") == 30
    fs.rm("/basic", recursive=True)
    assert not (claim_dir / "basic").exists()


def test_exceptions(fs: PVCFileSystem) -> None:
    fs.pipe_file("/exc/file", b"x")
    with pytest.raises(FileNotFoundError):
        fs.cat_file("/exc/missing")
    with pytest.raises(FileNotFoundError):
        fs.info("/exc/missing")
    with pytest.raises(FileNotFoundError):
        fs.rm("/exc/missing")
    with pytest.raises(FileNotFoundError):
        fs.ls("/exc/missing", refresh=True)
    with pytest.raises(IsADirectoryError):
        fs.cat_file("/exc")
    with pytest.raises(IsADirectoryError):
        fs.open("/exc", "rb")
    with pytest.raises(NotADirectoryError):
        fs.mkdir("/exc/file/sub")
    with pytest.raises(FileExistsError):
        fs.mkdir("/exc")
    with pytest.raises(FileExistsError):
        fs.makedirs("/exc")
    fs.makedirs("/exc", exist_ok=True)
    with pytest.raises(FileExistsError):
        fs.pipe_file("/exc/file", b"y", mode="create")
    with pytest.raises(IsADirectoryError):
        fs.rm_file("/exc")
    with pytest.raises(FileNotFoundError):
        fs.mkdir("/exc/no/parent", create_parents=False)
    with pytest.raises(OSError, match="not empty"):
        fs.rmdir("/exc")
    with pytest.raises(FileNotFoundError) as err:
        fs.cat_file("/exc/missing")
    assert "->" in str(err.value)  # every error carries a hint


def test_mkdir_is_an_atomic_allocation(fs: PVCFileSystem) -> None:
    fs.makedirs("/alloc", exist_ok=True)
    wins: list[int] = []

    def take(i: int) -> None:
        try:
            fs.mkdir("/alloc/7", create_parents=False)
            wins.append(i)
        except FileExistsError:
            pass

    threads = [threading.Thread(target=take, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1


def test_rename_is_atomic_and_never_replaces(fs: PVCFileSystem, claim_dir: Path) -> None:
    fs.pipe_file("/pub/.staging/model.py", b"m")
    fs.makedirs("/pub/1")
    with pytest.raises(FileExistsError):
        fs.rename("/pub/.staging", "/pub/1")  # even an empty folder is never replaced
    fs.rename("/pub/.staging", "/pub/2")
    assert (claim_dir / "pub/2/model.py").read_bytes() == b"m"
    assert not (claim_dir / "pub/.staging").exists()
    fs.pipe_file("/pub/a", b"a")
    fs.pipe_file("/pub/b", b"b")
    with pytest.raises(FileExistsError):
        fs.rename("/pub/a", "/pub/b")
    fs.rename("/pub/a", "/pub/c")
    assert (claim_dir / "pub/c").read_bytes() == b"a" and (claim_dir / "pub/b").read_bytes() == b"b"
    with pytest.raises(FileNotFoundError):
        fs.rename("/pub/nothing", "/pub/d")


def test_open_streams_and_discards_on_error(fs: PVCFileSystem, claim_dir: Path) -> None:
    data = os.urandom(3 * MiB + 17)
    with fs.open("/stream/w.bin", "wb", block_size=MiB) as f:
        for i in range(0, len(data), 500_000):
            f.write(data[i : i + 500_000])
        assert not (claim_dir / "stream/w.bin").exists()  # appears only when closed
    assert (claim_dir / "stream/w.bin").read_bytes() == data
    with fs.open("/stream/w.bin", "rb", block_size=MiB) as f:
        f.seek(2 * MiB)
        assert f.read(100) == data[2 * MiB : 2 * MiB + 100]
        f.seek(-5, 2)
        assert f.read() == data[-5:]
    with pytest.raises(RuntimeError), fs.open("/stream/half.bin", "wb", block_size=MiB) as f:
        f.write(os.urandom(2 * MiB))
        raise RuntimeError("interrupted")
    assert not (claim_dir / "stream/half.bin").exists()
    assert [p.name for p in (claim_dir / "stream").iterdir()] == ["w.bin"]  # no temp left


def test_listing_round_trips_and_cache(fs: PVCFileSystem) -> None:
    for i in range(30):
        fs.pipe_file(f"/tree/d{i % 3}/f{i}.txt", b"x" * i)
    fs.invalidate_cache()
    before = sessions(fs)
    found = fs.find("/tree", detail=True)
    assert sessions(fs) - before == 1  # the whole tree in one exec
    assert len(found) == 30 and found["/tree/d1/f7.txt"]["size"] == 7
    before = sessions(fs)
    assert len(fs.ls("/tree/d0")) == 10 and fs.isdir("/tree/d2")
    assert fs.du("/tree") == sum(range(30)) and sessions(fs) - before == 1  # du: one find
    before = sessions(fs)
    assert len(fs.sha256([f"/tree/d{i % 3}/f{i}.txt" for i in range(30)])) == 30
    assert sessions(fs) - before == 1
    fs.pipe_file("/tree/d0/new.txt", b"n")  # writes invalidate the cached listing
    assert "/tree/d0/new.txt" in fs.ls("/tree/d0", detail=False)


# -- hostile names and confinement ------------------------------------------------------------

HOSTILE = [
    "sp ace.txt",
    "quote'single.txt",
    'quote"double.txt',
    "$(touch INJECTED).txt",
    "`touch INJECTED2`.txt",
    "new\nline.txt",
    "tab\there.txt",
    "ünïcödé-模型.txt",
    "-leading-dash.txt",
    "semi;colon&pipe|gt>.txt",
    "back\\slash.txt",
    "x" * 255,
]


def test_hostile_names_round_trip(fs: PVCFileSystem, claim_dir: Path, tmp_path: Path) -> None:
    for i, name in enumerate(HOSTILE):
        path = f"/hostile/{name}"
        fs.pipe_file(path, name.encode())
        assert fs.cat_file(path) == name.encode()
        assert fs.info(path)["size"] == len(name.encode())
        assert fs.sha256([path])[path] == sha(name.encode())
        (tmp_path / f"in{i}").write_bytes(name.encode() * 2)
        fs.put_file(str(tmp_path / f"in{i}"), f"/hostile/dir {i}/{name}")
        fs.get_file(f"/hostile/dir {i}/{name}", str(tmp_path / f"out{i}"))
        assert (tmp_path / f"out{i}").read_bytes() == name.encode() * 2
    listed = fs.ls("/hostile", detail=False, refresh=True)
    assert {f"/hostile/{n}" for n in HOSTILE} <= set(listed)
    assert len(fs.find("/hostile")) == 2 * len(HOSTILE)
    fs.get("/hostile", str(tmp_path / "tree"), recursive=True)
    assert (tmp_path / "tree" / "new\nline.txt").read_bytes() == b"new\nline.txt"
    for name in HOSTILE:
        fs.rm_file(f"/hostile/{name}")
    fs.rm("/hostile", recursive=True)
    leftovers = [p for p in claim_dir.rglob("*") if "INJECTED" in p.name]
    assert leftovers == [] and not (claim_dir / "hostile").exists()


def test_too_long_and_nul_names_are_refused(fs: PVCFileSystem) -> None:
    with pytest.raises(PVCPathError, match="255 bytes"):
        fs.pipe_file("/" + "y" * 256, b"")
    with pytest.raises(PVCPathError, match="NUL"):
        fs.pipe_file("/a\0b", b"")


def test_dotdot_cannot_leave_the_claim(fs: PVCFileSystem) -> None:
    for bad in ("/../etc/passwd", "a/../../x", "/x/../../../y"):
        with pytest.raises(PVCPathError, match="outside the claim"):
            fs.cat_file(bad)
        with pytest.raises(PVCPathError):
            fs.pipe_file(bad, b"x")
    fs.pipe_file("/inside/../inside2/ok", b"ok")  # '..' that stays inside is fine
    assert fs.cat_file("/inside2/ok") == b"ok"


def test_symlink_escapes_are_refused_for_writes(fs: PVCFileSystem, claim_dir: Path) -> None:
    (claim_dir / "links").mkdir(exist_ok=True)
    os.symlink("/etc", claim_dir / "links/out")
    os.symlink("../inside2", claim_dir / "links/in")
    with pytest.raises(PermissionError, match="outside the claim"):
        fs.pipe_file("/links/out/evil.conf", b"x")
    with pytest.raises(PermissionError):
        fs.makedirs("/links/out/newdir")
    with pytest.raises(PermissionError):
        fs.rm("/links/out/passwd")
    fs.pipe_file("/links/in/fine", b"f")  # a link that stays inside the claim is fine
    assert (claim_dir / "inside2/fine").read_bytes() == b"f"


# -- transfers -------------------------------------------------------------------------------------


def test_tree_put_and_get_are_batched(fs: PVCFileSystem, tmp_path: Path, claim_dir: Path) -> None:
    src = tmp_path / "src"
    files = {}
    for i in range(300):
        p = src / f"sub{i % 7}" / f"file {i}.txt"
        p.parent.mkdir(parents=True, exist_ok=True)
        files[p] = os.urandom(i * 13)
        p.write_bytes(files[p])
    (src / "empty").mkdir()
    before = sessions(fs)
    fs.put(str(src), "/batched", recursive=True)
    assert sessions(fs) - before <= 8, "a 300-file tree must not cost one exec per file"
    for p, data in files.items():
        assert (claim_dir / "batched" / p.relative_to(src)).read_bytes() == data
    assert (claim_dir / "batched/empty").is_dir()
    assert not [p for p in (claim_dir / "batched").iterdir() if p.name.startswith(".mr")]
    before = sessions(fs)
    fs.get("/batched", str(tmp_path / "back"), recursive=True)
    assert sessions(fs) - before <= 8
    for p, data in files.items():
        assert (tmp_path / "back" / p.relative_to(src)).read_bytes() == data


def test_put_files_reports_bytes_and_digests(fs: PVCFileSystem, tmp_path: Path) -> None:
    a = tmp_path / "a.bin"
    a.write_bytes(os.urandom(300_000))
    b = tmp_path / "b.bin"
    b.write_bytes(os.urandom(5 * MiB + 3))
    seen: list[int] = []

    class Bytes(Callback):
        def call(self, *args: object, **kwargs: object) -> None:
            seen.append(self.value)

    stats = fs.put_files([(str(a), "/pf/a.bin"), (str(b), "/pf/b.bin")], callback=Bytes())
    assert stats.files == 2 and stats.bytes == a.stat().st_size + b.stat().st_size
    # the transfer's own checksum
    assert stats.checksums["/pf/a.bin"] == sh.checksum_of(a.read_bytes())
    assert seen[-1] == stats.bytes
    assert fs.sha256(["/pf/b.bin"])["/pf/b.bin"] == sha(b.read_bytes())


@pytest.mark.parametrize("protocols", [(V5, V4), (V4,)], ids=["v5", "v4"])
def test_dropped_chunk_is_resent_once(protocols: tuple[str, ...], tmp_path: Path) -> None:
    data = os.urandom(40 * MiB + 12345)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    with LocalCluster(exec_protocols=protocols) as c:
        claim_dir = c.create_pvc("models")
        fs = PVCFileSystem(
            "models",
            kubeconfig=str(c.kubeconfig),
            chunk_size=4 * MiB,
            exec_protocols=protocols,
            skip_instance_cache=True,
        )
        try:
            fs.ls("/")
            before = sent(fs)
            # cut the stream carrying the chunk at 20 MiB (the middle) after 2 MiB
            c.faults.drop_exec_after(2 * MiB, direction="stdin", command=rf" {20 * MiB} {4 * MiB}$")
            stats = fs.put_files([(str(src), "/big.bin")])
            assert [f.kind for f in c.faults.fired] == ["exec-drop"]
            assert stats.chunks_resent == 1
            assert (claim_dir / "big.bin").read_bytes() == data
            ratio = (sent(fs) - before) / len(data)
            assert ratio < 1.2, ratio
            c.faults.drop_exec_after(MiB, direction="stdout", command=rf" {8 * MiB} {12 * MiB}$")
            stats = fs.get_files([("/big.bin", str(tmp_path / "back.bin"))])
            assert stats.chunks_resent == 1 and stats.bytes_received < 1.2 * len(data)
            assert (tmp_path / "back.bin").read_bytes() == data
            assert fs.helper.exec_client.sessions > 0
            assert {r.protocol for r in [fs.helper.exec(["true"])]} == {protocols[0]}
        finally:
            fs.close()


class _Interrupt(Exception):
    pass


def test_interrupted_upload_resumes_without_resending(
    fs: PVCFileSystem, tmp_path: Path, claim_dir: Path
) -> None:
    data = os.urandom(24 * MiB)
    src = tmp_path / "resume.bin"
    src.write_bytes(data)
    resumable = PVCFileSystem(
        "models", kubeconfig=fs.kubeconfig, chunk_size=4 * MiB, streams=1, skip_instance_cache=True
    )

    class StopHalfway(Callback):
        def call(self, *args: object, **kwargs: object) -> None:
            if self.value >= 13 * MiB:
                raise _Interrupt

    with pytest.raises(_Interrupt):
        resumable.put_files([(str(src), "/resume/r.bin")], callback=StopHalfway())
    assert not (claim_dir / "resume/r.bin").exists()
    parts = [p for p in (claim_dir / "resume").iterdir() if ".mrpart-" in p.name]
    assert len(parts) == 1
    before = sent(resumable)
    stats = resumable.put_files([(str(src), "/resume/r.bin")])
    assert stats.chunks_reused >= 3
    assert sent(resumable) - before <= len(data) - 3 * 4 * MiB + MiB
    assert (claim_dir / "resume/r.bin").read_bytes() == data
    assert not [p for p in (claim_dir / "resume").iterdir() if ".mrpart-" in p.name]


def test_killed_helper_mid_transfer(cluster: LocalCluster, tmp_path: Path, claim_dir: Path) -> None:
    data = os.urandom(48 * MiB)
    src = tmp_path / "kill.bin"
    src.write_bytes(data)
    fs = PVCFileSystem(
        "models",
        kubeconfig=str(cluster.kubeconfig),
        chunk_size=4 * MiB,
        streams=1,
        skip_instance_cache=True,
    )
    fs.ls("/")
    first = fs.helper.pod_name
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fs.put_files([(str(src), "/kill/k.bin")])
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        parts = (
            list((claim_dir / "kill").glob(".k.bin.mrpart-*"))
            if (claim_dir / "kill").exists()
            else []
        )
        if parts and parts[0].stat().st_size >= 12 * MiB:
            break
        time.sleep(0.02)
    assert first is not None
    cluster.kill_pod(first)
    t.join(120)
    assert not errors, errors
    assert fs.helper.pod_name != first
    assert (claim_dir / "kill/k.bin").read_bytes() == data
    fs.close()


def test_works_inside_a_running_event_loop(fs: PVCFileSystem) -> None:
    """Notebooks run our sync API while their own loop runs: we must not touch that loop."""
    import asyncio

    async def notebook_cell() -> bytes:
        fs.pipe_file("/loop/x", b"from a running loop")
        return fs.cat_file("/loop/x")

    assert asyncio.run(notebook_cell()) == b"from a running loop"


def test_forked_child_gets_its_own_helper(fs: PVCFileSystem, cluster: LocalCluster) -> None:
    import multiprocessing

    fs.ls("/", refresh=True)
    parent_pod = fs.helper.pod_name
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()

    def child() -> None:
        fs.pipe_file("/fork/child", b"c")
        queue.put(fs.helper.pod_name)

    proc = ctx.Process(target=child)
    proc.start()
    proc.join(120)
    child_pod = queue.get(timeout=5)
    assert proc.exitcode == 0 and child_pod != parent_pod
    assert cluster.get("Pod", parent_pod) is not None  # the child's exit left ours alone
    assert fs.cat_file("/fork/child") == b"c"


def test_get_files_with_a_cold_cache_stats_in_one_exec(fs: PVCFileSystem, tmp_path: Path) -> None:
    for i in range(40):
        fs.pipe_file(f"/cold/f{i}", str(i).encode())
    fs.invalidate_cache()
    infos = fs.stat_many(["/cold/f1", "/cold/nope"])
    assert infos["/cold/f1"]["size"] == 1 and infos["/cold/nope"] is None  # type: ignore[index]
    fs.invalidate_cache()
    before = sessions(fs)
    fs.get_files([(f"/cold/f{i}", str(tmp_path / f"f{i}")) for i in range(40)])
    assert sessions(fs) - before <= 3  # stat, cat, sha256
    assert (tmp_path / "f39").read_bytes() == b"39"
    with pytest.raises(FileNotFoundError):
        fs.get_files([("/cold/nope", str(tmp_path / "nope"))])


def test_exists_does_not_hide_cluster_errors(cluster: LocalCluster) -> None:
    from modelrepo.errors import ClusterError

    broken = PVCFileSystem(
        "no-such-claim", kubeconfig=str(cluster.kubeconfig), skip_instance_cache=True
    )
    with pytest.raises(ClusterError, match="create the PVC"):
        broken.exists("/anything")
