"""Where a run writes: every output distinct from every input and from each other, and one writer per output.

    check_names([("output", "out.mp4"), ("--json", "s.json")])         # a name the filesystem cannot hold
    check_distinct(reads=[("input", "x.npy")], writes=[("output", "out.mp4"), ("--json", "s.json")])
    with OutputLock(Path("out.mp4")): ...                               # a second run on out.mp4 is refused

Both checks run before any work, so a run that would overwrite its own input (or write two things to one
file) is refused with one line and nothing is touched. A file is the same file whatever it is called: the
same inode (a hard link, a symlink, /dev/stdout) or, for one not created yet, the same resolved path.

The lock is an flock on a hidden sidecar next to the output (`.NAME.flashdecode-lock`), not on the output
itself: a video is created only with its first frames (no empty file under the name), and the kernel drops
an flock when its process dies, so even kill -9 leaves no stale lock, only the sidecar file, which the next
run takes over and removes.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import stat
import sys
from pathlib import Path

from .errors import FlashdecodeError, shown

NAME_MAX = 255  # bytes per file or folder name on Linux/macOS filesystems (pathconf says, where it can)
LOCK_SUFFIX = ".flashdecode-lock"


def _short(text: str, keep: int = 60) -> str:
    return text if len(text) <= keep else f"{text[:keep // 2]}...{text[-keep // 2:]}"


def _name_max(path: Path) -> int:
    for folder in [path.parent, *path.parent.parents]:
        try:
            return os.pathconf(folder if str(folder) else ".", "PC_NAME_MAX")
        except (OSError, ValueError):
            continue
    return NAME_MAX


def check_names(paths: list[tuple[str, object]]) -> None:
    """Each (what, path): every file or folder name in it fits the filesystem (one line, not ENAMETOOLONG)."""
    for what, path in paths:
        if path is None or str(path) == "-":
            continue
        path = Path(path)
        limit = _name_max(path)
        for part in path.parts:
            n = len(os.fsencode(part))
            if n > limit:
                raise FlashdecodeError(f"{what} {shown(_short(str(path)))}: the name {_short(part, 40)!r} is {n} bytes "
                                       f"long, more than the {limit} this filesystem allows per name; pick a shorter name")


def identity(path) -> tuple:
    """What makes two paths one file: its device and inode if it exists, else its resolved path."""
    if str(path) == "-":  # stdout: whatever file or pipe fd 1 is
        try:
            st = os.fstat(sys.stdout.fileno())
            return ("inode", st.st_dev, st.st_ino)
        except (OSError, ValueError, AttributeError):
            return ("stdout",)
    try:
        st = os.stat(path)
        return ("inode", st.st_dev, st.st_ino)
    except OSError:
        return ("path", os.path.realpath(path))


def check_distinct(reads: list[tuple[str, object]], writes: list[tuple[str, object]]) -> None:
    """Refuse (one line) a write that is one of the reads, or two writes that are one file.

    reads/writes: (what, path) pairs, e.g. ("input", "x.npy"), ("--json", "s.json"); None paths are skipped.
    """
    seen: dict[tuple, tuple[str, str]] = {}
    for what, path in reads:
        if path is not None and str(path) != "-":
            seen.setdefault(identity(path), (what, str(path)))
    read_ids = set(seen)
    for what, path in writes:
        if path is None:
            continue
        key = identity(path)
        path = "- (stdout)" if str(path) == "-" else path
        if key in seen:
            other_what, other = seen[key]
            if key in read_ids:
                raise FlashdecodeError(f"{what} {shown(path)} is the same file as the {other_what} {shown(other)}: "
                                       f"writing it would destroy the {other_what}; pick another {what} path")
            raise FlashdecodeError(f"{other_what} {shown(other)} and {what} {shown(path)} are one file: the run would "
                                   "write it twice; pick distinct paths")
        seen[key] = (what, str(path))


def lock_path(output: Path) -> Path:
    """The sidecar next to `output`; a hashed name where `.NAME.flashdecode-lock` would be too long to create."""
    name = f".{output.name}{LOCK_SUFFIX}"
    if len(os.fsencode(name)) > _name_max(output):
        name = f".{hashlib.sha1(os.fsencode(output.name)).hexdigest()[:20]}{LOCK_SUFFIX}"
    return output.parent / name


class OutputLock:
    """An exclusive, non-blocking lock on one output; FlashdecodeError if another process holds it.

    Released (and its sidecar removed) by `release()` or at exit from a `with` block; a killed holder's lock
    is released by the kernel.
    """

    def __init__(self, output: Path):
        self.output, self.path, self.fd = Path(output), lock_path(Path(output)), None
        while self.fd is None:
            try:
                # never through a link: a planted `.NAME.flashdecode-lock -> precious` must not be truncated
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
            except OSError as e:
                raise FlashdecodeError(f"cannot write output {shown(self.output)}: {e.strerror or e} (its lock file "
                                       f"{shown(self.path.name)}); pick a writable location with -o") from None
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:  # a hard link to another file: leave it alone
                os.close(fd)
                raise FlashdecodeError(f"lock file {shown(self.path)} of output {shown(self.output)} is not one "
                                       "flashdecode made (a link or not a plain file); remove it or pick another output")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
                os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise FlashdecodeError(f"cannot lock output {shown(self.output)}: {e.strerror or e}") from None
                who = f" (pid {holder})" if holder.isdigit() else ""
                raise FlashdecodeError(f"output {shown(self.output)} is being written by another flashdecode run{who}; "
                                       "wait for it to finish, or pick another output") from None
            if self._still_there(fd):  # else the previous holder removed it between our open and our lock: again
                self.fd = fd
            else:
                os.close(fd)
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def _still_there(self, fd: int) -> bool:
        try:
            st, mine = os.stat(self.path), os.fstat(fd)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink()  # while still locked: no other run can be holding this sidecar
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> "OutputLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def is_locked(output: Path) -> bool:
    """Whether some process holds the lock on `output` now (a file still being written)."""
    try:
        fd = os.open(lock_path(Path(output)), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


__all__ = ["OutputLock", "check_distinct", "check_names", "identity", "is_locked", "lock_path"]
