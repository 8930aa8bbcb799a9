"""fsspec filesystems of modelrepo: ``PVCFileSystem`` (protocol ``pvc``)."""

from modelrepo.fs._shell import (
    PVCFileExistsError,
    PVCFileNotFoundError,
    PVCIsADirectoryError,
    PVCNotADirectoryError,
    PVCPathError,
    PVCPermissionError,
)
from modelrepo.fs._transfer import TransferStats
from modelrepo.fs.pvc import PVCFile, PVCFileSystem

__all__ = [
    "PVCFile",
    "PVCFileExistsError",
    "PVCFileNotFoundError",
    "PVCFileSystem",
    "PVCIsADirectoryError",
    "PVCNotADirectoryError",
    "PVCPathError",
    "PVCPermissionError",
    "TransferStats",
]
