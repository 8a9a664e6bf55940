"""Writing a command's output without losing anything: aside, then renamed into place.

- `AtomicOutputDirectory`: a hidden sibling directory, renamed to the target when complete, so a
  crash never leaves a directory that looks finished. An exclusive lock on the target is held
  from the start of the run to its end, so two runs into one output cannot overwrite each other.
  An existing target is replaced only when asked (`force`), and only when it is an earlier output
  of the same writer (recognised by the marker file that writer left in it) that holds none of
  the run's inputs: never a directory of someone else's files.
- `atomic_file`: the same for one file.

Everything is created with the permissions the user's umask gives (`os.mkdir` / `os.open` with
0o777 / 0o666), not `tempfile`'s private 0o700 / 0o600, so teammates on a shared cluster can read
what a run wrote. Locks are POSIX `flock`s on a hidden `.NAME.lock` file beside the target,
removed when the run ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

MARKER_FILE = ".sphinx-output.json"


class OutputError(OSError):
    """An output that cannot be written as asked: locked by another run, not replaceable, or in
    the way of an input."""


class OutputExistsError(OutputError, FileExistsError):
    """The output already exists and replacing it was not asked for."""


class OutputLock:
    """An exclusive lock on an output path, held until `release()`; taking a lock that another
    process holds fails at once, naming that process.

    The lock is a `flock` on a hidden `.NAME.lock` file beside the output, removed on release so
    that nothing is left behind. The holder unlinks it before unlocking; a process that locked
    the file in between finds that its descriptor no longer matches the path and tries again on
    the new file, so two processes never both hold the lock."""

    def __init__(self, target: Path) -> None:
        self.path = target.with_name(f".{target.name}.lock")
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise OutputError(
                    f"{target} is being written by another run (process {holder}); wait for it "
                    "to end or choose another output"
                ) from None
            if _same_file(fd, self.path):
                break
            os.close(fd)  # its holder removed it as we locked it: lock the new one
        self._fd: int | None = fd
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = path.stat()
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def write_marker(directory: Path, writer: str) -> None:
    """Mark `directory` as an output of `writer` (so that a later run may replace it)."""
    (directory / MARKER_FILE).write_text(json.dumps({"writer": writer}) + "\n")


def read_marker(directory: Path) -> dict | None:
    """The marker a sphinx command left in an output directory, or None."""
    try:
        marker = json.loads((directory / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def check_replaceable(target: Path, writer: str, inputs: Iterable[str | Path] = ()) -> None:
    """Refuse to replace `target` unless it is a directory `writer` wrote (its marker file says
    so) and none of `inputs` lies inside it."""
    if not target.is_dir() or target.is_symlink():
        raise OutputError(f"{target} exists and is not a directory; choose another output")
    marker = read_marker(target)
    if marker is None or marker.get("writer") != writer:
        raise OutputError(
            f"{target} is not an earlier output of {writer} (it has no {MARKER_FILE} of "
            f"{writer}): --force replaces only those; choose another output"
        )
    for path in inputs:
        resolved = Path(path).expanduser().resolve()
        if resolved == target or target in resolved.parents:
            raise OutputError(
                f"{target} holds {path}, an input of this run: refusing to replace it; choose "
                "another output"
            )


class AtomicOutputDirectory:
    """A hidden sibling directory of `target` (`self.path`), renamed to `target` by `commit()`
    or removed by `abort()`; the target stays locked in between. Use it as a context manager to
    commit on success and abort on any error."""

    def __init__(
        self,
        target: str | Path,
        *,
        writer: str,
        force: bool = False,
        inputs: Iterable[str | Path] = (),
    ) -> None:
        self.target = Path(target).expanduser().resolve()
        self.writer = writer
        if self.target.exists() and not self.target.is_dir():
            raise OutputError(f"{self.target} exists and is not a directory; choose another output")
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self._lock = OutputLock(self.target)
        try:
            if self.target.exists():
                if not force:
                    raise OutputExistsError(
                        f"{self.target} exists; choose another output or pass --force"
                    )
                check_replaceable(self.target, writer, inputs)
            _remove_abandoned_partials(self.target, writer)
            self.path = _new_sibling(self.target, "partial")
            write_marker(self.path, writer)
        except BaseException:
            self._lock.release()
            raise

    def commit(self) -> Path:
        """Move the finished directory into place (replacing an earlier output when forced)."""
        try:
            old = None
            if self.target.exists():
                old = self.target.with_name(f".{self.target.name}.replaced-{os.getpid()}")
                self.target.rename(old)
            self.path.rename(self.target)
            if old is not None:
                shutil.rmtree(old)
            return self.target
        finally:
            self._lock.release()

    def abort(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        self._lock.release()

    def __enter__(self) -> AtomicOutputDirectory:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            self.commit()
        else:
            self.abort()


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "w", **open_args) -> Iterator[IO]:
    """Open a hidden sibling of `path` for writing; it replaces `path` when the block ends
    without error and is removed otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}-{secrets.token_hex(4)}")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with open(descriptor, mode, **open_args) as file:
            yield file
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _new_sibling(target: Path, kind: str) -> Path:
    """A new empty hidden directory beside `target`, with the umask's permissions."""
    path = target.with_name(f".{target.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")
    os.mkdir(path, 0o777)
    return path


def _remove_abandoned_partials(target: Path, writer: str) -> None:
    """Delete `.NAME.partial-PID-*` directories of `writer` whose process no longer runs (the
    caller holds the target's lock, so no live run of this version is writing one)."""
    for partial in target.parent.glob(f".{target.name}.partial-*"):
        pid = partial.name.rsplit(".partial-", 1)[1].split("-", 1)[0]
        marker = (read_marker(partial) if partial.is_dir() else None) or {}
        if pid.isdigit() and not _process_alive(int(pid)) and marker.get("writer") == writer:
            shutil.rmtree(partial, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
