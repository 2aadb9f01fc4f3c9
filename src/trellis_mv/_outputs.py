"""Output folders that are written completely or not at all.

Everything is written into a staging folder on the output folder's own filesystem and
moved into place only when it is complete, so a failure (an exception, Ctrl-C, SIGTERM)
leaves the output folder as it was. A folder that holds an earlier run is refused unless
``overwrite`` is given, and then its whole content is replaced, never mixed with the new
files; a folder holding files trellis-mv did not write is never overwritten.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ._errors import OutputError

__all__ = ["MARKER", "check_output", "output_folder"]

#: The key of ``summary.json`` that marks a folder as a trellis-mv output.
MARKER = "trellis_mv"
_STAGING = ".trellis-mv-staging-"


def _writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK | os.X_OK)


def _ours(folder: Path) -> bool:
    try:
        return MARKER in json.loads((folder / "summary.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


def _visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(_STAGING))


def check_output(out_dir: str | os.PathLike[str] | None, *, overwrite: bool = False) -> Path:
    """Check that ``out_dir`` can receive a run's outputs, before any model work.

    :raises OutputError: an empty path, a file, a folder with earlier results and no
        ``overwrite``, a folder with files trellis-mv did not write, or nothing writable.
    """
    if out_dir is None or str(out_dir).strip() == "":
        raise OutputError("the output folder is empty (--out ''); give a folder path, e.g. --out out/mine")
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise OutputError(f"out={str(out)!r} exists and is not a folder; choose a folder path")
    if out.is_dir() and _visible(out):
        if not _ours(out):
            raise OutputError(
                f"out={str(out)!r} holds files trellis-mv did not write ({', '.join(_visible(out)[:5])}); "
                "choose an empty or new folder"
            )
        if not overwrite:
            raise OutputError(
                f"out={str(out)!r} holds an earlier run ({', '.join(_visible(out)[:5])}); pass --overwrite "
                "(overwrite=True) to replace it, or choose another folder"
            )
    ancestor = out.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not (_writable(ancestor) or (out.is_dir() and _writable(out))):
        raise OutputError(f"cannot write to out={str(out)!r} ({str(ancestor)!r} is not writable); choose a writable folder")
    return out


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back while files are swapped, so the swap is never cut in half."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    before = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


@contextmanager
def output_folder(out_dir: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder; when the block succeeds its files become ``out_dir``'s whole content.

    The staging folder sits beside ``out_dir`` (same filesystem, so the final move is a
    rename), or inside it where only the folder itself is writable.

    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> with output_folder(root / "run") as staging:
    ...     _ = (staging / "summary.json").write_text('{"trellis_mv": "0"}')
    >>> sorted(p.name for p in (root / "run").iterdir())
    ['summary.json']
    """
    out = check_output(out_dir, overwrite=overwrite)
    created: list[Path] = []
    parent = out.parent
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    beside = _writable(parent)
    try:
        if beside:
            out.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=_STAGING, dir=out.parent))
        else:
            staging = Path(tempfile.mkdtemp(prefix=_STAGING, dir=out))
        mask = os.umask(0)
        os.umask(mask)
        staging.chmod(0o777 & ~mask)
    except OSError as exc:
        raise OutputError(f"cannot write to out={str(out)!r}: {exc}") from exc
    try:
        yield staging
        with _signals_deferred():
            _commit(staging, out, beside)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in created:
            try:
                folder.rmdir()
            except OSError:
                break
        raise


def _commit(staging: Path, out: Path, beside: bool) -> None:
    if beside:
        if out.is_dir() and any(out.iterdir()):
            trash = Path(tempfile.mkdtemp(prefix=_STAGING, dir=out.parent))
            os.replace(out, trash / "old")
            os.replace(staging, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(staging, out)  # a missing or empty folder is replaced in one rename
        return
    old = Path(tempfile.mkdtemp(prefix=_STAGING, dir=out))
    for name in _visible(out):
        os.replace(out / name, old / name)
    for item in staging.iterdir():
        os.replace(item, out / item.name)
    shutil.rmtree(old, ignore_errors=True)
    staging.rmdir()
