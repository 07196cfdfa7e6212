"""Checkpoints: a model's architecture, weights, optimizer state, step and random state.

Format (version 1): one zip archive, by default named checkpoint.npz, that
numpy.load opens:

    meta.json                 {"format": "numlstm-checkpoint", "version": 1,
                               "numlstm": version, "model": model.get_config(),
                               "optimizer": {"type", "config", "steps"} or null,
                               "step": int, "rng": {generator states}, "extra": {...}}
    model/<layer>/<name>.npy  each parameter, torch's names and shapes
    optimizer/<key>/<slot>.npy  each optimizer slot (momentum, exp_avg, ...), where
                              key is the parameter's "<layer>/<name>"
    sha256                    the SHA-256 of every other member, names included
                              (see _digest), in hex

Writing never destroys the last good checkpoint: the new one goes to a temporary
file in the same folder, which is flushed and fsync'ed; the current file then
becomes <name>.prev.npz (checkpoint.prev.npz) and the temporary file takes its
name, and the folder is fsync'ed. A process killed at any moment (SIGKILL, power
loss) leaves the previous checkpoint, the new one, or both. Reading checks the
checksum, so a truncated or corrupted file is an error that says so, and
load_checkpoint(..., fallback=True) then reads the previous checkpoint instead.
A model with NaN or infinite weights is refused before anything is written.
"""
import hashlib
import io
import json
import os
import zipfile
from dataclasses import dataclass

import numpy as np

from .files import write_atomically
from .kernels.gates import UserFunction
from .model import Model, Sequential
from .optim import Optimizer, get_optimizer
from .validation import check_int
from .version import __version__

FORMAT, VERSION = "numlstm-checkpoint", 1
DEFAULT_NAME = "checkpoint.npz"


@dataclass
class Checkpoint:
    model: object
    optimizer: object
    step: int
    extra: dict
    path: str = None      # the file read
    note: str = None      # why another file than the one asked for was read


def previous_path(path):
    """The file that keeps the checkpoint before `path`'s: x.npz -> x.prev.npz."""
    stem, ext = os.path.splitext(path)
    return f"{stem}.prev{ext or '.npz'}"


def _digest(files):
    """SHA-256 over the archive's members (meta.json and the arrays), in name order,
    names included."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\0")
        h.update(files[name])
    return h.hexdigest()


def _unstorable(value, where):
    """(the place, the value) of the first value under `value` that JSON cannot hold
    (a user's activation function, in a layer's config), or None."""
    if isinstance(value, dict):
        items = ((f"{where}.{k}" if where else str(k), v) for k, v in value.items())
    elif isinstance(value, (list, tuple)):
        items = ((f"{where}[{i}]", v) for i, v in enumerate(value))
    elif value is None or isinstance(value, (str, bool, int, float)):
        return None
    else:
        return where, value
    for place, v in items:
        found = _unstorable(v, place)
        if found is not None:
            return found
    return None


def save_checkpoint(path, model, optimizer=None, step=0, extra=None):
    """Write model (a Sequential or a Seq2Seq), optimizer (or None), step and extra (a JSON-able
    dict) to path atomically, keeping the file it replaces as <name>.prev.npz. A
    folder path gets checkpoint.npz inside it. Returns the file's path."""
    if not isinstance(model, Model):
        raise TypeError(f"model: expected a numlstm.Sequential or Seq2Seq, got "
                        f"{type(model).__name__}")
    if optimizer is not None and not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer: expected None or a numlstm optimizer, got "
                        f"{type(optimizer).__name__}")
    step = check_int(step, "step", 0)
    if extra is not None and not isinstance(extra, dict):
        raise TypeError(f"extra: expected None or a dict, got {type(extra).__name__}")
    path = _file(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{path}: the folder {folder} does not exist")
    bad = [key for key, p, _ in model.parameters() if not np.isfinite(p).all()]
    if bad:
        raise ValueError(f"not writing a checkpoint of non-finite weights (NaN or inf in "
                         f"{', '.join(bad[:3])}); {path} is left as it was")
    arrays = {f"model/{key}": p for key, p, _ in model.parameters()}
    opt_meta = None
    if optimizer is not None:
        state = optimizer.state_dict()
        opt_meta = {k: state[k] for k in ("type", "config", "steps")}
        arrays.update({f"optimizer/{k}": v for k, v in state["state"].items()})
    meta = {"format": FORMAT, "version": VERSION, "numlstm": __version__,
            "model": model.get_config(), "optimizer": opt_meta, "step": int(step),
            "rng": model.rng_states(), "extra": extra or {}}
    where = _unstorable(meta, "")
    if where is not None:  # (before any write)
        hint = (" A layer with a user's activation functions cannot be saved whole: save "
                "its weights (layer.state_dict()) and build the layer again with the same "
                "functions." if isinstance(where[1], UserFunction) else "")
        raise TypeError(
            f"save_checkpoint: {where[0]} is {where[1]!r}, which is not JSON serializable "
            f"(a checkpoint keeps the model's settings and `extra` as JSON).{hint} {path} "
            "is left as it was")
    files = {"meta.json": json.dumps(meta, indent=1).encode()}

    for name, arr in arrays.items():
        buf = io.BytesIO()
        # (np.ascontiguousarray would make a 0-d slot, Adam's step, 1-d)
        np.lib.format.write_array(buf, np.asarray(arr, order="C"), allow_pickle=False)
        files[name + ".npy"] = buf.getvalue()

    def write(f):
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z:
            for name, data in files.items():
                z.writestr(name, data)
            z.writestr("sha256", _digest(files))

    write_atomically(path, write, previous=previous_path(path))
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


class CorruptCheckpoint(ValueError):
    """A checkpoint file that is truncated, damaged, or not a checkpoint at all."""


def load_checkpoint(path, fallback=False):
    """Read a checkpoint -> Checkpoint(model, optimizer or None, step, extra, path,
    note); the model predicts exactly as the saved one did, and its random state is
    restored.

    A file that is missing, truncated or corrupted (its checksum does not match)
    raises FileNotFoundError or ValueError saying so; with fallback=True the
    previous checkpoint (<name>.prev.npz, kept by save_checkpoint) is read instead
    when it is sound, and `note` says why.
    """
    file = _file(path)
    try:
        return _read(resolve(path))
    except (FileNotFoundError, CorruptCheckpoint) as err:
        prev = previous_path(file)
        if not fallback or not os.path.isfile(prev):
            raise
        ckpt = _read(prev)
        ckpt.note = f"{err}; read the previous checkpoint, {prev} (step {ckpt.step})"
        return ckpt


def _read(path):
    try:
        with zipfile.ZipFile(path) as z:
            files = {n: z.read(n) for n in z.namelist()}
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        raise CorruptCheckpoint(f"{path}: not a numlstm checkpoint, or a damaged one "
                                f"({err})") from None
    stored = files.pop("sha256", None)
    if stored is not None and stored.decode(errors="replace") != _digest(files):
        raise CorruptCheckpoint(f"{path}: corrupted (its contents do not match the checksum "
                                "written with them)")
    try:
        meta = json.loads(files.pop("meta.json"))
    except (KeyError, ValueError) as err:
        raise CorruptCheckpoint(f"{path}: not a numlstm checkpoint, or a damaged one (no "
                                f"readable meta.json: {err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CorruptCheckpoint(f"{path}: not a numlstm checkpoint (format {got!r})")
    if meta.get("version") != VERSION:
        raise ValueError(f"{path}: checkpoint version {meta.get('version')}, this numlstm "
                         f"reads version {VERSION}")
    try:
        arrays = {n[:-len(".npy")]: np.lib.format.read_array(io.BytesIO(data),
                                                             allow_pickle=False)
                  for n, data in files.items() if n.endswith(".npy")}
    except (ValueError, OSError, EOFError) as err:
        raise CorruptCheckpoint(f"{path}: a damaged array ({err})") from None
    try:
        model = _model_class(meta["model"]).from_config(meta["model"])
        model.set_weights({k[len("model/"):]: v for k, v in arrays.items()
                           if k.startswith("model/")})
        model.set_rng_states(meta["rng"])
        optimizer = None
        if meta["optimizer"] is not None:
            o = meta["optimizer"]
            optimizer = get_optimizer(str(o["type"]).lower(), **o["config"])
            optimizer.load_state_dict({
                "type": o["type"], "config": o["config"], "steps": o["steps"],
                "state": {k[len("optimizer/"):]: v for k, v in arrays.items()
                          if k.startswith("optimizer/")}})
        step, extra = meta["step"], meta["extra"]
        if isinstance(step, bool) or not isinstance(step, int) or not isinstance(extra, dict):
            raise ValueError(f"step {step!r} and extra of type {type(extra).__name__}")
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as err:
        raise CorruptCheckpoint(f"{path}: its contents do not fit together as a numlstm "
                                f"checkpoint ({type(err).__name__}: {err})") from None
    return Checkpoint(model, optimizer, step, extra, path)


def _model_class(config):
    """The model form a saved config is of: its "class" (a Seq2Seq's config has
    one), else Sequential."""
    from .seq2seq import Seq2Seq
    kinds = {"Sequential": Sequential, "Seq2Seq": Seq2Seq}
    kind = config.get("class", "Sequential")
    if kind not in kinds:
        raise ValueError(f"model class {kind!r}, expected one of {sorted(kinds)}")
    return kinds[kind]


def load(path):
    """The model of a checkpoint (file or run folder)."""
    return load_checkpoint(path).model
