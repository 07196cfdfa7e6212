"""Checkpoints: a model's architecture, weights, optimizer state, step and random state.

Format (version 1): one zip archive, by default named checkpoint.npz, that
numpy.load opens:

    meta.json                 {"format": "numlstm-checkpoint", "version": 1,
                               "numlstm": version, "model": Sequential.get_config(),
                               "optimizer": {"type", "config", "steps"} or null,
                               "step": int, "rng": {generator states}, "extra": {...}}
    model/<layer>/<name>.npy  each parameter, torch's names and shapes
    optimizer/<key>/<slot>.npy  each optimizer slot (momentum, exp_avg, ...), where
                              key is the parameter's "<layer>/<name>"

It is written to a temporary file in the same folder, flushed to disk, then renamed
over the target, so a crash mid-write leaves the previous checkpoint whole.
"""
import io
import json
import os
import zipfile
from dataclasses import dataclass

import numpy as np

FORMAT, VERSION = "numlstm-checkpoint", 1
DEFAULT_NAME = "checkpoint.npz"


@dataclass
class Checkpoint:
    model: object
    optimizer: object
    step: int
    extra: dict


def save_checkpoint(path, model, optimizer=None, step=0, extra=None):
    """Write model (a Sequential), optimizer (or None), step and extra (a JSON-able
    dict) to path atomically. A folder path gets checkpoint.npz inside it."""
    from . import __version__

    path = _file(path)
    arrays = {f"model/{key}": p for key, p, _ in model.parameters()}
    opt_meta = None
    if optimizer is not None:
        state = optimizer.state_dict()
        opt_meta = {k: state[k] for k in ("type", "config", "steps")}
        arrays.update({f"optimizer/{k}": v for k, v in state["state"].items()})
    meta = {"format": FORMAT, "version": VERSION, "numlstm": __version__,
            "model": model.get_config(), "optimizer": opt_meta, "step": int(step),
            "rng": model.rng_states(), "extra": extra or {}}
    text = json.dumps(meta, indent=1)  # fails here, before any file is touched

    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z:
                z.writestr("meta.json", text)
                for name, arr in arrays.items():
                    buf = io.BytesIO()
                    # (np.ascontiguousarray would make a 0-d slot, Adam's step, 1-d)
                    np.lib.format.write_array(buf, np.asarray(arr, order="C"),
                                              allow_pickle=False)
                    z.writestr(name + ".npy", buf.getvalue())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def _file(path):
    """The checkpoint file a path names: itself, or a folder's checkpoint.npz."""
    path = os.fspath(path)
    return os.path.join(path, DEFAULT_NAME) if os.path.isdir(path) else path


def resolve(path):
    """A checkpoint file from a file or run-folder path, or FileNotFoundError."""
    path = _file(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    return path


def load_checkpoint(path):
    """Read a checkpoint -> Checkpoint(model, optimizer or None, step, extra); the model
    predicts exactly as the saved one did, and its random state is restored."""
    from .model import Sequential
    from .optim import get_optimizer

    path = resolve(path)
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise ValueError("a single array, not an archive")
        with z:
            meta = json.loads(z.zip.read("meta.json"))
            arrays = {name: z[name] for name in z.files}
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as err:
        raise ValueError(f"{path}: not a numlstm checkpoint ({err})") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a numlstm checkpoint (format {meta.get('format')!r})")
    if meta.get("version") != VERSION:
        raise ValueError(f"{path}: checkpoint version {meta.get('version')}, this numlstm "
                         f"reads version {VERSION}")
    model = Sequential.from_config(meta["model"])
    model.set_weights({k[len("model/"):]: v for k, v in arrays.items()
                       if k.startswith("model/")})
    model.set_rng_states(meta["rng"])
    optimizer = None
    if meta["optimizer"] is not None:
        o = meta["optimizer"]
        optimizer = get_optimizer(o["type"].lower(), **o["config"])
        optimizer.load_state_dict({
            "type": o["type"], "config": o["config"], "steps": o["steps"],
            "state": {k[len("optimizer/"):]: v for k, v in arrays.items()
                      if k.startswith("optimizer/")}})
    return Checkpoint(model, optimizer, meta["step"], meta["extra"])


def load(path):
    """The model of a checkpoint (file or run folder)."""
    return load_checkpoint(path).model
