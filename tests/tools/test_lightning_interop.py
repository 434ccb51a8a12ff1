#!/usr/bin/env python3
"""Export to and import from REAL PyTorch Lightning (tools/ckpt_to_lightning.py,
tools/lightning_to_ckpt.py).

    <build>/lightning-venv/bin/python tests/tools/test_lightning_interop.py \\
        --ddp-train <build>/bin/ddp-train --ddp-checkpoint <build>/bin/ddp-checkpoint \\
        [--mpirun mpirun] [unittest options]

The venv comes from tools/lightning_venv.sh (Lightning 2.2.5 over Debian's torch 1.13). Without
Lightning the script exits 77 (ctest: skipped), except under CI=true, where that is a failure.

Export: a 2-rank ddp-train run (mlp, Adam, StepLR-equivalent "step" scheduler, top-2 by
val_loss, every epoch) is converted; LightningModule.load_from_checkpoint(strict=True) gives
ddp-runtime's predictions (the same torch MLP on the weights read with h5py; there is no C++
prediction path), and Trainer.fit(ckpt_path=...) with max_steps = saved + 5 runs exactly 5
steps from the saved global_step and epoch with the optimizer, scheduler and ModelCheckpoint
state restored, without Lightning's warnings about missing callbacks or a changed dirpath.
Import: an MLP trained by Lightning (saved by its ModelCheckpoint) is imported with --like and
fine-tuned by ddp-train, weights-only (lr 1e-30: the weights come through unchanged) and full (the
step and optimizer step counters continue); h5 -> ckpt -> h5 is bitwise; a mismatched
state_dict gives one report and exit 2.

Shim (this harness only): torch 1.13's torch.distributed._shard does not import under Python
3.11 (a dataclass with a mutable default), and Lightning (with torch < 2.1) imports it in
LightningModule.__init__ to register ShardedTensor hooks; the hook registration is disabled.
"""

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest
import warnings

try:
    import h5py
    import numpy as np
    import torch
    import yaml
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint
except ImportError as missing:
    if os.environ.get("CI") == "true":
        print(f"FAIL: {missing}: CI=true needs real Lightning (bash tools/lightning_venv.sh "
              f"build/lightning-venv); python is {sys.executable}")
        sys.exit(1)
    print(f"skipped: {missing} (run: bash tools/lightning_venv.sh build/lightning-venv)")
    sys.exit(77)

# The shim described in the docstring.
pl.LightningModule._register_sharded_tensor_state_dict_hooks_if_available = lambda self: None

HERE = os.path.dirname(os.path.abspath(__file__))
TOOLS = os.path.join(HERE, "..", "..", "tools")
EXPORT = os.path.join(TOOLS, "ckpt_to_lightning.py")
IMPORT = os.path.join(TOOLS, "lightning_to_ckpt.py")
ARGS = argparse.Namespace(ddp_train=None, ddp_checkpoint=None, mpirun="mpirun")

FEATURES, CLASSES, HIDDEN = 16, 4, [32, 24]
STEPS_PER_EPOCH = 8  # 256 samples / (16 per rank * 2 ranks)
# One config for every ddp-train run here; each run adds its own max_steps/resume.
RUN = ["trainer.progress_bar=off", "trainer.max_epochs=-1", "trainer.batch_size=16",
       "trainer.gradient_clip_val=0", "data.num_samples=256", "data.val_samples=64",
       f"data.num_features={FEATURES}", f"data.num_classes={CLASSES}",
       f"model.hidden_sizes=[{','.join(map(str, HIDDEN))}]", "optimizer.name=adam",
       "optimizer.lr=0.01", "optimizer.weight_decay=0", "scheduler.name=step",
       "scheduler.step_size=4", "scheduler.gamma=0.5", "checkpoint.monitor=val_loss",
       "checkpoint.mode=min", "checkpoint.save_top_k=2", "checkpoint.every_n_epochs=1",
       "checkpoint.save_last=true", "checkpoint.keep_last_n=-1"]


def run(cmd, timeout=120):
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=timeout, env=dict(os.environ, OMP_NUM_THREADS="1"))


def ddp_train(root, name, *settings, ranks=2):
    """Runs ddp-train; returns its checkpoint directory."""
    cmd = [ARGS.mpirun, "--oversubscribe", "-np", str(ranks), ARGS.ddp_train]
    for s in RUN + [f"trainer.default_root_dir={root}", f"trainer.name={name}", *settings]:
        cmd += ["--set", s]
    proc = run(cmd, timeout=180)
    if proc.returncode != 0:
        raise AssertionError(f"ddp-train failed ({proc.returncode}): {' '.join(cmd)}\n"
                             f"{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return os.path.join(root, name, "checkpoints")


def latest(ckpt_dir):
    with open(os.path.join(ckpt_dir, "latest.json"), encoding="utf-8") as f:
        return os.path.join(ckpt_dir, json.load(f)["file"])


def tool(script, *args):
    return run([sys.executable, script, *args])


def h5_tensors(path, prefix=("model/", "optimizer/")):
    """{dataset path: (dtype attribute, shape, raw bytes)} of every tensor dataset."""
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and name.startswith(prefix):
                dtype = obj.attrs["dtype"]
                out[name] = (dtype.decode() if isinstance(dtype, bytes) else str(dtype),
                             obj.shape, np.ascontiguousarray(obj[()]).tobytes())
        f.visititems(visit)
    return out


def root_attrs(path):
    with h5py.File(path, "r") as f:
        return {k: (int(v) if isinstance(v, (np.integer, int)) else v) for k, v in f.attrs.items()}


class TorchMlp(torch.nn.Module):
    """ddp-runtime's built-in mlp (runtime/models/mlp.cpp): Linear + ReLU per hidden size,
    then Linear, in a ModuleList "layers"."""

    def __init__(self, sizes):
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i + 1 < len(self.layers):
                x = torch.relu(x)
        return x


class LitMlp(pl.LightningModule):
    """The network as self.model (keys "model.layers.*"): exported with --prefix model., and
    its own checkpoints imported with the automatic "model." strip. Built from ddp-runtime's
    hparams (hidden_sizes, data_info) by load_from_checkpoint."""

    def __init__(self, hidden_sizes, data_info, lr=0.01, step_size=4, gamma=0.5):
        super().__init__()
        self.save_hyperparameters()
        sizes = [int(np.prod(data_info["input_shape"]))] + list(hidden_sizes) + [
            int(data_info["num_outputs"])]
        self.model = TorchMlp(sizes)
        self.steps_run = 0
        self.at_start = None

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        self.steps_run += 1
        x, y = batch
        return torch.nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=0)
        sched = torch.optim.lr_scheduler.StepLR(opt, self.hparams.step_size, self.hparams.gamma)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_train_start(self):  # after Lightning restored everything from ckpt_path
        opt = self.trainer.optimizers[0]
        first = next(iter(self.parameters()))
        mc = self.trainer.checkpoint_callback
        self.at_start = {
            "global_step": self.trainer.global_step, "epoch": self.trainer.current_epoch,
            "exp_avg": opt.state[first]["exp_avg"].clone() if first in opt.state else None,
            "opt_step": float(opt.state[first]["step"]) if first in opt.state else None,
            "lr": opt.param_groups[0]["lr"],
            "sched_last_epoch": self.trainer.lr_scheduler_configs[0].scheduler.last_epoch,
            "best_k_models": {k: float(v) for k, v in mc.best_k_models.items()},
            "best_model_path": mc.best_model_path, "kth_best_model_path": mc.kth_best_model_path,
            "last_model_path": mc.last_model_path,
        }


def loaders(seed, n=512):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, FEATURES, generator=g)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    ds = torch.utils.data.TensorDataset(x, y)
    return (torch.utils.data.DataLoader(ds, batch_size=16),
            torch.utils.data.DataLoader(torch.utils.data.Subset(ds, range(64)), batch_size=32))


def trainer(max_steps, callbacks, **kw):
    return pl.Trainer(max_steps=max_steps, max_epochs=-1, callbacks=callbacks, logger=False,
                      enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, accelerator="cpu", devices=1, **kw)


class LightningInterop(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="lightning_interop_")
        cls.addClassCleanup(shutil.rmtree, cls.tmp, ignore_errors=True)
        # 2 epochs: end-of-epoch saves at steps 8 and 16 (+ last.h5).
        cls.ddp_dir = ddp_train(cls.tmp, "ddp", f"trainer.max_steps={2 * STEPS_PER_EPOCH}")
        cls.h5 = latest(cls.ddp_dir)
        cls.out_dir = os.path.join(cls.tmp, "lightning")
        os.makedirs(cls.out_dir)
        cls.ckpt = os.path.join(cls.out_dir, "exported.ckpt")
        proc = tool(EXPORT, cls.h5, cls.ckpt, "--prefix", "model.")
        if proc.returncode != 0:
            raise AssertionError(f"export failed: {proc.stderr}")
        cls.export_stderr = proc.stderr
        cls.saved = root_attrs(cls.h5)
        with h5py.File(cls.h5, "r") as f:
            cls.callbacks_json = json.loads(bytes(f["meta/callbacks_json"][()]).decode())
            cls.hparams = json.loads(bytes(f["meta/hparams_json"][()]).decode())
            cls.config = yaml.safe_load(bytes(f["meta/config_yaml"][()]).decode())

    # -- export ---------------------------------------------------------------------------

    def test_export_load_from_checkpoint_strict_gives_ddp_predictions(self):
        with warnings.catch_warnings():
            warnings.simplefilter("error", category=UserWarning)  # any Lightning complaint
            model = LitMlp.load_from_checkpoint(self.ckpt, strict=True, map_location="cpu")
        reference = TorchMlp([FEATURES] + HIDDEN + [CLASSES])
        with h5py.File(self.h5, "r") as f:
            reference.load_state_dict({k: torch.from_numpy(f["model"][k][()])
                                       for k in f["model"]}, strict=True)
        x = torch.randn(64, FEATURES, generator=torch.Generator().manual_seed(3))
        model.eval()
        with torch.no_grad():
            diff = (model(x) - reference(x)).abs().max().item()
        self.assertLessEqual(diff, 1e-6)
        self.assertEqual(model.hparams.hidden_sizes, HIDDEN)

    def test_export_fit_resumes_for_exactly_five_steps_with_state_restored(self):
        step, epoch = self.saved["global_step"], self.saved["epoch"]
        self.assertEqual((step, epoch, self.saved["batch_in_epoch"]), (2 * STEPS_PER_EPOCH, 2, 0))
        model = LitMlp(self.hparams["hidden_sizes"], self.hparams["data_info"])
        mc = ModelCheckpoint(dirpath=self.out_dir, monitor="val_loss", mode="min",
                             every_n_epochs=1, save_top_k=2, save_last=True)
        train, val = loaders(1, n=128)  # 8 batches: the saved step ends a Lightning epoch too
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer(step + 5, [mc]).fit(model, train, val, ckpt_path=self.ckpt)
        messages = [str(w.message) for w in caught]
        for bad in ("callbacks used to create the checkpoint", "dirpath has changed",
                    "lr_lambdas", "not restored"):
            self.assertFalse([m for m in messages if bad in m], messages)
        s = model.at_start
        self.assertEqual((s["global_step"], s["epoch"]), (step, epoch))
        self.assertEqual(model.steps_run, 5)
        self.assertEqual(model.trainer.global_step, step + 5)
        # optimizer state (Adam moments and step counter) from /optimizer
        with h5py.File(self.h5, "r") as f:
            exp_avg = torch.from_numpy(f["optimizer/layers.0.weight/exp_avg"][()])
            opt_step = int(f["optimizer/layers.0.weight/step"][()])
        self.assertIsNotNone(s["exp_avg"], "optimizer state not restored")
        self.assertTrue(torch.equal(s["exp_avg"], exp_avg))
        self.assertEqual(s["opt_step"], opt_step)
        # scheduler: StepLR at the saved step; lr = the NEXT step's (16 % step_size == 0: it
        # differs from the last step's, which ddp-runtime records)
        self.assertEqual(s["sched_last_epoch"], step)
        lr, sched = self.config["optimizer"]["lr"], self.config["scheduler"]
        self.assertAlmostEqual(s["lr"], lr * sched["gamma"] ** (step // sched["step_size"]),
                               places=15)
        # ModelCheckpoint state: the table in callbacks_json, as .ckpt paths in the dirpath
        real = os.path.realpath(self.out_dir)
        want = {os.path.join(real, e["file"][:-3] + ".ckpt"): float(e["score"])
                for e in self.callbacks_json["best_k"]}
        self.assertEqual(s["best_k_models"], want)
        best = min(self.callbacks_json["best_k"], key=lambda e: float(e["score"]))
        self.assertEqual(s["best_model_path"], os.path.join(real, best["file"][:-3] + ".ckpt"))
        self.assertEqual(s["last_model_path"], os.path.join(real, "last.ckpt"))
        self.assertEqual(len(want), 2)
        self.assertIn(s["kth_best_model_path"], want)

    def test_export_version_fields(self):
        c = torch.load(self.ckpt, map_location="cpu")
        self.assertEqual(c["pytorch-lightning_version"], "2.2.5")
        self.assertEqual(c["ddp_runtime"]["version"], self.saved["ddp_runtime_version"])
        self.assertEqual(list(c["callbacks"]), [ModelCheckpoint(
            dirpath=self.out_dir, monitor="val_loss", mode="min", every_n_epochs=1).state_key])

    # -- import ---------------------------------------------------------------------------

    def test_round_trip_h5_ckpt_h5_is_bitwise(self):
        back = os.path.join(self.tmp, "roundtrip.h5")
        proc = tool(IMPORT, self.ckpt, back, "--like", self.h5)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(run([ARGS.ddp_checkpoint, "verify", back]).returncode, 0)
        before, after = h5_tensors(self.h5), h5_tensors(back)
        self.assertEqual(sorted(after), sorted(before))
        self.assertTrue(any(k.startswith("optimizer/") for k in before))
        for key in before:
            self.assertEqual(after[key], before[key], key)
        got = root_attrs(back)
        for name in ("global_step", "epoch", "batch_in_epoch", "weights_only", "fingerprint"):
            self.assertEqual(got[name], self.saved[name], name)

    def lightning_trained(self):
        """A model trained by real Lightning (6 steps, 4 batches an epoch: saved mid-epoch 1
        by its ModelCheckpoint); returns (ckpt path, trained module)."""
        if getattr(type(self), "_lightning", None) is None:
            model = LitMlp(HIDDEN, {"input_shape": [FEATURES], "num_outputs": CLASSES})
            d = os.path.join(self.tmp, "pl_run")
            mc = ModelCheckpoint(dirpath=d, every_n_train_steps=3, save_top_k=-1)
            train, _ = loaders(2, n=64)
            trainer(6, [mc], limit_val_batches=0).fit(model, train)
            type(self)._lightning = (mc.best_model_path or mc.last_model_path, model)
            self.assertTrue(os.path.isfile(type(self)._lightning[0]))
        return type(self)._lightning

    def test_import_lightning_then_fine_tune_weights_only(self):
        src, model = self.lightning_trained()
        out = os.path.join(self.tmp, "imported_w.h5")
        proc = tool(IMPORT, src, out, "--like", self.h5, "--weights-only")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(run([ARGS.ddp_checkpoint, "verify", out]).returncode, 0)
        self.assertEqual(root_attrs(out)["weights_only"], 1)
        for k, t in model.model.state_dict().items():
            with h5py.File(out, "r") as f:
                self.assertEqual(f["model"][k][()].tobytes(), t.numpy().tobytes(), k)
        # lr 1e-30 (0 is rejected): updates far below float32 resolution of these weights, so
        # the weights ddp-train starts from come through the run bit for bit
        d = ddp_train(self.tmp, "ft_w", "trainer.max_steps=2", "optimizer.lr=1e-30",
                      f"checkpoint.resume={out}")
        final = latest(d)
        self.assertEqual(root_attrs(final)["global_step"], 2)  # fine-tuning starts at 0
        got, imported = h5_tensors(final, ("model/",)), h5_tensors(out, ("model/",))
        self.assertEqual(got, imported)

    def test_import_lightning_then_resume_full(self):
        src, _ = self.lightning_trained()
        saved = torch.load(src, map_location="cpu")
        out = os.path.join(self.tmp, "imported_full.h5")
        proc = tool(IMPORT, src, out, "--like", self.h5)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(run([ARGS.ddp_checkpoint, "verify", out]).returncode, 0)
        a = root_attrs(out)
        self.assertEqual((a["weights_only"], a["global_step"]), (0, saved["global_step"]))
        self.assertEqual((a["epoch"], a["batch_in_epoch"]), (1, 2))  # step 6 of 4-batch epochs
        with h5py.File(out, "r") as f:
            self.assertEqual(int(f["optimizer/layers.0.weight/step"][()]), 6)
            first = next(iter(saved["optimizer_states"][0]["state"].values()))
            self.assertEqual(f["optimizer/layers.0.weight/exp_avg"][()].tobytes(),
                             first["exp_avg"].numpy().tobytes())
        d = ddp_train(self.tmp, "ft_full", "trainer.max_steps=9", f"checkpoint.resume={out}")
        final = latest(d)
        self.assertEqual(root_attrs(final)["global_step"], 9)
        with h5py.File(final, "r") as f:  # Adam's counter continued from Lightning's 6
            self.assertEqual(int(f["optimizer/layers.0.weight/step"][()]), 9)

    def test_mismatched_state_dict_reports_and_exits_2(self):
        with h5py.File(self.h5, "r") as f:
            state = {k: torch.from_numpy(f["model"][k][()]) for k in f["model"]}
        state["layers.0.weight"] = torch.zeros(FEATURES + 3, FEATURES)  # wrong shape
        state["layers.1.b"] = state.pop("layers.1.bias")  # renamed
        src = os.path.join(self.tmp, "bad.pt")
        torch.save({"state_dict": state}, src)
        out = os.path.join(self.tmp, "bad.h5")
        proc = tool(IMPORT, src, out, "--like", self.h5)
        self.assertEqual(proc.returncode, 2, proc.stderr)
        self.assertEqual(proc.stderr.count("lightning_to_ckpt: error:"), 1, proc.stderr)
        self.assertIn(f"parameter 'layers.0.weight': file has [{FEATURES + 3}, {FEATURES}] "
                      f"float32, model expects [{HIDDEN[0]}, {FEATURES}] float32", proc.stderr)
        self.assertIn("missing: 'layers.1.bias'", proc.stderr)
        self.assertIn("unexpected: 'layers.1.b'", proc.stderr)
        self.assertNotIn("Traceback", proc.stderr)
        self.assertFalse(os.path.exists(out))
        # --rename fixes the name; the shape stays a mismatch
        proc = tool(IMPORT, src, out, "--like", self.h5, "--rename", "layers.1.b=layers.1.bias")
        self.assertEqual(proc.returncode, 2)
        self.assertNotIn("missing:", proc.stderr)
        self.assertIn("parameter 'layers.0.weight'", proc.stderr)
        # --no-strict: written, the bad tensor taken from --like, loadable
        proc = tool(IMPORT, src, out, "--like", self.h5, "--rename", "layers.1.b=layers.1.bias",
                    "--no-strict")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(run([ARGS.ddp_checkpoint, "verify", out]).returncode, 0)
        self.assertEqual(h5_tensors(out, ("model/layers.0.weight",)),
                         h5_tensors(self.h5, ("model/layers.0.weight",)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ddp-train", required=True)
    parser.add_argument("--ddp-checkpoint", required=True)
    parser.add_argument("--mpirun", default=shutil.which("mpirun") or "mpirun")
    args, rest = parser.parse_known_args()
    ARGS.ddp_train = os.path.abspath(args.ddp_train)
    ARGS.ddp_checkpoint = os.path.abspath(args.ddp_checkpoint)
    ARGS.mpirun = args.mpirun
    program = unittest.main(argv=[sys.argv[0]] + rest, exit=False)
    sys.exit(0 if program.result.wasSuccessful() else 1)


if __name__ == "__main__":
    main()
