"""In-cluster routes into the model repository: Kubernetes Jobs and Triton manifests.

* :func:`s3_sync_job` (Option A), :func:`build_job` (Option B): Job manifests writing into a
  folder of the claim; :func:`run_job` runs one to the end with its logs streamed.
* :func:`triton_manifests` (Option C and the PVC-backed Deployment), :func:`rbac_manifests`,
  :func:`to_yaml`, :func:`write_yaml`: what a platform team applies with ``kubectl``.
"""

from __future__ import annotations

from modelrepo.jobs.manifests import (
    DEFAULT_AWS_IMAGE,
    DEFAULT_TRITON_IMAGE,
    RBAC_RULES,
    TRTLLM_BUILD_COMMAND,
    JobOptions,
    ManifestError,
    build_job,
    rbac_manifests,
    render_command,
    s3_sync_job,
    to_yaml,
    triton_manifests,
    unique_name,
    write_yaml,
)
from modelrepo.jobs.runner import JobFailedError, JobResult, JobTimeoutError, run_job

__all__ = [
    "DEFAULT_AWS_IMAGE",
    "DEFAULT_TRITON_IMAGE",
    "RBAC_RULES",
    "TRTLLM_BUILD_COMMAND",
    "JobFailedError",
    "JobOptions",
    "JobResult",
    "JobTimeoutError",
    "ManifestError",
    "build_job",
    "rbac_manifests",
    "render_command",
    "run_job",
    "s3_sync_job",
    "to_yaml",
    "triton_manifests",
    "unique_name",
    "write_yaml",
]
