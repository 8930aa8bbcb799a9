"""Triton model-repository layout: ``config.pbtxt`` and model folders, checked before upload.

Depends only on :mod:`modelrepo.errors`, protobuf and Triton's model-config protobuf.
"""

from modelrepo.layout.config import (
    ENSEMBLE_PLATFORM,
    ModelConfig,
    TensorSpec,
    VersionPolicy,
    backend_of,
    config_to_json,
    datatype_name,
    inputs_of,
    outputs_of,
    parse_config,
    render_config,
    version_policy_of,
    versions_to_load,
    with_specific_version,
)
from modelrepo.layout.validate import (
    CONFIG_FILENAME,
    ModelLayout,
    expected_model_file,
    validate_model_dir,
    validate_version_files,
)

__all__ = [
    "CONFIG_FILENAME",
    "ENSEMBLE_PLATFORM",
    "ModelConfig",
    "ModelLayout",
    "TensorSpec",
    "VersionPolicy",
    "backend_of",
    "config_to_json",
    "datatype_name",
    "expected_model_file",
    "inputs_of",
    "outputs_of",
    "parse_config",
    "render_config",
    "validate_model_dir",
    "validate_version_files",
    "version_policy_of",
    "versions_to_load",
    "with_specific_version",
]
