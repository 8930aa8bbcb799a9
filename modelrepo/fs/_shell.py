"""The busybox shell side of PVCFileSystem: scripts, their output formats, their errors.

Every script starts with :data:`PRELUDE` and receives paths as positional arguments (never
pasted into the script text), so a name with quotes, ``$(...)``, spaces or newlines is just
data. Scripts signal the condition a caller must map to a Python exception through their
exit code (the errno value: 2 ENOENT, 17 EEXIST, 20 ENOTDIR, 21 EISDIR, 13 EACCES), 86 for
"leads outside the claim" and 74 for "checksum mismatch". Only busybox applets are used:
sh, stat, find, dd, sha256sum (:data:`CHECKSUM`), mv, cp, ln, rm, mkdir, rmdir,
realpath, tar, cat, truncate.
"""

from __future__ import annotations

import errno
import hashlib
import shlex
import stat as statmod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from modelrepo.errors import ModelRepoError, TransferError
from modelrepo.transport.exec import ExecResult
from modelrepo.transport.helper import MOUNT_PATH

ENC = "utf-8"
ERRORS = "surrogateescape"

# exit codes our scripts use beyond the errno values
EXIT_OUTSIDE = 86
EXIT_MISMATCH = 74

PRELUDE = f"""M={MOUNT_PATH}
die(){{ printf '%s\\n' "$2" >&2; exit "$1"; }}
there(){{ [ -e "$1" ] || [ -L "$1" ]; }}
need(){{ there "$1" || die 2 "no such file or directory: ${{1#$M}}"; }}
inside(){{ p=$1; while ! there "$p"; do p=${{p%/*}}; [ -n "$p" ] || p=/; done
r=$(realpath "$p") || die {EXIT_OUTSIDE} "cannot resolve ${{1#$M}} inside the claim"
case "$r/" in "$M"/*) ;; *) die {EXIT_OUTSIDE} \
"${{1#$M}} leads outside the claim (via a symbolic link to $r)";; esac
[ -d "$p" ] || die 20 "not a directory: ${{p#$M}}"; }}
EMIT='printf "%d\\n" $#; printf "%s\\0" "$@"; exec stat -c "%f %s %Y %Z %h %i" "$@"'
"""


def q(value: str) -> str:
    """Shell-quote one word (for the rare script that must embed a value)."""
    return shlex.quote(value)


def encode(text: str) -> bytes:
    return text.encode(ENC, ERRORS)


def decode(raw: bytes) -> str:
    return raw.decode(ENC, ERRORS)


# -- listings -----------------------------------------------------------------------------

#: ls: the children of a directory, or the entry itself for anything else.
LS = """need "$1"
if [ -d "$1" ] && [ ! -L "$1" ]; then find "$1" -mindepth 1 -maxdepth 1 -exec sh -c "$EMIT" sh {} +
else sh -c "$EMIT" sh "$1"; fi"""

#: info: the entry itself.
INFO = """need "$1"
sh -c "$EMIT" sh "$1\""""

#: find: the entry and everything below it ($2: maxdepth or empty).
FIND = """there "$1" || exit 0
if [ -n "$2" ]; then find "$1" -maxdepth "$2" -exec sh -c "$EMIT" sh {} +
else find "$1" -exec sh -c "$EMIT" sh {} +; fi"""


#: stat of each argument that exists (missing ones are left out).
STAT_MANY = """n=$#
for f; do there "$f" && set -- "$@" "$f"; done
shift "$n"
[ $# -eq 0 ] || exec sh -c "$EMIT" sh "$@\""""


@dataclass(frozen=True)
class Entry:
    """One stat record from the helper pod."""

    path: str  # remote absolute path (under the mount)
    mode: int
    size: int
    mtime: int
    ctime: int
    nlink: int
    ino: int

    @property
    def type(self) -> str:
        if statmod.S_ISDIR(self.mode):
            return "directory"
        if statmod.S_ISREG(self.mode):
            return "file"
        return "other"

    @property
    def islink(self) -> bool:
        return statmod.S_ISLNK(self.mode)


class ListingError(TransferError):
    """The helper's listing output did not parse (the tree changed while being listed)."""


def parse_entries(out: bytes) -> list[Entry]:
    """Parse the EMIT format: ``N\\n`` then N NUL-ended names then N stat lines, repeated."""
    entries: list[Entry] = []
    pos, end = 0, len(out)
    try:
        while pos < end:
            nl = out.index(b"\n", pos)
            count = int(out[pos:nl])
            pos = nl + 1
            names = []
            for _ in range(count):
                zero = out.index(b"\0", pos)
                names.append(decode(out[pos:zero]))
                pos = zero + 1
            for name in names:
                nl = out.index(b"\n", pos)
                f = out[pos:nl].split()
                pos = nl + 1
                entries.append(
                    Entry(
                        name,
                        int(f[0], 16),
                        int(f[1]),
                        int(f[2]),
                        int(f[3]),
                        int(f[4]),
                        int(f[5]),
                    )
                )
    except (ValueError, IndexError) as exc:
        raise ListingError(
            f"could not parse the helper pod's listing ({exc})",
            hint="the tree probably changed while it was listed; retry",
        ) from exc
    return entries


# -- checksums ----------------------------------------------------------------------------

#: The checksum that verifies every byte a transfer moves, named here and nowhere else: the
#: busybox applet ``<CHECKSUM>sum`` in the helper pod, ``hashlib.new(CHECKSUM)`` on this side.
#: sha256, the same digest as the manifests', so a push's known digests verify its transfer.
#: busybox >= 1.36 hashes sha256 with SHA-NI (0.8 CPU s/GiB, the ``busybox`` image's 1.37);
#: where a pod's busybox lacks it (Debian 12's 1.35: 4.6), ``"md5"`` here (1.9) is faster
#: and works unchanged (benchmarks.md), but sha256 is what issue 3 specifies.
CHECKSUM = "sha256"
SUM = f"{CHECKSUM}sum"


def new_checksum() -> Any:
    """A fresh hashlib object of :data:`CHECKSUM` (an integrity check: FIPS builds allow any)."""
    return hashlib.new(CHECKSUM, usedforsecurity=False)


def checksum_of(data: bytes) -> str:
    """The hex :data:`CHECKSUM` of ``data``."""
    h = new_checksum()
    h.update(data)
    return str(h.hexdigest())


def checksum_hex_length() -> int:
    return new_checksum().digest_size * 2


def _hash_files(applet: str) -> str:
    """A script printing ``applet``'s digest of every argument, in order."""
    return f"""for f; do need "$f"; [ -d "$f" ] && die 21 "is a directory: ${{f#$M}}"; done
exec {applet} "$@\""""


#: sha256 of every argument, in order (``PVCFileSystem.sha256``: content addresses).
SHA256 = _hash_files("sha256sum")

#: the transfer checksum of every argument, in order.
CHECKSUMS = _hash_files(SUM)


def parse_digests(out: bytes, paths: list[str], hex_length: int | None = None) -> dict[str, str]:
    """Parse ``*sum`` output knowing the names in order (robust to newlines in names).

    ``hex_length``: the digest's length in hex (default: :data:`CHECKSUM`'s; 64 for sha256).
    """
    width = hex_length or checksum_hex_length()
    result: dict[str, str] = {}
    pos = 0
    for path in paths:
        raw = encode(path)
        line_end = pos + width + 2 + len(raw)
        digest = out[pos : pos + width]
        if out[pos + width : pos + width + 2] != b"  " or out[pos + width + 2 : line_end] != raw:
            raise ListingError(
                f"unexpected checksum output for {path!r}",
                hint="the file changed or vanished while hashing; retry",
            )
        result[path] = digest.decode("ascii")
        pos = line_end + 1
    return result


#: the checksum of successive ranges of one file ($1 file, $2 chunk size, then offsets).
RANGES_CHECKSUM = f"""need "$1"; f=$1; n=$2; shift 2
for o; do
  dd if="$f" bs=1048576 skip="$o" count="$n" iflag=skip_bytes,count_bytes 2>/dev/null | {SUM}
done"""


#: the checksum of $3 bytes of file $1 from byte $2, or of everything from $2 on if $3 is
#: empty. "To the end" reads the file itself (``dd`` only moves the shared offset): busybox's
#: hashing applets read 4 KiB at a time, which through a pipe costs about a third more CPU.
HASH_RANGE = f"""need "$1"
if [ -n "$3" ]; then
  dd if="$1" bs=1048576 skip="$2" count="$3" iflag=skip_bytes,count_bytes 2>/dev/null | {SUM}
else
  {{ dd bs=1048576 skip="$2" count=0 iflag=skip_bytes 2>/dev/null; exec {SUM}; }} < "$1"
fi"""


def first_digest(out: bytes) -> str:
    return decode(out).split(" ", 1)[0].strip()


# -- reads ----------------------------------------------------------------------------------

#: the bytes [start, end) of a file ($2/$3 may be empty or negative, Python slice style).
CAT = """need "$1"; [ -d "$1" ] && die 21 "is a directory: ${1#$M}"
if [ -z "$2$3" ]; then exec cat "$1"; fi
s=$(stat -L -c %s "$1") || exit 5; a=${2:-0}; b=${3:-$s}
[ "$a" -lt 0 ] && a=$((s + a)); [ "$a" -lt 0 ] && a=0
[ "$b" -lt 0 ] && b=$((s + b)); [ "$b" -gt "$s" ] && b=$s
[ "$b" -le "$a" ] && exit 0
exec dd if="$1" bs=1048576 skip="$a" count=$((b - a)) iflag=skip_bytes,count_bytes 2>/dev/null"""

#: several whole files, concatenated (sizes known from a listing split them apart again).
CAT_MANY = """for f; do need "$f"; done
exec cat "$@\""""

# -- writes ---------------------------------------------------------------------------------

#: ``dd``'s block size where it copies stdin (the exec stream) into a file or into ``tar``:
#: with 256 KiB its buffer stays in the CPU cache between the two copies; 1 MiB cost the pod
#: 0.8 CPU s/GiB against 0.5 and moved fewer MiB/s (``iflag=fullblock`` fills each block
#: from the pipe, so the block size changes no byte count).
WBS = 256 * 1024

#: what every write checks first ($1 target): inside the claim, not a directory, parent made.
_PREPARE = """inside "${1%/*}"
[ -d "$1" ] && [ ! -L "$1" ] && die 21 "is a directory: ${1#$M}"
[ -d "${1%/*}" ] || mkdir -p "${1%/*}" || exit 1"""

#: commit temp $2 to target $1; $3 = overwrite|create. create relies on link(2) failing
#: atomically when the target exists; filesystems without hard links fall back to mv.
_COMMIT = """if [ "$3" = create ]; then
  if ln "$2" "$1" 2>/dev/null; then rm -f "$2"
  elif there "$1"; then rm -f "$2"; die 17 "file exists: ${1#$M}"
  else mv -f "$2" "$1" || exit 1; fi
else mv -f "$2" "$1" || exit 1; fi"""

#: write stdin (exactly $4 bytes) to $1 through temp $2, verify checksum $5, commit ($3 mode).
WRITE = f"""{_PREPARE}
[ "$3" = create ] && there "$1" && die 17 "file exists: ${{1#$M}}"
dd of="$2" bs={WBS} count="$4" iflag=count_bytes,fullblock 2>/dev/null \\
  || {{ rm -f "$2"; exit 5; }}
h=$({SUM} < "$2"); h=${{h%% *}}
[ "$h" = "$5" ] || {{ rm -f "$2"; die {EXIT_MISMATCH} "checksum mismatch on ${{1#$M}}"; }}
{_COMMIT}"""

#: prepare a chunked upload of $1 through part file $2 ($3 mode); print the part's size.
BEGIN_PARTS = f"""{_PREPARE}
[ "$3" = create ] && there "$1" && die 17 "file exists: ${{1#$M}}"
if [ -f "$2" ]; then stat -c %s "$2"; else : > "$2" && echo 0; fi"""

#: write exactly $3 bytes of stdin at offset $2 of part file $1, print the checksum on disk.
WRITE_PART = f"""[ -f "$1" ] || die 2 "upload part vanished: ${{1#$M}}"
dd of="$1" bs={WBS} seek="$2" count="$3" oflag=seek_bytes conv=notrunc \\
  iflag=count_bytes,fullblock 2>/dev/null || exit 5
dd if="$1" bs=1048576 skip="$2" count="$3" iflag=skip_bytes,count_bytes 2>/dev/null | {SUM}"""

#: write exactly $3 bytes of stdin at offset $2 of part file $1 (verified later, by range).
WRITE_CHUNK = f"""[ -f "$1" ] || die 2 "upload part vanished: ${{1#$M}}"
exec dd of="$1" bs={WBS} seek="$2" count="$3" oflag=seek_bytes conv=notrunc \\
  iflag=count_bytes,fullblock 2>/dev/null"""

#: finish a chunked upload: size must be $4, then commit part $2 to $1 ($3 mode).
FINISH_PARTS = f"""[ -f "$2" ] || die 2 "upload part vanished: ${{2#$M}}"
s=$(stat -c %s "$2"); [ "$s" -gt "$4" ] && truncate -s "$4" "$2"
s=$(stat -c %s "$2"); [ "$s" = "$4" ] || die {EXIT_MISMATCH} "part has $s bytes, expected $4"
{_COMMIT}"""

#: BEGIN_PARTS for many files: $1 mode, then (target, part file) pairs; one size a line.
BEGIN_MANY = f"""m=$1; shift
while [ $# -gt 0 ]; do
  (set -- "$1" "$2" "$m"
{BEGIN_PARTS}) || exit
  shift 2
done"""

#: FINISH_PARTS for many files: $1 mode, $2 first|retry, then (target, part, size) triples.
#: On retry a file whose part is gone and whose target has the right size is done already.
FINISH_MANY = f"""m=$1; r=$2; shift 2
while [ $# -gt 0 ]; do
  if [ "$r" = retry ] && [ ! -e "$2" ] && [ -f "$1" ] && [ "$(stat -c %s "$1")" = "$3" ]; then
    shift 3; continue
  fi
  (set -- "$1" "$2" "$m" "$3"
{FINISH_PARTS}) || exit
  shift 3
done"""

#: remove a temp/part file (best effort).
DISCARD = 'rm -f "$1"'

#: copy $1 to $2 through temp $3 (atomic replace).
COPY = (
    """need "$1"; [ -d "$1" ] && die 21 "is a directory: ${1#$M}"
set -- "$2" "$3" "$1"
"""
    + _PREPARE
    + """
cp -f "$3" "$2" || { rm -f "$2"; exit 1; }
mv -f "$2" "$1\""""
)

#: hard-link $1 as $2 (falling back to a copy), target must not exist.
LINK = (
    """need "$1"; [ -d "$1" ] && die 21 "is a directory: ${1#$M}"
set -- "$2" "$1"
"""
    + _PREPARE
    + """
[ "$1" -ef "$2" ] && exit 0
there "$1" && die 17 "file exists: ${1#$M}"
ln "$2" "$1" 2>/dev/null || cp "$2" "$1\""""
)

#: LINK for many files: (source, target) pairs, in one exec.
LINK_MANY = f"""while [ $# -gt 0 ]; do
  (set -- "$1" "$2"
{LINK}) || exit
  shift 2
done"""

#: atomic rename $1 -> $2 that fails if $2 exists. Directories: mkdir reserves the name
#: atomically (EEXIST if taken), then rename(2) replaces that empty directory in one step.
#: Files: link(2) fails atomically if the target exists; then the source name is removed.
RENAME = """need "$1"; inside "${1%/*}"; inside "${2%/*}"
there "$2" && die 17 "file exists: ${2#$M}"
[ -d "${2%/*}" ] || die 2 "no such directory: ${2%/*}"
if [ -d "$1" ] && [ ! -L "$1" ]; then
  mkdir "$2" 2>/dev/null || die 17 "file exists: ${2#$M}"
  mv -fT "$1" "$2" || { rmdir "$2"; exit 1; }
elif ln "$1" "$2" 2>/dev/null; then rm -f "$1"
else there "$2" && die 17 "file exists: ${2#$M}"; mv -fT "$1" "$2"; fi"""

#: mv like the shell's: into $2 if it is a directory, else rename (replacing a file).
MOVE = """need "$1"; inside "${1%/*}"; inside "${2%/*}"
exec mv -f "$1" "$2\""""

#: mkdir: $2 = parents|exact; exact fails (atomically) if $1 exists.
MKDIR = """inside "${1%/*}"
there "$1" && die 17 "file exists: ${1#$M}"
if [ "$2" = parents ]; then mkdir -p "${1%/*}" || exit 1; fi
[ -d "${1%/*}" ] || die 2 "no such directory: ${1%/*}"
mkdir "$1" 2>/dev/null || { there "$1" && die 17 "file exists: ${1#$M}"; mkdir "$1"; }"""

#: makedirs: $2 = ok|fail when it exists.
MAKEDIRS = """inside "${1%/*}"
if there "$1"; then
  [ -d "$1" ] || die 17 "file exists and is not a directory: ${1#$M}"
  [ "$2" = ok ] || die 17 "file exists: ${1#$M}"
  exit 0
fi
mkdir -p "$1\""""

RMDIR = """need "$1"; inside "${1%/*}"
[ -d "$1" ] || die 20 "not a directory: ${1#$M}"
exec rmdir "$1\""""

RM_FILE = """need "$1"; inside "${1%/*}"
[ -d "$1" ] && [ ! -L "$1" ] && die 21 "is a directory: ${1#$M}"
exec rm -f "$1\""""

#: rm -rf every argument (they exist; the caller expanded them).
RM_TREES = """for f; do inside "${f%/*}"; done
exec rm -rf "$@\""""

#: rm -rf one path, which must exist (for FileNotFoundError): a recursive rm with no listing.
RM_TREE = """need "$1"; inside "${1%/*}"
exec rm -rf "$1\""""

TOUCH = """inside "${1%/*}"
[ -d "${1%/*}" ] || mkdir -p "${1%/*}" || exit 1
exec touch "$1\""""

# -- tree uploads -------------------------------------------------------------------------

#: extract a tar of exactly $2 bytes from stdin into directory $1, then print the checksum of
#: the files listed after $2 (relative to $1).
TAR_IN = f"""inside "$1"; mkdir -p "$1" || exit 1
dd bs={WBS} count="$2" iflag=count_bytes,fullblock 2>/dev/null | tar x -o -m -C "$1" || exit 5
cd "$1" || exit 1; shift 2
[ $# -gt 0 ] && exec {SUM} "$@"
exit 0"""


def merge_script(staging: str | None, moves: list[tuple[str, str]], dirs: Iterable[str]) -> str:
    """A script moving staged files into place: one ``mv`` per target directory.

    ``moves`` holds (staged relative path, final remote path); each final file replaces its
    target atomically (rename). ``dirs`` are directories to create (also empty ones).
    ``staging`` (removed at the end) is None when there is nothing to move.
    """
    groups: dict[tuple[str, str], list[str]] = {}
    lines = []
    targets = sorted({t.rsplit("/", 1)[0] for _, t in moves} | set(dirs))
    for d in targets:
        lines.append(f"inside {q(d)}")
    if targets:
        lines.append("mkdir -p " + " ".join(q(d) for d in targets) + " || exit 1")
    for staged, final in moves:
        sdir, sname = staged.rsplit("/", 1) if "/" in staged else ("", staged)
        fdir, fname = final.rsplit("/", 1)
        if sname == fname:
            groups.setdefault((sdir, fdir), []).append(sname)
        else:
            lines.append(f"mv -f {q(f'{staging}/{staged}')} {q(final)} || exit 1")
    for (sdir, fdir), names in groups.items():
        base = staging + ("/" + sdir if sdir else "")
        batch: list[str] = []
        size = 0
        for name in [*names, None]:
            if name is not None:
                word = q(base + "/" + name)
                batch.append(word)
                size += len(word) + 1
            if batch and (name is None or size > 64 * 1024):
                lines.append(f"mv -f {' '.join(batch)} {q(fdir)}/ || exit 1")
                batch, size = [], 0
    if staging is not None:
        lines.append(f"rm -rf {q(staging)}")
    return "\n".join(lines)


# -- errors ---------------------------------------------------------------------------------


class PVCPathError(ModelRepoError, ValueError):
    """A path that cannot name anything on the claim (``..`` escape, NUL byte, too long)."""


class _PVCOSError(ModelRepoError):
    """An OSError from the claim that also carries a hint (see modelrepo.errors)."""

    errno_value = errno.EIO

    def __init__(self, message: str, *, hint: str | None = None, path: str = "") -> None:
        super().__init__(message, hint=hint)
        # OSError's str() shows "[Errno N] strerror": keep the hint in it.
        self.errno = self.errno_value  # type: ignore[attr-defined]
        self.strerror = self.args[0]  # type: ignore[attr-defined]
        self.path = path


class PVCFileNotFoundError(_PVCOSError, FileNotFoundError):
    """No such file or folder on the claim."""

    errno_value = errno.ENOENT


class PVCFileExistsError(_PVCOSError, FileExistsError):
    """The target already exists on the claim."""

    errno_value = errno.EEXIST


class PVCIsADirectoryError(_PVCOSError, IsADirectoryError):
    """A folder where a file was expected."""

    errno_value = errno.EISDIR


class PVCNotADirectoryError(_PVCOSError, NotADirectoryError):
    """A file where a folder was expected."""

    errno_value = errno.ENOTDIR


class PVCPermissionError(_PVCOSError, PermissionError):
    """The helper pod may not do this (file permissions, or a link leaving the claim)."""

    errno_value = errno.EACCES


_BY_CODE: dict[int, tuple[type[_PVCOSError], str]] = {
    errno.ENOENT: (PVCFileNotFoundError, "check the path (fs.ls the parent folder)"),
    errno.EEXIST: (PVCFileExistsError, "choose another name or remove it first"),
    errno.EISDIR: (PVCIsADirectoryError, "name a file, or use recursive=True for folders"),
    errno.ENOTDIR: (PVCNotADirectoryError, "a parent of this path is a file, not a folder"),
    errno.EACCES: (
        PVCPermissionError,
        "the helper pod's user may not write there: fix the claim's permissions or "
        "use run_as_user=<owner uid>",
    ),
    EXIT_OUTSIDE: (
        PVCPermissionError,
        "modelrepo refuses to write through links that leave the claim; remove the link",
    ),
}

_BY_TEXT: list[tuple[str, int]] = [
    ("No such file or directory", errno.ENOENT),
    ("File exists", errno.EEXIST),
    ("Is a directory", errno.EISDIR),
    ("Not a directory", errno.ENOTDIR),
    ("Permission denied", errno.EACCES),
    ("Operation not permitted", errno.EACCES),
    ("Read-only file system", errno.EROFS),
    ("No space left on device", errno.ENOSPC),
    ("Directory not empty", errno.ENOTEMPTY),
    ("File name too long", errno.ENAMETOOLONG),
    ("Disk quota exceeded", errno.EDQUOT),
]


def raise_for(result: ExecResult, path: str, what: str) -> None:
    """Raise the exception a script's exit code (or stderr) stands for; return if 0."""
    code = result.exit_code
    if code == 0:
        return
    message = decode(result.stderr).strip().replace("\n", "; ")
    if code not in _BY_CODE:
        for text, num in _BY_TEXT:
            if text in message:
                code = num
                break
    if code in _BY_CODE:
        cls, hint = _BY_CODE[code]
        raise cls(
            f"{what} {path!r}: {message or errno.errorcode.get(code, code)}", hint=hint, path=path
        )
    if code == EXIT_MISMATCH:
        raise TransferError(
            f"{what} {path!r}: the bytes on the claim do not match what was sent ({message})",
            hint="the transfer was damaged; it is retried automatically, run it again if this "
            "persists",
        )
    hints = {
        errno.ENOSPC: "the claim is full: delete old versions (repo.prune) or grow the PVC",
        errno.EDQUOT: "the claim's quota is exhausted: delete old versions or raise the quota",
        errno.EROFS: "the claim is mounted read-only: use a writable (ReadWriteOnce/Many) claim",
        errno.ENOTEMPTY: "the folder is not empty: use recursive=True to delete its contents",
        errno.ENAMETOOLONG: "use a shorter name (at most 255 bytes per path component)",
    }
    err = TransferError(
        f"{what} {path!r} failed in the helper pod (exit {result.exit_code}): "
        f"{message or 'no message'}",
        hint=hints.get(code, "check the claim's free space and permissions, then retry"),
    )
    if code in hints:
        err.errno = code
        err.strerror = err.args[0]
    raise err
