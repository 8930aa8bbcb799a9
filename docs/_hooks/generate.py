"""MkDocs hook: fill the generated parts of the pages from the code, at build time.

A page asks for a part with a marker ``<!-- generate: NAME -->``. Generating instead of
copying keeps one source for each fact: the CLI reference is what ``modelrepo <cmd> --help``
prints, the RBAC Role is what ``modelrepo.jobs.rbac_manifests`` returns, the two commands are
the README's. An unknown marker, or code the text no longer matches, fails the build.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
#: The width the CLI reference is rendered at (``COLUMNS`` for argparse); tests use it too.
HELP_COLUMNS = 74
_MARKER = re.compile(r"<!-- generate: ([a-z0-9-]+) -->")


@contextlib.contextmanager
def help_width(columns: int = HELP_COLUMNS) -> Iterator[None]:
    """argparse wraps help at ``$COLUMNS``: fix it, so the page never depends on a terminal."""
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(columns)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = saved


def subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of every ``modelrepo`` subcommand, in ``--help`` order."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            summaries = {a.dest: a.help or "" for a in action._choices_actions}
            return [(name, summaries.get(name, ""), p) for name, p in action.choices.items()]
    raise RuntimeError("modelrepo.cli.build_parser() has no subcommands")


def cli_reference() -> str:
    from modelrepo.cli import build_parser

    with help_width():
        parser = build_parser()
        parts = ["```text", "$ modelrepo --help", parser.format_help().rstrip(), "```", ""]
        for name, summary, sub in subcommands(parser):
            parts += [
                f"## modelrepo {name}",
                "",
                f"{summary[:1].upper()}{summary[1:]}.",
                "",
                "```text",
                f"$ modelrepo {name} --help",
                sub.format_help().rstrip(),
                "```",
                "",
            ]
    return "\n".join(parts)


def cli_exit_codes() -> str:
    """The exit-code paragraph of ``modelrepo.cli``'s docstring (its one source)."""
    import modelrepo.cli

    doc = modelrepo.cli.__doc__ or ""
    paragraph = next((p for p in doc.split("\n\n") if p.startswith("Exit codes:")), None)
    if paragraph is None:
        raise RuntimeError("modelrepo/cli.py's docstring no longer has an 'Exit codes:' paragraph")
    return " ".join(paragraph.replace("``", "`").split())


#: Why each granted verb is needed: (API group, resource) -> verb -> reason. The build fails
#: when RBAC_RULES grants a verb this table does not explain, or this table explains one it
#: no longer grants.
RBAC_WHY: dict[tuple[str, str], dict[str, str]] = {
    ("", "pods"): {
        "create": "start the helper pod that mounts the claim",
        "get": "wait for the helper pod to run; check it is alive before reusing it",
        "list": "find the node a ReadWriteOnce claim is attached to; find stale helper pods "
        "(`modelrepo cleanup`); follow a Job's pod; find Triton pods labelled `app=<name>` "
        "when there is no Service",
        "watch": "not called by modelrepo itself (it polls); kept for tools that follow pods",
        "delete": "remove the helper pod when done, and stale ones",
    },
    ("", "pods/exec"): {
        "get": "every file operation runs in the helper pod over exec; a WebSocket exec "
        "starts with a GET",
        "create": "the same exec, as newer API servers authorize WebSocket exec (and as SPDY "
        "clients such as `kubectl exec` send it)",
    },
    ("", "pods/log"): {"get": "stream a Job's log lines to the notebook"},
    ("", "persistentvolumeclaims"): {
        "get": "check the claim exists, is bound, and read its access modes",
        "list": "not called by modelrepo itself; lets a user see which claims exist",
    },
    ("", "services"): {
        "get": "not called by modelrepo itself (it reads the Endpoints of the Service)",
        "list": "not called by modelrepo itself; lets a user find the Triton Service",
    },
    ("", "endpoints"): {
        "get": "find every Triton replica behind the Service `triton=` names",
        "list": "not called by modelrepo itself",
    },
    ("batch", "jobs"): {
        "create": "run the S3 sync (Option A) or build (Option B) Job",
        "get": "poll the Job's status",
        "list": "not called by modelrepo itself",
        "watch": "not called by modelrepo itself (it polls)",
        "delete": "delete the Job (and its pods) when the call returns",
    },
}


def _rbac_grants() -> dict[tuple[str, str], list[str]]:
    from modelrepo.jobs import RBAC_RULES

    grants: dict[tuple[str, str], list[str]] = {}
    for rule in RBAC_RULES:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                grants.setdefault((group, resource), []).extend(rule["verbs"])
    return grants


def rbac_table() -> str:
    grants = _rbac_grants()
    explained = {(key, verb) for key, verbs in RBAC_WHY.items() for verb in verbs}
    granted = {(key, verb) for key, verbs in grants.items() for verb in verbs}
    if explained != granted:
        raise RuntimeError(
            "docs/_hooks/generate.py RBAC_WHY is out of date with modelrepo.jobs.RBAC_RULES: "
            f"unexplained {sorted(granted - explained)}, no longer granted "
            f"{sorted(explained - granted)}"
        )
    rows = ["| API group | resource | verb | why |", "|---|---|---|---|"]
    for (group, resource), verbs in grants.items():
        for verb in verbs:
            why = RBAC_WHY[(group, resource)][verb]
            rows.append(f"| `{group or 'core'}` | `{resource}` | `{verb}` | {why} |")
    return "\n".join(rows)


def rbac_role() -> str:
    from modelrepo.jobs import rbac_manifests, to_yaml

    docs = rbac_manifests("modelrepo", "ml", users=["alice@example.com"])
    return "```yaml\n" + to_yaml(docs).rstrip() + "\n```"


def readme_commands() -> str:
    """The README's 'Two commands' section, minus its heading (the README is the source)."""
    text = (ROOT / "README.md").read_text()
    match = re.search(r"^## (Two commands[^\n]*)\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    if match is None:
        raise RuntimeError("README.md has no '## Two commands ...' section any more")
    return f"**{match.group(1)}**\n\n{match.group(2).strip()}"


def readme_example() -> str:
    """The README's first Python example (the three calls the project is about)."""
    match = re.search(r"^```python\n.*?^```$", (ROOT / "README.md").read_text(), re.M | re.S)
    if match is None:
        raise RuntimeError("README.md has no ```python example any more")
    return match.group(0)


GENERATORS: dict[str, Callable[[], str]] = {
    "readme-example": readme_example,
    "cli-reference": cli_reference,
    "cli-exit-codes": cli_exit_codes,
    "rbac-table": rbac_table,
    "rbac-role": rbac_role,
    "readme-commands": readme_commands,
}


def render(markdown: str) -> str:
    """Replace every marker in ``markdown``; an unknown marker is an error."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in GENERATORS:
            raise RuntimeError(f"unknown generated part {name!r}; known: {sorted(GENERATORS)}")
        return GENERATORS[name]()

    return _MARKER.sub(one, markdown)


#: Pages other issues are writing: listed under "Design" in the nav once the file exists.
LATER_PAGES = {"reliability.md": "Reliability"}


def nav_with_later_pages(nav: list[Any], docs_dir: Path) -> list[Any]:
    """``nav`` plus each page of :data:`LATER_PAGES` that exists and is not listed yet."""
    listed = repr(nav)
    design = next(
        (item["Design"] for item in nav if isinstance(item, dict) and "Design" in item), None
    )
    if design is None:
        raise RuntimeError("mkdocs.yml's nav has no 'Design' section for the later pages")
    for page, title in LATER_PAGES.items():
        if (docs_dir / page).exists() and f"'{page}'" not in listed:
            design.append({title: page})
    return nav


def on_config(config: Any, **kwargs: Any) -> Any:
    config["nav"] = nav_with_later_pages(config["nav"], Path(config["docs_dir"]))
    return config


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    return render(markdown)
