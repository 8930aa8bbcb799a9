"""The ``modelrepo`` command: the SDK's verbs for shells and scripts.

Exit codes: 0 success, 1 the operation failed (Triton refused, a transfer failed...),
2 bad usage or bad input (the message says what to fix), 130 interrupted.
``--json`` prints a machine-readable result on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, is_dataclass
from typing import Any

from modelrepo.errors import InputError, LayoutError, ModelRepoError

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _repo_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_argument_group("repository and Triton")
    where.add_argument(
        "--pvc",
        default="triton-model-repo",
        help="the PersistentVolumeClaim (default: %(default)s)",
    )
    where.add_argument(
        "--url",
        help="the repository as an fsspec URL instead of --pvc "
        "(pvc://claim/path, s3://bucket/prefix, file:///path)",
    )
    where.add_argument(
        "-n", "--namespace", help="Kubernetes namespace (default: the kubeconfig context's)"
    )
    where.add_argument(
        "--kubeconfig", help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)"
    )
    where.add_argument("--context", help="kubeconfig context")
    where.add_argument(
        "--root",
        default="",
        help="folder inside the claim holding the model repository (default: the claim's top)",
    )
    where.add_argument(
        "--triton",
        action="append",
        help="Triton: a Service name (every pod behind it is addressed) or a replica's "
        "host:port (repeatable); needed by load, unload, status and --load",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def _open_repo(args: argparse.Namespace):
    from modelrepo.repo import ModelRepo

    triton: Any = args.triton
    if triton and len(triton) == 1:
        triton = triton[0]
    common = {
        "triton": triton,
        "kubeconfig": args.kubeconfig,
        "context": args.context,
        "namespace": args.namespace,
    }
    if args.url:
        return ModelRepo.from_url(args.url, **common)
    return ModelRepo(pvc=args.pvc, root=args.root, **common)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if is_dataclass(value) and not isinstance(value, type):
        return {k: _jsonable(v) for k, v in asdict(value).items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def _emit(args: argparse.Namespace, value: Any) -> None:
    if getattr(args, "json", False):
        json.dump(_jsonable(value), sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    elif isinstance(value, list) and all(isinstance(v, (str, int)) for v in value):
        for v in value:
            print(v)
    else:
        print(value)


def _cmd_push(args: argparse.Namespace) -> int:
    with _open_repo(args) as repo:
        result = repo.push(
            args.model,
            args.source,
            version=args.version,
            config=args.config,
            load=args.load,
            keep_versions=args.keep_versions,
            progress=not args.json,
            via=args.via,
            **_job_arguments(args),
        )
    _emit(args, result)
    return 0 if result.loaded is None or result.loaded.ok else EXIT_FAILED


def _job_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """push --via job options, passed only when given (so via=exec never sees them)."""
    if args.via != "job":
        return {}
    return {"secret": args.secret, "endpoint_url": args.endpoint_url, "image": args.image}


def _cmd_build(args: argparse.Namespace) -> int:
    inputs = dict(_key_value(item, "--input") for item in args.input or [])
    env = dict(_key_value(item, "--env") for item in args.env or [])
    with _open_repo(args) as repo:
        result = repo.build(
            args.model,
            image=args.image,
            command=args.command,
            inputs=inputs,
            env=env,
            version=args.version,
            config=args.config,
            load=args.load,
            gpus=args.gpus,
            timeout=args.timeout,
        )
    _emit(args, result)
    return 0 if result.loaded is None or result.loaded.ok else EXIT_FAILED


def _key_value(item: str, flag: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise InputError(f"{flag} {item!r} is not NAME=VALUE", hint=f"write {flag} name=value")
    return key, value


def _cmd_manifests(args: argparse.Namespace) -> int:
    from modelrepo.jobs import to_yaml

    options: dict[str, Any] = {"replicas": args.replicas, "gpus": args.gpus}
    if args.image:
        options["image"] = args.image
    if args.mode == "init-sync":
        options.update(s3_source=args.s3_source, secret=args.secret, endpoint_url=args.endpoint_url)
    with _open_repo(args) as repo:
        docs = repo.manifests(
            args.mode, name=args.name, path=args.output, rbac=not args.no_rbac, **options
        )
    if args.json:
        _emit(args, docs)
    elif args.output is None:
        sys.stdout.write(to_yaml(docs))
    else:
        print(f"wrote {len(docs)} manifests to {args.output}")
    return 0


def _cmd_ls(args: argparse.Namespace) -> int:
    with _open_repo(args) as repo:
        _emit(args, repo.list_models())
    return 0


def _cmd_versions(args: argparse.Namespace) -> int:
    with _open_repo(args) as repo:
        versions = repo.list_versions(args.model, detail=args.detail)
    _emit(args, versions)
    return 0


def _cmd_load(args: argparse.Namespace) -> int:
    with _open_repo(args) as repo:
        result = repo.load(args.model, version=args.version, strict=True)
    _emit(args, result)
    return 0 if result.ok else EXIT_FAILED


def _cmd_unload(args: argparse.Namespace) -> int:
    with _open_repo(args) as repo:
        result = repo.unload(args.model)
    _emit(args, result)
    return 0 if result.ok else EXIT_FAILED


def _cmd_status(args: argparse.Namespace) -> int:
    with _open_repo(args) as repo:
        _emit(args, repo.status(args.model))
    return 0


def _cmd_cleanup(args: argparse.Namespace) -> int:
    from modelrepo.transport.api import connect
    from modelrepo.transport.helper import cleanup

    with _open_repo(args) as repo:
        removed = repo.cleanup(args.model, older_than=args.older_than)
        if repo.pvc:
            api = connect(args.kubeconfig, args.context, args.namespace)
            try:
                removed += cleanup(api, claim=repo.pvc)
            finally:
                api.close()
    _emit(args, removed)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from modelrepo.demo import run_demo

    return run_demo(keep=args.keep, replicas=args.replicas, duration=args.duration)


def _cmd_rps(args: argparse.Namespace) -> int:
    from modelrepo.triton.rps.cli import run_rps_command

    if any(":" not in target for target in args.url):
        # A Service name: every pod behind it, or the Service's own address (--replicas).
        from modelrepo.discovery import triton_addresses
        from modelrepo.transport.api import connect

        api = connect(args.kubeconfig, args.context, args.namespace)
        try:
            args.url = [
                url
                for target in args.url
                for url in triton_addresses(target, args.replicas, lambda: api)
            ]
        finally:
            api.close()
    return run_rps_command(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelrepo",
        description="Publish models into a Triton model repository on a Kubernetes PVC, "
        "load them on every replica, and measure their RPS.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("push", help="publish a model folder as the next version")
    _repo_arguments(p)
    p.add_argument("model", help="the model's name (its folder in the repository)")
    p.add_argument(
        "source", nargs="?", help="local folder or fsspec URL (default: ./model_repository/MODEL)"
    )
    p.add_argument(
        "--version", type=int, help="publish as this version number (refused if it exists)"
    )
    p.add_argument(
        "--config",
        help="a config.pbtxt file to publish with the model, replacing the model's "
        "(default: the source's own, else the repository's)",
    )
    p.add_argument(
        "--keep-versions",
        action="store_true",
        help="publish every version folder of the source under its own number "
        "(default: only the newest, as the next version)",
    )
    p.add_argument("--load", action="store_true", help="load on every Triton replica afterwards")
    job = p.add_argument_group("in-cluster sync (--via job, seed Option A)")
    job.add_argument(
        "--via",
        choices=("exec", "job"),
        default="exec",
        help="exec: send the files from here through the helper pod (default); "
        "job: a Kubernetes Job runs `aws s3 sync` from an s3:// SOURCE into the claim",
    )
    job.add_argument("--secret", help="Secret with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")
    job.add_argument("--endpoint-url", help="S3-compatible endpoint (MinIO, Ceph...)")
    job.add_argument("--image", help="image with the aws CLI (default: amazon/aws-cli)")
    p.set_defaults(func=_cmd_push)

    p = sub.add_parser("build", help="build a model in a Kubernetes Job and publish the output")
    _repo_arguments(p)
    p.add_argument("model", help="the model's name (its folder in the repository)")
    p.add_argument("--image", required=True, help="the build image (e.g. a TensorRT-LLM image)")
    p.add_argument(
        "--command",
        help="shell command; {output} and {inputs[NAME]} are replaced, quoted "
        "(default: the trtllm-build template, which needs --input checkpoint=...)",
    )
    p.add_argument(
        "--input",
        action="append",
        metavar="NAME=FOLDER",
        help="a claim folder mounted read-only at /inputs/NAME (repeatable)",
    )
    p.add_argument(
        "--env",
        action="append",
        metavar="NAME=VALUE",
        help="build environment variable (repeatable)",
    )
    p.add_argument(
        "--version", type=int, help="publish as this version number (refused if it exists)"
    )
    p.add_argument("--config", help="config.pbtxt to use when the build writes one version's files")
    p.add_argument("--gpus", type=int, default=0, help="nvidia.com/gpu limit (default: 0)")
    p.add_argument(
        "--timeout",
        type=float,
        help="seconds to wait for the Job (default: until it ends; its own deadline is 6 h)",
    )
    p.add_argument("--load", action="store_true", help="load on every Triton replica afterwards")
    p.set_defaults(func=_cmd_build)

    p = sub.add_parser("manifests", help="print Triton Deployment/Service/PVC and RBAC manifests")
    _repo_arguments(p)
    p.add_argument(
        "--mode",
        choices=("pvc", "init-sync"),
        default="pvc",
        help="pvc: Triton mounts the claim (explicit model control); init-sync: an init "
        "container syncs S3 into an emptyDir on every pod start (seed Option C)",
    )
    p.add_argument(
        "--name", default="triton", help="Deployment and Service name (default: %(default)s)"
    )
    p.add_argument("--replicas", type=int, default=1, help="Triton replicas (default: 1)")
    p.add_argument("--gpus", type=int, default=0, help="GPUs per replica (default: 0)")
    p.add_argument("--image", help="Triton image (default: modelrepo.jobs.DEFAULT_TRITON_IMAGE)")
    p.add_argument("--s3-source", help="init-sync: s3://bucket/prefix of the model repository")
    p.add_argument("--secret", help="init-sync: Secret with the AWS keys")
    p.add_argument("--endpoint-url", help="init-sync: S3-compatible endpoint")
    p.add_argument("--no-rbac", action="store_true", help="leave out modelrepo's Role/RoleBinding")
    p.add_argument("-o", "--output", help="write YAML to this file instead of stdout")
    p.set_defaults(func=_cmd_manifests)

    p = sub.add_parser("ls", help="list the models in the repository")
    _repo_arguments(p)
    p.set_defaults(func=_cmd_ls)

    p = sub.add_parser("versions", help="list a model's published versions")
    _repo_arguments(p)
    p.add_argument("model", help="the model's name")
    p.add_argument(
        "-l", "--detail", action="store_true", help="size, files and date of each version"
    )
    p.set_defaults(func=_cmd_versions)

    p = sub.add_parser("load", help="load a model on every Triton replica")
    _repo_arguments(p)
    p.add_argument("model", help="the model's name")
    p.add_argument(
        "--version",
        type=int,
        help="serve only this version (default: what config.pbtxt's version policy says, "
        "usually the newest)",
    )
    p.set_defaults(func=_cmd_load)

    p = sub.add_parser("unload", help="unload a model from every Triton replica")
    _repo_arguments(p)
    p.add_argument("model", help="the model's name")
    p.set_defaults(func=_cmd_unload)

    p = sub.add_parser("status", help="model states on every Triton replica")
    _repo_arguments(p)
    p.add_argument("model", nargs="?", help="only this model (default: every model)")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser(
        "cleanup", help="remove leftovers of interrupted pushes and stale helper pods"
    )
    _repo_arguments(p)
    p.add_argument("model", nargs="?", help="only this model (default: every model)")
    p.add_argument(
        "--older-than",
        type=float,
        default=3600.0,
        help="remove staging folders and version reservations older than this many seconds, "
        "so pushes in flight are spared (default: %(default)s); stale helper pods of the "
        "claim go whatever their age",
    )
    p.set_defaults(func=_cmd_cleanup)

    p = sub.add_parser("rps", help="measure requests per second and latency of a model")
    from modelrepo.triton.rps.cli import add_rps_arguments

    add_rps_arguments(p)
    cluster = p.add_argument_group("finding the pods of a Triton Service (--triton NAME)")
    cluster.add_argument(
        "--replicas",
        choices=("all", "service"),
        default="all",
        help="all: every pod behind the Service, round-robin (default); service: through the "
        "Service's cluster DNS name, as its clients",
    )
    cluster.add_argument("-n", "--namespace", help="namespace (default: the context's)")
    cluster.add_argument("--kubeconfig", help="kubeconfig file")
    cluster.add_argument("--context", help="kubeconfig context")
    p.set_defaults(func=_cmd_rps)

    p = sub.add_parser(
        "demo", help="run the whole flow on a local cluster emulator with real Triton replicas"
    )
    p.add_argument("--keep", action="store_true", help="leave it running and print how to connect")
    p.add_argument("--replicas", type=int, default=2, help="Triton replicas (default: %(default)s)")
    p.add_argument(
        "--duration", type=float, default=2.0, help="seconds per RPS step (default: %(default)s)"
    )
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `modelrepo ls --json | head`: the reader left, not an error
        sys.stderr.close()
        return 0
    except (InputError, LayoutError, FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ModelRepoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
