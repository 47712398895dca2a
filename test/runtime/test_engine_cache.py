"""Engine cache keying, atomic writes and invalidation, with plain files standing in for engines."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest

from vidseg_ros.runtime.engine_cache import EngineCache, EngineCacheError, EngineKey

KEY = EngineKey(
    model_hash="ab" * 32,
    step="nonkey",
    input_shapes=((1, 3, 240, 320), (1, 3, 240, 320), (1, 2, 120, 160), (1, 96, 30, 40)),
    precision="fp16",
    torch_tensorrt_version="2.9.0",
    tensorrt_version="10.13.3",
    gpu_name="NVIDIA Orin",
    compute_capability="8.7",
    code_hash="ef" * 32,
)

CHANGES = {
    "model_hash": "cd" * 32,
    "step": "key",
    "input_shapes": ((1, 3, 480, 640),),
    "precision": "fp32",
    "torch_tensorrt_version": "2.10.0",
    "tensorrt_version": "10.14.1",
    "gpu_name": "NVIDIA GeForce RTX 4090",
    "compute_capability": "8.9",
    "code_hash": "01" * 32,
}


class Recorder:
    """Builder and loader that count calls; the artifact names the key it was built for."""

    def __init__(self) -> None:
        self.builds: list[EngineKey] = []
        self.loads: list[bytes] = []

    def builder(self, key: EngineKey):
        def build(path: Path) -> None:
            self.builds.append(key)
            path.write_bytes(b"ENGINE " + key.digest().encode() + b"\x00" * 64)

        return build

    def load(self, path: Path) -> bytes:
        data = path.read_bytes()
        self.loads.append(data)
        return data

    def get(self, cache: EngineCache, key: EngineKey = KEY):
        return cache.get_or_build(key, self.builder(key), self.load)


def test_same_key_hits_after_first_build(tmp_path: Path) -> None:
    cache, rec = EngineCache(tmp_path), Recorder()
    first = rec.get(cache)
    assert first.status == "built" and len(rec.builds) == 1
    second = rec.get(cache)
    assert second.status == "hit" and len(rec.builds) == 1
    assert second.value == first.value and second.value.startswith(b"ENGINE " + KEY.digest().encode())
    # An equal key built from equal values (shapes given as lists) is the same key.
    same = EngineKey(**{**dataclasses.asdict(KEY), "input_shapes": [list(s) for s in KEY.input_shapes]})
    assert same.digest() == KEY.digest() and rec.get(cache, same).status == "hit"


@pytest.mark.parametrize("field", sorted(CHANGES))
def test_changing_any_key_field_misses(tmp_path: Path, field: str, caplog: pytest.LogCaptureFixture) -> None:
    cache, rec = EngineCache(tmp_path), Recorder()
    rec.get(cache)
    other = dataclasses.replace(KEY, **{field: CHANGES[field]})
    assert other.digest() != KEY.digest()
    with caplog.at_level(logging.INFO, logger="vidseg_ros.runtime.engine_cache"):
        result = rec.get(cache, other)
    assert result.status in ("built", "rebuilt") and rec.builds[-1] == other
    # The loader only ever saw the artifact built for the requested key.
    assert rec.loads[-1].startswith(b"ENGINE " + other.digest().encode())
    if field.endswith("_version") or field == "code_hash":
        # A toolchain upgrade or other model code lands in the same slot: the old entry is reported stale and
        # replaced.
        assert result.status == "rebuilt" and result.reason.startswith(f"stale: {field}")
        assert "stale" in caplog.text and "rebuilding" in caplog.text
        assert rec.get(cache, other).status == "hit"
    else:
        assert cache.artifact_path(other) != cache.artifact_path(KEY)


def test_entry_files_and_manifest(tmp_path: Path) -> None:
    cache, rec = EngineCache(tmp_path / "nested" / "cache", suffix=".ep"), Recorder()
    result = rec.get(cache)
    assert result.path == cache.artifact_path(KEY) and result.path.suffix == ".ep"
    manifest = json.loads(cache.manifest_path(KEY).read_text())
    assert manifest["key"] == KEY.fields() and manifest["digest"] == KEY.digest()
    assert manifest["size"] == result.path.stat().st_size
    # Only the artifact, its manifest and the lock file: no temporary file is left behind.
    names = sorted(p.name for p in cache.root.iterdir())
    assert names == sorted([result.path.name, cache.manifest_path(KEY).name, f".{KEY.slot()}.lock"])
    assert [e["digest"] for e in cache.entries()] == [KEY.digest()]


def test_failed_build_installs_nothing_and_keeps_old_entry(tmp_path: Path) -> None:
    cache, rec = EngineCache(tmp_path), Recorder()
    rec.get(cache)
    before = cache.artifact_path(KEY).read_bytes()

    def broken(path: Path) -> None:
        path.write_bytes(b"half an eng")
        raise RuntimeError("out of memory during build")

    with pytest.raises(RuntimeError, match="out of memory"):
        cache.store(KEY, broken)
    assert cache.artifact_path(KEY).read_bytes() == before
    assert cache.check(KEY) is None
    assert not [
        p for p in tmp_path.iterdir() if p.name.endswith((".tmp", ".engine")) and p.name.startswith(".")
    ]
    with pytest.raises(Exception, match="wrote no artifact"):
        cache.store(KEY, lambda path: None)


def _truncate(cache: EngineCache) -> None:
    path = cache.artifact_path(KEY)
    path.write_bytes(path.read_bytes()[:10])


def _flip_byte(cache: EngineCache) -> None:
    path = cache.artifact_path(KEY)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def _garble_manifest(cache: EngineCache) -> None:
    cache.manifest_path(KEY).write_text('{"format": "vidseg-engine-ca')


def _drop_manifest(cache: EngineCache) -> None:
    cache.manifest_path(KEY).unlink()


def _drop_artifact(cache: EngineCache) -> None:
    cache.artifact_path(KEY).unlink()


def _edit_manifest_key(cache: EngineCache) -> None:
    manifest = json.loads(cache.manifest_path(KEY).read_text())
    manifest["key"]["tensorrt_version"] = "8.6.1"
    cache.manifest_path(KEY).write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("damage", "kind", "why"),
    [
        (_truncate, "corrupt", "bytes"),
        (_flip_byte, "corrupt", "checksum"),
        (_garble_manifest, "corrupt", "manifest unreadable"),
        (_drop_manifest, "corrupt", "manifest missing"),
        (_drop_artifact, "corrupt", "artifact missing"),
        (_edit_manifest_key, "stale", "tensorrt_version '8.6.1'"),
    ],
)
def test_damaged_entry_is_rebuilt_not_loaded(
    tmp_path: Path, damage, kind: str, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    cache, rec = EngineCache(tmp_path), Recorder()
    good = rec.get(cache).value
    damage(cache)
    assert cache.check(KEY).startswith(kind)
    loads_before = len(rec.loads)
    with caplog.at_level(logging.WARNING, logger="vidseg_ros.runtime.engine_cache"):
        result = rec.get(cache)
    assert result.status == "rebuilt" and kind in result.reason and why in result.reason
    assert len(rec.builds) == 2
    # Exactly one load, of the rebuilt artifact: the damaged one never reached the loader.
    assert rec.loads[loads_before:] == [good] and result.value == good
    records = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(records) == 1 and kind in records[0].getMessage() and "rebuilding" in records[0].getMessage()
    assert cache.check(KEY) is None


def test_loader_rejecting_a_verified_entry_triggers_one_rebuild(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache, rec = EngineCache(tmp_path), Recorder()
    rec.get(cache)
    calls = []

    def picky(path: Path) -> bytes:
        calls.append(path)
        if len(calls) == 1:
            raise RuntimeError("engine plan built by a different TensorRT")
        return path.read_bytes()

    with caplog.at_level(logging.WARNING, logger="vidseg_ros.runtime.engine_cache"):
        result = cache.get_or_build(KEY, rec.builder(KEY), picky)
    assert result.status == "rebuilt" and "loader failed" in result.reason and len(calls) == 2
    assert "rebuilding" in caplog.text

    with pytest.raises(EngineCacheError, match="failed to load"):
        cache.get_or_build(dataclasses.replace(KEY, step="key"), rec.builder(KEY), _always_fails)


def _always_fails(path: Path) -> None:
    raise RuntimeError("nope")


def test_default_dir_follows_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIDSEG_ENGINE_CACHE", str(tmp_path / "engines"))
    assert EngineCache().root == tmp_path / "engines"
    monkeypatch.delenv("VIDSEG_ENGINE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert EngineCache().root == tmp_path / "xdg" / "vidseg_ros" / "engines"


def test_code_hash_follows_the_code_that_shapes_a_step(tmp_path: Path) -> None:
    """Engines are keyed by the model and step code and the backend's builder: editing any of them makes a
    cached engine stale (a state with other keys would no longer fit the engine)."""
    from vidseg_ros.runtime import steps

    builder = tmp_path / "builder.py"
    builder.write_text("x = 1\n")
    first = steps.code_hash(builder)
    assert steps.code_hash(builder) == first and len(first) == 64
    builder.write_text("x = 2\n")
    assert steps.code_hash(builder) != first
    assert steps.code_hash() != steps.code_hash(builder)
