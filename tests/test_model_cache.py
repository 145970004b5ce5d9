"""The model cache: a model is prepared once, by a child process, and loaded from the files after.

The preparer here is a small module written into the test's folder (the real one, Moonshine's,
takes ~10 s and is exercised by tests/test_providers_registry.py's offline start-up)."""

from __future__ import annotations

import os
import stat
import sys

import pytest

from ivr.providers import model_cache
from ivr.providers.model_cache import cache_root, fingerprint, prepared_folder

PREPARER = """
import sys
from pathlib import Path

folder = Path(sys.argv[2])
runs = Path(__file__).with_name("runs.txt")
runs.write_text(runs.read_text() + "x" if runs.exists() else "x")
if (Path(__file__).with_name("fail")).exists():
    sys.exit("the preparer broke: no model")
(folder / "a.onnx").write_bytes(b"model a")
(folder / "b.onnx").write_bytes(b"model b")
"""


@pytest.fixture
def preparer(tmp_path, monkeypatch):
    """A module `fake_preparer` the child process can run, and how many times it ran."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "fake_preparer.py").write_text(PREPARER)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(code), *sys.path]))
    return code


def runs(code) -> int:
    path = code / "runs.txt"
    return len(path.read_text()) if path.exists() else 0


def test_prepared_once_then_loaded_from_the_cache(tmp_path, preparer):
    cache = str(tmp_path / "cache")
    folder, temporary = prepared_folder("toy", "k1", ["a.onnx", "b.onnx"], "fake_preparer", cache)
    assert not temporary and folder == tmp_path / "cache" / "toy-k1"
    assert (folder / "a.onnx").read_bytes() == b"model a"
    # Readable by another user: an image built as root is run as an unprivileged one.
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    again, _ = prepared_folder("toy", "k1", ["a.onnx", "b.onnx"], "fake_preparer", cache)
    assert again == folder and runs(preparer) == 1
    # A new key (a new wheel, a new way of preparing) is prepared anew, beside the old one.
    other, _ = prepared_folder("toy", "k2", ["a.onnx", "b.onnx"], "fake_preparer", cache)
    assert other != folder and runs(preparer) == 2
    # Nothing half-made is left behind.
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["toy-k1", "toy-k2"]


def test_an_incomplete_folder_is_prepared_again(tmp_path, preparer):
    cache = str(tmp_path / "cache")
    folder, _ = prepared_folder("toy", "k1", ["a.onnx", "b.onnx"], "fake_preparer", cache)
    (folder / "b.onnx").unlink()
    folder, _ = prepared_folder("toy", "k1", ["a.onnx", "b.onnx"], "fake_preparer", cache)
    assert (folder / "b.onnx").is_file() and runs(preparer) == 2


def test_an_unwritable_cache_prepares_into_a_temporary_folder(tmp_path, preparer, caplog):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    with caplog.at_level("WARNING", logger="ivr.models"):
        folder, temporary = prepared_folder("toy", "k1", ["a.onnx"], "fake_preparer", str(blocked / "cache"))
    assert temporary and (folder / "a.onnx").is_file()
    assert "cannot be written" in caplog.text and "IVR_MODEL_CACHE" in caplog.text


def test_off_prepares_at_every_start(tmp_path, preparer):
    for _ in range(2):
        folder, temporary = prepared_folder("toy", "k1", ["a.onnx"], "fake_preparer", "off")
        assert temporary
    assert runs(preparer) == 2


def test_a_failing_preparer_is_an_error_naming_its_cause(tmp_path, preparer):
    (preparer / "fail").write_text("")
    with pytest.raises(RuntimeError, match="preparing toy failed .*the preparer broke"):
        prepared_folder("toy", "k1", ["a.onnx"], "fake_preparer", str(tmp_path / "cache"))
    assert not any((tmp_path / "cache").iterdir())


def test_the_cache_folder_by_default_and_by_setting(monkeypatch, tmp_path):
    monkeypatch.delenv("IVR_MODEL_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "ivr"
    monkeypatch.setenv("IVR_MODEL_CACHE", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"
    assert cache_root("OFF") is None
    assert model_cache.OFF == "off"


def test_the_key_follows_the_versions_and_the_files(tmp_path):
    f = tmp_path / "encoder.ort"
    f.write_bytes(b"weights")
    key = fingerprint(["1", "onnx=1.0"], [f])
    assert key == fingerprint(["1", "onnx=1.0"], [f])
    assert key != fingerprint(["2", "onnx=1.0"], [f])
    f.write_bytes(b"weightz")
    assert key != fingerprint(["1", "onnx=1.0"], [f])
