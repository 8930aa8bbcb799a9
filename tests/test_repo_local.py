"""ModelRepo on a local folder (``file://``): versions, atomic publish, dedup, errors."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from fsspec.implementations.local import LocalFileSystem

from modelrepo import ModelRepo
from modelrepo.errors import LayoutError, ModelRepoError, TransferError, VersionExistsError
from modelrepo.testing.models import write_add_one_model


@pytest.fixture
def source(tmp_path: Path) -> Path:
    folder = write_add_one_model(tmp_path / "src" / "model_repository", "add_one")
    (folder / "1" / "weights.bin").write_bytes(b"\x01" * 300_000)
    return folder


@pytest.fixture
def claim(tmp_path: Path) -> Path:
    path = tmp_path / "claim"
    path.mkdir()
    return path


@pytest.fixture
def repo(claim: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModelRepo:
    monkeypatch.setenv("MODELREPO_CACHE_DIR", str(tmp_path / "cache"))
    return ModelRepo.from_url(f"file://{claim}", progress=False)


def published_files(claim: Path) -> set[str]:
    return {
        str(p.relative_to(claim))
        for p in claim.rglob("*")
        if p.is_file() and ".modelrepo" not in p.parts
    }


def test_push_twice_gives_versions_one_and_two_and_dedups(
    repo: ModelRepo, source: Path, claim: Path
):
    first = repo.push("add_one", source=source)
    assert first.version == 1
    assert first.files == 2
    assert first.bytes_sent == sum(f.stat().st_size for f in (source / "1").iterdir())
    assert first.bytes_skipped == 0

    second = repo.push("add_one", source=source)
    assert second.version == 2
    assert second.bytes_sent == 0
    assert second.bytes_skipped == first.bytes_sent
    assert repo.list_versions("add_one") == [1, 2]
    assert (claim / "add_one" / "2" / "weights.bin").read_bytes() == b"\x01" * 300_000
    assert (claim / "add_one" / "config.pbtxt").read_text() == (source / "config.pbtxt").read_text()
    assert "version=2" in repr(second) and "sent=0 B" in repr(second)


def test_caches_and_editor_files_are_not_pushed(repo: ModelRepo, source: Path, claim: Path):
    (source / "1" / "__pycache__").mkdir()
    (source / "1" / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"pyc")
    (source / "1" / ".ipynb_checkpoints").mkdir()
    (source / "1" / ".ipynb_checkpoints" / "model-checkpoint.py").write_text("old")
    result = repo.push("add_one", source=source)
    assert result.files == 2
    pushed = sorted(p.name for p in (claim / "add_one" / "1").iterdir())
    assert pushed == ["model.py", "weights.bin"]


def test_changed_file_is_sent_and_unchanged_is_skipped(repo: ModelRepo, source: Path):
    repo.push("add_one", source=source)
    (source / "1" / "weights.bin").write_bytes(b"\x02" * 1000)
    result = repo.push("add_one", source=source)
    assert result.bytes_sent == 1000
    assert result.bytes_skipped == (source / "1" / "model.py").stat().st_size


def test_explicit_version_and_refusal_when_it_exists(repo: ModelRepo, source: Path):
    assert repo.push("add_one", source=source, version=5).version == 5
    with pytest.raises(VersionExistsError, match=r"version 5 already exists"):
        repo.push("add_one", source=source, version=5)
    assert repo.push("add_one", source=source).version == 6


def test_keep_versions_publishes_source_numbers(repo: ModelRepo, source: Path):
    (source / "3").mkdir()
    (source / "3" / "model.py").write_text((source / "1" / "model.py").read_text())
    result = repo.push("add_one", source=source, keep_versions=True)
    assert repo.list_versions("add_one") == [1, 3]
    assert result.version == 3


def test_default_pushes_the_highest_source_version_as_next(repo: ModelRepo, source: Path):
    (source / "7").mkdir()
    (source / "7" / "model.py").write_text("# newest\n" + (source / "1" / "model.py").read_text())
    repo.push("add_one", source=source)
    assert repo.list_versions("add_one") == [1]
    assert repo.fs.cat_file(f"{repo.store.version_path('add_one', 1)}/model.py").startswith(
        b"# newest"
    )


def test_version_files_need_a_config(repo: ModelRepo, source: Path):
    with pytest.raises(ModelRepoError, match=r"no config\.pbtxt yet"):
        repo.push("add_one", source=source / "1")
    result = repo.push("add_one", source=source / "1", config=str(source / "config.pbtxt"))
    assert result.version == 1
    # next time the repository's own config serves
    assert repo.push("add_one", source=source / "1").version == 2


def test_invalid_layout_writes_nothing(repo: ModelRepo, source: Path, claim: Path):
    config = source / "config.pbtxt"
    config.write_text(config.read_text().replace('name: "add_one"', 'name: "other"'))
    with pytest.raises(LayoutError, match=r"config\.pbtxt"):
        repo.push("add_one", source=source)
    assert list(claim.iterdir()) == []


def test_missing_source_says_where_it_looked(repo: ModelRepo, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelRepoError, match=r"model_repository/ghost") as err:
        repo.push("ghost")
    assert "source=" in str(err.value)


@pytest.mark.parametrize("name", ["../evil", "a/b", "", "x;rm -rf /", ".hidden", "a b"])
def test_hostile_model_names_are_refused(repo: ModelRepo, source: Path, name: str, claim: Path):
    with pytest.raises(ModelRepoError, match="invalid model name"):
        repo.push(name, source=source)
    assert list(claim.iterdir()) == []


def test_symlink_leaving_the_source_is_refused(repo: ModelRepo, source: Path, tmp_path: Path):
    secret = tmp_path / "secret.txt"
    secret.write_text("do not upload")
    (source / "1" / "leak.txt").symlink_to(secret)
    with pytest.raises(ModelRepoError, match="outside the model folder"):
        repo.push("add_one", source=source)


class FailingFS(LocalFileSystem):
    """A real local filesystem whose n-th file upload fails, as a dropped transfer would."""

    def __init__(self, fail_on: int, **kw):
        super().__init__(**kw)
        self.fail_on = fail_on
        self.calls = 0

    def put_file(self, lpath, rpath, callback=None, **kwargs):
        self.calls += 1
        if self.calls == self.fail_on:
            raise ConnectionError("stream dropped")
        return super().put_file(lpath, rpath, callback=callback, **kwargs)


def test_failed_push_leaves_no_version_and_no_staging(
    source: Path, claim: Path, tmp_path, monkeypatch
):
    monkeypatch.setenv("MODELREPO_CACHE_DIR", str(tmp_path / "cache"))
    fs = FailingFS(fail_on=2, skip_instance_cache=True)
    repo = ModelRepo(pvc=None, root=str(claim), fs=fs, progress=False)
    with pytest.raises(ConnectionError):
        repo.push("add_one", source=source)
    assert repo.list_versions("add_one") == []
    meta = claim / "add_one" / ".modelrepo"
    assert not [p for p in meta.iterdir() if p.name.startswith("staging-")]
    assert not list((meta / "reserved").iterdir())
    fs.fail_on = -1
    assert repo.push("add_one", source=source).version == 1


def test_a_file_rewritten_during_the_push_is_refused_and_nothing_published(
    repo: ModelRepo, source: Path, claim: Path
):
    """A build still writing its weights must not yield a version whose manifest lies."""
    weights = source / "1" / "weights.bin"

    def build_still_writing(done: int, total: int) -> None:
        if weights.stat().st_size == 300_000:
            with weights.open("ab") as f:
                f.write(b"more")

    with pytest.raises(TransferError, match="changed while they were being pushed") as err:
        repo.push("add_one", source=source, progress=build_still_writing)
    assert "weights.bin" in str(err.value) and "push again" in str(err.value)
    assert repo.list_versions("add_one") == []
    meta = claim / "add_one" / ".modelrepo"
    assert not [p for p in meta.iterdir() if p.name.startswith("staging-")]
    assert not list((meta / "reserved").iterdir())
    assert repo.push("add_one", source=source).version == 1  # finished: it goes through


def test_concurrent_pushes_get_distinct_complete_versions(
    repo: ModelRepo, source: Path, claim: Path
):
    results, errors = [], []

    def push():
        try:
            results.append(repo.push("add_one", source=source))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=push) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(r.version for r in results) == [1, 2, 3, 4]
    for v in (1, 2, 3, 4):
        assert sorted(p.name for p in (claim / "add_one" / str(v)).iterdir()) == [
            "model.py",
            "weights.bin",
        ]


def test_list_versions_detail_delete_and_prune(repo: ModelRepo, source: Path):
    for _ in range(4):
        repo.push("add_one", source=source)
    info = repo.list_versions("add_one", detail=True)
    assert [i.version for i in info] == [1, 2, 3, 4]
    assert info[0].files == 2 and info[0].size > 300_000 and info[0].modified
    assert repr(info).splitlines()[0].split() == ["version", "size", "files", "modified"]
    assert "<td>4</td>" in info._repr_html_()
    repo.delete_version("add_one", 2)
    assert repo.list_versions("add_one") == [1, 3, 4]
    assert repo.prune("add_one", keep=1) == [1, 3]
    assert repo.list_versions("add_one") == [4]
    assert repo.list_models() == ["add_one"]


def test_cleanup_reaps_staging_left_by_a_killed_push(repo: ModelRepo, source: Path, claim: Path):
    repo.push("add_one", source=source)
    staging = repo.store.new_staging("add_one")
    repo.fs.pipe_file(f"{staging}/half.bin", b"x")
    removed = repo.cleanup("add_one", older_than=0)
    assert any("staging-" in r for r in removed)
    assert not repo.fs.exists(staging)
    assert repo.list_versions("add_one") == [1]


@pytest.mark.slow
def test_push_then_load_on_real_triton(local_triton, source: Path, tmp_path, monkeypatch):
    monkeypatch.setenv("MODELREPO_CACHE_DIR", str(tmp_path / "cache"))
    repo = ModelRepo.from_url(
        f"file://{local_triton.repository}", triton=local_triton.url, progress=False
    )
    result = repo.push("add_one", source=source, load=True)
    assert result.loaded is not None and result.loaded.ok
    repo.push("add_one", source=source)
    loaded = repo.load("add_one", version=1)
    assert loaded.ok
    assert repo.status("add_one").loaded_versions("add_one") == [1]
    repo.load("add_one")
    assert repo.status("add_one").loaded_versions("add_one") == [2]
    repo.unload("add_one")
    assert repo.status("add_one").loaded_versions("add_one") == []
