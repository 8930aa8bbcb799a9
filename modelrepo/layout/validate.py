"""Check a model folder the way Triton would before any byte moves.

Works on any fsspec filesystem and lists the folder with ONE ``fs.find`` call (the PVC
filesystem answers that in a single round trip); only ``config.pbtxt`` is read. Every problem
found is reported at once in a :class:`~modelrepo.errors.LayoutError`, each naming the file
(and line, where the config text tells) and saying what to do.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, Literal

from modelrepo.errors import LayoutError, LayoutProblem
from modelrepo.layout.config import (
    ENSEMBLE_PLATFORM,
    PLATFORM_BACKENDS,
    ModelConfig,
    parse_config,
    versions_to_load,
)

__all__ = [
    "CONFIG_FILENAME",
    "ModelLayout",
    "expected_model_file",
    "validate_model_dir",
    "validate_version_files",
]

CONFIG_FILENAME = "config.pbtxt"
OWN_FOLDER = ".modelrepo"  # modelrepo's staging/manifests inside a published model folder
_TRITON_FOLDERS = frozenset({"warmup", "initial_state", "configs"})  # Triton skips these
_VERSION = re.compile(r"0|[1-9][0-9]*")
_LEADING_ZERO = re.compile(r"0[0-9]+")
_PLACEHOLDER = re.compile(r"\$\{[^}]*\}")

# Backends whose Triton backend completes missing tensor data_type/dims from the model file.
_AUTOCOMPLETING = frozenset({"onnxruntime", "tensorrt", "tensorflow", "openvino"})
# The platforms Triton accepts with each known backend (the first one is its default).
_BACKEND_PLATFORMS: dict[str, tuple[str, ...]] = {
    "tensorrt": ("tensorrt_plan",),
    "onnxruntime": ("onnxruntime_onnx",),
    "pytorch": ("pytorch_libtorch", "libtorch", "torch_aoti"),
    "tensorflow": ("tensorflow_savedmodel", "tensorflow_graphdef"),
}
Kind = Literal["file", "dir", "any"]
# What each backend loads from a version folder when default_model_filename is not set.
_BACKEND_FILES: dict[str, tuple[str, Kind]] = {
    "tensorrt": ("model.plan", "file"),
    "onnxruntime": ("model.onnx", "any"),  # a folder for models with external weights
    "openvino": ("model.xml", "file"),
    "python": ("model.py", "file"),
    "pytorch": ("model.pt", "file"),
}
_PLATFORM_FILES: dict[str, tuple[str, Kind]] = {
    "torch_aoti": ("model.pt2", "file"),
    "tensorflow_savedmodel": ("model.savedmodel", "dir"),
    "tensorflow_graphdef": ("model.graphdef", "file"),
}
_DIMS_FIX = (
    "declare it, e.g. data_type: TYPE_FP32 and dims: [ -1 ] "
    "(dims leave out the batch dimension when max_batch_size > 0)"
)


@dataclass
class ModelLayout:
    """A model folder Triton would accept: its config, its versions and every file to copy.

    ``files`` holds every file under the folder relative to it (``config.pbtxt``,
    ``1/model.py``...), except modelrepo's own ``.modelrepo/`` bookkeeping; ``versions`` maps
    each numbered version folder to its files, relative to that version folder.
    """

    path: str
    name: str
    backend: str
    config: ModelConfig
    config_text: str
    versions: dict[int, list[tuple[str, int]]]
    files: list[tuple[str, int]]
    warnings: list[LayoutProblem] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        """Bytes in all files of the folder."""
        return sum(size for _, size in self.files)


@dataclass(frozen=True)
class _Entry:
    is_dir: bool
    size: int


class _Findings:
    """Errors (Triton would refuse the model) and warnings (it would load, maybe not as meant)."""

    def __init__(self) -> None:
        self.errors: list[LayoutProblem] = []
        self.warnings: list[LayoutProblem] = []

    def error(self, path: str, message: str, fix: str, line: int | None = None) -> None:
        self.errors.append(LayoutProblem(path, message, fix, line))

    def warn(self, path: str, message: str, fix: str, line: int | None = None) -> None:
        self.warnings.append(LayoutProblem(path, message, fix, line))


def _scan(fs: Any, path: str) -> tuple[str, dict[str, _Entry]]:
    """The whole tree under ``path`` from one ``fs.find``: relative path -> entry."""
    root = fs._strip_protocol(path).rstrip("/")
    found = fs.find(root, detail=True, withdirs=True)
    root_info = found.get(root) or found.get(root + "/")
    if not found or (root_info is not None and root_info.get("type") != "directory"):
        what = "is a file, not a folder" if found else "does not exist"
        raise LayoutError(
            [
                LayoutProblem(
                    root,
                    f"the model folder {what}",
                    "pass the folder that holds config.pbtxt and the numbered version folders",
                )
            ]
        )
    entries: dict[str, _Entry] = {}
    prefix = root + "/"
    for full, info in found.items():
        rel = full.rstrip("/")[len(prefix) :] if full.startswith(prefix) else ""
        if not rel or rel.split("/", 1)[0] == OWN_FOLDER:
            continue
        is_dir = info.get("type") == "directory"
        entries[rel] = _Entry(is_dir, 0 if is_dir else int(info.get("size") or 0))
        parent = rel.rpartition("/")[0]
        while parent and parent not in entries:  # object stores may not list folders
            entries[parent] = _Entry(True, 0)
            parent = parent.rpartition("/")[0]
    return root, entries


def _children(entries: dict[str, _Entry], folder: str) -> dict[str, _Entry]:
    prefix = folder + "/" if folder else ""
    return {
        rel[len(prefix) :]: e
        for rel, e in entries.items()
        if rel.startswith(prefix) and "/" not in rel[len(prefix) :]
    }


def _files_under(entries: dict[str, _Entry], folder: str) -> list[tuple[str, int]]:
    prefix = folder + "/" if folder else ""
    return sorted(
        (rel[len(prefix) :], e.size)
        for rel, e in entries.items()
        if not e.is_dir and rel.startswith(prefix)
    )


def _line_of(text: str, pattern: str) -> int | None:
    """Line (1-based) of the first non-comment line matching ``pattern``: errors point there."""
    regex = re.compile(pattern)
    for number, line in enumerate(text.splitlines(), 1):
        if not line.lstrip().startswith("#") and regex.search(line):
            return number
    return None


def _field_line(text: str, name: str) -> int | None:
    return _line_of(text, rf"(^|[\s{{,\[]){re.escape(name)}\s*[:{{\[]")


def _name_line(text: str, key: str, value: str) -> int | None:
    return _line_of(text, rf'{key}\s*:\s*"{re.escape(value)}"')


def _config_snippet(backend: str, platform: str) -> str:
    return f'platform: "{platform}"' if platform else f'backend: "{backend}"'


def _detect(children: dict[str, _Entry]) -> tuple[str, str] | None:
    """(backend, platform) suggested by the default model file found in a version folder."""
    for backend, platform, (filename, kind) in [
        ("tensorflow", "tensorflow_savedmodel", _PLATFORM_FILES["tensorflow_savedmodel"]),
        ("tensorflow", "tensorflow_graphdef", _PLATFORM_FILES["tensorflow_graphdef"]),
        ("tensorrt", "tensorrt_plan", _BACKEND_FILES["tensorrt"]),
        ("onnxruntime", "onnxruntime_onnx", _BACKEND_FILES["onnxruntime"]),
        ("openvino", "", _BACKEND_FILES["openvino"]),
        ("pytorch", "pytorch_libtorch", _BACKEND_FILES["pytorch"]),
        ("python", "", _BACKEND_FILES["python"]),
    ]:
        entry = children.get(filename)
        if entry is not None and _kind_ok(entry, kind):
            return backend, platform
    return None


def _kind_ok(entry: _Entry, kind: Kind) -> bool:
    return kind == "any" or entry.is_dir == (kind == "dir")


def expected_model_file(config: ModelConfig) -> tuple[str, Kind] | None:
    """(name, file/dir/any) the model's backend loads from each version folder, if known.

    ``None`` for ensembles and for backends whose files modelrepo does not know (for
    example ``tensorrtllm``, which reads its engine from the ``gpt_model_path`` parameter).
    """
    backend, platform, _ = _resolve_backend(config)
    default = _PLATFORM_FILES.get(platform) or _BACKEND_FILES.get(backend)
    if config.default_model_filename:
        kind: Kind = default[1] if default else "any"
        return config.default_model_filename, kind
    return default


def _resolve_backend(config: ModelConfig) -> tuple[str, str, list[tuple[str, str, str]]]:
    """(backend, platform, problems) as Triton settles them from the config.

    Triton can guess a missing backend from the files of the alphabetically first sub-folder,
    but in a folder managed by modelrepo that is ``.modelrepo/``: so both empty is refused.
    Problems are (message, fix, field) triples.
    """
    backend, platform = config.backend, config.platform
    if platform == ENSEMBLE_PLATFORM:
        if backend:
            return (
                ENSEMBLE_PLATFORM,
                platform,
                [
                    (
                        f'an ensemble must not set a backend (backend: "{backend}")',
                        'remove the backend line; keep platform: "ensemble"',
                        "backend",
                    )
                ],
            )
        return ENSEMBLE_PLATFORM, platform, []
    if not backend:
        if not platform:
            return "", "", []  # reported by the caller, who can suggest from the files
        derived = PLATFORM_BACKENDS.get(platform)
        if derived is None:
            known = ", ".join([*PLATFORM_BACKENDS, ENSEMBLE_PLATFORM])
            return (
                "",
                platform,
                [
                    (
                        f"Triton knows no platform '{platform}'",
                        f'use one of: {known}; for other backends set backend: "<name>" '
                        "(e.g. python, openvino, tensorrtllm) instead of platform",
                        "platform",
                    )
                ],
            )
        return derived, platform, []
    allowed = _BACKEND_PLATFORMS.get(backend)
    if allowed is None:  # python, openvino, tensorrtllm, custom: Triton takes any platform
        return backend, platform, []
    if platform and platform not in allowed:
        return (
            backend,
            platform,
            [
                (
                    f"platform '{platform}' does not go with backend '{backend}'",
                    f'use platform: "{allowed[0]}" with this backend, or remove the platform line',
                    "platform",
                )
            ],
        )
    if not platform and backend == "tensorflow":
        return (
            backend,
            "",
            [
                (
                    "the tensorflow backend needs a platform",
                    'add platform: "tensorflow_savedmodel" (or "tensorflow_graphdef")',
                    "backend",
                )
            ],
        )
    return backend, platform or allowed[0], []


class _ConfigChecks:
    """The rules Triton applies to a parsed config, each problem pointing at its line."""

    def __init__(self, config: ModelConfig, text: str, path: str, findings: _Findings) -> None:
        self.config = config
        self.text = text
        self.path = path
        self.f = findings

    def error(self, message: str, fix: str, line: int | None) -> None:
        self.f.error(self.path, message, fix, line)

    def warn(self, message: str, fix: str, line: int | None) -> None:
        self.f.warn(self.path, message, fix, line)

    def name(self, expected: str) -> None:
        actual = self.config.name
        if actual and actual != expected:
            self.error(
                f"config name '{actual}' differs from the model folder name '{expected}': "
                "Triton refuses the model",
                f'set name: "{expected}" (or remove the name line), or name the folder '
                f"'{actual}'",
                _name_line(self.text, "name", actual),
            )

    def placeholders(self) -> None:
        for number, line in enumerate(self.text.splitlines(), 1):
            match = _PLACEHOLDER.search(line)
            if match and not line.lstrip().startswith("#"):
                self.error(
                    f"unfilled template placeholder {match.group(0)}",
                    "replace it with a real value (for TensorRT-LLM configs, run its "
                    "tools/fill_template.py)",
                    number,
                )

    def backend(self, suggestion: tuple[str, str] | None) -> tuple[str, str]:
        backend, platform, problems = _resolve_backend(self.config)
        for message, fix, field_name in problems:
            self.error(message, fix, _field_line(self.text, field_name))
        if not backend and not platform:
            hint = (
                f"add {_config_snippet(*suggestion)} (the version folder holds its model file)"
                if suggestion
                else 'add backend: "<name>" (python, onnxruntime, tensorrt, ...) or '
                'platform: "<name>" (onnxruntime_onnx, tensorrt_plan, ensemble, ...)'
            )
            self.error(
                "config.pbtxt names neither a backend nor a platform: Triton would guess "
                "from the first sub-folder, which is .modelrepo/ once published",
                hint,
                None,
            )
        return backend, platform

    def batching(self) -> None:
        config, mbs = self.config, self.config.max_batch_size
        if mbs < 0:
            self.error(
                f"max_batch_size is {mbs}",
                "use 0 for a model without a batch dimension, or the largest batch it accepts",
                _field_line(self.text, "max_batch_size"),
            )
        if config.HasField("dynamic_batching"):
            batching = config.dynamic_batching
            line = _field_line(self.text, "dynamic_batching")
            self._preferred("dynamic_batching", batching.preferred_batch_size, line)
            if mbs == 0:
                self.warn(
                    "dynamic_batching is set but max_batch_size is 0: Triton loads the model "
                    "and never batches requests",
                    "set max_batch_size to the largest batch the model takes (its tensors then "
                    "get a leading batch dimension), or remove dynamic_batching",
                    line,
                )
            levels = batching.priority_levels
            if levels and not 1 <= batching.default_priority_level <= levels:
                self.error(
                    f"default_priority_level {batching.default_priority_level} is outside "
                    f"1..{levels}",
                    f"set default_priority_level between 1 and priority_levels ({levels})",
                    _field_line(self.text, "default_priority_level") or line,
                )
            for level in batching.priority_queue_policy:
                if levels and not 1 <= level <= levels:
                    self.error(
                        f"priority_queue_policy for level {level} is outside 1..{levels}",
                        f"use priority levels between 1 and {levels}",
                        _field_line(self.text, "priority_queue_policy") or line,
                    )
        if config.HasField("sequence_batching") and config.sequence_batching.HasField("oldest"):
            self._preferred(
                "sequence_batching.oldest",
                config.sequence_batching.oldest.preferred_batch_size,
                _field_line(self.text, "sequence_batching"),
            )

    def _preferred(self, where: str, sizes: Collection[int], line: int | None) -> None:
        mbs = self.config.max_batch_size
        for size in sizes:
            if size <= 0 or size > mbs:
                self.error(
                    f"{where} preferred_batch_size {size} is not in 1..max_batch_size ({mbs})",
                    "use preferred batch sizes between 1 and max_batch_size, or raise "
                    "max_batch_size",
                    _field_line(self.text, "preferred_batch_size") or line,
                )

    def tensors(self, backend: str, platform: str) -> None:
        config = self.config
        for kind, tensors in (("input", config.input), ("output", config.output)):
            seen: set[str] = set()
            for index, tensor in enumerate(tensors, 1):
                self._tensor(kind, index, tensor, backend, platform, seen)
        names = {t.name for t in config.input}
        outputs = {t.name for t in config.output}
        for batch_input in config.batch_input:
            for source in batch_input.source_input:
                if source not in names:
                    self.error(
                        f"batch_input names source_input '{source}', which is not an input",
                        "use the name of one of the model's inputs",
                        _name_line(self.text, "source_input", source),
                    )
        for batch_output in config.batch_output:
            for target in batch_output.target_name:
                if target not in outputs:
                    self.error(
                        f"batch_output names target_name '{target}', which is not an output",
                        "use the name of one of the model's outputs",
                        _name_line(self.text, "target_name", target),
                    )

    def _tensor(
        self, kind: str, index: int, tensor: Any, backend: str, platform: str, seen: set[str]
    ) -> None:
        label = f"{kind} '{tensor.name}'" if tensor.name else f"{kind} #{index}"
        line = _name_line(self.text, "name", tensor.name) if tensor.name else None
        line = line or _field_line(self.text, kind)
        if not tensor.name:
            self.error(f"{label} has no name", f'add name: "..." to this {kind}', line)
        elif tensor.name in seen:
            self.warn(f"{label} is declared twice", f"keep one {kind} named '{tensor.name}'", line)
        seen.add(tensor.name)
        missing = [
            what for what, ok in (("data_type", tensor.data_type), ("dims", tensor.dims)) if not ok
        ]
        if missing:
            message = f"{label} has no {' and no '.join(missing)}"
            if backend in _AUTOCOMPLETING:
                self.warn(
                    f"{message}; Triton relies on the {backend} backend to fill it in "
                    "from the model file",
                    _DIMS_FIX,
                    line,
                )
            else:
                self.error(message, _DIMS_FIX, line)
        dims = list(tensor.dims)
        if any(d < 1 and d != -1 for d in dims):
            self.error(
                f"{label} has dims {dims}: each must be >= 1, or -1 for a variable size",
                "use -1 for a dimension whose size varies",
                line,
            )
        if tensor.HasField("reshape"):
            self._reshape(label, dims, list(tensor.reshape.shape), line)
        if (
            kind == "input"
            and tensor.format in (tensor.FORMAT_NHWC, tensor.FORMAT_NCHW)
            and len(dims) != 3
        ):
            self.error(
                f"{label} has format NHWC/NCHW, which needs exactly 3 dims",
                "give it 3 dims or remove the format line",
                line,
            )
        if tensor.is_shape_tensor and platform != "tensorrt_plan":
            self.error(
                f"{label} is a shape tensor, which only TensorRT models support",
                "remove is_shape_tensor",
                line,
            )

    def _reshape(self, label: str, dims: list[int], shape: list[int], line: int | None) -> None:
        if not shape and self.config.max_batch_size == 0:
            self.error(
                f"{label} has an empty reshape on a model without batching: Triton does not "
                "support scalar tensors",
                "give reshape a shape such as [ 1 ], or set max_batch_size > 0",
                line,
            )
        elif any(d < 1 and d != -1 for d in shape):
            self.error(
                f"{label} has reshape {shape}: each dim must be >= 1, or -1",
                "use -1 for a dimension whose size varies",
                line,
            )
        elif dims and not _same_size(dims, shape):
            self.error(
                f"{label} has dims {dims} and reshape {shape}, which hold different numbers "
                "of elements",
                "make reshape hold as many elements as dims (each -1 lining up with a -1)",
                line,
            )

    def ensemble(
        self, backend: str, own_name: str, repository_names: Collection[str] | None
    ) -> None:
        config = self.config
        scheduled = config.HasField("ensemble_scheduling")
        if backend != ENSEMBLE_PLATFORM:
            if scheduled:
                self.error(
                    'ensemble_scheduling is set but platform is not "ensemble"',
                    'set platform: "ensemble" or remove ensemble_scheduling',
                    _field_line(self.text, "ensemble_scheduling"),
                )
            return
        if not scheduled:
            self.error(
                'platform "ensemble" without ensemble_scheduling',
                "add ensemble_scheduling { step [ ... ] } naming the models to run",
                _field_line(self.text, "platform"),
            )
            return
        for what, present in (
            ("instance_group", len(config.instance_group)),
            ("optimization", config.HasField("optimization")),
            ("model_warmup", len(config.model_warmup)),
        ):
            if present:
                self.error(
                    f"an ensemble cannot have {what}",
                    f"remove {what}; set it on the models the steps run",
                    _field_line(self.text, what),
                )
        steps = list(config.ensemble_scheduling.step)
        if not steps:
            self.error(
                "ensemble_scheduling has no step",
                "add step [ { model_name: ... input_map {...} output_map {...} } ]",
                _field_line(self.text, "ensemble_scheduling"),
            )
            return
        self._steps(steps, own_name, repository_names)
        self._data_flow(steps)

    def _steps(
        self, steps: list[Any], own_name: str, repository_names: Collection[str] | None
    ) -> None:
        known = sorted(repository_names) if repository_names is not None else []
        for number, step in enumerate(steps, 1):
            model = step.model_name
            line = _name_line(self.text, "model_name", model) if model else None
            label = f"ensemble step {number}" + (f" ('{model}')" if model else "")
            if not model:
                self.error(
                    f"{label} has no model_name",
                    "name the model this step runs",
                    _field_line(self.text, "step"),
                )
            elif model == own_name:
                self.error(
                    f"{label} runs the ensemble itself",
                    "name another model of the repository",
                    line,
                )
            elif repository_names is not None and model not in repository_names:
                self.error(
                    f"{label} runs model '{model}', which is neither in the repository nor "
                    "being pushed",
                    f"push '{model}' with the ensemble, or fix model_name "
                    f"(available: {', '.join(known) or 'none'})",
                    line,
                )
            if not step.input_map:
                self.error(
                    f"{label} has no input_map",
                    'map its inputs: input_map { key: "<its input>" value: "<tensor>" }',
                    line,
                )
            if not step.output_map:
                self.error(
                    f"{label} has no output_map",
                    'map its outputs: output_map { key: "<its output>" value: "<tensor>" }',
                    line,
                )

    def _data_flow(self, steps: list[Any]) -> None:
        """Triton's ensemble graph rules: every tensor read is written, every tensor used."""
        inputs = [t.name for t in self.config.input]
        outputs = [t.name for t in self.config.output]
        writer: dict[str, int] = {}
        for number, step in enumerate(steps, 1):
            for tensor in step.output_map.values():
                if tensor in writer:
                    self.error(
                        f"ensemble tensor '{tensor}' is written by step {writer[tensor]} and "
                        f"again by step {number}",
                        "give each step output its own tensor name",
                        _name_line(self.text, "value", tensor),
                    )
                else:
                    writer[tensor] = number
        read = {tensor for step in steps for tensor in step.input_map.values()}
        for number, step in enumerate(steps, 1):
            for key, tensor in step.input_map.items():
                if tensor not in writer and tensor not in inputs:
                    self.error(
                        f"ensemble step {number} ('{step.model_name}') reads tensor '{tensor}' "
                        f"(into its input '{key}'), which is neither an ensemble input nor "
                        "written by any step",
                        "use an ensemble input name or another step's output_map value "
                        "(names are case-sensitive)",
                        _name_line(self.text, "value", tensor),
                    )
        for name in inputs:
            if name not in read:
                self.error(
                    f"ensemble input '{name}' is read by no step",
                    "map it into a step's input_map, or remove the input",
                    _name_line(self.text, "name", name),
                )
        ready = self._ready(steps, set(inputs))
        for name in outputs:
            if name not in writer:
                self.error(
                    f"ensemble output '{name}' is written by no step",
                    f'add output_map {{ key: "<a step model output>" value: "{name}" }} to a step',
                    _name_line(self.text, "name", name),
                )
            elif name not in ready:
                self.error(
                    f"ensemble output '{name}' can never be computed: a step before it waits "
                    "for a tensor nothing provides (or the steps form a cycle)",
                    "check the input_map values of the steps leading to it",
                    _name_line(self.text, "value", name),
                )
        for tensor, number in writer.items():
            if tensor not in outputs and tensor not in read:
                self.error(
                    f"ensemble tensor '{tensor}' written by step {number} is never used: "
                    "Triton refuses unused tensors",
                    "read it in a later step's input_map, declare it as an ensemble output, "
                    "or drop it from output_map",
                    _name_line(self.text, "value", tensor),
                )

    @staticmethod
    def _ready(steps: list[Any], available: set[str]) -> set[str]:
        pending = list(steps)
        progress = True
        while progress:
            progress = False
            for step in list(pending):
                if all(t in available for t in step.input_map.values()):
                    available.update(step.output_map.values())
                    pending.remove(step)
                    progress = True
        return available


def _element_count(dims: list[int]) -> int:
    if not dims:
        return 0
    return -1 if -1 in dims else math.prod(dims)


def _chunks(dims: list[int]) -> list[int]:
    counts, current = [], 1
    for d in dims:
        if d == -1:
            counts.append(current)
            current = 1
        else:
            current *= d
    return [*counts, current]


def _same_size(dims: list[int], shape: list[int]) -> bool:
    """Triton's dims-vs-reshape rule (an empty reshape fits dims holding one element)."""
    dims_count, shape_count = _element_count(dims), _element_count(shape)
    if dims_count != shape_count and (shape_count != 0 or dims_count != 1):
        return False
    return dims_count != -1 or _chunks(dims) == _chunks(shape)


def _version_folders(root: str, entries: dict[str, _Entry], f: _Findings) -> dict[int, str]:
    versions: dict[int, str] = {}
    for name, entry in sorted(_children(entries, "").items()):
        if not entry.is_dir:
            continue
        if _VERSION.fullmatch(name):
            versions[int(name)] = name
        elif _LEADING_ZERO.fullmatch(name):
            f.warn(
                f"{root}/{name}",
                "Triton ignores version folders whose name starts with 0",
                f"rename it to {int(name)}",
            )
        elif not name.startswith(".") and name not in _TRITON_FOLDERS:
            f.warn(
                f"{root}/{name}",
                "Triton ignores this folder: version folders are numbers",
                "rename it to a version number such as 1, or remove it",
            )
    return versions


def _check_model_file(
    config: ModelConfig, backend: str, folder: str, children: dict[str, _Entry], f: _Findings
) -> None:
    """The file the backend loads must be in the version folder (``folder`` names it)."""
    expected = expected_model_file(config)
    if expected is None:
        return
    filename, kind = expected
    entry = children.get(filename)
    if entry is not None and _kind_ok(entry, kind):
        return
    if any(name in children for name in config.cc_model_filenames.values()):
        return  # Triton picks the file by the GPU's compute capability
    path = f"{folder}/{filename}"
    known_backend = backend in _BACKEND_FILES or config.platform in _PLATFORM_FILES
    if entry is not None:
        want = "a folder" if kind == "dir" else "a file"
        f.error(path, f"must be {want} for the {backend} backend", f"make {filename} {want}")
    elif known_backend:
        extra = " (without it Triton's load stays in LOADING)" if backend == "python" else ""
        f.error(
            path,
            f"missing: the {backend} backend loads {filename} from each version folder{extra}",
            f"put the model file there, or set default_model_filename in {CONFIG_FILENAME} "
            "to the name of the file you have",
        )
    else:
        f.warn(
            path,
            f"default_model_filename names {filename}, which is not there",
            "add the file or correct default_model_filename",
        )


def _missing_config_fix(root: str, suggestion: tuple[str, str] | None) -> str:
    first = _config_snippet(*suggestion) if suggestion else 'backend: "<name>"'
    return (
        f"write {root}/{CONFIG_FILENAME} with at least {first}, max_batch_size and the "
        'input/output tensors (name, data_type, dims), e.g. input [ { name: "INPUT0" '
        "data_type: TYPE_FP32 dims: [ -1 ] } ]; modelrepo requires an explicit config even "
        "where Triton could auto-complete one"
    )


def _read_config(fs: Any, path: str, f: _Findings) -> str | None:
    try:
        return fs.cat_file(path).decode("utf-8")
    except UnicodeDecodeError as exc:
        f.error(
            path,
            f"is not UTF-8 text ({exc.reason} at byte {exc.start})",
            "save config.pbtxt as UTF-8 text",
        )
    return None


def validate_model_dir(
    fs: Any,
    path: str,
    *,
    name: str | None = None,
    repository_fs_names: Collection[str] | None = None,
) -> ModelLayout:
    """Validate the model folder ``path`` on ``fs`` as Triton would, before anything is copied.

    ``name`` is the model name in the target repository (default: the folder name).
    ``repository_fs_names`` are the model folder names the target repository will hold (those
    there now plus those being pushed): ensemble steps must name one of them; ``None`` skips
    that check. Raises :class:`LayoutError` listing every problem; things Triton tolerates but
    that are probably mistakes come back in ``ModelLayout.warnings``.
    """
    root, entries = _scan(fs, path)
    model_name = name or root.rsplit("/", 1)[-1]
    f = _Findings()
    versions = _version_folders(root, entries, f)
    first = versions[min(versions)] if versions else None
    suggestion = _detect(_children(entries, first)) if first else None
    config_path = f"{root}/{CONFIG_FILENAME}"
    config_entry = entries.get(CONFIG_FILENAME)
    config, text = None, ""
    if config_entry is None or config_entry.is_dir:
        f.error(
            config_path,
            "missing: Triton needs the model configuration",
            _missing_config_fix(root, suggestion),
        )
    else:
        read = _read_config(fs, config_path, f)
        if read is not None:
            text = read
            try:
                config = parse_config(text, config_path)
            except LayoutError as exc:
                f.errors.extend(exc.problems)
    backend = ""
    if config is not None:
        checks = _ConfigChecks(config, text, config_path, f)
        checks.name(model_name)
        checks.placeholders()
        backend, platform = checks.backend(suggestion)
        checks.batching()
        checks.tensors(backend, platform)
        checks.ensemble(backend, model_name, repository_fs_names)
    if not versions:
        f.error(
            root,
            "no version folder: Triton loads a model from numbered sub-folders (1/, 2/, ...)",
            f"put the model files in {root}/1/"
            + (" (an ensemble's 1/ may stay empty)" if backend == ENSEMBLE_PLATFORM else ""),
        )
    elif config is not None:
        if not versions_to_load(config, versions):
            f.error(
                config_path,
                f"version_policy selects none of the versions present ({sorted(versions)}): "
                "Triton refuses to load the model",
                "list a present version in version_policy, or remove version_policy to serve "
                "the latest version",
                _field_line(text, "version_policy"),
            )
        if backend:
            for folder in versions.values():
                _check_model_file(
                    config, backend, f"{root}/{folder}", _children(entries, folder), f
                )
    if f.errors:
        raise LayoutError(f.errors)
    assert config is not None
    return ModelLayout(
        path=root,
        name=model_name,
        backend=backend,
        config=config,
        config_text=text,
        versions={v: _files_under(entries, folder) for v, folder in sorted(versions.items())},
        files=_files_under(entries, ""),
        warnings=f.warnings,
    )


def validate_version_files(fs: Any, path: str, config: ModelConfig | str) -> list[tuple[str, int]]:
    """Check a folder holding the files of ONE version (no config.pbtxt, no ``1/``).

    ``config`` is the model's config (parsed, or its text), e.g. the one already published.
    Returns the files as (path relative to ``path``, size); raises :class:`LayoutError` when
    the file the backend loads is missing.
    """
    root, entries = _scan(fs, path)
    if isinstance(config, str):
        config = parse_config(config)
    f = _Findings()
    children = _children(entries, "")
    backend, platform, problems = _resolve_backend(config)
    for message, fix, _field in problems:
        f.error(CONFIG_FILENAME, message, fix)
    if not backend and not platform:
        suggestion = _detect(children)
        f.error(
            CONFIG_FILENAME,
            "the model config names neither a backend nor a platform",
            f"add {_config_snippet(*suggestion)}" if suggestion else 'add backend: "<name>"',
        )
    if backend:
        _check_model_file(config, backend, root, children, f)
    if f.errors:
        raise LayoutError(f.errors)
    return _files_under(entries, "")
