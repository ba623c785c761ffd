"""Cache entries of data sources (`<cache>/shapes-<hash>`, `<cache>/hf-<hash>`): written atomically,
checked when loaded, and no orphaned temporary directories left behind.

An entry is built in a temporary sibling `.<name>.tmp-XXXX` and renamed into place. While it is
built, its owner holds an exclusive `flock` on `.<name>.tmp-XXXX.lock` beside it; a process that
builds any entry first removes the temporary siblings nobody holds (their owner died: Ctrl-C, OOM
kill, a full disk) and the unlocked ones older than `STALE_AFTER_S` (left by code without the lock).
So two processes building the same entry at once never remove each other's directory, and an
interrupted build costs disk space only until the next build in that cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa

log = logging.getLogger(__name__)

STALE_AFTER_S = 3600.0  # an unlocked temporary directory older than this is an orphan
PARTIAL_KEPT_S = 7 * 86400.0  # an unlocked partial build untouched this long is abandoned (`resumable_sibling`)
_TEMPORARY = re.compile(r"^\.(shapes|hf)-[0-9a-f]{16}\.tmp-[^/]+$")
_PARTIAL = re.compile(r"^\.[a-z0-9_]+-[0-9a-f]{16}\.partial$")
# what loading a damaged entry raises: a truncated Arrow file (OSError / ArrowInvalid), bad JSON
# metadata (ValueError), a missing file or key
LOAD_ERRORS = (OSError, ValueError, KeyError, TypeError, pa.ArrowException)


def _lock_path(tmp: Path) -> Path:
    return tmp.with_name(tmp.name + ".lock")


def _age_s(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def remove_stale_temporaries(root: Path, stale_after_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove the temporary entry directories under `root` that no live process is building; returns them."""
    removed: list[Path] = []
    try:
        candidates = sorted(p for p in root.iterdir() if _TEMPORARY.match(p.name) and not p.name.endswith(".lock"))
    except OSError:
        return removed
    for tmp in candidates:
        lock = _lock_path(tmp)
        try:
            fd = os.open(lock, os.O_RDWR)
        except FileNotFoundError:  # no lock: a directory of older code, or one created a moment ago
            if _age_s(tmp) > stale_after_s:
                shutil.rmtree(tmp, ignore_errors=True)
                removed.append(tmp)
            continue
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # held: its owner is building it right now
                continue
            shutil.rmtree(tmp, ignore_errors=True)
            with contextlib.suppress(OSError):
                lock.unlink()
            removed.append(tmp)
        finally:
            os.close(fd)
    # locks left without their directory (the owner died between the two removals)
    for lock in root.glob(".*.tmp-*.lock"):
        if _TEMPORARY.match(lock.name[: -len(".lock")]) and not lock.with_name(lock.name[: -len(".lock")]).exists():
            with contextlib.suppress(OSError):
                fd = os.open(lock, os.O_RDWR)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    lock.unlink()
                finally:
                    os.close(fd)
    removed += _remove_abandoned_partials(root)
    if removed:
        log.info(
            "removed %d orphaned temporary cache director%s of interrupted builds: %s",
            len(removed),
            "y" if len(removed) == 1 else "ies",
            ", ".join(str(p) for p in removed),
        )
    return removed


def _remove_abandoned_partials(root: Path) -> list[Path]:
    """Partial builds (`resumable_sibling`) nobody holds and nobody has added to for `PARTIAL_KEPT_S`."""
    removed: list[Path] = []
    for partial in sorted(p for p in root.iterdir() if _PARTIAL.match(p.name)):
        newest = max(_age_s(partial), 0.0)
        shards = partial / "shards"
        if shards.exists():
            newest = min(newest, _age_s(shards))
        if newest <= PARTIAL_KEPT_S:
            continue
        fd = os.open(partial.with_name(partial.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # being built right now
            os.close(fd)
            continue
        try:
            shutil.rmtree(partial, ignore_errors=True)
            removed.append(partial)
        finally:
            os.close(fd)
    return removed


@contextlib.contextmanager
def temporary_sibling(target: Path) -> Iterator[Path]:
    """A fresh directory beside `target` to build it in, locked while in use and removed at exit
    (the caller renames it onto `target` when it is complete). Stale siblings are removed first."""
    root = target.parent
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(root)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=root))
    lock = _lock_path(tmp)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        with contextlib.suppress(OSError):
            lock.unlink()
        os.close(fd)


@contextlib.contextmanager
def resumable_sibling(target: Path) -> Iterator[Path]:
    """`.<name>.partial` beside `target`, to build it in over one or several attempts: held under an
    exclusive `flock` (a second process building the same entry waits, then finds it published) and kept
    when the build is interrupted, so the next build continues what it holds. The caller renames it onto
    `target` when complete (`publish`). Partial builds untouched for `PARTIAL_KEPT_S` are removed."""
    root = target.parent
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(root)
    partial = root / f".{target.name}.partial"
    fd = os.open(root / f".{target.name}.partial.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            log.info("another process is building %s; waiting for it", target)
            fcntl.flock(fd, fcntl.LOCK_EX)
        partial.mkdir(exist_ok=True)
        partial.chmod(0o755)
        yield partial
    finally:
        os.close(fd)  # the lock file stays (empty): removing it could split two waiting processes


def publish(tmp: Path, target: Path, is_complete: Callable[[Path], bool], *, damaged: bool = False) -> None:
    """Rename the built entry `tmp` onto `target` (the one place a cache entry is published).

    A directory already at `target` is replaced when it is not a complete entry (stale or foreign) or
    when the caller found it `damaged`; a complete entry another process published meanwhile is kept
    (the rename fails on a non-empty directory and its copy stands), so parallel runs never delete a
    cache another run is reading.
    """
    if target.exists() and (damaged or not is_complete(target)):
        shutil.rmtree(target, ignore_errors=True)
    try:
        os.replace(tmp, target)
    except OSError:
        if not is_complete(target):  # another process finished first: keep its copy
            raise


def describe(err: BaseException) -> str:
    """One line saying why an entry failed to load."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
