#!/usr/bin/python3
"""Convert a ddp-runtime HDF5 checkpoint into a PyTorch Lightning-style .ckpt file.

    /usr/bin/python3 tools/ckpt_to_lightning.py IN.h5 OUT.ckpt [--weights-only]
        [--prefix model.] [--dirpath DIR]

The result loads in real PyTorch Lightning (tested with 2.2.5, tests/tools/
test_lightning_interop.py): LightningModule.load_from_checkpoint(OUT, strict=True) and
Trainer.fit(model, ckpt_path=OUT), which continues at the saved global_step and epoch with
the optimizer, StepLR and ModelCheckpoint state restored (give the Trainer a ModelCheckpoint
with the run's monitor/mode/trigger arguments and dirpath=DIR, see "callbacks" below).

Needs h5py, numpy and torch (Debian: python3-h5py, python3-torch). The output is written with
torch.save to OUT.ckpt.tmp, then renamed into place, so OUT.ckpt is never half written. It
holds only dicts, OrderedDicts, lists, tuples, strings, numbers, None and tensors (no custom
classes), which is what torch.load(OUT, weights_only=True) accepts in torch 2.x (torch 1.13's
weights-only unpickler cannot read Python floats: load with the default there).

What goes where (input layout: docs/checkpoint-format.md, checkpoint/format_writer.cpp):

  epoch, global_step            root attributes of the same names (epoch: the epoch in
                                progress, Lightning's current_epoch)
  pytorch-lightning_version     "2.2.5": the Lightning checkpoint layout written here (Lightning
                                parses it with packaging.version and migrates older layouts
                                from it); ddp-runtime's own version is ddp_runtime["version"]
  state_dict                    OrderedDict: every dataset under /model (parameters and
                                buffers), key = dataset name (with --prefix P: P + name, e.g.
                                "model." for a LightningModule holding the network as
                                self.model), dtype and shape as saved. float16/bfloat16 are
                                stored as uint16 bit patterns with a "dtype" attribute and come
                                back as torch.float16/bfloat16.
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
                                With a "step" scheduler: "initial_lr" (torch's schedulers
                                add it) and "lr" = the rate of the NEXT step (torch's
                                convention; ddp-runtime records the rate of the last step).
  lr_schedulers                 scheduler "none": []. "step": one torch StepLR state_dict
                                (step_size, gamma, base_lrs, last_epoch = global_step,
                                _step_count, _last_lr, ...): configure
                                StepLR(optimizer, step_size, gamma) with interval "step" in
                                Lightning. "cosine" (linear warm-up, then cosine to min_lr at
                                max_steps) has no torch.optim.lr_scheduler equivalent: [] and
                                a warning on stderr; a scheduler configured in Lightning then
                                starts from its initial state. Either way Lightning's restore
                                accepts the list (it zips it with the configured schedulers;
                                only a missing key is an error). The ddp-runtime scheduler
                                state is kept in ddp_runtime["scheduler"].
  hyper_parameters              /meta/hparams_json parsed, plus "config_yaml": the full
                                resolved config text (/meta/config_yaml)
  loops                         {"fit_loop", "validate_loop", "test_loop", "predict_loop"} in
                                the shape of Lightning 2.2's loop state_dicts, so that
                                Trainer.fit(ckpt_path=...) continues at global_step (the
                                optimizer-step counters) and epoch (epoch_progress):
                                mid-epoch (batch_in_epoch b > 0): epoch E started, not
                                processed, b batches processed; at an epoch boundary (b = 0):
                                E epochs completed, none of epoch E started.
  callbacks                     {ModelCheckpoint state_key: ModelCheckpoint.state_dict()}.
                                The key is Lightning's
                                "ModelCheckpoint{'monitor': .., 'mode': .., 'every_n_train_steps':
                                .., 'every_n_epochs': .., 'train_time_interval': ..}" built from
                                the checkpoint: section of /meta/config_yaml with Lightning's
                                trigger rules (the triggers are mutually exclusive there: a
                                config setting several is keyed by the first of
                                every_n_train_steps, train_time_interval, every_n_epochs, with a
                                note). Lightning restores the state when the Trainer has a
                                ModelCheckpoint with the same arguments and dirpath.
                                The content comes from /meta/callbacks_json: best_model_path,
                                best_model_score, current_score, kth_best_model_path,
                                kth_value, last_model_path and best_k_models when present; from
                                its best_k table otherwise (older files), as Lightning would
                                have computed them. Scores become float64 tensors ("inf",
                                "-inf", "nan" strings included); None stays None.
      paths                     Each basename F.h5 becomes <dirpath>/F.ckpt, where dirpath is
                                the real path of the OUTPUT file's directory (or --dirpath):
                                the names Lightning would use for these checkpoints converted
                                next to this one, in the directory a Lightning ModelCheckpoint
                                continuing the run would use. .ckpt, not .h5: Lightning may
                                load best_model_path (ckpt_path="best") and deletes the files
                                that drop out of the top k; it must never delete ddp-runtime's
                                .h5 files, and a missing .ckpt is simply skipped. Convert the
                                other top-k files into the same directory to make them loadable.
  ddp_runtime                   what Lightning has no key for: version, format_version,
                                world_size, data position, metrics, fingerprint, versions,
                                the raw callbacks_json and scheduler_json, and "param_order"
                                (below). Lightning ignores unknown keys.

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
# The Lightning checkpoint layout this script writes (a real release: Lightning parses the
# field with packaging.version.Version and applies its migrations for older layouts).
LIGHTNING_VERSION = "2.2.5"

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


def warn(message):
    print(f"{PROG}: warning: {message}", file=sys.stderr)


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


def convert(in_path, weights_only=False, prefix="", dirpath=None):
    """Returns the Lightning-style checkpoint dict for the ddp-runtime checkpoint `in_path`.
    `dirpath`: the directory ModelCheckpoint paths point into (see the module docstring);
    None: the current directory."""
    xxhash = _import_xxhash()
    f = open_checkpoint(in_path)
    try:
        import torch  # after the cheap checks: importing torch takes seconds

        return _convert_open(f, in_path, weights_only, xxhash, torch, prefix,
                             os.path.realpath(dirpath or "."))
    finally:
        f.close()


def _convert_open(f, in_path, weights_only, xxhash, torch, prefix, dirpath):
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
    state_dict = collections.OrderedDict((prefix + k, r.tensor("model/" + k)) for k in ordered)
    config = parse_config(config_yaml)

    ckpt = {
        "epoch": attrs["epoch"],
        "global_step": attrs["global_step"],
        "pytorch-lightning_version": LIGHTNING_VERSION,
        "state_dict": state_dict,
        "hyper_parameters": dict(hparams, config_yaml=config_yaml),
        "loops": loops_state(attrs, config),
    }
    if not weights_only:
        ckpt["callbacks"] = callbacks_state(callbacks, config, dirpath, torch)
        if not attrs["weights_only"]:
            schedulers, lr_override = lr_schedulers(sched_json, config, attrs["global_step"])
            ckpt["optimizer_states"] = [
                optimizer_state(r, optimizer, params, group_sizes, opt_json, torch,
                                lr_override)]
            ckpt["lr_schedulers"] = schedulers
    ckpt["ddp_runtime"] = {
        "version": attrs["ddp_runtime_version"],
        **{k: attrs[k] for k in ROOT_INT_ATTRS if k not in ("epoch", "global_step")},
        **{k: attrs[k] for k in ROOT_STR_ATTRS},
        "weights_only": bool(attrs["weights_only"]),
        "metrics": metrics,
        "param_order": order_source,
        "callbacks_json": callbacks,
        "scheduler": sched_json,
        "source": os.path.abspath(in_path),
    }
    if xxhash is None:
        note("python module 'xxhash' not found: dataset xxh3 checksums were not verified")
    return ckpt


# ---------------------------------------------------------------------------------------------
# Lightning state: loops, ModelCheckpoint, schedulers


def parse_config(config_yaml):
    """The resolved config (a dict of sections); {} when it cannot be parsed."""
    try:
        import yaml  # python3-yaml (a dependency of python3-torch)
    except ImportError:
        note("python module 'yaml' not found: Lightning loop/callback/scheduler state uses "
             "ddp-runtime's defaults")
        return {}
    try:
        config = yaml.safe_load(config_yaml)
    except yaml.YAMLError as e:
        note(f"/meta/config_yaml is not valid YAML ({e}); using defaults")
        return {}
    return config if isinstance(config, dict) else {}


def _section(config, name):
    value = config.get(name)
    return value if isinstance(value, dict) else {}


def _progress(count, started=None, processed=None, completed=None):
    """A Lightning _Progress-shaped dict: {"total": ..., "current": ...} of the same tracker."""
    tracker = {"ready": count}
    for key, value in (("started", started), ("processed", processed),
                       ("completed", completed)):
        if value is not None:
            tracker[key] = value
    return {"total": dict(tracker), "current": dict(tracker)}


def loops_state(attrs, config):
    """Lightning 2.2's Trainer loop state for the position the checkpoint was saved at.

    What Lightning reads back: the fit loop's global_step is
    epoch_loop.automatic_optimization.optim_progress.optimizer.step.total.completed, and
    current_epoch is epoch_progress.current.completed (loops/fit_loop.py,
    loops/training_epoch_loop.py). Batch counters cover the epoch in progress; totals over
    earlier epochs are not recorded by ddp-runtime and are approximated by step x
    accumulate_grad_batches (Lightning uses them only for progress display)."""
    step, epoch, batch = attrs["global_step"], attrs["epoch"], attrs["batch_in_epoch"]
    accumulate = max(1, int(_section(config, "trainer").get("accumulate_grad_batches", 1) or 1))
    steps_in_epoch = batch // accumulate
    if batch > 0:  # mid-epoch: epoch E started, b micro-batches done
        epoch_progress = _progress(epoch + 1, started=epoch + 1, processed=epoch,
                                   completed=epoch)
    else:  # at a boundary: E epochs done, epoch E not started
        epoch_progress = _progress(epoch, started=epoch, processed=epoch, completed=epoch)

    def two(total, current, started=False, processed=False, completed=True):
        def tracker(n):
            t = {"ready": n}
            if started:
                t["started"] = n
            if processed:
                t["processed"] = n
            if completed:
                t["completed"] = n
            return t
        return {"total": tracker(total), "current": tracker(current)}

    batch_progress = two(step * accumulate, batch, started=True, processed=True)
    batch_progress["is_last_batch"] = False
    empty_batches = two(0, 0, started=True, processed=True)
    empty_batches["is_last_batch"] = False
    fit_loop = {
        "state_dict": {},
        "epoch_loop.state_dict": {"_batches_that_stepped": step},
        "epoch_loop.batch_progress": batch_progress,
        "epoch_loop.scheduler_progress": two(step, steps_in_epoch),
        "epoch_loop.automatic_optimization.state_dict": {},
        "epoch_loop.automatic_optimization.optim_progress": {"optimizer": {
            "step": two(step, steps_in_epoch),
            "zero_grad": two(step, steps_in_epoch, started=True),
        }},
        "epoch_loop.manual_optimization.state_dict": {},
        "epoch_loop.manual_optimization.optim_step_progress": two(0, 0),
        "epoch_loop.val_loop.state_dict": {},
        "epoch_loop.val_loop.batch_progress": dict(empty_batches),
        "epoch_progress": epoch_progress,
    }
    def evaluation_loop():
        return {"state_dict": {}, "batch_progress": dict(empty_batches)}
    predict = {"state_dict": {}, "batch_progress": two(0, 0, started=True, processed=True)}
    return {"fit_loop": fit_loop, "validate_loop": evaluation_loop(),
            "test_loop": evaluation_loop(), "predict_loop": predict}


def model_checkpoint_state_key(checkpoint_config):
    """Lightning's ModelCheckpoint.state_key for the ModelCheckpoint a Lightning user would
    construct from ddp-runtime's checkpoint: section (callbacks/model_checkpoint.py
    __init_triggers and state_key)."""
    import datetime

    monitor = checkpoint_config.get("monitor") or None
    mode = checkpoint_config.get("mode") or "min"
    steps = int(checkpoint_config.get("every_n_train_steps") or 0)
    epochs = int(checkpoint_config.get("every_n_epochs") or 0)
    seconds = float(checkpoint_config.get("train_time_interval") or 0.0)
    # Lightning rejects more than one trigger; ddp-runtime's default every_n_epochs: 1 stays
    # set when another is given, so the first of these that is set is the one meant.
    interval = None
    if steps > 0:
        if epochs > 0 or seconds > 0:
            note(f"checkpoint.every_n_train_steps={steps} and other triggers are set; the "
                 "ModelCheckpoint state is keyed as Lightning's "
                 f"ModelCheckpoint(every_n_train_steps={steps})")
        epochs, seconds = 0, 0.0
    elif seconds > 0:
        if epochs > 0:
            note(f"checkpoint.train_time_interval={seconds:g} and every_n_epochs are set; the "
                 "ModelCheckpoint state is keyed by train_time_interval alone")
        epochs = 0
        interval = datetime.timedelta(seconds=seconds)
    elif epochs <= 0:
        epochs = 1  # Lightning: no trigger at all means every_n_epochs=1
    fields = {"monitor": monitor, "mode": mode, "every_n_train_steps": steps,
              "every_n_epochs": epochs, "train_time_interval": interval}
    return f"ModelCheckpoint{repr(fields)}"


def _score(value, torch):
    """A callbacks_json score (number, null, "inf"/"-inf"/"nan") as Lightning keeps it."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConversionError(f"callbacks_json: score {value!r} is not a number") from None
    return torch.tensor(number, dtype=torch.float64)


def callbacks_state(callbacks, config, dirpath, torch):
    """{state_key: ModelCheckpoint.state_dict()} from /meta/callbacks_json."""
    if not isinstance(callbacks, dict):
        callbacks = {}
    table = callbacks.get("model_checkpoint", callbacks)
    if not isinstance(table, dict):
        table = {}
    ckpt_config = _section(config, "checkpoint")
    monitor = table.get("monitor", ckpt_config.get("monitor")) or None
    mode = table.get("mode", ckpt_config.get("mode")) or "min"
    key_config = dict(ckpt_config, monitor=monitor, mode=mode)

    def path(name):
        if not name:
            return ""
        stem = name[:-3] if name.endswith(".h5") else name
        return os.path.join(dirpath, os.path.basename(stem) + ".ckpt")

    inf = float("inf") if mode == "min" else float("-inf")
    best_k = [e for e in table.get("best_k", []) if isinstance(e, dict) and e.get("file")]
    if "best_k_models" in table:
        pairs = [(str(p[0]), p[1]) for p in table["best_k_models"]
                 if isinstance(p, (list, tuple)) and len(p) == 2]
    elif monitor is not None:  # derive (older files): Lightning inserts in save order
        pairs = [(e["file"], e.get("score")) for e in
                 sorted(best_k, key=lambda e: e.get("step", 0))]
    else:
        pairs = []  # without a monitor Lightning keeps no table
    best_k_models = {path(name): _score(score, torch) for name, score in pairs}

    if "best_model_path" in table:
        best_path = path(table.get("best_model_path"))
        best_score = _score(table.get("best_model_score"), torch)
        current = _score(table.get("current_score"), torch)
        kth_path = path(table.get("kth_best_model_path"))
        kth_value = _score(table.get("kth_value", inf), torch)
        last_path = path(table.get("last_model_path"))
    else:
        newest = max(best_k, key=lambda e: e.get("step", 0)) if best_k else None
        if monitor is None:
            best_path = path(newest["file"]) if newest else ""
            best_score = current = None
        else:
            best_path = path(best_k[0]["file"]) if best_k else ""
            best_score = _score(best_k[0].get("score"), torch) if best_k else None
            current = _score(newest.get("score"), torch) if newest else None
        top_k = int(ckpt_config.get("save_top_k", 1) if ckpt_config.get("save_top_k")
                    is not None else 1)
        full = best_k_models and (top_k == -1 or len(best_k_models) == top_k)
        if monitor is not None and full:
            # Lightning: max (mode min) / min (mode max) over insertion order, first on ties
            pick = max if mode == "min" else min
            kth_path = pick(best_k_models, key=lambda p: best_k_models[p].item())
            kth_value = best_k_models[kth_path]
        else:
            kth_path, kth_value = "", torch.tensor(inf, dtype=torch.float64)
        last_path = path("last.h5") if ckpt_config.get("save_last", True) else ""
    if kth_value is None:
        kth_value = torch.tensor(inf, dtype=torch.float64)
    state = {
        "monitor": monitor,
        "best_model_score": best_score,
        "best_model_path": best_path,
        "current_score": current,
        "dirpath": dirpath,
        "best_k_models": best_k_models,
        "kth_best_model_path": kth_path,
        "kth_value": kth_value,
        "last_model_path": last_path,
    }
    return {model_checkpoint_state_key(key_config): state}


def optimizer_state(r, optimizer, params, group_sizes, opt_json, torch, lr_override=None):
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
        if lr_override is not None:  # (initial_lr, lr of the next step) for a torch scheduler
            group["initial_lr"], group["lr"] = lr_override
        group["params"] = list(range(start, start + size))
        group["param_names"] = params[start:start + size]
        param_groups.append(group)
        start += size
    return {"state": state, "param_groups": param_groups}


def lr_schedulers(sched_json, config, global_step):
    """(Lightning's lr_schedulers list, (initial_lr, next lr) for the param groups or None)."""
    name = sched_json.get("name", "none") if isinstance(sched_json, dict) else "none"
    if name == "none":
        return [], None
    scheduler = _section(config, "scheduler")
    base_lr = _section(config, "optimizer").get("lr")
    if name == "step" and base_lr is not None and scheduler.get("step_size"):
        # ddp-runtime: lr(step) = lr * gamma ** (step // step_size), set before each optimizer
        # step = torch's StepLR stepped once per optimizer step (Lightning interval "step").
        step_size, gamma = int(scheduler["step_size"]), float(scheduler.get("gamma", 0.1))
        next_lr = float(base_lr) * gamma ** (global_step // step_size)
        state = {"step_size": step_size, "gamma": gamma, "base_lrs": [float(base_lr)],
                 "last_epoch": global_step, "verbose": False, "_step_count": global_step + 1,
                 "_get_lr_called_within_step": False, "_last_lr": [next_lr]}
        return [state], (float(base_lr), next_lr)
    warn(f"scheduler '{name}' has no torch.optim.lr_scheduler equivalent that Lightning can "
         "restore (cosine: linear warm-up, then cosine to min_lr at max_steps); lr_schedulers "
         "is empty, so a scheduler configured in Lightning starts from its initial state "
         "(ddp-runtime's scheduler state is in ckpt['ddp_runtime']['scheduler'])")
    return [], None


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
    parser.add_argument("--prefix", default="",
                        help="prepended to every state_dict key, e.g. 'model.' for a "
                        "LightningModule that holds the network as self.model")
    parser.add_argument("--dirpath", default=None,
                        help="directory the ModelCheckpoint state's paths point into "
                        "(default: the output file's directory)")
    args = parser.parse_args(argv)
    try:
        dirpath = args.dirpath or os.path.dirname(os.path.abspath(args.output))
        ckpt = convert(args.input, weights_only=args.weights_only, prefix=args.prefix,
                       dirpath=dirpath)
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
