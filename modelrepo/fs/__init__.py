"""fsspec filesystems of modelrepo: ``PVCFileSystem`` (protocol ``pvc``)."""

from modelrepo.fs._shell import (
    CHECKSUM,
    PVCFileExistsError,
    PVCFileNotFoundError,
    PVCIsADirectoryError,
    PVCNotADirectoryError,
    PVCPathError,
    PVCPermissionError,
    new_checksum,
)
from modelrepo.fs._transfer import TransferStats
from modelrepo.fs.pvc import PVCFile, PVCFileSystem

__all__ = [
    "CHECKSUM",
    "PVCFile",
    "PVCFileExistsError",
    "PVCFileNotFoundError",
    "PVCFileSystem",
    "PVCIsADirectoryError",
    "PVCNotADirectoryError",
    "PVCPathError",
    "PVCPermissionError",
    "TransferStats",
    "new_checksum",
]
