#!/usr/bin/python3
"""Import a PyTorch Lightning .ckpt or a plain PyTorch state_dict file as a ddp-runtime checkpoint.

    /usr/bin/python3 tools/lightning_to_ckpt.py IN OUT.h5 --like REF.h5 [--weights-only]
        [--strip-prefix P]... [--rename OLD=NEW]... [--no-strict]

then `ddp-train --config CFG --resume OUT.h5` (the config of the run that wrote REF.h5).

IN is read with torch.load (a pickle: import only files you trust) and may be
  - a Lightning checkpoint: {"state_dict", "optimizer_states", "global_step", "epoch",
    "loops", ...} (pytorch_lightning 1.x/2.x),
  - {"state_dict": {...}} or {"model": {...}} holding tensors, or
  - a dict of tensors (torch.save(model.state_dict(), IN)).

REF.h5 (--like) is any ddp-runtime checkpoint of the target model, e.g. the one a 1-step
`ddp-train --set trainer.max_steps=1` run writes. It gives the keys, shapes and dtypes the
model expects, the optimizer's type and parameter order, and the metadata copied into OUT.h5:
config_yaml, hparams_json, ddp_runtime_version, batch_size and world_size, and the
architecture fingerprint, which `--resume` compares with the model's (runtime/checkpointer.cpp)
and which is copied only when OUT.h5's keys, shapes and dtypes are exactly REF.h5's.

Key mapping, in this order:
  1. --strip-prefix P (repeatable): P is removed from every key that starts with it. Without
     it, "model." and "module." prefixes (Lightning's self.model, DDP/DataParallel's module)
     are stripped while every key has one and the keys do not already match REF.h5.
  2. --rename OLD=NEW (repeatable): the key OLD becomes NEW; an OLD ending in "." renames a
     prefix ("net.=layers." turns net.0.weight into layers.0.weight).
Then the keys are checked against REF.h5's /model datasets, and ONE report lists every
missing, unexpected and shape/dtype-mismatched key, both values in each line:
    parameter 'layers.0.weight': file has [256, 1024] float32, model expects [512, 1024] float32
Any mismatch: exit 2 and nothing is written, unless --no-strict: then unexpected keys are
dropped and missing or mismatched ones are taken from REF.h5 (e.g. a new classifier head for
fine-tuning), and the report is printed as a warning.

Full or weights-only. OUT.h5 is a full checkpoint (weights_only = 0: --resume restores the
optimizer state, global_step, epoch and data position) when IN has optimizer state that maps
onto REF.h5's optimizer (same type of state: exp_avg/exp_avg_sq/step for adam and adamw,
momentum_buffer for sgd; one entry per parameter, matching shapes) and --weights-only is not
given. Otherwise it is weights-only (weights_only = 1): --resume loads the weights and starts
training at step 0 with a fresh optimizer, which is fine-tuning. The position:
  global_step   IN["global_step"] (0 when absent)
  epoch, batch_in_epoch
                from Lightning's loop state (fit_loop.epoch_progress and
                epoch_loop.batch_progress) when present: an epoch whose training part has
                finished (processed > completed, or is_last_batch) counts as done, so the run
                continues at the start of the next epoch; otherwise the batches processed in
                the epoch in progress. Without loops: epoch = IN["epoch"], batch 0.
  world_size, batch_size
                REF.h5's (Lightning does not record them); samples_in_epoch =
                batch_in_epoch * batch_size * world_size, from which a run with another
                number of ranks recomputes its position.
Optimizer indices: torch numbers parameters by their position in the optimizer; the names are
taken from the param groups' "param_names" when IN has them (torch >= 2.6, and
ckpt_to_lightning.py's output), else the mapped state_dict keys that are parameters of REF.h5,
in IN's order. The written optimizer_json is REF.h5's with IN's lr/betas/eps/weight_decay/
momentum per group. /meta/callbacks_json is "{}" (a fresh ModelCheckpoint: Lightning's table
names .ckpt files that a ddp-runtime directory does not hold), scheduler_json REF.h5's
scheduler name at the imported step. Per-rank RNG state (/ranks) is not written: a resumed
run draws fresh RNG streams from its seed.

Output format (docs/checkpoint-format.md): root attributes, /meta strings (fixed-length UTF-8,
NUL-padded), /metrics (empty), /model and /optimizer datasets (contiguous, little-endian,
float16/bfloat16 as uint16 bit patterns) with "dtype", "index" and "xxh3" attributes, plus
the root attributes "imported_from" and "import_tool" (ignored by readers). Committed as
ddp-runtime commits: written to .OUT.h5.tmp-<pid> in OUT's directory and fsynced, the sidecar
OUT.h5.sum (xxh3_64_b64k whole-file checksum) written and fsynced the same way, then the
sidecar and the file renamed into place, each followed by an fsync of the directory.

Needs torch, h5py, numpy and xxhash (Debian: python3-torch, python3-h5py, python3-xxhash).
Exit status: 0 success (optimizer state that cannot become REF.h5's is not an error: the
output is then weights-only, with a note saying why); 2 a key/shape/dtype mismatch without
--no-strict, two keys mapped to one, or bad usage; 1 any other failure (a missing or
unreadable file, a REF.h5 that is not a ddp-runtime checkpoint, an unsupported dtype, a failed
write), each with one "lightning_to_ckpt: error: ..." message on stderr.
"""

import argparse
import collections
import datetime
import json
import os
import re
import sys

PROG = "lightning_to_ckpt"
KNOWN_FORMAT_VERSION = 1  # checkpoint/checkpoint_data.h kFormatVersion
META_STRINGS = ("config_yaml", "hparams_json", "optimizer_json", "scheduler_json",
                "callbacks_json")
BLOCK = 1 << 16  # xxh3_64_b64k block size
# Optimizer state fields per ddp-runtime optimizer (runtime/state_io.cpp optimizer_sources).
STATE_FIELDS = {"sgd": ({"momentum_buffer"}, set()),
                "adam": ({"step", "exp_avg", "exp_avg_sq"}, {"max_exp_avg_sq"}),
                "adamw": ({"step", "exp_avg", "exp_avg_sq"}, {"max_exp_avg_sq"})}
GROUP_KEYS = ("lr", "momentum", "weight_decay", "nesterov", "betas", "eps")


class ImportFailure(Exception):
    """A one-line reason; `code` is the exit status (1 failure, 2 mismatch)."""

    def __init__(self, message, code=1):
        super().__init__(message)
        self.code = code


def note(message):
    print(f"{PROG}: note: {message}", file=sys.stderr)


def warn(message):
    print(f"{PROG}: warning: {message}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# dtypes


def _dtype_tables():
    import numpy as np
    import torch

    # ddp-runtime dtype name -> (torch dtype, numpy dtype stored in HDF5)
    return {"float32": (torch.float32, np.dtype("<f4")), "float64": (torch.float64, np.dtype("<f8")),
            "float16": (torch.float16, np.dtype("<u2")), "bfloat16": (torch.bfloat16, np.dtype("<u2")),
            "int32": (torch.int32, np.dtype("<i4")), "int64": (torch.int64, np.dtype("<i8")),
            "uint8": (torch.uint8, np.dtype("u1"))}


def dtype_name(tensor):
    for name, (torch_dtype, _) in _dtype_tables().items():
        if tensor.dtype == torch_dtype:
            return name
    return str(tensor.dtype).replace("torch.", "")


def to_array(tensor):
    """The tensor as the numpy array ddp-runtime stores (C order, little-endian)."""
    import numpy as np
    import torch

    name = dtype_name(tensor)
    tables = _dtype_tables()
    if name not in tables:
        raise ImportFailure(f"dtype {tensor.dtype} cannot be stored in a ddp-runtime "
                            f"checkpoint (supported: {', '.join(tables)})")
    t = tensor.detach().to("cpu").contiguous()
    if name in ("float16", "bfloat16"):
        array = t.view(torch.int16).numpy().view(np.uint16)
    else:
        array = t.numpy()
    return np.ascontiguousarray(array.astype(tables[name][1], copy=False)).reshape(tuple(t.shape))


def shape_text(shape):
    return "[" + ", ".join(str(int(d)) for d in shape) + "]"


# ---------------------------------------------------------------------------------------------
# Reading the inputs


class Reference:
    """What --like tells about the target model."""

    def __init__(self, path):
        import h5py

        if not os.path.isfile(path):
            raise ImportFailure(f"--like '{path}' does not exist")
        try:
            f = h5py.File(path, "r")
        except OSError as e:
            raise ImportFailure(f"--like '{path}' is not a readable HDF5 file: {e}") from None
        with f:
            if "format_version" not in f.attrs or "model" not in f:
                raise ImportFailure(f"--like '{path}' is not a ddp-runtime checkpoint (no root "
                                    "attribute 'format_version' or no /model)")
            version = int(f.attrs["format_version"])
            if version > KNOWN_FORMAT_VERSION:
                raise ImportFailure(f"--like '{path}' has checkpoint format {version}, newer "
                                    f"than this script writes ({KNOWN_FORMAT_VERSION})")
            self.attrs = {k: (v.decode() if isinstance(v, bytes) else v)
                          for k, v in f.attrs.items()}
            self.meta = {name: bytes(f["meta/" + name][()]).decode("utf-8")
                         for name in META_STRINGS}
            model = f["model"]
            order = sorted(model.keys(), key=lambda k: int(model[k].attrs.get("index", 1 << 62)))
            self.keys = order
            self.spec = {}
            self.tensors = {}
            for key in order:
                d = model[key]
                dtype = d.attrs["dtype"]
                dtype = dtype.decode() if isinstance(dtype, bytes) else str(dtype)
                self.spec[key] = (tuple(int(n) for n in d.shape), dtype)
                self.tensors[key] = d  # read lazily (only for --no-strict fills)
            self._file_path = path
        try:
            self.optimizer = json.loads(self.meta["optimizer_json"] or "{}")
        except json.JSONDecodeError:
            self.optimizer = {}
        self.optimizer_type = str(self.optimizer.get("type", ""))
        groups = self.optimizer.get("param_groups", [])
        names = [n for g in groups for n in g.get("param_names", [])]
        self.param_names = names if names else None

    def read(self, key):
        """REF.h5's tensor `key` as a torch tensor (for --no-strict fills)."""
        import h5py
        import numpy as np
        import torch

        with h5py.File(self._file_path, "r") as f:
            array = np.asarray(f["model/" + key][()])
        shape, dtype = self.spec[key]
        if dtype in ("float16", "bfloat16"):
            t = torch.from_numpy(np.array(array, dtype=np.uint16).view(np.int16))
            return t.view(torch.float16 if dtype == "float16" else torch.bfloat16).reshape(shape)
        return torch.from_numpy(np.array(array)).reshape(shape)


def load_input(path):
    """(state_dict OrderedDict, the loaded object or {} for a plain state_dict)."""
    import torch

    if not os.path.isfile(path):
        raise ImportFailure(f"'{path}' does not exist" if not os.path.exists(path)
                            else f"'{path}' is not a file")
    try:
        obj = torch.load(path, map_location="cpu")
    except Exception as e:  # pickle/zip errors of every kind: still one line
        message = re.sub(r"\s+", " ", str(e)).strip()
        raise ImportFailure(f"'{path}' is not a torch.save file ({type(e).__name__}: "
                            f"{message})") from None
    if not isinstance(obj, dict):
        raise ImportFailure(f"'{path}' holds a {type(obj).__name__}, not a state_dict or a "
                            "Lightning checkpoint (a dict)")
    for key in ("state_dict", "model"):
        if isinstance(obj.get(key), dict):
            state, container = obj[key], obj
            break
    else:
        state, container = obj, {}
    bad = [k for k, v in state.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad or not state:
        what = f"entry {bad[0]!r} is not a tensor" if bad else "it is empty"
        raise ImportFailure(f"'{path}': no state_dict found ({what}); expected a dict of "
                            "tensors, {'state_dict': ...}, {'model': ...} or a Lightning .ckpt")
    return collections.OrderedDict(state), container


# ---------------------------------------------------------------------------------------------
# Key mapping and the report


def map_keys(keys, expected, strip_prefixes, renames):
    """Returns {source key: target key}."""
    def strip(key, prefixes):
        for p in prefixes:
            if key.startswith(p):
                return key[len(p):]
        return key

    mapped = {k: k for k in keys}
    if strip_prefixes:
        mapped = {k: strip(v, strip_prefixes) for k, v in mapped.items()}
    else:
        while set(mapped.values()) != set(expected):
            changed = False
            for p in ("model.", "module."):
                if mapped and all(v.startswith(p) for v in mapped.values()):
                    mapped = {k: v[len(p):] for k, v in mapped.items()}
                    changed = True
                    break
            if not changed:
                break
    for old, new in renames:
        for k, v in mapped.items():
            if old.endswith(".") and v.startswith(old):
                mapped[k] = new + v[len(old):]
            elif v == old:
                mapped[k] = new
    targets = collections.Counter(mapped.values())
    twice = sorted(t for t, n in targets.items() if n > 1)
    if twice:
        sources = [k for k, v in mapped.items() if v == twice[0]]
        raise ImportFailure(f"key mapping sends {sources} to the same key '{twice[0]}'", 2)
    return mapped


def compare(tensors, ref):
    """(missing, unexpected, mismatched lines) of target-keyed `tensors` against REF."""
    missing = [k for k in ref.keys if k not in tensors]
    unexpected = [k for k in tensors if k not in ref.spec]
    mismatched = []
    for key in ref.keys:
        if key not in tensors:
            continue
        shape, dtype = ref.spec[key]
        t = tensors[key]
        have = (tuple(t.shape), dtype_name(t))
        if have != (shape, dtype):
            kind = "parameter" if ref.param_names is None or key in ref.param_names else "buffer"
            mismatched.append(f"{kind} '{key}': file has {shape_text(have[0])} {have[1]}, "
                              f"model expects {shape_text(shape)} {dtype}")
    return missing, unexpected, mismatched


def report(missing, unexpected, mismatched, source_of, like):
    lines = [f"the state_dict does not match the model of '{like}':"]
    for k in missing:
        lines.append(f"  missing: '{k}' (the model has it, the file does not)")
    for k in unexpected:
        origin = source_of.get(k, k)
        suffix = f" (from '{origin}')" if origin != k else ""
        lines.append(f"  unexpected: '{k}'{suffix} (the file has it, the model does not)")
    for line in mismatched:
        lines.append(f"  mismatched: {line}")
    lines.append(f"  ({len(missing)} missing, {len(unexpected)} unexpected, {len(mismatched)} "
                 "mismatched; map keys with --strip-prefix / --rename OLD=NEW, or write anyway "
                 "with --no-strict)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Optimizer state and position


def optimizer_import(container, mapped, tensors, ref):
    """(optimizer tensors {"<param>/<field>": tensor}, param group hyperparameters) or
    (None, reason) when IN's optimizer state cannot become REF.h5's."""
    import torch

    states = container.get("optimizer_states")
    if states is None and isinstance(container.get("optimizer"), dict):
        states = [container["optimizer"]]
    if not states:
        return None, "the input has no optimizer state"
    if len(states) != 1:
        return None, f"the input has {len(states)} optimizers; ddp-runtime has one"
    state = states[0]
    if not isinstance(state, dict) or "state" not in state or "param_groups" not in state:
        return None, "the optimizer state is not a torch.optim state_dict"
    kind = ref.optimizer_type
    if kind not in STATE_FIELDS:
        return None, f"--like's optimizer type '{kind}' is not one ddp-runtime saves"
    if ref.param_names is None:
        return None, "--like's optimizer_json does not list parameter names"
    groups = state["param_groups"]
    indices = [i for g in groups for i in g.get("params", [])]
    names = [n for g in groups for n in g.get("param_names", [])]
    if names and len(names) == len(indices):
        names = [mapped.get(n, n) for n in names]
        how = "param_names"
    else:
        targets = list(dict.fromkeys(mapped[k] for k in mapped))
        names = [t for t in targets if t in ref.param_names]
        how = "state_dict order"
    if len(names) != len(indices):
        return None, (f"the optimizer has {len(indices)} parameters but {len(names)} of the "
                      f"mapped keys are parameters of the model ({how})")
    if set(names) != set(ref.param_names):
        return None, ("the optimizer's parameters are not the model's: "
                      f"{sorted(set(names) ^ set(ref.param_names))[:4]}")
    required, optional = STATE_FIELDS[kind]
    out = {}
    for index, name in zip(indices, names):
        fields = state["state"].get(index)
        if fields is None:
            if kind == "sgd":
                continue  # no momentum buffer yet: as torch and ddp-runtime
            return None, f"parameter '{name}' (index {index}) has no optimizer state"
        have = set(fields)
        if not required <= have or have - required - optional:
            return None, (f"parameter '{name}': optimizer state fields {sorted(have)} are not "
                          f"{kind}'s {sorted(required)}")
        shape, dtype = ref.spec[name]
        for field, value in fields.items():
            if field == "step":
                step = value.item() if torch.is_tensor(value) else value
                out[f"{name}/step"] = torch.tensor(int(round(float(step))), dtype=torch.int64)
                continue
            if not torch.is_tensor(value) or tuple(value.shape) != shape:
                got = shape_text(value.shape) if torch.is_tensor(value) else type(value).__name__
                return None, (f"optimizer state '{name}/{field}': file has {got}, model "
                              f"expects {shape_text(shape)}")
            out[f"{name}/{field}"] = value.detach()
    hyper = []
    for g in groups:
        h = {}
        for key in GROUP_KEYS:
            if key in g:
                v = g[key]
                h[key] = list(v) if isinstance(v, (list, tuple)) else v
        hyper.append(h)
    # ddp-runtime writes its tensors in model order: parameters, then their fields.
    ordered = collections.OrderedDict()
    for name in ref.param_names:
        for field in sorted(f.split("/")[-1] for f in out if f.rsplit("/", 1)[0] == name):
            ordered[f"{name}/{field}"] = out[f"{name}/{field}"]
    return ordered, hyper


def position(container):
    """(global_step, epoch, batch_in_epoch) from a Lightning checkpoint."""
    step = int(container.get("global_step", 0) or 0)
    epoch = int(container.get("epoch", 0) or 0)
    batch = 0
    fit = container.get("loops", {}).get("fit_loop") if isinstance(container.get("loops"),
                                                                   dict) else None
    if isinstance(fit, dict):
        try:
            ep = fit["epoch_progress"]["current"]
            bp = fit["epoch_loop.batch_progress"]
            if ep["processed"] > ep["completed"]:  # saved at the end of an epoch
                epoch, batch = int(ep["processed"]), 0
            elif bp.get("is_last_batch"):  # after the last batch, before the epoch's end
                epoch, batch = int(ep["completed"]) + 1, 0
            else:
                epoch, batch = int(ep["completed"]), int(bp["current"]["processed"])
        except (KeyError, TypeError):
            note("the Lightning loop state has an unknown layout; using 'epoch' and batch 0")
    return step, epoch, batch


# ---------------------------------------------------------------------------------------------
# Writing


def _xxhash():
    try:
        import xxhash
        return xxhash
    except ImportError:
        raise ImportFailure("python module 'xxhash' is needed for the checksums "
                            "(Debian: python3-xxhash)") from None


def write_checkpoint(path, attrs, meta, tensors, xxhash):
    """Writes the HDF5 file at `path` (a temporary name)."""
    import h5py
    import numpy as np

    with h5py.File(path, "w") as f:
        for name in ("format_version", "global_step", "epoch", "world_size", "batch_in_epoch",
                     "samples_in_epoch", "batch_size", "weights_only"):
            f.attrs[name] = np.int64(attrs[name])
        for name in ("ddp_runtime_version", "torch_version", "hdf5_version", "created_utc",
                     "fingerprint", "imported_from", "import_tool"):
            f.attrs[name] = str(attrs[name])  # variable-length UTF-8, as the C++ writer
        group = f.create_group("meta")
        for name in META_STRINGS:
            raw = meta[name].encode("utf-8")
            dtype = h5py.string_dtype("utf-8", max(1, len(raw)))
            # fixed-length, NUL-padded, UTF-8 (checkpoint/h5_util.cpp write_string_dataset)
            d = group.create_dataset(name, data=np.array(raw or b"\0", dtype=dtype))
            d.attrs["dtype"] = "string"
            d.attrs["xxh3"] = np.uint64(xxhash.xxh3_64_intdigest(raw))
        f.create_group("metrics")
        for index, (key, tensor) in enumerate(tensors.items()):
            array = to_array(tensor)
            d = f.create_dataset(key, data=array)  # contiguous, allocated and written in full
            d.attrs["dtype"] = dtype_name(tensor)
            d.attrs["index"] = np.int64(index)
            d.attrs["xxh3"] = np.uint64(xxhash.xxh3_64_intdigest(array.tobytes()))


def file_checksum(path, xxhash):
    with open(path, "rb") as data:
        digests = b"".join(xxhash.xxh3_64_intdigest(block).to_bytes(8, "little")
                           for block in iter(lambda: data.read(BLOCK), b""))
    return xxhash.xxh3_64(digests).hexdigest()


def _fsync_file(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(out_path, attrs, meta, tensors):
    """docs/checkpoint-format.md "Atomic commit": temporary, fsync, sidecar, renames."""
    xxhash = _xxhash()
    directory = os.path.dirname(os.path.abspath(out_path))
    if not os.path.isdir(directory):
        raise ImportFailure(f"cannot write '{out_path}': directory '{directory}' does not exist")
    name = os.path.basename(out_path)
    tmp = os.path.join(directory, f".{name}.tmp-{os.getpid()}")
    sum_tmp = os.path.join(directory, f".{name}.sum.tmp-{os.getpid()}")
    try:
        write_checkpoint(tmp, attrs, meta, tensors, xxhash)
        _fsync_file(tmp)
        sidecar = {"bytes": os.path.getsize(tmp), "algorithm": "xxh3_64_b64k",
                   "checksum": file_checksum(tmp, xxhash), "global_step": attrs["global_step"]}
        with open(sum_tmp, "w", encoding="utf-8") as s:
            s.write(json.dumps(sidecar, indent=2) + "\n")
            s.flush()
            os.fsync(s.fileno())
        os.replace(sum_tmp, os.path.join(directory, name + ".sum"))
        _fsync_dir(directory)
        os.replace(tmp, os.path.join(directory, name))
        _fsync_dir(directory)
    except OSError as e:
        for leftover in (tmp, sum_tmp):
            try:
                os.remove(leftover)
            except OSError:
                pass
        raise ImportFailure(f"cannot write '{out_path}': {e.strerror or e}") from None
    except BaseException:
        for leftover in (tmp, sum_tmp):
            try:
                os.remove(leftover)
            except OSError:
                pass
        raise


# ---------------------------------------------------------------------------------------------


def run(args):
    import h5py
    import torch

    ref = Reference(args.like)
    source, container = load_input(args.input)
    mapped = map_keys(list(source), ref.keys, args.strip_prefix, args.rename)
    tensors = collections.OrderedDict((mapped[k], v) for k, v in source.items())
    source_of = {v: k for k, v in mapped.items()}
    missing, unexpected, mismatched = compare(tensors, ref)
    exact = not (missing or unexpected or mismatched)
    if not exact:
        text = report(missing, unexpected, mismatched, source_of, args.like)
        if not args.no_strict:
            raise ImportFailure(text, 2)
        warn(text + "\n  --no-strict: unexpected keys dropped, missing and mismatched ones "
             f"taken from '{args.like}'")
    bad_keys = set(missing) | {line.split("'")[1] for line in mismatched}
    model = collections.OrderedDict()
    for key in ref.keys:  # REF.h5's write order (the model's named_parameters, then buffers)
        model[key] = ref.read(key) if key in bad_keys else tensors[key]

    weights_only = True
    optimizer_tensors, hyper = None, None
    if not args.weights_only:
        optimizer_tensors, hyper = optimizer_import(container, mapped, model, ref)
        if optimizer_tensors is None:
            note(f"writing a weights-only checkpoint: {hyper}")
            hyper = None
        else:
            weights_only = False
    step, epoch, batch = position(container) if not weights_only else (
        int(container.get("global_step", 0) or 0), int(container.get("epoch", 0) or 0), 0)

    opt_json = dict(ref.optimizer)
    if hyper is not None and not weights_only:
        groups = [dict(g) for g in ref.optimizer.get("param_groups", [])]
        if len(groups) == len(hyper):
            for group, h in zip(groups, hyper):
                group.update({k: v for k, v in h.items() if k in group})
            opt_json["param_groups"] = groups
    try:
        sched = json.loads(ref.meta["scheduler_json"] or "{}")
    except json.JSONDecodeError:
        sched = {}
    first_lr = (hyper[0].get("lr") if hyper else None) or sched.get("lr", 0.0)
    scheduler_json = {"name": sched.get("name", "none"), "step": step, "lr": first_lr}
    world = int(ref.attrs.get("world_size", 1))
    batch_size = int(ref.attrs.get("batch_size", 1))
    attrs = {
        "format_version": KNOWN_FORMAT_VERSION, "global_step": step, "epoch": epoch,
        "world_size": world, "batch_in_epoch": batch,
        "samples_in_epoch": batch * batch_size * world, "batch_size": batch_size,
        "weights_only": 1 if weights_only else 0,
        "ddp_runtime_version": ref.attrs.get("ddp_runtime_version", ""),
        "torch_version": torch.__version__, "hdf5_version": h5py.version.hdf5_version,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).strftime(
            "%Y-%m-%dT%H:%M:%SZ"),
        # Shapes/dtypes/keys are now exactly REF.h5's (a mismatch stopped above or was
        # filled from REF.h5 with --no-strict), so its architecture fingerprint holds.
        "fingerprint": ref.attrs.get("fingerprint", ""),
        "imported_from": os.path.abspath(args.input),
        "import_tool": f"{PROG} (pytorch-lightning_version "
                       f"{container.get('pytorch-lightning_version', 'none')})",
    }
    meta = {"config_yaml": ref.meta["config_yaml"], "hparams_json": ref.meta["hparams_json"],
            "optimizer_json": json.dumps(opt_json), "scheduler_json": json.dumps(scheduler_json),
            "callbacks_json": "{}"}
    out = collections.OrderedDict(("model/" + k, v) for k, v in model.items())
    if not weights_only:
        out.update(("optimizer/" + k, v) for k, v in optimizer_tensors.items())
    commit(args.output, attrs, meta, out)
    kind = "weights only" if weights_only else f"full: step {step}, epoch {epoch}, batch {batch}"
    print(f"{PROG}: wrote '{args.output}' ({len(model)} tensors, {kind})")


def parse_rename(text):
    if "=" not in text or text.startswith("="):
        raise argparse.ArgumentTypeError(f"--rename wants OLD=NEW, got {text!r}")
    old, new = text.split("=", 1)
    return old, new


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog=PROG, description="Import a PyTorch Lightning .ckpt or a PyTorch state_dict "
        "file as a ddp-runtime HDF5 checkpoint.")
    parser.add_argument("input", help="Lightning .ckpt or torch.save'd state_dict")
    parser.add_argument("output", help="ddp-runtime checkpoint to write (.h5)")
    parser.add_argument("--like", required=True,
                        help="a ddp-runtime checkpoint of the target model (keys, shapes, "
                        "dtypes, optimizer, config and fingerprint come from it)")
    parser.add_argument("--weights-only", action="store_true",
                        help="write the weights only (resume then fine-tunes from step 0)")
    parser.add_argument("--strip-prefix", action="append", default=[], metavar="P",
                        help="remove prefix P from the keys (repeatable; default: 'model.' "
                        "and 'module.' automatically)")
    parser.add_argument("--rename", action="append", default=[], type=parse_rename,
                        metavar="OLD=NEW", help="rename a key, or a prefix when OLD ends "
                        "with '.' (repeatable, applied after prefix stripping)")
    parser.add_argument("--no-strict", action="store_true",
                        help="write despite missing/unexpected/mismatched keys (dropped or "
                        "taken from --like), with the report as a warning")
    args = parser.parse_args(argv)
    try:
        run(args)
    except ImportFailure as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return e.code
    except ImportError as e:
        print(f"{PROG}: error: {e} (install python3-torch, python3-h5py, python3-numpy, "
              "python3-xxhash)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
