"""Training checkpoints: weights, optimizer state and position in the run, written atomically.

A checkpoint is one ``.npz`` file (numpy arrays, no pickle): ``param/<name>`` for every trainable tensor,
``opt/<name>/<slot>`` for the optimizer's per-tensor state, and ``meta`` (a JSON string) with the format
version, the optimizer's step count, the epoch and batch to continue from, the seed and the history so far.
The file is written to a temporary name in the same folder, flushed and fsynced, renamed over the old one
and the folder fsynced: after a kill or a power loss the path holds either the previous checkpoint or the
new one, never a mix.
"""
from __future__ import annotations

import json
import os
import tempfile

import numpy as np

from ..errors import EdgeDLError

__all__ = ["write_checkpoint", "read_checkpoint", "FORMAT"]

FORMAT = "edgedl-checkpoint-1"


def write_checkpoint(path, params: dict[str, np.ndarray], optimizer_state: dict, meta: dict) -> None:
    """Write atomically (see the module doc)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    arrays = {f"param/{k}": v for k, v in params.items()}
    for name, slots in optimizer_state["state"].items():
        for slot, value in slots.items():
            arrays[f"opt/{name}/{slot}"] = value
    meta = dict(meta, format=FORMAT, optimizer_steps=int(optimizer_state["steps"]))
    arrays["meta"] = np.array(json.dumps(meta))
    fd, tmp = tempfile.mkstemp(prefix=".ckpt-", suffix=".npz", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dfd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def read_checkpoint(path) -> tuple[dict[str, np.ndarray], dict, dict]:
    """(params, optimizer state dict, meta) of a checkpoint; EdgeDLError for a missing or damaged file."""
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            files = {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise EdgeDLError(f"no checkpoint at {path}") from None
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file
        raise EdgeDLError(f"{path} is not a readable checkpoint: {type(e).__name__}: {e}") from None
    if "meta" not in files:
        raise EdgeDLError(f"{path} is not an edgedl checkpoint (no meta record)")
    meta = json.loads(str(files.pop("meta")))
    if meta.get("format") != FORMAT:
        raise EdgeDLError(f"{path} has checkpoint format {meta.get('format')!r}, expected {FORMAT!r}")
    params = {k[len("param/"):]: v for k, v in files.items() if k.startswith("param/")}
    state: dict[str, dict[str, np.ndarray]] = {}
    for k, v in files.items():
        if k.startswith("opt/"):
            name, slot = k[len("opt/"):].rsplit("/", 1)
            state.setdefault(name, {})[slot] = v
    return params, {"steps": meta["optimizer_steps"], "state": state}, meta
