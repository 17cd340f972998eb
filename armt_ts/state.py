"""Recurrent state as a value: ``y, state = model(x, state)``; nothing is kept on the module.

MemoryState holds, for every layer l, ARMT's association matrix A_l and normaliser z_l. It is
immutable (a frozen dataclass of tensors); ``detach()`` and ``to()`` return new states. Files are
safetensors with a JSON header, written atomically (temp file, fsync, rename); never pickle.

Every file written by ``atomic_save_safetensors`` also records the armt_ts version that wrote it and a SHA-256
of its metadata and tensor bytes; ``load_safetensors`` refuses a file whose checksum is missing or wrong
(truncated, bit-flipped or edited), of another format, or unreadable, with a StateFileError naming the path.
A SIGKILL during a save leaves the previous file intact (at worst a stale ``.<name>.*.tmp`` beside it).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from .config import ARMTConfig

_FORMAT = "armt_ts.MemoryState"
_FORMAT_VERSION = 1


class StateFileError(ValueError):
    """A state file is missing, truncated, tampered with or of another format/version."""


def _package_version() -> str:
    from . import __version__  # at call time: the package is fully imported by then

    return __version__


def tensor_digest(tensors: dict[str, Tensor], meta_json: str) -> str:
    """SHA-256 over the metadata JSON and every tensor's name, dtype, shape and raw bytes (sorted by name)."""
    h = hashlib.sha256(meta_json.encode("utf-8"))
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode("utf-8"))
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def atomic_save_safetensors(tensors: dict[str, Tensor], path: str | os.PathLike, meta: dict) -> None:
    """Write ``tensors`` (+ ``meta`` as JSON in the safetensors header) to ``path`` atomically.

    The bytes go to a temp file in the same directory, are fsync'ed, then renamed over ``path``: a
    crash at any point leaves either the old file or the new one, never a torn file. A process killed mid-save
    (SIGKILL, a power cut) leaves its temp file, as large as the state, behind: each save removes those of
    ``path`` whose writer process is gone (``_remove_orphans``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphans(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        contiguous = {k: t.detach().contiguous().cpu() for k, t in tensors.items()}
        meta_json = json.dumps(meta, sort_keys=True)
        header = {"meta": meta_json, "armt_ts": _package_version(), "sha256": tensor_digest(contiguous, meta_json)}
        save_file(contiguous, tmp, metadata=header)
        # mkstemp and safetensors make the file 0600; give it the permissions a plain open() would (or those of the
        # file it replaces), so that a model saved by one user can be loaded by the service that runs it.
        if path.exists():
            mode = path.stat().st_mode & 0o777
        else:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _remove_orphans(path: Path) -> None:
    """Delete ``.<name>.<pid>.*.tmp`` files next to ``path`` whose pid names no running process on this machine:
    temp files of saves that were killed before their rename. A live writer's file, and one without a pid (written
    before temp names carried one), is left alone."""
    prefix = f".{path.name}."
    for f in path.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        pid = f.name[len(prefix):].split(".", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)  # signal 0: only asks whether the process exists
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                f.unlink()
        except (PermissionError, OverflowError):  # another user's live process; or not a pid at all
            continue


def load_safetensors(path: str | os.PathLike, expect_format: str) -> tuple[dict[str, Tensor], dict]:
    """Read a file written by ``atomic_save_safetensors``; check its checksum and format tag.

    Returns the tensors (on the CPU) and the metadata, with ``armt_ts_version`` set to the version that wrote the
    file. Raises StateFileError.
    """
    path = Path(path)
    if not path.is_file():
        raise StateFileError(f"{path}: no such file")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise StateFileError(f"{path}: not a readable safetensors file (truncated or corrupt?): {e}") from None
    try:
        meta = json.loads(header["meta"])
        if not isinstance(meta, dict):
            raise TypeError
    except (KeyError, TypeError, json.JSONDecodeError):
        raise StateFileError(f"{path}: safetensors header has no valid 'meta' JSON; not an armt_ts file") from None
    if meta.get("format") != expect_format:
        raise StateFileError(f"{path}: format is {meta.get('format')!r}, expected {expect_format!r}")
    writer = header.get("armt_ts", "unknown")
    if "sha256" not in header:
        raise StateFileError(f"{path}: the file has no checksum (written by armt_ts {writer}, before checksums, "
                             f"or altered); this armt_ts {_package_version()} only loads checksummed files")
    if tensor_digest(tensors, header["meta"]) != header["sha256"]:
        raise StateFileError(f"{path}: checksum mismatch: the tensors or metadata were altered or corrupted after "
                             f"armt_ts {writer} wrote the file")
    meta.setdefault("armt_ts_version", writer)
    return tensors, meta


@dataclass(frozen=True)
class MemoryState:
    """Per-layer associative memory of ARMT.

    A[l]: [B, H, K, Dv] and z[l]: [B, H, K] for layer l, with H memory heads, K = 2*nu*d_mem features,
    Dv = d_model / H value channels. fp32 by design (the state accumulates over millions of writes).
    """

    A: tuple[Tensor, ...]
    z: tuple[Tensor, ...]

    def __post_init__(self) -> None:
        if len(self.A) != len(self.z) or not self.A:
            raise ValueError(f"MemoryState: need one (A, z) pair per layer, got {len(self.A)} A and {len(self.z)} z")
        for l, (a, zz) in enumerate(zip(self.A, self.z)):
            if a.dim() != 4 or zz.dim() != 3 or a.shape[:3] != zz.shape:
                raise ValueError(
                    f"MemoryState layer {l}: A {tuple(a.shape)} and z {tuple(zz.shape)} do not match "
                    "[B, H, K, Dv] / [B, H, K]"
                )
            if not (a.is_floating_point() and zz.is_floating_point()):
                raise ValueError(f"MemoryState layer {l}: A and z must be floating point, got {a.dtype} / {zz.dtype}")
            if a.shape[0] != self.A[0].shape[0]:
                raise ValueError(f"MemoryState layer {l}: batch size {a.shape[0]}, layer 0's is {self.A[0].shape[0]}")

    def check(self, config: ARMTConfig, batch_size: int, where: str = "state") -> None:
        """Raise a ValueError naming ``where`` unless this is a state of ``config``'s model for ``batch_size``
        rows (layers, heads, features, value channels), in fp32 or fp64."""
        H, K, Dv = config.memory_heads, config.d_key, config.d_head
        if self.num_layers != config.n_layers:
            raise ValueError(f"{where}: {self.num_layers} layers of memory for a model of {config.n_layers}")
        for l, a in enumerate(self.A):
            if tuple(a.shape) != (batch_size, H, K, Dv):
                raise ValueError(f"{where}: layer {l}'s A is {tuple(a.shape)}, this model and batch need "
                                 f"[{batch_size}, {H}, {K}, {Dv}] (B, memory heads, 2 nu d_mem, d_model / heads)")
            if a.dtype not in (torch.float32, torch.float64) or self.z[l].dtype != a.dtype:
                raise ValueError(f"{where}: layer {l} is {a.dtype} / {self.z[l].dtype}; the memory state is fp32")

    @classmethod
    def zeros(cls, config: ARMTConfig, batch_size: int, device: torch.device | str | None = None) -> "MemoryState":
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 0:
            raise ValueError(f"batch_size: expected an int >= 0, got {batch_size!r}")
        H, K, Dv = config.memory_heads, config.d_key, config.d_head
        A = tuple(torch.zeros(batch_size, H, K, Dv, device=device) for _ in range(config.n_layers))
        z = tuple(torch.zeros(batch_size, H, K, device=device) for _ in range(config.n_layers))
        return cls(A, z)

    @property
    def num_layers(self) -> int:
        return len(self.A)

    @property
    def batch_size(self) -> int:
        return self.A[0].shape[0]

    def detach(self) -> "MemoryState":
        return MemoryState(tuple(a.detach() for a in self.A), tuple(zz.detach() for zz in self.z))

    def to(self, *args, **kwargs) -> "MemoryState":
        return MemoryState(tuple(a.to(*args, **kwargs) for a in self.A), tuple(zz.to(*args, **kwargs) for zz in self.z))

    def clone(self) -> "MemoryState":
        return MemoryState(tuple(a.clone() for a in self.A), tuple(zz.clone() for zz in self.z))

    def nbytes(self) -> int:
        """Bytes held by the state (all layers, all batch rows)."""
        return sum(t.numel() * t.element_size() for t in (*self.A, *self.z))

    def equal(self, other: "MemoryState") -> bool:
        """Equality of shapes, dtypes and every element (``torch.equal``: -0.0 equals 0.0, NaN equals nothing)."""
        return self.num_layers == other.num_layers and all(
            a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
            for a, b in zip((*self.A, *self.z), (*other.A, *other.z))
        )

    def save(self, path: str | os.PathLike, extra: dict | None = None) -> None:
        """Atomic safetensors write; ``extra`` (JSON-able) is stored in the header."""
        tensors = {f"A.{l}": a for l, a in enumerate(self.A)} | {f"z.{l}": zz for l, zz in enumerate(self.z)}
        meta = {"format": _FORMAT, "version": _FORMAT_VERSION, "num_layers": self.num_layers, "extra": extra or {}}
        atomic_save_safetensors(tensors, path, meta)

    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device | str | None = None) -> "MemoryState":
        tensors, meta = load_safetensors(path, _FORMAT)
        if meta.get("version") != _FORMAT_VERSION:
            raise StateFileError(f"{path}: state version {meta.get('version')!r} (written by armt_ts "
                                 f"{meta['armt_ts_version']}); this armt_ts {_package_version()} reads version "
                                 f"{_FORMAT_VERSION}")
        n = meta.get("num_layers")
        want = {f"A.{l}" for l in range(n)} | {f"z.{l}" for l in range(n)} if isinstance(n, int) else None
        if want is None or set(tensors) != want:
            raise StateFileError(f"{path}: tensors {sorted(tensors)} do not match num_layers={n!r}")
        for name in sorted(tensors):
            t = tensors[name]
            if not t.is_floating_point():
                raise StateFileError(f"{path}: tensor {name} has dtype {t.dtype}, expected a floating-point state")
            if not torch.isfinite(t).all():
                raise StateFileError(f"{path}: tensor {name} holds {int((~torch.isfinite(t)).sum())} non-finite "
                                     f"value(s) (NaN / inf); a state that diverged is not loaded")
        try:
            state = cls(tuple(tensors[f"A.{l}"] for l in range(n)), tuple(tensors[f"z.{l}"] for l in range(n)))
        except ValueError as e:
            raise StateFileError(f"{path}: {e}") from None
        return state.to(device) if device is not None else state
