#!/usr/bin/python3
"""Interop test for tools/ckpt_to_lightning.py: real ddp-train checkpoints -> Lightning .ckpt.

    /usr/bin/python3 tests/tools/test_ckpt_to_lightning.py --ddp-train <build>/bin/ddp-train
        [--mpirun mpirun] [unittest options, e.g. -v or a test name]

Trains tiny MLP runs under mpirun (2 ranks with AdamW, 1 rank with SGD + momentum, 2 ranks
weights-only), converts the newest checkpoint of each, torch.load()s the result and checks it
against the HDF5 file read with h5py: tensors bit for bit, keys, step/epoch, optimizer state,
hyperparameters; that torch.nn and torch.optim accept the state (strict load into an MLP
built from nn.Linear layers in a ModuleList "layers", an optimizer step after loading the
optimizer state); float16/bfloat16/int scalars through a synthetic file; and one-line errors
for bad inputs. Running as root needs OMPI_ALLOW_RUN_AS_ROOT=1 and
OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 in the environment (ctest sets them).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

try:
    import h5py
    import numpy as np
    import torch
except ImportError as missing:  # ctest: SKIP_RETURN_CODE 77
    print(f"skipped: {missing} (needs python3-h5py, python3-numpy, python3-torch)")
    sys.exit(77)

HERE = os.path.dirname(os.path.abspath(__file__))
CONVERTER = os.path.join(HERE, "..", "..", "tools", "ckpt_to_lightning.py")
ARGS = argparse.Namespace(ddp_train=None, mpirun="mpirun")

try:
    import xxhash
except ImportError:
    xxhash = None


# ---------------------------------------------------------------------------------------------
# Helpers


def train(root, ranks, *settings):
    """Runs ddp-train under mpirun in `root`; returns the path of the newest checkpoint."""
    cmd = [ARGS.mpirun, "--oversubscribe", "-np", str(ranks), ARGS.ddp_train,
           "--set", f"trainer.default_root_dir={root}", "--set", "trainer.name=run",
           "--set", "trainer.progress_bar=off", "--set", "trainer.max_steps=6",
           "--set", "trainer.batch_size=16", "--set", "data.num_samples=1024",
           "--set", "data.val_samples=64", "--set", "model.hidden_sizes=[32,24]",
           "--set", "checkpoint.every_n_train_steps=3"]
    for s in settings:
        cmd += ["--set", s]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=root, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=180)
    if proc.returncode != 0:
        raise RuntimeError(f"ddp-train failed ({proc.returncode}):\n{' '.join(cmd)}\n"
                           f"{proc.stdout[-4000:]}")
    ckpt_dir = os.path.join(root, "run", "checkpoints")
    with open(os.path.join(ckpt_dir, "latest.json"), encoding="utf-8") as f:
        return os.path.join(ckpt_dir, json.load(f)["file"])


def convert(src, dst, *flags):
    return subprocess.run([sys.executable, CONVERTER, src, dst, *flags],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=120)


def load(path):
    # torch 1.13's weights_only unpickler cannot read floats; the default loader is fine here.
    return torch.load(path, map_location="cpu")


def tensor_bytes(t):
    t = t.detach().contiguous().reshape(-1)
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.view(torch.int16)
    return t.numpy().tobytes()


TORCH_DTYPE = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
               "bfloat16": torch.bfloat16, "int32": torch.int32, "int64": torch.int64,
               "uint8": torch.uint8}


def attr_str(value):
    return value.decode() if isinstance(value, bytes) else str(value)


class MlpFromStateDict(torch.nn.Module):
    """A plain torch MLP with the built-in mlp's naming: layers.<i>.{weight,bias}."""

    def __init__(self, state_dict):
        super().__init__()
        n = len({k.split(".")[1] for k in state_dict})
        self.layers = torch.nn.ModuleList(
            torch.nn.Linear(state_dict[f"layers.{i}.weight"].shape[1],
                            state_dict[f"layers.{i}.weight"].shape[0]) for i in range(n))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i + 1 < len(self.layers):
                x = torch.relu(x)
        return x


class ConvertedCheckpoint:
    """Mixin: a converted real checkpoint (self.h5, self.ckpt) and the checks all runs share."""

    h5 = None
    ckpt = None
    stderr = ""

    @classmethod
    def make(cls, ranks, *settings, flags=()):
        cls.tmp = tempfile.mkdtemp(prefix="ckpt_to_lightning_")
        cls.addClassCleanup(shutil.rmtree, cls.tmp, ignore_errors=True)  # even if set-up fails
        cls.h5 = train(cls.tmp, ranks, *settings)
        out = os.path.join(cls.tmp, "out.ckpt")
        proc = convert(cls.h5, out, *flags)
        if proc.returncode != 0:
            raise RuntimeError(f"conversion failed ({proc.returncode}): {proc.stderr}")
        cls.stderr = proc.stderr
        cls.ckpt = load(out)

    def assert_same_as_dataset(self, tensor, dset, what):
        dtype = attr_str(dset.attrs["dtype"])
        self.assertEqual(tensor.dtype, TORCH_DTYPE[dtype], what)
        self.assertEqual(tuple(tensor.shape), dset.shape, what)
        self.assertEqual(tensor_bytes(tensor), np.ascontiguousarray(dset[()]).tobytes(), what)

    def test_state_dict_equals_model_datasets(self):
        with h5py.File(self.h5, "r") as f:
            self.assertEqual(set(self.ckpt["state_dict"]), set(f["model"].keys()))
            for key, tensor in self.ckpt["state_dict"].items():
                self.assert_same_as_dataset(tensor, f["model"][key], key)

    def test_step_epoch_and_version(self):
        with h5py.File(self.h5, "r") as f:
            self.assertEqual(self.ckpt["global_step"], int(f.attrs["global_step"]))
            self.assertEqual(self.ckpt["epoch"], int(f.attrs["epoch"]))
            # a real Lightning release (Lightning parses it); ddp-runtime's own under ddp_runtime
            self.assertEqual(self.ckpt["pytorch-lightning_version"], "2.2.5")
            self.assertEqual(self.ckpt["ddp_runtime"]["version"],
                             attr_str(f.attrs["ddp_runtime_version"]))
            self.assertEqual(self.ckpt["ddp_runtime"]["world_size"], int(f.attrs["world_size"]))
        self.assertGreater(self.ckpt["global_step"], 0)

    def test_hyper_parameters(self):
        with h5py.File(self.h5, "r") as f:
            hparams = json.loads(f["meta/hparams_json"][()].decode())
            config = f["meta/config_yaml"][()].decode()
        hp = dict(self.ckpt["hyper_parameters"])
        self.assertEqual(hp.pop("config_yaml"), config)
        self.assertEqual(hp, hparams)
        self.assertEqual(hp["name"], "mlp")
        self.assertEqual(hp["hidden_sizes"], [32, 24])

    def test_torch_mlp_loads_state_dict_strictly(self):
        model = MlpFromStateDict(self.ckpt["state_dict"])
        result = model.load_state_dict(self.ckpt["state_dict"], strict=True)
        self.assertEqual((result.missing_keys, result.unexpected_keys), ([], []))
        self.assertEqual(list(self.ckpt["state_dict"]), list(model.state_dict()))
        out = model(torch.zeros(3, model.layers[0].in_features))
        self.assertEqual(tuple(out.shape), (3, model.layers[-1].out_features))

    def test_checksum_note_or_verified(self):
        if xxhash is None:
            self.assertIn("xxhash", self.stderr)
        else:
            self.assertNotIn("not verified", self.stderr)


class FullStateChecks(ConvertedCheckpoint):
    """Checks for checkpoints that carry optimizer state."""

    optimizer_fields = ()

    def test_optimizer_state_equals_datasets(self):
        states = self.ckpt["optimizer_states"]
        self.assertEqual(len(states), 1)
        state, groups = states[0]["state"], states[0]["param_groups"]
        names = [n for g in groups for n in g["param_names"]]
        self.assertEqual([i for g in groups for i in g["params"]], list(range(len(names))))
        with h5py.File(self.h5, "r") as f:
            saved = set(f["optimizer"].keys())
            self.assertEqual({names[i] for i in state}, saved)
            for index, fields in state.items():
                group = f["optimizer"][names[index]]
                self.assertEqual(set(fields), set(group.keys()), names[index])
                self.assertEqual(set(fields), set(self.optimizer_fields))
                for field, tensor in fields.items():
                    if field == "step":  # torch keeps step as a float32 scalar tensor
                        self.assertEqual(tensor.dtype, torch.float32)
                        self.assertEqual(tensor.item(), int(group["step"][()]))
                        self.assertEqual(tensor.item(), self.ckpt["global_step"])
                    else:
                        self.assert_same_as_dataset(tensor, group[field], f"{index}/{field}")
                        self.assertEqual(tensor.shape,
                                         self.ckpt["state_dict"][names[index]].shape)

    def test_param_groups_carry_hyperparameters(self):
        with h5py.File(self.h5, "r") as f:
            saved = json.loads(f["meta/optimizer_json"][()].decode())
        groups = self.ckpt["optimizer_states"][0]["param_groups"]
        self.assertEqual(len(groups), len(saved["param_groups"]))
        for group, want in zip(groups, saved["param_groups"]):
            self.assertEqual(len(group["params"]), want["num_params"])
            for key, value in want.items():
                if key == "num_params":
                    continue
                self.assertEqual(group[key], tuple(value) if key == "betas" else value, key)

    def test_torch_optimizer_accepts_state(self):
        model = MlpFromStateDict(self.ckpt["state_dict"])
        model.load_state_dict(self.ckpt["state_dict"], strict=True)
        opt = self.make_torch_optimizer(model.parameters())
        saved = self.ckpt["optimizer_states"][0]
        names = [n for g in saved["param_groups"] for n in g["param_names"]]
        self.assertEqual(names, [n for n, _ in model.named_parameters()],
                         f"param order ({self.ckpt['ddp_runtime']['param_order']})")
        opt.load_state_dict(saved)
        for name, p in model.named_parameters():
            for field, value in opt.state[p].items():
                if field != "step":
                    self.assertEqual(value.shape, p.shape, f"{name}/{field}")
        # One real step on the loaded state: fails on any shape mix-up.
        loss = model(torch.randn(4, model.layers[0].in_features)).square().mean()
        loss.backward()
        opt.step()

    def test_callbacks_and_schedulers(self):
        with h5py.File(self.h5, "r") as f:
            callbacks = json.loads(f["meta/callbacks_json"][()].decode())
            scheduler = json.loads(f["meta/scheduler_json"][()].decode())
        self.assertEqual(self.ckpt["ddp_runtime"]["callbacks_json"], callbacks)
        (key, state), = self.ckpt["callbacks"].items()  # Lightning's ModelCheckpoint.state_key
        self.assertTrue(key.startswith("ModelCheckpoint{'monitor': "), key)
        best = [os.path.basename(p) for p in state["best_k_models"]]
        self.assertEqual(sorted(best), sorted(e["file"][:-3] + ".ckpt"
                                              for e in callbacks.get("best_k", [])
                                              if callbacks.get("monitor")))
        self.assertEqual(self.ckpt["ddp_runtime"]["scheduler"], scheduler)
        if scheduler["name"] == "step":  # torch StepLR's state_dict
            (converted,) = self.ckpt["lr_schedulers"]
            self.assertEqual(converted["last_epoch"], scheduler["step"])
        else:  # none; cosine has no torch equivalent: omitted with a warning
            self.assertEqual(self.ckpt["lr_schedulers"], [])
            if scheduler["name"] != "none":
                self.assertIn("no torch.optim.lr_scheduler equivalent", self.stderr)

    def test_weights_only_flag(self):
        out = os.path.join(self.tmp, "weights.ckpt")
        proc = convert(self.h5, out, "--weights-only")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        c = load(out)
        for key in ("optimizer_states", "lr_schedulers", "callbacks"):
            self.assertNotIn(key, c)
        self.assertEqual(list(c["state_dict"]), list(self.ckpt["state_dict"]))
        for key, t in c["state_dict"].items():
            self.assertTrue(torch.equal(t, self.ckpt["state_dict"][key]), key)
        self.assertEqual(c["global_step"], self.ckpt["global_step"])
        self.assertIn("hyper_parameters", c)


class AdamWTwoRanksTest(FullStateChecks, unittest.TestCase):
    optimizer_fields = ("step", "exp_avg", "exp_avg_sq")

    @classmethod
    def setUpClass(cls):
        cls.make(2, "optimizer.name=adamw", "optimizer.weight_decay=0.05",
                 "scheduler.name=cosine", "scheduler.warmup_steps=2")

    @staticmethod
    def make_torch_optimizer(params):
        return torch.optim.AdamW(params, lr=1.0)


class SgdOneRankTest(FullStateChecks, unittest.TestCase):
    optimizer_fields = ("momentum_buffer",)

    @classmethod
    def setUpClass(cls):
        cls.make(1, "optimizer.name=sgd", "optimizer.momentum=0.9")

    @staticmethod
    def make_torch_optimizer(params):
        return torch.optim.SGD(params, lr=1.0, momentum=0.5)

    def test_parameter_order_comes_from_the_optimizer_json(self):
        # ddp-train records the optimizer's parameter names (model order) in optimizer_json.
        self.assertEqual(self.ckpt["ddp_runtime"]["param_order"], "optimizer_json")


class WeightsOnlyCheckpointTest(ConvertedCheckpoint, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.make(2, "checkpoint.save_weights_only=true")

    def test_no_optimizer_state(self):
        with h5py.File(self.h5, "r") as f:
            self.assertEqual(int(f.attrs["weights_only"]), 1)
        self.assertTrue(self.ckpt["ddp_runtime"]["weights_only"])
        self.assertNotIn("optimizer_states", self.ckpt)
        self.assertNotIn("lr_schedulers", self.ckpt)


# ---------------------------------------------------------------------------------------------
# Synthetic files: dtypes the CPU trainer never writes, and bad inputs


def write_synthetic(path, tensors, format_version=1, optimizer_json=None, world_size=1,
                    weights_only=True, callbacks_json="{}", config_yaml="model:\n  name: test\n"):
    """A minimal file in the ddp-runtime layout, from {path: (dtype name, numpy array)}."""
    def checksum(raw):
        return np.uint64(xxhash.xxh3_64_intdigest(raw) if xxhash else 0)

    with h5py.File(path, "w") as f:
        for name in ("format_version", "global_step", "epoch", "world_size", "batch_in_epoch",
                     "samples_in_epoch", "batch_size", "weights_only"):
            f.attrs[name] = np.int64({"format_version": format_version, "global_step": 7,
                                      "epoch": 2, "world_size": world_size,
                                      "weights_only": int(weights_only)}.get(name, 0))
        for name in ("ddp_runtime_version", "torch_version", "hdf5_version", "created_utc",
                     "fingerprint"):
            f.attrs[name] = "test"
        texts = {"config_yaml": config_yaml, "hparams_json": '{"name": "test"}',
                 "optimizer_json": optimizer_json or '{"type": "sgd", "param_groups": []}',
                 "scheduler_json": '{"name": "none", "step": 7, "lr": 0.1}',
                 "callbacks_json": callbacks_json}
        for name, text in texts.items():
            d = f.create_dataset("meta/" + name, data=np.bytes_(text.encode()))
            d.attrs["dtype"] = "string"
            d.attrs["xxh3"] = checksum(text.encode())
        f.create_group("metrics")
        for index, (name, (dtype, array)) in enumerate(tensors.items()):
            d = f.create_dataset(name, data=array)
            d.attrs["dtype"] = dtype
            d.attrs["index"] = np.int64(index)
            d.attrs["xxh3"] = checksum(np.ascontiguousarray(array).tobytes())


class SyntheticFileTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="ckpt_to_lightning_")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def test_half_types_and_scalars_keep_dtype_shape_and_bits(self):
        half = torch.tensor([[1.5, -2.25, 65504.0], [0.0, -0.0, 6.1e-5]], dtype=torch.float16)
        bf16 = torch.tensor([3.140625, -1e30, 1e-30, float("inf")], dtype=torch.bfloat16)
        expected = {
            "model/half": half,
            "model/bf16": bf16,
            "model/bf16_scalar": torch.tensor(-0.5, dtype=torch.bfloat16),
            "model/f64": torch.tensor([1.0 / 3.0], dtype=torch.float64),
            "model/steps": torch.tensor(123456789012, dtype=torch.int64),
            "model/i32": torch.arange(6, dtype=torch.int32).reshape(1, 2, 3),
            "model/u8": torch.tensor([0, 255], dtype=torch.uint8),
            "model/empty": torch.zeros(0, 4),
        }
        tensors = {}
        for name, t in expected.items():
            dtype = [k for k, v in TORCH_DTYPE.items() if v == t.dtype][0]
            if dtype in ("float16", "bfloat16"):  # stored as uint16 bit patterns
                array = t.view(torch.int16).reshape(t.shape).numpy().view(np.uint16)
            else:
                array = t.numpy()
            self.assertEqual(array.shape, tuple(t.shape))
            tensors[name] = (dtype, array)
        src, out = os.path.join(self.tmp, "s.h5"), os.path.join(self.tmp, "s.ckpt")
        write_synthetic(src, tensors)
        proc = convert(src, out)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        c = load(out)
        self.assertEqual(set(c["state_dict"]), {k[len("model/"):] for k in expected})
        for name, want in expected.items():
            got = c["state_dict"][name[len("model/"):]]
            self.assertEqual(got.dtype, want.dtype, name)
            self.assertEqual(got.shape, want.shape, name)
            self.assertEqual(tensor_bytes(got), tensor_bytes(want), name)
        self.assertEqual((c["global_step"], c["epoch"]), (7, 2))
        self.assertNotIn("optimizer_states", c)  # the file says weights_only=1

    def test_parameter_names_recorded_in_optimizer_json_define_the_indices(self):
        def vec(n):
            return ("float32", np.arange(n, dtype=np.float32))

        tensors = {"model/z.weight": vec(2), "model/a.weight": vec(3),
                   "optimizer/z.weight/momentum_buffer": vec(2),
                   "optimizer/a.weight/momentum_buffer": vec(3)}
        opt = {"type": "sgd", "param_groups": [{"lr": 0.1, "momentum": 0.9, "num_params": 2,
                                                "param_names": ["z.weight", "a.weight"]}]}
        src, out = os.path.join(self.tmp, "n.h5"), os.path.join(self.tmp, "n.ckpt")
        write_synthetic(src, tensors, optimizer_json=json.dumps(opt), world_size=2,
                        weights_only=False)
        proc = convert(src, out)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        c = load(out)
        self.assertEqual(c["ddp_runtime"]["param_order"], "optimizer_json")
        (group,) = c["optimizer_states"][0]["param_groups"]
        self.assertEqual(group["param_names"], ["z.weight", "a.weight"])
        self.assertEqual(group["params"], [0, 1])
        self.assertNotIn("num_params", group)
        state = c["optimizer_states"][0]["state"]
        self.assertEqual([state[i]["momentum_buffer"].shape[0] for i in (0, 1)], [2, 3])
        self.assertEqual(list(c["state_dict"]), ["z.weight", "a.weight"])


class ModelCheckpointStateTest(unittest.TestCase):
    """callbacks: Lightning's state_key and ModelCheckpoint.state_dict() from callbacks_json."""

    CONFIG = ("checkpoint:\n  monitor: val_loss\n  mode: min\n  save_top_k: 2\n"
              "  every_n_train_steps: 4\n  every_n_epochs: 1\n  train_time_interval: 0.0\n"
              "  save_last: true\n")
    KEY = ("ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min', 'every_n_train_steps': 4, "
           "'every_n_epochs': 0, 'train_time_interval': None}")

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="ckpt_to_lightning_")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def convert_with(self, callbacks):
        src = os.path.join(self.tmp, "c.h5")
        out = os.path.join(self.tmp, "out", "c.ckpt")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        write_synthetic(src, {"model/w": ("float32", np.ones(2, np.float32))},
                        callbacks_json=json.dumps(callbacks), config_yaml=self.CONFIG)
        proc = convert(src, out)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        (key, state), = load(out)["callbacks"].items()
        self.assertEqual(key, self.KEY)  # every_n_epochs: 1 dropped: Lightning's exclusive triggers
        self.assertEqual(state["dirpath"], os.path.realpath(os.path.dirname(out)))
        return state, os.path.realpath(os.path.dirname(out))

    def test_older_file_derives_the_state_from_best_k(self):
        state, d = self.convert_with({"monitor": "val_loss", "mode": "min", "best_k": [
            {"file": "step=8.h5", "score": 0.5, "step": 8},
            {"file": "step=4.h5", "score": "inf", "step": 4}]})
        self.assertEqual(list(state["best_k_models"]),  # insertion (save) order
                         [os.path.join(d, "step=4.ckpt"), os.path.join(d, "step=8.ckpt")])
        self.assertEqual(state["best_model_path"], os.path.join(d, "step=8.ckpt"))
        self.assertEqual(float(state["best_model_score"]), 0.5)
        self.assertEqual(state["kth_best_model_path"], os.path.join(d, "step=4.ckpt"))
        self.assertEqual(float(state["kth_value"]), float("inf"))
        self.assertEqual(float(state["current_score"]), 0.5)  # the newest entry's
        self.assertEqual(state["last_model_path"], os.path.join(d, "last.ckpt"))

    def test_newer_file_state_is_taken_as_recorded(self):
        state, d = self.convert_with({
            "monitor": "val_loss", "mode": "min", "best_k": [],
            "best_k_models": [["a.h5", "nan"], ["b.h5", 1.5]],
            "best_model_path": "b.h5", "best_model_score": 1.5, "current_score": None,
            "kth_best_model_path": "", "kth_value": "-inf", "last_model_path": ""})
        self.assertEqual(list(state["best_k_models"]),
                         [os.path.join(d, "a.ckpt"), os.path.join(d, "b.ckpt")])
        self.assertTrue(torch.isnan(state["best_k_models"][os.path.join(d, "a.ckpt")]))
        self.assertEqual(state["best_model_path"], os.path.join(d, "b.ckpt"))
        self.assertIsNone(state["current_score"])
        self.assertEqual((state["kth_best_model_path"], float(state["kth_value"])),
                         ("", float("-inf")))
        self.assertEqual(state["last_model_path"], "")


class BadInputTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="ckpt_to_lightning_")
        cls.good = os.path.join(cls.tmp, "good.h5")
        write_synthetic(cls.good, {"model/w": ("float32", np.ones((2, 2), np.float32))})

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def assert_fails(self, src, *words, out=None):
        out = out or os.path.join(self.tmp, "out.ckpt")
        proc = convert(src, out)
        self.assertEqual(proc.returncode, 1, proc.stderr)
        errors = [l for l in proc.stderr.splitlines() if l.startswith("ckpt_to_lightning: error:")]
        self.assertEqual(len(errors), 1, proc.stderr)
        self.assertNotIn("Traceback", proc.stderr)
        for word in words:
            self.assertIn(word, errors[0])
        self.assertFalse(os.path.exists(out))
        self.assertFalse(os.path.exists(out + ".tmp"))
        return errors[0]

    def test_good_synthetic_file_converts(self):  # the baseline the others break
        out = os.path.join(self.tmp, "good.ckpt")
        self.assertEqual(convert(self.good, out).returncode, 0)
        os.remove(out)

    def test_missing_file(self):
        self.assert_fails(os.path.join(self.tmp, "nope.h5"), "does not exist")

    def test_directory(self):
        self.assert_fails(self.tmp, "directory")

    def test_text_file(self):
        path = os.path.join(self.tmp, "notes.txt")
        with open(path, "w") as f:
            f.write("not a checkpoint\n")
        self.assert_fails(path, "not an HDF5 file")

    def test_hdf5_file_that_is_not_ours(self):
        path = os.path.join(self.tmp, "other.h5")
        with h5py.File(path, "w") as f:
            f.create_dataset("weights", data=np.zeros(3))
            f.attrs["author"] = "someone else"
        self.assert_fails(path, "not a ddp-runtime checkpoint", "format_version")

    def test_newer_format_version(self):
        path = os.path.join(self.tmp, "future.h5")
        write_synthetic(path, {"model/w": ("float32", np.ones(2, np.float32))},
                        format_version=99)
        self.assert_fails(path, "99", "newer")

    def test_truncated_file(self):
        path = os.path.join(self.tmp, "truncated.h5")
        shutil.copy(self.good, path)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
        self.assert_fails(path, "truncated.h5")

    def test_sidecar_size_mismatch(self):
        path = os.path.join(self.tmp, "sidecar.h5")
        shutil.copy(self.good, path)
        with open(path + ".sum", "w") as f:
            json.dump({"algorithm": "xxh3_64", "bytes": 5, "checksum": "0"}, f)
        self.assert_fails(path, "sidecar")

    def test_sidecar_checksum_mismatch(self):
        # The real checkpoints above convert with their sidecars, so their checksums (written
        # by C++) agree with this tool's; here one that does not, by either algorithm.
        if xxhash is None:
            self.skipTest("python3-xxhash is not installed: whole-file checksums not checked")
        for algorithm in ("xxh3_64_b64k", "xxh3_64"):
            path = os.path.join(self.tmp, f"sum-{algorithm}.h5")
            shutil.copy(self.good, path)
            with open(path + ".sum", "w") as f:
                json.dump({"algorithm": algorithm, "bytes": os.path.getsize(path),
                           "checksum": "0123456789abcdef"}, f)
            self.assert_fails(path, "does not match the sidecar", algorithm)

    def test_corrupt_dataset(self):
        path = os.path.join(self.tmp, "flipped.h5")
        shutil.copy(self.good, path)
        with h5py.File(path, "r+") as f:
            f["model/w"][0, 0] = 2.0  # the xxh3 attribute still describes 1.0
        if xxhash is None:
            proc = convert(path, os.path.join(self.tmp, "flipped.ckpt"))
            self.assertEqual(proc.returncode, 0, proc.stderr)
            self.assertIn("not verified", proc.stderr)
        else:
            self.assert_fails(path, "/model/w", "checksum")

    def test_unwritable_output(self):
        self.assert_fails(self.good, "cannot write",
                          out=os.path.join(self.tmp, "no", "such", "dir", "x.ckpt"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ddp-train", required=True, help="path of the ddp-train executable")
    parser.add_argument("--mpirun", default=shutil.which("mpirun") or "mpirun")
    args, rest = parser.parse_known_args()
    ARGS.ddp_train, ARGS.mpirun = os.path.abspath(args.ddp_train), args.mpirun
    program = unittest.main(argv=[sys.argv[0]] + rest, exit=False)
    sys.exit(0 if program.result.wasSuccessful() else 1)


if __name__ == "__main__":
    main()
