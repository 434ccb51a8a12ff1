#!/usr/bin/python3
"""Convert a ddp-runtime HDF5 checkpoint into a PyTorch Lightning-style .ckpt file.

    /usr/bin/python3 tools/ckpt_to_lightning.py IN.h5 OUT.ckpt [--weights-only]

Needs h5py, numpy and torch (Debian: python3-h5py, python3-torch). The output is written with
torch.save to OUT.ckpt.tmp, then renamed into place, so OUT.ckpt is never half written. It
holds only dicts, OrderedDicts, lists, tuples, strings, numbers, None and tensors (no custom
classes), which is what torch.load(OUT, weights_only=True) accepts in torch 2.x (torch 1.13's
weights-only unpickler cannot read Python floats: load with the default there).

What goes where (input layout: docs/checkpoint-format.md, checkpoint/format_writer.cpp):

  epoch, global_step            root attributes of the same names
  pytorch-lightning_version     "ddp-runtime-<ddp_runtime_version root attribute>"
  state_dict                    OrderedDict: every dataset under /model (parameters and
                                buffers), key = dataset name, dtype and shape as saved.
                                float16/bfloat16 are stored as uint16 bit patterns with a
                                "dtype" attribute and come back as torch.float16/bfloat16.
  optimizer_states              [one torch.optim state_dict]; absent with --weights-only or
                                when the checkpoint was saved weights-only:
      state                     {param_index: {"step": float32 scalar tensor (what
                                torch.optim.Adam/AdamW keep), "exp_avg", "exp_avg_sq"
                                [, "max_exp_avg_sq"]} or {"momentum_buffer"}} from
                                /optimizer/<parameter name>/<field>; parameters without saved
                                state (e.g. SGD without momentum) have no entry, as in torch.
      param_groups              hyperparameters from /meta/optimizer_json, plus torch's
                                defaults for the keys LibTorch does not record (maximize,
                                foreach, ...), "params": the group's parameter indices, and
                                "param_names": the names of those parameters (torch >= 2.6
                                spells the name mapping this way; older torch ignores it).
  lr_schedulers                 [] for scheduler "none", else [/meta/scheduler_json parsed,
                                plus torch-style "last_epoch" and "_last_lr"]
  hyper_parameters              /meta/hparams_json parsed, plus "config_yaml": the full
                                resolved config text (/meta/config_yaml)
  callbacks                     /meta/callbacks_json parsed (the ModelCheckpoint best-k table)
  ddp_runtime                   what Lightning has no key for: format_version, world_size,
                                data position, metrics, fingerprint, versions, and
                                "param_order" (below). Lightning ignores unknown keys.
  loops                         omitted (Lightning tolerates its absence).

Parameter indices. torch numbers optimizer state by the position of each parameter in the
optimizer's param groups, which ddp-runtime builds from model.parameters() (parameters that
require grad, in registration order). The converter takes that order from the first source
that has it, and records which one in ckpt["ddp_runtime"]["param_order"]:
  "optimizer_json"  the param groups in /meta/optimizer_json list parameter names
                    ("param_names" or "params"; the current writer records only num_params);
  "write_order"     the checkpoint was saved by one rank: then the datasets' "index" attribute
                    (write order) is the order model_sources() produced, i.e. named_parameters
                    then named_buffers, and the first sum(num_params) /model datasets in index
                    order are the optimizer's parameters;
  "sorted_names"    otherwise. A checkpoint saved by several ranks is written in the order the
                    shares arrive at rank 0, so "index" says nothing about the model's order
                    and the file records it nowhere else. The converter then sorts names by
                    their dotted components (numbers numerically, "weight" before "bias"),
                    which is torch's order for Sequential/ModuleList models such as the
                    built-in mlp but NOT in general (e.g. the transformer registers
                    tok_embedding before blocks). It prints a note; check param_names before
                    loading optimizer_states into a torch optimizer.

Integrity: each dataset's "xxh3" attribute is verified when the `xxhash` module is importable
(otherwise a note says the check was skipped); a <IN>.sum sidecar, when present, is checked
for the file size (and whole-file checksum with xxhash).

Exit status: 0 on success; 1 with one line "ckpt_to_lightning: error: ..." on stderr for a
missing file, a file that is not HDF5, an HDF5 file that is not a ddp-runtime checkpoint (no
root attribute format_version), a format newer than this script knows, a corrupt or
incomplete checkpoint, or an output that cannot be written; 2 for bad command-line usage.
"""

import argparse
import collections
import json
import os
import re
import sys

KNOWN_FORMAT_VERSION = 1  # checkpoint/checkpoint_data.h kFormatVersion
PROG = "ckpt_to_lightning"

# Datasets under /meta, all fixed-length UTF-8 strings (checkpoint/h5_util.cpp).
META_STRINGS = ("config_yaml", "hparams_json", "optimizer_json", "scheduler_json",
                "callbacks_json")
ROOT_INT_ATTRS = ("format_version", "global_step", "epoch", "world_size", "batch_in_epoch",
                  "samples_in_epoch", "batch_size", "weights_only")
ROOT_STR_ATTRS = ("ddp_runtime_version", "torch_version", "hdf5_version", "created_utc",
                  "fingerprint")

# torch.optim defaults for param-group keys LibTorch's options (and so optimizer_json) lack.
# torch's load_state_dict replaces each group dict with the saved one, so a key missing here
# would be missing at the next step() in torch versions without a __setstate__ default.
TORCH_GROUP_DEFAULTS = {
    "sgd": {"dampening": 0.0, "maximize": False, "foreach": None, "differentiable": False},
    "adam": {"amsgrad": False, "maximize": False, "foreach": None, "capturable": False,
             "differentiable": False},
    "adamw": {"amsgrad": False, "maximize": False, "foreach": None, "capturable": False,
              "differentiable": False},
}

# Leaf names that LibTorch modules register as buffers, never parameters (used only by the
# "sorted_names" fallback to tell buffers from parameters without optimizer state).
KNOWN_BUFFER_LEAVES = {"running_mean", "running_var", "num_batches_tracked"}


class ConversionError(Exception):
    """A one-line, user-facing reason why the input cannot be converted."""


def note(message):
    print(f"{PROG}: note: {message}", file=sys.stderr)


def _import_xxhash():
    try:
        import xxhash  # optional: python3-xxhash
        return xxhash
    except ImportError:
        return None


# ---------------------------------------------------------------------------------------------
# Reading the HDF5 file


def open_checkpoint(path):
    """Opens `path` read-only after the checks that give the documented one-line errors."""
    import h5py

    if not os.path.exists(path):
        raise ConversionError(f"'{path}' does not exist")
    if os.path.isdir(path):
        raise ConversionError(f"'{path}' is a directory, not a checkpoint file")
    try:
        is_hdf5 = h5py.is_hdf5(path)
    except OSError as e:
        raise ConversionError(f"cannot read '{path}': {e}") from None
    if not is_hdf5:
        raise ConversionError(f"'{path}' is not an HDF5 file, so not a ddp-runtime checkpoint")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ConversionError(f"'{path}' is an HDF5 file that cannot be opened "
                              f"(corrupt or truncated?): {e}") from None
    if "format_version" not in f.attrs:
        f.close()
        raise ConversionError(f"'{path}' is an HDF5 file but not a ddp-runtime checkpoint "
                              "(no root attribute 'format_version')")
    version = int(f.attrs["format_version"])
    if version > KNOWN_FORMAT_VERSION:
        f.close()
        raise ConversionError(f"'{path}' has checkpoint format {version}, newer than this "
                              f"script reads (up to {KNOWN_FORMAT_VERSION}); use the "
                              "ckpt_to_lightning.py of the ddp-runtime that wrote it")
    if version < 1:
        f.close()
        raise ConversionError(f"'{path}' has format_version {version}, which no ddp-runtime "
                              "writes")
    return f


class Reader:
    """Typed access to one open checkpoint; every failure is a ConversionError naming the
    object. Verifies xxh3 attributes when `xxhash` is given."""

    def __init__(self, f, path, xxhash):
        self.f = f
        self.path = path
        self.xxhash = xxhash
        self.verified = 0

    def _fail(self, what):
        raise ConversionError(f"'{self.path}': {what}")

    def root_attr(self, name, kind):
        if name not in self.f.attrs:
            self._fail(f"root attribute '{name}' is missing (incomplete checkpoint)")
        value = self.f.attrs[name]
        if kind is int:
            return int(value)
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)

    def _check(self, dset, raw_bytes):
        if self.xxhash is None:
            return
        if "xxh3" not in dset.attrs:
            self._fail(f"dataset '{dset.name}' has no xxh3 attribute (corrupt checkpoint)")
        recorded = int(dset.attrs["xxh3"])
        actual = self.xxhash.xxh3_64_intdigest(raw_bytes)
        if recorded != actual:
            self._fail(f"dataset '{dset.name}' is corrupt: checksum mismatch: recorded "
                       f"{recorded:016x}, data has {actual:016x}")
        self.verified += 1

    def meta_string(self, name):
        key = "meta/" + name
        if key not in self.f:
            self._fail(f"dataset '/{key}' is missing (incomplete checkpoint)")
        dset = self.f[key]
        try:
            raw = dset[()]
        except (OSError, ValueError) as e:
            self._fail(f"cannot read '/{key}' (corrupt?): {e}")
        raw = bytes(raw)  # h5py drops the NUL padding, as the C++ reader does
        self._check(dset, raw)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            self._fail(f"dataset '/{key}' is not UTF-8 text (corrupt?)")

    def meta_json(self, name):
        text = self.meta_string(name)
        try:
            return json.loads(text) if text else {}
        except json.JSONDecodeError as e:
            self._fail(f"dataset '/meta/{name}' is not valid JSON ({e})")

    def tensor(self, key):
        """The dataset at `key` as a torch.Tensor of its saved dtype and shape."""
        import numpy as np
        import torch

        dset = self.f[key]
        dtype_name = dset.attrs.get("dtype")
        if isinstance(dtype_name, bytes):
            dtype_name = dtype_name.decode("utf-8")
        if dtype_name is None:
            self._fail(f"dataset '{dset.name}' has no dtype attribute (corrupt checkpoint)")
        try:
            array = np.asarray(dset[()])  # not ascontiguousarray: it makes 0-d arrays 1-d
        except (OSError, ValueError) as e:
            self._fail(f"cannot read dataset '{dset.name}' (corrupt or truncated?): {e}")
        stored = {"float32": np.float32, "float64": np.float64, "float16": np.uint16,
                  "bfloat16": np.uint16, "int32": np.int32, "int64": np.int64,
                  "uint8": np.uint8}.get(dtype_name)
        if stored is None:
            self._fail(f"dataset '{dset.name}' has unknown dtype '{dtype_name}'")
        if array.dtype.itemsize != np.dtype(stored).itemsize or array.dtype.kind not in "fiu":
            self._fail(f"dataset '{dset.name}' is stored as {array.dtype} but its dtype "
                       f"attribute says {dtype_name}")
        array = array.astype(np.dtype(stored).newbyteorder("<"), copy=False)
        self._check(dset, array.tobytes())
        array = np.array(array, dtype=np.dtype(stored), order="C")  # native, C order, owned
        if dtype_name == "float16":
            return torch.from_numpy(array.view(np.float16))
        if dtype_name == "bfloat16":
            # torch has no uint16 (before 2.3): reinterpret the bits through int16.
            return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(array)


def file_checksum(path, algorithm, xxhash):
    """Whole-file checksum as the sidecar records it (docs/checkpoint-format.md):
    "xxh3_64_b64k" = xxh3_64 of the concatenated little-endian xxh3_64 digests of the file's
    64 KiB blocks; "xxh3_64" (older files) = xxh3_64 of the whole content."""
    with open(path, "rb") as data:
        if algorithm == "xxh3_64":
            h = xxhash.xxh3_64()
            for block in iter(lambda: data.read(1 << 22), b""):
                h.update(block)
            return h.hexdigest()
        digests = b"".join(xxhash.xxh3_64_intdigest(block).to_bytes(8, "little")
                           for block in iter(lambda: data.read(1 << 16), b""))
        return xxhash.xxh3_64(digests).hexdigest()


def check_sidecar(path, xxhash):
    """<path>.sum (written at commit): size, and whole-file checksum when xxhash is available.
    During a commit that reuses the name, a "replaces" entry describes the old content; a
    file matching either entry is intact (docs/checkpoint-format.md)."""
    sidecar = path + ".sum"
    if not os.path.isfile(sidecar):
        return
    try:
        with open(sidecar, encoding="utf-8") as s:
            recorded = json.load(s)
        entries = [recorded] + ([recorded["replaces"]] if "replaces" in recorded else [])
        sizes = [int(e["bytes"]) for e in entries]
        sums = [(str(e["algorithm"]), str(e["checksum"]).lower().rjust(16, "0")) for e in entries]
    except (OSError, ValueError, KeyError, TypeError):
        note(f"ignoring unreadable sidecar '{sidecar}'")
        return
    known = ("xxh3_64_b64k", "xxh3_64")
    if any(algorithm not in known for algorithm, _ in sums):
        note(f"ignoring sidecar '{sidecar}': checksum algorithm not one of {known}")
        return
    size = os.path.getsize(path)
    if size not in sizes:
        raise ConversionError(f"'{path}' is {size} bytes but its sidecar '{sidecar}' records "
                              f"{sizes[0]} (truncated or replaced?)")
    if xxhash is not None:
        actual = {algorithm: file_checksum(path, algorithm, xxhash) for algorithm, _ in sums}
        if not any(actual[algorithm] == value for algorithm, value in sums):
            algorithm = sums[0][0]
            raise ConversionError(f"'{path}' is corrupt: its {algorithm} {actual[algorithm]} "
                                  f"does not match the sidecar '{sidecar}' ({sums[0][1]})")


# ---------------------------------------------------------------------------------------------
# Parameter order (see the module docstring)


def _natural_key(name):
    parts = name.split(".")
    key = []
    for i, part in enumerate(parts):
        leaf_rank = {"weight": 0, "bias": 1}.get(part, 2) if i == len(parts) - 1 else 0
        key.append((0, int(part), leaf_rank, "") if part.isdigit() else (1, 0, leaf_rank, part))
    return key


def _write_order(group):
    """Names of the datasets directly in `group`, by their "index" attribute."""
    def index(name):
        value = group[name].attrs.get("index")
        return int(value) if value is not None else sys.maxsize
    return sorted(group.keys(), key=lambda n: (index(n), n))


def parameter_order(model_keys_by_index, stateful, group_sizes, opt_json, world_size):
    """Returns (names of the optimizer's parameters in torch order, how it was determined)."""
    groups = opt_json.get("param_groups", []) if isinstance(opt_json, dict) else []
    named = [g.get("param_names", g.get("params")) for g in groups]
    if groups and all(isinstance(p, list) and all(isinstance(n, str) for n in p)
                      for p in named):
        return [n for p in named for n in p], "optimizer_json"
    total = sum(group_sizes)
    if world_size == 1:
        order = model_keys_by_index[:total]
        if stateful <= set(order) and len(order) == total:
            return order, "write_order"
        note("the write order of this single-rank checkpoint does not match its optimizer "
             "state; falling back to sorted parameter names")
    names = sorted(model_keys_by_index, key=_natural_key)
    params = [n for n in names if n in stateful]
    if len(params) < total:  # parameters without state: anything that is not a known buffer
        extra = [n for n in names if n not in stateful
                 and n.rsplit(".", 1)[-1] not in KNOWN_BUFFER_LEAVES]
        keep = set(params) | set(extra[:total - len(params)])
        params = [n for n in names if n in keep]
    if len(params) != total:
        note(f"the optimizer has {total} parameters but {len(params)} /model datasets look "
             "like parameters; param indices are unreliable")
    return params, "sorted_names"


# ---------------------------------------------------------------------------------------------
# Conversion


def convert(in_path, weights_only=False):
    """Returns the Lightning-style checkpoint dict for the ddp-runtime checkpoint `in_path`."""
    xxhash = _import_xxhash()
    f = open_checkpoint(in_path)
    try:
        import torch  # after the cheap checks: importing torch takes seconds

        return _convert_open(f, in_path, weights_only, xxhash, torch)
    finally:
        f.close()


def _convert_open(f, in_path, weights_only, xxhash, torch):
    import h5py

    check_sidecar(in_path, xxhash)
    r = Reader(f, in_path, xxhash)
    attrs = {name: r.root_attr(name, int) for name in ROOT_INT_ATTRS}
    attrs.update({name: r.root_attr(name, str) for name in ROOT_STR_ATTRS})
    config_yaml = r.meta_string("config_yaml")
    hparams = r.meta_json("hparams_json")
    opt_json = r.meta_json("optimizer_json")
    sched_json = r.meta_json("scheduler_json")
    callbacks = r.meta_json("callbacks_json")
    metrics = {}
    if isinstance(f.get("metrics"), h5py.Group):
        metrics = {k: float(v) for k, v in f["metrics"].attrs.items()}

    model = f.get("model")
    if not isinstance(model, h5py.Group) or len(model) == 0:
        raise ConversionError(f"'{in_path}': no tensors under /model (incomplete checkpoint)")
    for name, obj in model.items():
        if not isinstance(obj, h5py.Dataset):
            raise ConversionError(f"'{in_path}': /model/{name} is a group; /model holds only "
                                  "datasets named by state_dict keys")
    model_keys = _write_order(model)

    optimizer = f.get("optimizer")
    stateful = set(optimizer.keys()) if isinstance(optimizer, h5py.Group) else set()
    unknown = sorted(stateful - set(model_keys))
    if unknown:
        raise ConversionError(f"'{in_path}': optimizer state for '{unknown[0]}', which is not "
                              "a tensor under /model (inconsistent checkpoint)")
    groups = opt_json.get("param_groups", []) if isinstance(opt_json, dict) else []
    if stateful and not groups:
        raise ConversionError(f"'{in_path}': /optimizer holds state but /meta/optimizer_json "
                              "has no param_groups (inconsistent checkpoint)")
    group_sizes = [int(g.get("num_params", len(g.get("param_names", g.get("params", [])))))
                   for g in groups]
    params, order_source = parameter_order(model_keys, stateful, group_sizes, opt_json,
                                           attrs["world_size"])
    strays = [n for n in params if n not in model]
    if strays:
        raise ConversionError(f"'{in_path}': /meta/optimizer_json names parameter "
                              f"'{strays[0]}', which is not a tensor under /model")
    if (order_source == "sorted_names" and attrs["world_size"] > 1 and not weights_only
            and not attrs["weights_only"]):
        note(f"'{in_path}' was saved by {attrs['world_size']} ranks and does not record the "
             "parameter order; optimizer_states indices follow sorted names (see param_names)")

    # state_dict: the parameters in the order found above, then the rest (buffers, frozen
    # parameters) in write order where that is the model's order, else sorted.
    rest = model_keys if order_source == "write_order" else sorted(model_keys, key=_natural_key)
    ordered = params + [k for k in rest if k not in set(params)]
    state_dict = collections.OrderedDict((k, r.tensor("model/" + k)) for k in ordered)

    ckpt = {
        "epoch": attrs["epoch"],
        "global_step": attrs["global_step"],
        "pytorch-lightning_version": "ddp-runtime-" + attrs["ddp_runtime_version"],
        "state_dict": state_dict,
        "hyper_parameters": dict(hparams, config_yaml=config_yaml),
    }
    if not weights_only:
        ckpt["callbacks"] = callbacks
        if not attrs["weights_only"]:
            ckpt["optimizer_states"] = [
                optimizer_state(r, optimizer, params, group_sizes, opt_json, torch)]
            ckpt["lr_schedulers"] = lr_schedulers(sched_json)
    ckpt["ddp_runtime"] = {
        **{k: attrs[k] for k in ROOT_INT_ATTRS if k not in ("epoch", "global_step")},
        **{k: attrs[k] for k in ROOT_STR_ATTRS},
        "weights_only": bool(attrs["weights_only"]),
        "metrics": metrics,
        "param_order": order_source,
        "source": os.path.abspath(in_path),
    }
    if xxhash is None:
        note("python module 'xxhash' not found: dataset xxh3 checksums were not verified")
    return ckpt


def optimizer_state(r, optimizer, params, group_sizes, opt_json, torch):
    state = {}
    amsgrad = False
    for index, name in enumerate(params):
        if optimizer is None or name not in optimizer:
            continue
        entry = {}
        for field in sorted(optimizer[name].keys()):
            tensor = r.tensor(f"optimizer/{name}/{field}")
            if field == "step":
                # torch.optim.Adam/AdamW keep step as a float32 scalar tensor (torch >= 1.12).
                tensor = torch.tensor(float(tensor.item()), dtype=torch.float32)
            entry[field] = tensor
        amsgrad = amsgrad or "max_exp_avg_sq" in entry
        state[index] = entry
    kind = str(opt_json.get("type", "")) if isinstance(opt_json, dict) else ""
    param_groups = []
    start = 0
    for g, size in zip(opt_json.get("param_groups", []), group_sizes):
        group = dict(TORCH_GROUP_DEFAULTS.get(kind, {}))
        group.update({k: v for k, v in g.items()
                      if k not in ("num_params", "params", "param_names")})
        if "betas" in group and isinstance(group["betas"], list):
            group["betas"] = tuple(group["betas"])
        if kind in ("adam", "adamw"):
            group["amsgrad"] = amsgrad
        group["params"] = list(range(start, start + size))
        group["param_names"] = params[start:start + size]
        param_groups.append(group)
        start += size
    return {"state": state, "param_groups": param_groups}


def lr_schedulers(sched_json):
    if not isinstance(sched_json, dict) or sched_json.get("name", "none") == "none":
        return []
    scheduler = dict(sched_json)
    if "step" in scheduler:
        scheduler["last_epoch"] = scheduler["step"]  # torch counts scheduler.step() calls
    if "lr" in scheduler:
        scheduler["_last_lr"] = [scheduler["lr"]]
    return [scheduler]


def save(ckpt, out_path):
    """torch.save to a temporary file beside `out_path`, then rename over it."""
    import torch

    parent = os.path.dirname(os.path.abspath(out_path))
    if not os.path.isdir(parent):
        raise ConversionError(f"cannot write '{out_path}': directory '{parent}' does not exist")
    tmp = out_path + ".tmp"
    try:
        torch.save(ckpt, tmp)
        os.replace(tmp, out_path)
    except (OSError, RuntimeError) as e:  # torch.save reports some I/O failures as RuntimeError
        try:
            os.remove(tmp)
        except OSError:
            pass
        reason = getattr(e, "strerror", None) or str(e)
        raise ConversionError(f"cannot write '{out_path}': {reason}") from None


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog=PROG, description="Convert a ddp-runtime HDF5 checkpoint into a PyTorch "
        "Lightning-style .ckpt (torch.save).")
    parser.add_argument("input", help="ddp-runtime checkpoint (.h5)")
    parser.add_argument("output", help="file to write (.ckpt)")
    parser.add_argument("--weights-only", action="store_true",
                        help="write only the model weights and metadata (no optimizer, "
                        "scheduler or callback state), like Lightning's save_weights_only")
    args = parser.parse_args(argv)
    try:
        ckpt = convert(args.input, weights_only=args.weights_only)
        save(ckpt, args.output)
    except ConversionError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except ImportError as e:
        print(f"{PROG}: error: {e} (install python3-h5py, python3-numpy and python3-torch)",
              file=sys.stderr)
        return 1
    except Exception as e:  # h5py/numpy surprises on damaged files: still one line
        message = re.sub(r"\s+", " ", str(e)).strip()
        print(f"{PROG}: error: '{args.input}': cannot convert (corrupt checkpoint?): "
              f"{type(e).__name__}: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
