"""Output folders: what trellis-mv may write, replace or delete, and nothing else.

The rules, for ``generate``, ``demo``, ``eval --out``, ``eval report`` and ``eval example``:

- A folder is trellis-mv's only if it holds the marker file :data:`MARKER_FILE`, which
  records the kind of run (``generate``, ``eval``, ``example``) and the names it wrote, and
  nothing else (hidden files included). Any other non-empty folder is refused, whatever
  the options; a folder of another kind is refused too.
- ``overwrite`` replaces a trellis-mv folder's files, which are all its own; a folder that
  holds an input of the run (an image given to ``generate``, a data set given to ``eval``)
  is refused, with or without ``overwrite``.
- ``--out`` that is a symbolic link is refused before any model work.
- One run at a time writes a folder: a lock file beside it (``.NAME.trellis-mv-lock``, or
  inside it when only the folder is writable) holds the writer's process id; a second run
  is refused while the first lives. The lock of a killed run is taken over.
- Files are written into a staging folder (``.trellis-mv-staging-...``, on the output's
  filesystem) and moved into place only when complete; a staging folder holds a file with
  its writer's process id, so a killed run's staging folder is deleted by the next run, and
  a user's file of a similar name, which lacks it, is never touched.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ._errors import OutputError

__all__ = ["MARKER", "MARKER_FILE", "check_output", "claim_folder", "output_folder", "write_lock"]

#: The key of ``summary.json`` (and of the marker file) that names the trellis-mv version.
MARKER = "trellis_mv"
#: The file that makes a folder trellis-mv's: ``{"trellis_mv": version, "kind": ..., "files": [names or patterns]}``.
MARKER_FILE = ".trellis-mv.json"
_STAGING = ".trellis-mv-staging-"
_OWNER = ".trellis-mv-owner"  # inside a staging folder: the writer's host and process id
_LOCK = ".trellis-mv-lock"


def _writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK | os.X_OK)


def _version() -> str:
    from . import __version__

    return str(__version__)


def _owner_text() -> str:
    return json.dumps({"host": socket.gethostname(), "pid": os.getpid()})


def _alive(text: str) -> bool | None:
    """Whether the writer that ``text`` (an owner or lock file's content) names still runs; None: not ours."""
    try:
        owner = json.loads(text)
        host, pid = owner["host"], int(owner["pid"])
    except (ValueError, TypeError, KeyError):
        return None
    if host != socket.gethostname():
        return True  # another machine's writer: assume it lives
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_staging(path: Path) -> bool:
    """A staging folder of trellis-mv (its name and the owner file inside), never a user's look-alike."""
    return path.name.startswith(_STAGING) and path.is_dir() and not path.is_symlink() and (path / _OWNER).is_file()


def _clean_stale(folder: Path) -> None:
    """Delete the staging folders in ``folder`` whose writer no longer runs (a killed run's leftovers)."""
    try:
        entries = list(folder.iterdir())
    except OSError:
        return
    for path in entries:
        if _is_staging(path):
            try:
                if _alive((path / _OWNER).read_text()) is False:
                    shutil.rmtree(path, ignore_errors=True)
            except OSError:
                pass


def _new_staging(folder: Path) -> Path:
    staging = Path(tempfile.mkdtemp(prefix=_STAGING, dir=folder))
    (staging / _OWNER).write_text(_owner_text())
    return staging


def _is_lock(path: Path) -> bool:
    try:
        return path.is_file() and not path.is_symlink() and _alive(path.read_text()) is not None
    except OSError:
        return False


def _read_marker(folder: Path) -> dict[str, Any] | None:
    """The marker of ``folder``, or None. A marker being written by another process is waited for briefly."""
    path = folder / MARKER_FILE
    for _ in range(20):
        if not path.is_file() or path.is_symlink():
            return None
        try:
            marker = json.loads(path.read_text())
        except ValueError:
            time.sleep(0.05)  # another rank of an evaluation is writing it
            continue
        except OSError:
            return None
        ok = isinstance(marker, dict) and MARKER in marker and isinstance(marker.get("files"), list)
        return marker if ok else None
    return None


def _foreign(folder: Path, marker: dict[str, Any] | None) -> list[str]:
    """The names in ``folder`` that its marker does not account for (all of them without a marker)."""
    patterns = [str(p) for p in (marker or {}).get("files", [])]
    names = []
    for path in sorted(folder.iterdir()):
        name = path.name
        if _is_staging(path) or (marker is not None and name == MARKER_FILE) or (name == _LOCK and _is_lock(path)):
            continue
        if marker is not None and any(fnmatch.fnmatchcase(name, p) for p in patterns):
            continue
        names.append(name)
    return names


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except (ValueError, OSError):
        return False


def check_output(
    out_dir: str | os.PathLike[str] | None,
    *,
    overwrite: bool = False,
    kind: str = "generate",
    inputs: Iterable[Any] = (),
    resume: bool = False,
) -> Path:
    """Check that ``out_dir`` may receive a run's outputs, before any model work (the rules: module docs).

    :param kind: the kind of run; a trellis-mv folder of another kind is refused.
    :param inputs: the run's input files or folders; a folder that holds one is refused.
    :param resume: the folder is added to, not replaced (an evaluation): an own folder needs no ``overwrite``.
    :raises OutputError: naming the folder, what is wrong and what to do.
    """
    if out_dir is None or str(out_dir).strip() == "":
        raise OutputError("the output folder is empty (--out ''); give a folder path, e.g. --out out/mine")
    out = Path(out_dir).expanduser()
    if out.is_symlink():
        raise OutputError(f"out={str(out)!r} is a symbolic link (to {os.readlink(out)!r}); give the folder itself or "
                          "a new folder")
    if out.exists() and not out.is_dir():
        raise OutputError(f"out={str(out)!r} exists and is not a folder; choose a folder path")
    for item in inputs:
        if isinstance(item, (str, os.PathLike)) and (_inside(Path(item), out) or _inside(out, Path(item))):
            raise OutputError(f"out={str(out)!r} and the input {str(item)!r} overlap; trellis-mv never writes where "
                              "its inputs are: choose an --out outside them")
    if out.is_dir():
        _clean_stale(out)
        marker = _read_marker(out)
        foreign = _foreign(out, marker)
        if foreign:
            raise OutputError(
                f"out={str(out)!r} holds files trellis-mv did not write ({', '.join(foreign[:5])}); "
                "choose an empty or new folder"
            )
        if marker is not None and marker.get("kind", "generate") != kind:
            raise OutputError(f"out={str(out)!r} holds the output of `trellis-mv {marker.get('kind')}`, not of "
                              f"`trellis-mv {kind}`; choose another folder")
        if marker is not None and not overwrite and not resume:
            shown = [f for f in marker["files"] if (out / f).exists()][:5]
            raise OutputError(
                f"out={str(out)!r} holds an earlier run ({', '.join(shown)}); pass --overwrite "
                "(overwrite=True) to replace it, or choose another folder"
            )
    ancestor = out.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not (_writable(ancestor) or (out.is_dir() and _writable(out))):
        raise OutputError(f"cannot write to out={str(out)!r} ({str(ancestor)!r} is not writable); choose a writable folder")
    if ancestor == out.parent:
        _clean_stale(out.parent)
    return out


def _marker_text(kind: str, files: Sequence[str]) -> str:
    return json.dumps({MARKER: _version(), "kind": kind, "files": sorted(files)}, indent=1) + "\n"


def claim_folder(out_dir: str | os.PathLike[str], *, kind: str, files: Sequence[str], inputs: Iterable[Any] = ()) -> Path:
    """Make ``out_dir`` (new, empty or already this kind's) a folder that a resumable run adds to.

    Checks the folder (:func:`check_output` with ``resume``), creates it and writes its marker,
    which lists ``files`` (names or shell patterns). Safe when several processes claim one folder at once.
    """
    out = check_output(out_dir, kind=kind, inputs=inputs, resume=True)
    out.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(out / MARKER_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return out
    with os.fdopen(fd, "w") as f:
        f.write(_marker_text(kind, files))
    return out


@contextmanager
def write_lock(out_dir: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the lock of ``out_dir`` for the block; refuse when another living run holds it."""
    out = Path(out_dir)
    path = out.parent / f".{out.name}{_LOCK}" if _writable(out.parent) or not out.is_dir() else out / _LOCK
    for _ in range(3):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                alive = _alive(path.read_text())
            except OSError:
                continue
            if alive is None:
                raise OutputError(f"{str(path)!r} is in the way of trellis-mv's lock for out={str(out)!r} and was not "
                                  "written by trellis-mv; move it or choose another folder") from None
            if alive:
                raise OutputError(f"another trellis-mv run is writing out={str(out)!r} (lock {str(path)!r}); wait "
                                  "for it to finish or choose another folder") from None
            path.unlink(missing_ok=True)  # the lock of a killed run
            continue
        except OSError as exc:
            raise OutputError(f"cannot write to out={str(out)!r}: {exc}") from exc
        with os.fdopen(fd, "w") as f:
            f.write(_owner_text())
        break
    else:
        raise OutputError(f"cannot take the lock {str(path)!r} of out={str(out)!r}; try again")
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


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
def output_folder(
    out_dir: str | os.PathLike[str], *, overwrite: bool = False, kind: str = "generate", inputs: Iterable[Any] = ()
) -> Iterator[Path]:
    """Yield an empty staging folder; when the block succeeds its files become ``out_dir``'s whole content.

    The folder is checked (:func:`check_output`) and locked (:func:`write_lock`) first; the
    marker, listing the staged names, is added at the end. The staging folder sits beside
    ``out_dir`` (same filesystem, so the final move is a rename), or inside it where only
    the folder itself is writable.

    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> with output_folder(root / "run") as staging:
    ...     _ = (staging / "summary.json").write_text('{"trellis_mv": "0"}')
    >>> sorted(p.name for p in (root / "run").iterdir())
    ['.trellis-mv.json', 'summary.json']
    """
    inputs = list(inputs)
    out = check_output(out_dir, overwrite=overwrite, kind=kind, inputs=inputs)
    created: list[Path] = []
    parent = out.parent
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    beside = _writable(parent)
    try:
        if beside:
            out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot write to out={str(out)!r}: {exc}") from exc
    try:
        with write_lock(out):
            check_output(out, overwrite=overwrite, kind=kind, inputs=inputs)  # again, now that no one else writes
            try:
                staging = _new_staging(out.parent if beside else out)
                mask = os.umask(0)
                os.umask(mask)
                staging.chmod(0o777 & ~mask)
            except OSError as exc:
                raise OutputError(f"cannot write to out={str(out)!r}: {exc}") from exc
            try:
                yield staging
                (staging / _OWNER).unlink()
                names = [p.name for p in staging.iterdir()]
                (staging / MARKER_FILE).write_text(_marker_text(kind, names))
                with _signals_deferred():
                    _commit(staging, out, beside)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
    except BaseException:
        for folder in created:
            try:
                folder.rmdir()
            except OSError:
                break
        raise


def _commit(staging: Path, out: Path, beside: bool) -> None:
    if beside:
        if out.is_dir() and any(out.iterdir()):
            trash = _new_staging(out.parent)
            os.replace(out, trash / "old")
            os.replace(staging, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(staging, out)  # a missing or empty folder is replaced in one rename
        return
    old = _new_staging(out)
    for path in list(out.iterdir()):
        if path != staging and path != old and path.name != _LOCK:
            os.replace(path, old / path.name)
    for item in staging.iterdir():
        os.replace(item, out / item.name)
    shutil.rmtree(old, ignore_errors=True)
    staging.rmdir()
