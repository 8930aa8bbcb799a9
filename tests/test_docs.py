"""The documentation site builds with no warning, and its CLI reference is what ``--help`` says.

``mkdocs build --strict`` fails on any warning: a broken link or anchor, a missing image, an
API reference to an object that does not exist, a docstring mkdocstrings cannot parse, a page
left out of the nav. The generated parts (CLI reference, RBAC Role, README commands) come from
``docs/_hooks/generate.py``; the slow test compares the built CLI page with the real
``modelrepo <command> --help`` output, so a drift between the two fails CI.
"""

from __future__ import annotations

import html
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
BUILD_TIMEOUT_S = 240


def _hooks() -> ModuleType:
    """docs/_hooks/generate.py, imported by path as mkdocs does."""
    spec = importlib.util.spec_from_file_location(
        "modelrepo_docs_hooks", DOCS / "_hooks" / "generate.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if "_hooks" not in p.parts)


def _nav_files(nav: object) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, list):
        return [f for item in nav for f in _nav_files(item)]
    if isinstance(nav, dict):
        return [f for value in nav.values() for f in _nav_files(value)]
    return []


def _modelrepo_command() -> list[str]:
    script = Path(sys.executable).parent / "modelrepo"
    return [str(script)] if script.exists() else [sys.executable, "-m", "modelrepo.cli"]


def test_every_generated_part_renders_and_unknown_markers_fail() -> None:
    hooks = _hooks()
    used = set()
    for page in _pages():
        text = page.read_text()
        used |= set(hooks._MARKER.findall(text))
        rendered = hooks.render(text)
        assert "<!-- generate:" not in rendered, page
    assert used == set(hooks.GENERATORS), "a generator no page uses, or a marker no generator fills"
    with pytest.raises(RuntimeError, match="unknown generated part"):
        hooks.render("<!-- generate: no-such-part -->")


def test_rbac_page_is_the_code_and_every_granted_verb_is_explained() -> None:
    from modelrepo.jobs import RBAC_RULES, rbac_manifests

    hooks = _hooks()
    table = hooks.rbac_table()
    for rule in RBAC_RULES:
        for resource in rule["resources"]:
            for verb in rule["verbs"]:
                assert f"| `{resource}` | `{verb}` |" in table
    role = hooks.rbac_role()
    docs = list(yaml.safe_load_all(role.removeprefix("```yaml\n").removesuffix("\n```")))
    assert docs == rbac_manifests("modelrepo", "ml", users=["alice@example.com"])
    # A verb granted without a reason in the docs fails the build.
    saved = hooks.RBAC_WHY[("", "pods/log")]
    hooks.RBAC_WHY[("", "pods/log")] = {}
    try:
        with pytest.raises(RuntimeError, match="out of date"):
            hooks.rbac_table()
    finally:
        hooks.RBAC_WHY[("", "pods/log")] = saved


def test_every_page_is_in_the_nav() -> None:
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=yaml.BaseLoader)
    in_nav = set(_nav_files(_hooks().nav_with_later_pages(config["nav"], DOCS)))
    on_disk = {str(p.relative_to(DOCS)) for p in _pages()}
    assert on_disk == in_nav
    assert config["strict"] == "true"


@pytest.mark.slow
def test_site_builds_strict_and_cli_reference_matches_help(tmp_path: Path) -> None:
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "-f",
            str(ROOT / "mkdocs.yml"),
            "-d",
            str(site),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
    )
    log = build.stdout + build.stderr
    assert build.returncode == 0, f"mkdocs build --strict failed:\n{log}"
    assert "WARNING" not in log, log

    # The API reference really rendered the objects (not an empty page).
    api = (site / "api" / "repo" / "index.html").read_text()
    assert 'id="modelrepo.repo.ModelRepo.push"' in api
    assert (site / "img" / "panel.png").exists()
    assert 'src="../img/panel.png"' in (site / "notebooks" / "index.html").read_text()

    # The CLI page shows exactly what each command's --help prints.
    page = (site / "cli" / "index.html").read_text()
    text = html.unescape(re.sub(r"<[^>]+>", "", page))
    hooks = _hooks()
    from modelrepo.cli import build_parser

    names = [name for name, _, _ in hooks.subcommands(build_parser())]
    assert {"push", "ls", "versions", "load", "unload", "status", "rps", "demo", "cleanup"} <= set(
        names
    )
    help_env = {**os.environ, "COLUMNS": str(hooks.HELP_COLUMNS)}
    for argv in [[], *[[name] for name in names]]:
        shown = subprocess.run(
            [*_modelrepo_command(), *argv, "--help"],
            env=help_env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.rstrip()
        assert f"$ modelrepo {' '.join([*argv, '--help'])}\n{shown}" in text, (
            f"docs/cli.md is out of date for `modelrepo {' '.join(argv)} --help`"
        )
        if argv:
            assert f'id="modelrepo-{argv[0]}"' in page


@pytest.mark.slow
def test_the_documented_role_is_all_modelrepo_needs(local_cluster, tmp_path: Path) -> None:
    """docs/rbac.md says its Role covers everything: a user bound to it alone pushes, loads,
    builds in a Job and cleans up; a user without it gets a 403 that names the missing rule."""
    from modelrepo import ModelRepo
    from modelrepo.cli import main as cli_main
    from modelrepo.errors import ClusterError
    from modelrepo.jobs import rbac_manifests
    from modelrepo.testing.models import write_add_one_model

    cluster = local_cluster
    cluster.create_pvc("models")
    for doc in rbac_manifests("modelrepo", "default", users=["alice"]):
        cluster.create(doc)
    alice = cluster.add_user("alice")
    cluster.deploy_triton(name="triton", claim="models", replicas=1)
    source = write_add_one_model(tmp_path / "model_repository", "add_one")
    with ModelRepo(
        pvc="models", namespace="default", kubeconfig=alice, triton="triton", progress=False
    ) as repo:
        assert repo.push("add_one", source=source).version == 1
        assert repo.load("add_one", strict=True).ok
        assert repo.status("add_one").ready("add_one", 1)
        built = repo.build(
            "add_one",
            image="busybox",
            command="cp {inputs[v1]}/model.py {output}/",
            inputs={"v1": "add_one/1"},
            timeout=120,
        )
        assert built.version == 2
    common = ["--pvc", "models", "-n", "default", "--kubeconfig", str(alice)]
    assert cli_main(["cleanup", *common, "--json"]) == 0

    stranger = cluster.add_user("bob")
    with (
        pytest.raises(ClusterError, match="verb 'get' on resource 'persistentvolumeclaims'"),
        ModelRepo(pvc="models", namespace="default", kubeconfig=stranger) as repo,
    ):
        repo.list_models()
