"""Triton's model configuration (``config.pbtxt``): parse, render and query it.

Parsing uses Triton's own ``ModelConfig`` protobuf and protobuf's text format, which is what
Triton does (``ReadTextProto``): unknown fields, bad enum values and duplicated fields are
refused here exactly as the server would refuse them, and reported with their line number.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from google.protobuf import json_format, text_format

from modelrepo.errors import LayoutError, LayoutProblem
from modelrepo.layout._pb2 import load_model_config_pb2

if TYPE_CHECKING:
    from tritonclient.grpc.model_config_pb2 import ModelConfig
else:
    ModelConfig = load_model_config_pb2().ModelConfig

__all__ = [
    "ENSEMBLE_PLATFORM",
    "ModelConfig",
    "TensorSpec",
    "VersionPolicy",
    "backend_of",
    "config_to_json",
    "datatype_name",
    "inputs_of",
    "outputs_of",
    "parse_config",
    "render_config",
    "version_policy_of",
    "versions_to_load",
    "with_specific_version",
]

ENSEMBLE_PLATFORM = "ensemble"

# platform -> the backend Triton runs it with (Triton's GetBackendTypeFromPlatform).
PLATFORM_BACKENDS: dict[str, str] = {
    "tensorrt_plan": "tensorrt",
    "onnxruntime_onnx": "onnxruntime",
    "pytorch_libtorch": "pytorch",
    "libtorch": "pytorch",
    "torch_aoti": "pytorch",
    "tensorflow_savedmodel": "tensorflow",
    "tensorflow_graphdef": "tensorflow",
}

_LOCATION = re.compile(r"^\d+:\d+ : ")
_QUOTED_LINE = re.compile(r"^'.*?': ")
_ENUM_TYPE = re.compile(r'Enum type "([\w.]+)" has no value named')


def parse_config(text: str, path: str = "config.pbtxt") -> ModelConfig:
    """Parse ``config.pbtxt`` text as Triton does; syntax errors name ``path`` and the line."""
    config = ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise LayoutError([_syntax_problem(text, path, exc)]) from None
    return config


def _syntax_problem(text: str, path: str, exc: text_format.ParseError) -> LayoutProblem:
    line = exc.GetLine()
    message = _QUOTED_LINE.sub("", _LOCATION.sub("", str(exc)))
    lines = text.splitlines()
    source_line = lines[line - 1] if line and 0 < line <= len(lines) else ""
    return LayoutProblem(
        path,
        f"Triton cannot parse config.pbtxt: {message}",
        _syntax_fix(message, source_line),
        line,
    )


def _syntax_fix(message: str, source_line: str) -> str:
    if "${" in source_line:
        return (
            "this is an unfilled template placeholder: replace ${...} with a value "
            "(for TensorRT-LLM configs, run its tools/fill_template.py first)"
        )
    enum = _ENUM_TYPE.search(message)
    if enum:
        pool = ModelConfig.DESCRIPTOR.file.pool
        names = [v.name for v in pool.FindEnumTypeByName(enum.group(1)).values]
        return f"use one of: {', '.join(names)}"
    if "has no field named" in message:
        return (
            "check the spelling against Triton's model_config.proto (e.g. max_batch_size, "
            "input, output, instance_group, dynamic_batching) and remove unknown fields"
        )
    if "should not have multiple" in message:
        return "this field takes one value but is set twice: keep only one"
    if "another member of oneof" in message:
        return "keep only one of dynamic_batching, sequence_batching, ensemble_scheduling"
    return (
        "fix the protobuf text syntax at this line: `field: value`, `message { ... }`, "
        'lists in [ ... ], strings in double quotes, e.g. name: "my_model"'
    )


def render_config(config: ModelConfig) -> str:
    """``config.pbtxt`` text for ``config`` (comments and formatting of the source are not kept)."""
    return text_format.MessageToString(config, as_utf8=True)


def config_to_json(config: ModelConfig) -> str:
    """JSON for the ``config`` parameter of Triton's load API (``POST .../load``).

    Triton reads it with protobuf's JSON parser (``JsonToModelConfig``); proto field names are
    kept as in ``config.pbtxt``. 64-bit integers come out quoted, which that parser accepts.
    """
    return json_format.MessageToJson(config, preserving_proto_field_name=True, indent=None)


def with_specific_version(
    config: str | ModelConfig, version: int, path: str = "config.pbtxt"
) -> str:
    """Config text that makes Triton serve exactly ``version`` (``version_policy.specific``).

    Used to load one given version; the rest of the config is unchanged.
    """
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise LayoutError(
            [LayoutProblem(path, f"{version!r} is not a model version", "pass a whole number >= 1")]
        )
    parsed = parse_config(config, path) if isinstance(config, str) else _copy(config)
    parsed.version_policy.specific.versions[:] = [version]
    return render_config(parsed)


def _copy(config: ModelConfig) -> ModelConfig:
    clone = ModelConfig()
    clone.CopyFrom(config)
    return clone


def backend_of(config: ModelConfig) -> str:
    """The backend Triton will run the model with, as far as the config alone tells.

    ``"ensemble"`` for ensembles; ``""`` when only the model files can tell (Triton then
    looks at the first version folder).
    """
    if config.backend:
        return config.backend
    if config.platform == ENSEMBLE_PLATFORM:
        return ENSEMBLE_PLATFORM
    return PLATFORM_BACKENDS.get(config.platform, "")


def datatype_name(data_type: int) -> str:
    """Triton's wire name of a config data type (``TYPE_FP32`` -> ``"FP32"``, STRING -> BYTES)."""
    name = load_model_config_pb2().DataType.Name(data_type).removeprefix("TYPE_")
    return "BYTES" if name == "STRING" else name


@dataclass(frozen=True)
class TensorSpec:
    """One input or output tensor as declared in the config (dims exclude the batch dim)."""

    name: str
    datatype: str
    dims: tuple[int, ...]
    optional: bool = False


def inputs_of(config: ModelConfig) -> list[TensorSpec]:
    """The declared inputs, with Triton wire data types (what ``InferInput`` takes)."""
    return [
        TensorSpec(t.name, datatype_name(t.data_type), tuple(t.dims), t.optional)
        for t in config.input
    ]


def outputs_of(config: ModelConfig) -> list[TensorSpec]:
    """The declared outputs, with Triton wire data types."""
    return [TensorSpec(t.name, datatype_name(t.data_type), tuple(t.dims)) for t in config.output]


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions Triton serves: the latest ``num_versions``, all, or specific ones."""

    kind: Literal["latest", "all", "specific"]
    num_versions: int = 1
    versions: tuple[int, ...] = ()


def version_policy_of(config: ModelConfig) -> VersionPolicy:
    """The config's version policy; Triton's default (latest 1) when none is set."""
    choice = config.version_policy.WhichOneof("policy_choice")
    if choice == "all":
        return VersionPolicy("all")
    if choice == "specific":
        return VersionPolicy("specific", versions=tuple(config.version_policy.specific.versions))
    if choice == "latest":
        return VersionPolicy("latest", num_versions=config.version_policy.latest.num_versions)
    return VersionPolicy("latest", num_versions=1)


def versions_to_load(config: ModelConfig, available: Iterable[int]) -> list[int]:
    """The versions Triton would load from ``available`` version folders, highest first."""
    present = sorted(set(available), reverse=True)
    policy = version_policy_of(config)
    if policy.kind == "specific":
        return sorted({v for v in policy.versions if v in present}, reverse=True)
    if policy.kind == "latest":
        return present[: policy.num_versions]
    return present
