"""A resumable training state small enough to carry between machines: a folder of shards.

``state/``:

* ``state.json``: step, schedule, arguments, config, random states (base64), loss log and
  the list of shards with the tensors each holds;
* ``shard-NNNNN.safetensors``: at most ``shard_bytes`` (default 15 MiB) each. Tensors are
  named ``model.<param>`` (the trained weights), ``ema.<param>``, ``exp_avg.<param>`` and
  ``exp_avg_sq.<param>`` (the EMA and the AdamW moments); compact, the weights and the EMA
  are float16 and the moments bfloat16; float32 with ``exact``.

With the default 5.97 M-parameter networks the compact folder is 47.7 MB (four 11.9 MB
halves; 95 MB exact). It is written atomically: into ``<folder>.tmp``, then swapped in
with two renames (a crash leaves either the old or the new folder, and :func:`load_state`
also picks up ``<folder>.old`` if the swap was interrupted between the renames).

>>> import tempfile, torch
>>> d = Path(tempfile.mkdtemp()) / "s"
>>> save_state(d, {"model.w": torch.ones(3)}, {"step": 4})["step"]
4
>>> meta, tensors = load_state(d)
>>> meta["step"], tensors["model.w"].tolist()
(4, [1.0, 1.0, 1.0])
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import torch

__all__ = ["MAX_TOTAL", "SHARD_BYTES", "decode_rng", "encode_rng", "load_state", "save_state", "state_exists"]

SHARD_BYTES = 15 * 2**20
MAX_TOTAL = 64 * 2**20
FORMAT = "trellis-mv-proxy-state-1"


def encode_rng(state: torch.Tensor) -> str:
    """A generator state (``uint8`` tensor) as base64 text."""
    return base64.b64encode(state.cpu().numpy().tobytes()).decode()


def decode_rng(text: str) -> torch.Tensor:
    """The inverse of :func:`encode_rng`."""
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def save_state(
    folder: str | Path, tensors: dict[str, torch.Tensor], meta: dict, shard_bytes: int = SHARD_BYTES,
    max_total: int | None = MAX_TOTAL,
) -> dict:
    """Write ``tensors`` in shards of at most ``shard_bytes`` and ``meta`` as ``state.json``, atomically.

    :raises ValueError: when one tensor is larger than a shard, or all together exceed ``max_total``.
    :returns: the metadata written (``meta`` plus ``format``, ``shards`` and ``bytes``).
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    total = sum(_nbytes(t) for t in tensors.values())
    if max_total is not None and total > max_total:
        raise ValueError(f"the state holds {total / 2**20:.1f} MiB, more than {max_total / 2**20:.0f} MiB")
    shards: list[list[str]] = [[]]
    size = 0
    for name, t in tensors.items():
        n = _nbytes(t)
        if n > shard_bytes:
            raise ValueError(f"tensor {name!r} holds {n} bytes, more than a shard ({shard_bytes})")
        if size + n > shard_bytes and shards[-1]:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += n
    tmp = folder.with_name(folder.name + ".tmp")
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    files = {}
    for i, names in enumerate(shards):
        fname = f"shard-{i:05d}.safetensors"
        save_file({k: tensors[k].detach().contiguous().cpu() for k in names}, str(tmp / fname))
        files[fname] = names
    out = {**meta, "format": FORMAT, "bytes": total, "shards": files}
    (tmp / "state.json").write_text(json.dumps(out, indent=1))
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    return out


def _resolve(folder: Path) -> Path | None:
    if (folder / "state.json").is_file():
        return folder
    old = folder.with_name(folder.name + ".old")  # the swap stopped between its two renames
    if (old / "state.json").is_file():
        return old
    return None


def state_exists(folder: str | Path) -> bool:
    """Whether ``folder`` (or its interrupted swap) holds a state."""
    return _resolve(Path(folder)) is not None


def load_state(folder: str | Path, device: str | torch.device = "cpu") -> tuple[dict, dict[str, torch.Tensor]]:
    """Read a state written by :func:`save_state`: its metadata and its tensors (on ``device``).

    :raises FileNotFoundError: when there is no state in ``folder``.
    :raises ValueError: when it is not one, or a shard is missing.
    """
    from safetensors.torch import load_file

    where = _resolve(Path(folder))
    if where is None:
        raise FileNotFoundError(f"no training state in {str(folder)!r} (expected state.json and shard-*.safetensors)")
    meta = json.loads((where / "state.json").read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{str(where)!r} is not a proxy training state (format={meta.get('format')!r})")
    tensors: dict[str, torch.Tensor] = {}
    for fname, names in meta["shards"].items():
        path = where / fname
        if not path.is_file():
            raise ValueError(f"the training state in {str(where)!r} lacks {fname}")
        part = load_file(str(path), device=str(device))
        missing = set(names) - set(part)
        if missing:
            raise ValueError(f"{fname} lacks {sorted(missing)[:3]}")
        tensors.update(part)
    return meta, tensors
