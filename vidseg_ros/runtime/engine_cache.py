"""On-disk cache of compiled engines, keyed by everything an engine depends on.

An engine is only valid for the exact model weights, step function, input shapes, precision, compiler and
runtime versions and GPU it was built for. Keying by path alone (as Isaac ROS does) loads stale engines after
an upgrade; here every field goes into the key, and the entry's manifest repeats the fields so a mismatch is
detected and rebuilt instead of loaded.

Layout of one entry in the cache directory::

    <slot><suffix>        the artifact (whatever the builder wrote)
    <slot>.json           manifest: key fields, key digest, artifact size and SHA-256

``slot`` is derived from the fields that identify *what* is built (model, step, shapes, precision, GPU), so a
toolchain upgrade maps to the same slot and replaces the old entry rather than piling up next to it. Both
files are written to a temporary name and moved into place with ``os.replace``, artifact first: a reader never
sees a half-written file, and a crash between the two renames leaves a checksum mismatch, i.e. a rebuild.

Nothing here needs a GPU: the builder and loader are callables, so tests drive the cache with plain files.
The cache takes any :class:`CacheKey`; :class:`EngineKey` is TensorRT's, and the ONNX Runtime backend keys its
optimised models with its own (:class:`~vidseg_ros.runtime.ort_backend.OrtKey`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

try:  # POSIX only; elsewhere concurrent builders may duplicate work but never corrupt an entry.
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

FORMAT = "vidseg-engine-cache/1"
T = TypeVar("T")

#: Fields that pick the slot; the remaining ones (toolchain versions, code) only decide whether it is stale.
_SLOT_FIELDS = ("model_hash", "step", "input_shapes", "precision", "gpu_name", "compute_capability")


class EngineCacheError(RuntimeError):
    """A build or load that failed even on a freshly built entry."""


class CacheKey(Protocol):
    """What :class:`EngineCache` needs of a key: its fields (recorded in the manifest), their digest and a slot."""

    @property
    def step(self) -> str: ...

    def fields(self) -> dict[str, Any]: ...

    def digest(self) -> str: ...

    def slot(self) -> str: ...


@dataclass(frozen=True)
class EngineKey:
    """Everything a compiled engine depends on.

    Args:
        model_hash: Hash of the weights and architecture (e.g. the checkpoint's SHA-256).
        step: Step function name (``key``, ``nonkey``).
        input_shapes: Shapes of the flat inputs, in call order.
        precision: ``fp32`` or ``fp16``.
        torch_tensorrt_version, tensorrt_version: Compiler and runtime versions.
        gpu_name: ``torch.cuda.get_device_name()``.
        compute_capability: ``"major.minor"``.
        code_hash: :func:`~vidseg_ros.runtime.steps.code_hash` of the compiling backend: an engine built by
            other model or step code (e.g. a state with other keys) is stale.
    """

    model_hash: str
    step: str
    input_shapes: tuple[tuple[int, ...], ...]
    precision: str
    torch_tensorrt_version: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    code_hash: str

    def __post_init__(self) -> None:
        shapes = tuple(tuple(int(d) for d in s) for s in self.input_shapes)
        object.__setattr__(self, "input_shapes", shapes)

    def fields(self) -> dict[str, Any]:
        """The key as JSON-compatible values (shapes as lists)."""
        d = asdict(self)
        d["input_shapes"] = [list(s) for s in self.input_shapes]
        return d

    def digest(self) -> str:
        """SHA-256 over the canonical JSON of every field."""
        return fields_digest(self.fields())

    def slot(self) -> str:
        """File stem of this key's entry: readable step/shape/precision plus a digest of the slot fields."""
        fields = self.fields()
        return slot_name(self.step, self.input_shapes, self.precision, {k: fields[k] for k in _SLOT_FIELDS})


@dataclass
class CacheResult(Generic[T]):
    """What :meth:`EngineCache.get_or_build` returned and how: ``hit``, ``built``, or ``rebuilt``."""

    value: T
    status: str
    path: Path
    #: Why an existing entry was not used (``stale: ...`` / ``corrupt: ...``), else None.
    reason: str | None = None
    build_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def fields_digest(fields: dict[str, Any]) -> str:
    """SHA-256 over the canonical JSON of a key's fields (what :meth:`CacheKey.digest` returns)."""
    return _digest(fields)


def slot_name(
    step: str, input_shapes: tuple[tuple[int, ...], ...], tag: str, slot_fields: dict[str, Any]
) -> str:
    """``<step>-<HxW of the first input>-<tag>-<16 hex digits of slot_fields>``: readable, unique per slot."""
    first = "x".join(map(str, input_shapes[0][-2:])) if input_shapes else "none"
    return f"{_safe(step)}-{first}-{_safe(tag)}-{_digest(slot_fields)[:16]}"


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._" else "_" for c in text)[:40]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def default_cache_dir() -> Path:
    """``$VIDSEG_ENGINE_CACHE``, else ``$XDG_CACHE_HOME/vidseg_ros/engines`` (``~/.cache/...``)."""
    explicit = os.environ.get("VIDSEG_ENGINE_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vidseg_ros" / "engines"


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class EngineCache:
    """A directory of engines; one entry per key slot (:meth:`EngineKey.slot`, or any :class:`CacheKey`'s).

    Args:
        root: Cache directory (created on first write).
        suffix: Extension of artifact files, kept on temporary files too (some writers check it).
    """

    def __init__(self, root: str | os.PathLike[str] | None = None, *, suffix: str = ".engine") -> None:
        self.root = Path(root) if root is not None else default_cache_dir()
        self.suffix = suffix

    def artifact_path(self, key: CacheKey) -> Path:
        return self.root / f"{key.slot()}{self.suffix}"

    def manifest_path(self, key: CacheKey) -> Path:
        return self.root / f"{key.slot()}.json"

    def check(self, key: CacheKey) -> str | None:
        """None if a valid entry for ``key`` exists; else why not (``missing``, ``stale: ...``, ``corrupt: ...``)."""
        artifact, manifest_path = self.artifact_path(key), self.manifest_path(key)
        if not manifest_path.exists() and not artifact.exists():
            return "missing"
        try:
            manifest = json.loads(manifest_path.read_text())
        except FileNotFoundError:
            return "corrupt: manifest missing"
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            return f"corrupt: manifest unreadable ({type(e).__name__})"
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            return "corrupt: manifest has an unknown format"
        recorded = manifest.get("key")
        if not isinstance(recorded, dict):
            return "corrupt: manifest has no key"
        wanted = key.fields()
        changed = [name for name in wanted if recorded.get(name) != wanted[name]]
        if changed or manifest.get("digest") != key.digest():
            detail = ", ".join(f"{n} {recorded.get(n)!r} != {wanted[n]!r}" for n in changed) or "key digest"
            return f"stale: {detail}"
        try:
            size = artifact.stat().st_size
        except FileNotFoundError:
            return "corrupt: artifact missing"
        if size != manifest.get("size"):
            return f"corrupt: artifact is {size} bytes, manifest says {manifest.get('size')}"
        if _sha256(artifact) != manifest.get("sha256"):
            return "corrupt: artifact checksum mismatch"
        return None

    @contextlib.contextmanager
    def _lock(self, key: CacheKey) -> Iterator[None]:
        """Serialises builders of one slot across processes (two nodes starting at once build once)."""
        if fcntl is None:
            yield
            return
        lock_path = self.root / f".{key.slot()}.lock"
        with open(lock_path, "a") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def store(
        self, key: CacheKey, build: Callable[[Path], Any], extra: dict[str, Any] | None = None
    ) -> float:
        """Runs ``build(tmp_path)``, which must write the artifact there, and installs it atomically.

        Returns the build time in seconds. On failure nothing is installed and the old entry is untouched.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        artifact = self.artifact_path(key)
        fd, tmp_name = tempfile.mkstemp(dir=self.root, prefix=f".{artifact.stem}.", suffix=self.suffix)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            start = time.monotonic()
            build(tmp)
            build_s = time.monotonic() - start
            if not tmp.exists() or tmp.stat().st_size == 0:
                raise EngineCacheError(f"builder for {key.step} wrote no artifact")
            manifest = {
                "format": FORMAT,
                "key": key.fields(),
                "digest": key.digest(),
                "size": tmp.stat().st_size,
                "sha256": _sha256(tmp),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "build_s": round(build_s, 3),
                "extra": extra or {},
            }
            os.replace(tmp, artifact)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _atomic_write_bytes(self.manifest_path(key), (json.dumps(manifest, indent=2) + "\n").encode())
        return build_s

    def invalidate(self, key: CacheKey) -> None:
        """Removes the entry of ``key``'s slot (manifest first, so a half-removed entry reads as corrupt)."""
        self.manifest_path(key).unlink(missing_ok=True)
        self.artifact_path(key).unlink(missing_ok=True)

    def get_or_build(
        self,
        key: CacheKey,
        build: Callable[[Path], Any],
        load: Callable[[Path], T],
        *,
        extra: dict[str, Any] | None = None,
    ) -> CacheResult[T]:
        """Loads a valid entry for ``key``, or builds (or rebuilds) it first.

        A stale or corrupt entry is logged and rebuilt; it is never passed to ``load``. A load that fails
        on an entry whose checksum verified (e.g. an engine the runtime refuses) is also rebuilt, once.

        Raises:
            EngineCacheError: The freshly built entry could not be loaded either.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        with self._lock(key):
            problem = self.check(key)
            if problem is None:
                try:
                    return CacheResult(load(self.artifact_path(key)), "hit", self.artifact_path(key))
                except Exception as e:  # noqa: BLE001 - any loader failure means: do not trust this entry
                    problem = f"corrupt: loader failed ({type(e).__name__}: {e})"
            status = "built"
            if problem != "missing":
                status = "rebuilt"
                log.warning(
                    "engine cache: %s entry %s (%s); rebuilding", problem.split(":")[0], key.slot(), problem
                )
                self.invalidate(key)
            else:
                log.info(
                    "engine cache: no entry for %s step at %s; building", key.step, self.artifact_path(key)
                )
            build_s = self.store(key, build, extra)
            try:
                value = load(self.artifact_path(key))
            except Exception as e:  # noqa: BLE001
                raise EngineCacheError(
                    f"freshly built engine {self.artifact_path(key)} failed to load: {e}"
                ) from e
            reason = None if problem == "missing" else problem
            return CacheResult(value, status, self.artifact_path(key), reason, build_s)

    def entries(self) -> list[dict[str, Any]]:
        """Manifests of every readable entry (for listings); unreadable ones are skipped."""
        out = []
        for path in sorted(self.root.glob("*.json")):
            try:
                manifest = json.loads(path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                continue
            if isinstance(manifest, dict) and manifest.get("format") == FORMAT:
                out.append({"manifest": str(path), **manifest})
        return out
