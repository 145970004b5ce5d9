"""Where embedded models that must be prepared before use are kept once prepared.

Preparing Moonshine (`ivr.providers.local_moonshine.prepare`) takes ~7 s and 1.5 GB at its peak;
loading what it made takes under a second and a third of the memory. So it is prepared once, in a
child process (the peak and what the allocator keeps of it stay there), into a folder of the
cache, and every later start loads the files. Nothing of a call is kept here: only model files.

The cache folder is IVR_MODEL_CACHE, else $XDG_CACHE_HOME/ivr, else ~/.cache/ivr. A folder that
cannot be written (a read-only container) is not an error: the model is prepared into a temporary
folder at each start instead, with a log line saying how to avoid it (prepare it in the image).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger("ivr.models")

#: IVR_MODEL_CACHE's value that turns the cache off.
OFF = "off"


def cache_root(setting: str | None = None) -> Path | None:
    """The cache folder for IVR_MODEL_CACHE's value (None: read the environment); None when off."""
    value = os.environ.get("IVR_MODEL_CACHE", "") if setting is None else setting
    if value.strip().lower() == OFF:
        return None
    if value.strip():
        return Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ivr"


def fingerprint(parts: Iterable[str], files: Iterable[Path]) -> str:
    """A short key for what a prepared model was made from: the preparer's own version and the
    packages' versions (`parts`), and the size and contents' digest of each source file, so a new
    wheel or a new way of preparing never loads a stale folder."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() + b"\0")
    for path in files:
        digest.update(f"{path.name}:{path.stat().st_size}\0".encode())
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def prepared_folder(name: str, key: str, names: Iterable[str], module: str, setting: str | None = None) -> tuple[Path, bool]:
    """The folder holding `names` for model `name` at `key`, prepared by `python -m module
    prepare FOLDER` when it is not cached yet. Returns (folder, temporary): a temporary folder is
    the caller's to delete once loaded."""
    names = tuple(names)
    root = cache_root(setting)
    if root is not None:
        folder = root / f"{name}-{key}"
        if all((folder / n).is_file() for n in names):
            return folder, False
        try:
            root.mkdir(parents=True, exist_ok=True)
            work = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
        except OSError as error:
            log.warning("model cache %s cannot be written (%s): preparing %s at every start; "
                        "prepare it where the cache is writable (python -m %s prepare) or set IVR_MODEL_CACHE",
                        root, error.strerror or error, name, module)  # fmt: skip
        else:
            try:
                _run_preparer(module, work, name)
                # mkdtemp's folder is the preparer's alone; an image built by one user is run by
                # another.
                work.chmod(0o755)
                if not all((folder / n).is_file() for n in names):
                    # A folder left incomplete (files deleted by hand) is replaced.
                    shutil.rmtree(folder, ignore_errors=True)
                try:
                    # Published whole or not at all: another process preparing the same model at
                    # the same time loses the rename and its copy is dropped.
                    work.rename(folder)
                except OSError:
                    if not all((folder / n).is_file() for n in names):
                        raise
            finally:
                shutil.rmtree(work, ignore_errors=True)
            return folder, False
    work = Path(tempfile.mkdtemp(prefix=f"ivr-{name}-"))
    try:
        _run_preparer(module, work, name)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return work, True


def _run_preparer(module: str, folder: Path, name: str) -> None:
    log.info("preparing %s (once per cache folder; ~10 s)", name)
    done = subprocess.run([sys.executable, "-m", module, "prepare", str(folder)],
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    if done.returncode != 0:
        tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
        raise RuntimeError(f"preparing {name} failed (exit {done.returncode}): {' | '.join(tail)}")
