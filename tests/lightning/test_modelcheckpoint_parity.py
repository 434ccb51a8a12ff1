#!/usr/bin/python3
"""Differential test: ddp-train's checkpoint policy against REAL PyTorch Lightning.

    <venv>/bin/python tests/lightning/test_modelcheckpoint_parity.py \
        --ddp-train build/bin/ddp-train [--python <venv>/bin/python] [--only CASE ...] \
        [--keep DIR] [-v]

For every case (a set of ddp-train `--set` overrides: checkpoint.* and trainer.* keys) this
 1. runs `ddp-train --config configs/default.yaml --set ... --summary S.json` as one process
    (a tiny MLP, 6 optimizer steps per epoch, a fresh trainer.default_root_dir),
 2. reads the run's metrics.csv (train_loss / val_loss per global step, 1-based), the effective
    config.yaml and the *.h5 files left in the checkpoint directory,
 3. replays the same metric sequence in real Lightning: a LightningModule with one scalar
    parameter (SGD, lr 0) logs, in training_step, the train_loss ddp-train logged after that
    optimizer step (CSV step = trainer.global_step + 1) and, in validation_step, the val_loss
    ddp-train logged at the step validation ran after (CSV step = trainer.global_step); the
    Trainer and the ModelCheckpoint get the same settings,
 4. compares: the checkpoints kept (stems: ddp-train `X.h5` vs Lightning `X.ckpt`),
    best_model_path, best_model_score, kth_best_model_path, kth_value, last_model_path and
    best_k_models (from the "checkpoint" object of ddp-train's --summary; when a build has no
    such object only the files on disk are compared, and the line says so), plus the
    missing-monitor warning where Lightning warns.

It first checks that Lightning validated after exactly the steps where ddp-train did and trained
as many steps: a case where they differ is mis-designed (reported, and it fails the test).

Output: one line per case ("agree" or "DIFFERENT: ..."), then "N/M configurations agree".
Exit status: 0 when every case agrees or differs only as a case marked in KNOWN_DIFFERENCES
(each mark names an entry of docs/lightning-compat.md, which must contain that entry); 1
otherwise; 77 (ctest: skipped) when PyTorch Lightning cannot be imported, unless CI=true
(then 1).

Settings that map onto Lightning:
  trainer.max_epochs / max_steps      -> Trainer(max_epochs, max_steps) (-1 stays -1)
  trainer.val_check_interval          -> Trainer(val_check_interval) (float <= 1, int > 1)
  trainer.check_val_every_n_epoch     -> Trainer(check_val_every_n_epoch); 0 (ddp-train: no
                                         validation) -> limit_val_batches=0 (Lightning divides
                                         by check_val_every_n_epoch, 0 is not accepted there)
  checkpoint.monitor ("" = None), mode, save_top_k, save_last -> the effective config's values
  checkpoint.every_n_train_steps, every_n_epochs, filename, auto_insert_metric_name,
  save_on_train_epoch_end -> passed to ModelCheckpoint only when the case sets them
                                         (Lightning's defaults otherwise: a ddp-train left at its
                                         defaults must behave as a ModelCheckpoint left at its)
"""

import argparse
import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.path.normpath(os.path.join(HERE, "..", ".."))
COMPAT_DOC = os.path.join(SOURCE_DIR, "docs", "lightning-compat.md")

# A small, fast run: 48 training samples / batch 8 = 6 optimizer steps per epoch (one process),
# 16 validation samples. SGD with momentum and no scheduler makes val_loss move enough between
# validations that no two values round to the same 6 digits in metrics.csv (except in the
# designed tie case), and not monotonically (so that top-k replaces checkpoints).
STEPS_PER_EPOCH = 6
BASE_SETTINGS = {
    "model.hidden_sizes": "[8]",
    "data.num_samples": "48",
    "data.val_samples": "16",
    "data.num_features": "8",
    "data.num_classes": "3",
    "data.noise": "1.0",
    "trainer.batch_size": "8",
    "trainer.max_epochs": "5",
    "trainer.max_steps": "-1",
    "trainer.log_every_n_steps": "1",
    "trainer.progress_bar": "off",
    "trainer.gradient_clip_val": "0",
    "optimizer.name": "sgd",
    "optimizer.lr": "0.5",
    "optimizer.momentum": "0.9",
    "optimizer.weight_decay": "0",
    "scheduler.name": "none",
    "checkpoint.keep_last_n": "0",  # ddp-runtime's extension: Lightning has no such key
}

# Each case: name -> (settings, options). Options:
#   tie: True      the monitored value repeats by design (no "CSV rounding" check)
#   warns: True    Lightning warns that the monitor is missing; ddp-train must print a warning
#                  naming the monitor and the logged keys
CASES = [
    ("topk2_min_val", {"checkpoint.monitor": "val_loss", "checkpoint.mode": "min",
                       "checkpoint.save_top_k": "2", "checkpoint.save_last": "true"}, {}),
    ("topk2_max_val", {"checkpoint.monitor": "val_loss", "checkpoint.mode": "max",
                       "checkpoint.save_top_k": "2", "checkpoint.save_last": "false"}, {}),
    ("topk_all_val", {"checkpoint.monitor": "val_loss", "checkpoint.save_top_k": "-1",
                      "checkpoint.save_last": "true"}, {}),
    ("topk0_val_last", {"checkpoint.monitor": "val_loss", "checkpoint.save_top_k": "0",
                        "checkpoint.save_last": "true"}, {}),
    ("topk1_val", {"checkpoint.monitor": "val_loss", "checkpoint.save_top_k": "1",
                   "checkpoint.save_last": "false"}, {}),
    ("topk3_val_6ep", {"checkpoint.monitor": "val_loss", "checkpoint.save_top_k": "3",
                       "checkpoint.save_last": "true", "trainer.max_epochs": "6"}, {}),
    ("nomonitor_k1", {"checkpoint.save_top_k": "1", "checkpoint.save_last": "false"}, {}),
    ("nomonitor_all_last", {"checkpoint.save_top_k": "-1", "checkpoint.save_last": "true"}, {}),
    # every_n_train_steps: 4 does not divide the 6 steps of an epoch (saves mid-epoch and
    # Lightning's last.ckpt at every epoch end); every_n_epochs=0 spelled out.
    ("steps4_train_loss_last", {"checkpoint.every_n_train_steps": "4",
                                "checkpoint.every_n_epochs": "0",
                                "checkpoint.monitor": "train_loss", "checkpoint.save_top_k": "2",
                                "checkpoint.save_last": "true"}, {}),
    ("steps4_nomonitor_all", {"checkpoint.every_n_train_steps": "4",
                              "checkpoint.every_n_epochs": "0",
                              "checkpoint.save_top_k": "-1", "checkpoint.save_last": "false"}, {}),
    # Only every_n_train_steps set: Lightning's triggers are mutually exclusive (every_n_epochs
    # becomes 0), and a save at a step that also validates ranks by the *previous* val_loss
    # (on_train_batch_end runs before that step's validation).
    ("steps3_only_val", {"checkpoint.every_n_train_steps": "3", "checkpoint.monitor": "val_loss",
                         "checkpoint.save_top_k": "2", "checkpoint.save_last": "false"}, {}),
    ("epochs2_val_last", {"checkpoint.every_n_epochs": "2", "checkpoint.monitor": "val_loss",
                          "checkpoint.save_top_k": "1", "checkpoint.save_last": "true"}, {}),
    # Issue 12 item 1: the last epoch has the best val_loss (lr small: val_loss falls every
    # epoch) and save_last is false.
    ("final_epoch_best_nolast", {"checkpoint.monitor": "val_loss", "checkpoint.save_top_k": "2",
                                 "checkpoint.save_last": "false", "trainer.max_epochs": "6",
                                 "optimizer.lr": "0.05", "optimizer.momentum": "0"}, {}),
    # max_steps mid-epoch (15 = 2.5 epochs): Lightning still runs on_train_epoch_end for the
    # partial epoch, and every_n_epochs=1 saves there.
    ("max_steps_mid_epoch", {"trainer.max_epochs": "-1", "trainer.max_steps": "15",
                             "checkpoint.save_top_k": "1", "checkpoint.save_last": "false"}, {}),
    ("tmpl_epoch_val_loss", {"checkpoint.filename": '"{epoch}-{val_loss:.2f}"',
                             "checkpoint.monitor": "val_loss", "checkpoint.save_top_k": "2",
                             "checkpoint.save_last": "false"}, {}),
    # Two saves per epoch under the same name. With a monitor, Lightning versions them
    # (epoch=0, epoch=0-v1, ...); without one it overwrites the previous save of that name
    # (its best_model_path, which is the newest), so 3 files remain.
    ("tmpl_epoch_collisions", {"checkpoint.filename": '"{epoch}"',
                               "checkpoint.every_n_train_steps": "3",
                               "checkpoint.every_n_epochs": "0", "checkpoint.save_top_k": "-1",
                               "checkpoint.monitor": "train_loss",
                               "checkpoint.save_last": "false", "trainer.max_epochs": "3"}, {}),
    ("tmpl_epoch_nomonitor_overwrite", {"checkpoint.filename": '"{epoch}"',
                                        "checkpoint.every_n_train_steps": "3",
                                        "checkpoint.every_n_epochs": "0",
                                        "checkpoint.save_top_k": "-1",
                                        "checkpoint.save_last": "false",
                                        "trainer.max_epochs": "3"}, {}),
    # A constant name: Lightning overwrites best.ckpt only with a better checkpoint.
    ("tmpl_best_max", {"checkpoint.filename": "best", "checkpoint.monitor": "val_loss",
                       "checkpoint.mode": "max", "checkpoint.save_top_k": "1",
                       "checkpoint.save_last": "false"}, {}),
    ("tmpl_no_auto_insert", {"checkpoint.filename": '"e{epoch}-s{step}-{val_loss:.3f}"',
                             "checkpoint.auto_insert_metric_name": "false",
                             "checkpoint.monitor": "val_loss", "checkpoint.save_top_k": "1",
                             "checkpoint.save_last": "true"}, {}),
    # Ties: lr 1e-30 leaves every float32 weight unchanged, so every validation gives the very
    # same val_loss (bit for bit).
    ("ties_val_k2", {"checkpoint.monitor": "val_loss", "checkpoint.save_top_k": "2",
                     "checkpoint.save_last": "true", "optimizer.lr": "1e-30",
                     "optimizer.momentum": "0"}, {"tie": True}),
    # NaN: lr 100 makes val_loss 2e16, 6e32, then nan for the last 3 epochs. Lightning ranks a
    # NaN as +inf (mode min) while fewer than k are kept, and never lets one replace a kept
    # checkpoint (torch.lt(nan, kth) is False).
    ("nan_val_k3", {"checkpoint.monitor": "val_loss", "checkpoint.save_top_k": "3",
                    "checkpoint.save_last": "false", "optimizer.lr": "100"}, {"tie": True}),
    # A monitor that is never logged (no validation): Lightning warns once and saves no top-k
    # checkpoint, only last.
    ("missing_monitor", {"checkpoint.monitor": "val_loss", "checkpoint.save_top_k": "1",
                         "checkpoint.save_last": "true", "trainer.check_val_every_n_epoch": "0"},
     {"warns": True}),
    # Validation twice per epoch: Lightning saves after every validation (on_validation_end).
    ("val_twice_per_epoch", {"trainer.val_check_interval": "0.5", "checkpoint.monitor": "val_loss",
                             "checkpoint.save_top_k": "2", "checkpoint.save_last": "true"}, {}),
]

# Cases whose difference from Lightning is deliberate: name -> (entry, reason). `entry` is a
# heading (or any exact text) of docs/lightning-compat.md; the mark is honoured only while
# the doc contains it. Example:
#   "steps3_only_val": ("Saves at a validation step",
#                       "ddp-train ranks by the fresh val_loss, Lightning by the previous one"),
KNOWN_DIFFERENCES = {}

CHECKPOINT_KWARGS_FROM_CASE = ("every_n_train_steps", "every_n_epochs", "filename",
                               "auto_insert_metric_name", "save_on_train_epoch_end")


# ---------------------------------------------------------------------------------------------
# Environment: real Lightning, or skip.

def reexec_in_venv(python):
    """Runs this script with `python` (the Lightning venv) unless it is the current one."""
    if not python or os.environ.get("DDP_LIGHTNING_REEXEC") == "1":
        return
    if os.path.abspath(sys.prefix) == os.path.abspath(
            os.path.join(os.path.dirname(python), "..")):
        return
    if not os.path.exists(python):
        skip_or_fail(f"no Lightning venv: {python} does not exist (tools/lightning_venv.sh "
                     "creates it)")
    os.environ["DDP_LIGHTNING_REEXEC"] = "1"
    os.execv(python, [python, os.path.abspath(__file__)] + sys.argv[1:])


def skip_or_fail(why):
    if os.environ.get("CI", "").lower() == "true":
        print(f"FAILED: {why} (CI=true: the Lightning differential test must run)")
        sys.exit(1)
    print(f"skipped: {why}")
    sys.exit(77)


def import_lightning():
    try:
        import torch  # noqa: F401
        import pytorch_lightning as pl
    except Exception as e:  # ImportError, or a broken install
        skip_or_fail(f"cannot import pytorch_lightning: {type(e).__name__}: {e}")
    # Shim (test harness only): Debian's torch 1.13.0a0 under Python 3.11 cannot import
    # torch.distributed._shard (a dataclass with a mutable default), which Lightning < 2.1's
    # torch code path (LightningModule.__init__ registers ShardedTensor state-dict hooks: the
    # torch version is below 2.1) imports. No sharded tensors are used here.
    from pytorch_lightning.core import module as pl_module
    if not pl_module._TORCH_GREATER_EQUAL_2_1:
        pl.LightningModule._register_sharded_tensor_state_dict_hooks_if_available = \
            lambda self: None
    return pl


# ---------------------------------------------------------------------------------------------
# ddp-train side.

def parse_float(text):
    text = (text or "").strip()
    if text == "":
        return None
    return float(text)  # accepts nan, inf, -inf


def read_metrics(path):
    """{step: {"epoch", "train_loss", "val_loss"}} from metrics.csv (missing values: absent)."""
    rows = {}
    with open(path, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            step = int(float(r["step"]))
            row = rows.setdefault(step, {})
            row["epoch"] = int(float(r["epoch"]))
            for key in ("train_loss", "val_loss"):
                v = parse_float(r.get(key))
                if v is not None:
                    row[key] = v
    return rows


def read_effective_config(path):
    import yaml
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def run_ddp_train(args, case_dir, settings):
    root = os.path.join(case_dir, "ddp")
    summary = os.path.join(case_dir, "summary.json")
    merged = dict(BASE_SETTINGS)
    merged.update(settings)
    merged["trainer.default_root_dir"] = root
    merged["trainer.name"] = "run"
    cmd = [args.ddp_train, "--config", args.config, "--summary", summary]
    for k, v in merged.items():
        cmd += ["--set", f"{k}={v}"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=case_dir, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=120)
    with open(os.path.join(case_dir, "ddp-train.log"), "w", encoding="utf-8") as f:
        f.write(" ".join(cmd) + "\n" + proc.stdout + proc.stderr)
    out = {"cmd": cmd, "rc": proc.returncode, "stderr": proc.stderr, "stdout": proc.stdout,
           "wall_s": time.monotonic() - t0, "run_dir": os.path.join(root, "run")}
    if proc.returncode != 0:
        return out
    out["metrics"] = read_metrics(os.path.join(out["run_dir"], "metrics.csv"))
    out["config"] = read_effective_config(os.path.join(out["run_dir"], "config.yaml"))
    with open(summary, encoding="utf-8") as f:
        out["summary"] = json.load(f)
    m = re.search(r"(\d+) steps/epoch", proc.stderr)
    out["steps_per_epoch"] = int(m.group(1)) if m else None
    cc = out["config"].get("checkpoint", {})
    out["ckpt_dir"] = cc.get("dirpath") or os.path.join(out["run_dir"], "checkpoints")
    files = []
    if os.path.isdir(out["ckpt_dir"]):
        files = sorted(f for f in os.listdir(out["ckpt_dir"])
                       if f.endswith(".h5") and not f.startswith("."))
    out["files"] = files
    return out


# ---------------------------------------------------------------------------------------------
# Lightning side.

def yaml_value(text):
    import yaml
    return yaml.safe_load(text)


def lightning_settings(settings, config):
    """(Trainer kwargs, ModelCheckpoint kwargs) for the effective ddp-train config."""
    t = config["trainer"]
    c = config["checkpoint"]
    trainer = {"max_epochs": int(t["max_epochs"]), "max_steps": int(t["max_steps"])}
    vci = float(t["val_check_interval"])
    trainer["val_check_interval"] = int(vci) if vci > 1.0 else vci
    every = int(t["check_val_every_n_epoch"])
    if every == 0:
        trainer["check_val_every_n_epoch"] = 1
        trainer["limit_val_batches"] = 0
    else:
        trainer["check_val_every_n_epoch"] = every
        trainer["limit_val_batches"] = 1
    mc = {
        "monitor": c.get("monitor") or None,
        "mode": c.get("mode", "min"),
        "save_top_k": int(c.get("save_top_k", 1)),
        "save_last": bool(c.get("save_last", False)),
    }
    for key in CHECKPOINT_KWARGS_FROM_CASE:
        if f"checkpoint.{key}" in settings:
            # What ddp-train made of the value (a --set value is YAML); the case's text if the
            # effective config does not have the key.
            v = c[key] if key in c else yaml_value(settings[f"checkpoint.{key}"])
            if key == "save_on_train_epoch_end" and v in ("auto", None):
                continue  # Lightning's None: its own rule
            mc[key] = v
    return trainer, mc


def run_lightning(pl, case_dir, run, trainer_kw, mc_kw):
    import logging
    import warnings

    import torch
    from pytorch_lightning.callbacks import ModelCheckpoint
    from pytorch_lightning.callbacks import model_checkpoint as mc_module

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_default_dtype(torch.float64)  # logged python floats stay float64

    metrics = run["metrics"]
    train_loss = {s: r["train_loss"] for s, r in metrics.items() if "train_loss" in r}
    val_loss = {s: r["val_loss"] for s, r in metrics.items() if "val_loss" in r}

    class Replay(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))
            self.val_steps = []
            self.train_steps = []

        def training_step(self, batch, batch_idx):
            step = self.trainer.global_step + 1  # the CSV's step: after this update
            self.train_steps.append(step)
            if step in train_loss:
                self.log("train_loss", train_loss[step], on_step=True, on_epoch=False,
                         batch_size=1)
            return self.w * 0.0

        def validation_step(self, batch, batch_idx):
            step = self.trainer.global_step  # validation runs after the step's update
            self.val_steps.append(step)
            self.log("val_loss", val_loss.get(step, float("nan")), batch_size=1)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    steps_per_epoch = run["steps_per_epoch"]
    train_dl = torch.utils.data.DataLoader(list(range(steps_per_epoch)), batch_size=1)
    val_dl = torch.utils.data.DataLoader([0], batch_size=1)
    dirpath = os.path.join(case_dir, "pl", "checkpoints")
    mc_module.warning_cache.clear()  # it keeps one warning per message per process
    cb = ModelCheckpoint(dirpath=dirpath, **mc_kw)
    trainer = pl.Trainer(num_sanity_val_steps=0, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", devices=1,
                         default_root_dir=os.path.join(case_dir, "pl"), callbacks=[cb],
                         **trainer_kw)
    model = Replay()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, train_dl, val_dl)
    files = sorted(f for f in os.listdir(dirpath) if f.endswith(".ckpt")) \
        if os.path.isdir(dirpath) else []

    def score(v):
        return None if v is None else float(v)

    return {
        "files": files,
        "dirpath": cb.dirpath,
        "best_model_path": cb.best_model_path,
        "best_model_score": score(cb.best_model_score),
        "kth_best_model_path": cb.kth_best_model_path,
        "kth_value": score(cb.kth_value),
        "last_model_path": cb.last_model_path,
        "best_k_models": {k: float(v) for k, v in cb.best_k_models.items()},
        "val_steps": model.val_steps,
        "global_step": trainer.global_step,
        "warnings": [str(w.message) for w in caught
                     if "could not find the monitored key" in str(w.message)],
    }


# ---------------------------------------------------------------------------------------------
# Comparison.

def stem(path):
    if not path:
        return ""
    base = os.path.basename(path)
    for ext in (".ckpt", ".h5"):
        if base.endswith(ext):
            return base[: -len(ext)]
    return base


def score_of(v):
    """A summary score as a float: null stays None; "inf"/"nan" strings are parsed."""
    if v is None:
        return None
    if isinstance(v, str):
        return float(v.replace("Infinity", "inf"))
    return float(v)


def same_score(pl_value, ddp_value):
    """Lightning's score against ddp-train's. The relative tolerance allows for a metrics.csv
    that rounds (the replay logs the CSV's values, ddp-train ranks by the full double). JSON
    has no inf/nan (nlohmann writes null), so a null from ddp-train stands for None or any
    non-finite value; strings "inf", "-inf", "nan" are compared exactly. (Lightning's
    kth_value is never None: +inf for mode min, -inf for max, until k checkpoints are kept;
    its best_model_score is None until a monitored checkpoint is saved.)"""
    if ddp_value is None:
        return pl_value is None or not math.isfinite(pl_value)
    if pl_value is None:
        return False
    if not math.isfinite(pl_value):
        return (math.isnan(pl_value) and math.isnan(ddp_value)) or pl_value == ddp_value
    if ddp_value is None or not math.isfinite(ddp_value):
        return False
    return math.isclose(pl_value, ddp_value, rel_tol=2e-5, abs_tol=1e-12)


def fmt_score(v):
    return "None" if v is None else f"{v:.6g}"


def compare(run, lt, options, mc_kw):
    """Returns (differences, notes)."""
    diffs, notes = [], []
    ddp_stems = sorted(stem(f) for f in run["files"])
    pl_stems = sorted(stem(f) for f in lt["files"])
    if ddp_stems != pl_stems:
        diffs.append(f"files: ddp-train {ddp_stems} vs Lightning {pl_stems}")

    info = run["summary"].get("checkpoint")
    if info is None:
        notes.append("summary has no \"checkpoint\" object: best/kth/best_k not compared")
        ddp_last = "last" if "last.h5" in run["files"] else ""
        if ddp_last != stem(lt["last_model_path"]):
            diffs.append(f"last_model_path: ddp-train {ddp_last!r} (from the directory) vs "
                         f"Lightning {stem(lt['last_model_path'])!r}")
    else:
        on_disk = set(run["files"])
        for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
            a, b = stem(info.get(key, "")), stem(lt[key])
            if a != b:
                diffs.append(f"{key}: ddp-train {a!r} vs Lightning {b!r}")
            p = info.get(key) or ""
            if p and os.path.basename(p) not in on_disk:
                diffs.append(f"{key}: ddp-train names {os.path.basename(p)}, which is not in "
                             "the checkpoint directory")
        for key in ("best_model_score", "kth_value"):
            a = score_of(info.get(key))
            if not same_score(lt[key], a):
                diffs.append(f"{key}: ddp-train {fmt_score(a)} vs Lightning {fmt_score(lt[key])}")
        ddp_k = {stem(p): score_of(s) for p, s in (info.get("best_k_models") or {}).items()}
        pl_k = {stem(p): s for p, s in lt["best_k_models"].items()}
        if sorted(ddp_k) != sorted(pl_k):
            diffs.append(f"best_k_models: ddp-train {sorted(ddp_k)} vs Lightning {sorted(pl_k)}")
        else:
            bad = [k for k in pl_k if not same_score(pl_k[k], ddp_k[k])]
            if bad:
                diffs.append("best_k_models scores: " + ", ".join(
                    f"{k}: ddp-train {fmt_score(ddp_k[k])} vs Lightning {fmt_score(pl_k[k])}"
                    for k in bad))
        for p in (info.get("best_k_models") or {}):
            if os.path.basename(p) not in on_disk:
                diffs.append(f"best_k_models: {os.path.basename(p)} is not in the checkpoint "
                             "directory")
        ddp_dir = info.get("dirpath") or ""
        if ddp_dir and os.path.realpath(ddp_dir) != os.path.realpath(run["ckpt_dir"]):
            diffs.append(f"dirpath: summary says {ddp_dir}, checkpoints are in {run['ckpt_dir']}")

    if options.get("warns"):
        if not lt["warnings"]:
            notes.append("Lightning did not warn about the missing monitor (case mis-designed?)")
        monitor = mc_kw.get("monitor") or ""
        warned = [line for line in run["stderr"].splitlines()
                  if "warning" in line.lower() and monitor in line and "train_loss" in line]
        if not warned:
            diffs.append(f"no ddp-train warning naming the missing monitor {monitor!r} and the "
                         "logged keys (Lightning: " + (lt["warnings"][0][:160] if lt["warnings"]
                                                       else "-") + ")")
    return diffs, notes


def check_design(run, lt, options, mc_kw):
    """Problems that make the comparison meaningless (not ddp-train's or Lightning's fault)."""
    problems = []
    csv_val_steps = sorted(s for s, r in run["metrics"].items() if "val_loss" in r)
    if csv_val_steps != lt["val_steps"]:
        problems.append(f"validation steps differ: ddp-train {csv_val_steps}, Lightning "
                        f"{lt['val_steps']}")
    steps = run["summary"].get("steps")
    if steps != lt["global_step"]:
        problems.append(f"steps trained: ddp-train {steps}, Lightning {lt['global_step']}")
    if run["steps_per_epoch"] != STEPS_PER_EPOCH:
        problems.append(f"ddp-train ran {run['steps_per_epoch']} steps/epoch, the cases are "
                        f"designed for {STEPS_PER_EPOCH}")
    monitor = mc_kw.get("monitor")
    if monitor and not options.get("tie"):
        values = [r[monitor] for r in run["metrics"].values() if monitor in r]
        if len(set(values)) != len(values):
            problems.append(f"{monitor} repeats in metrics.csv (6 digits): an accidental tie")
    return problems


def doc_has(entry):
    try:
        with open(COMPAT_DOC, encoding="utf-8") as f:
            return entry in f.read()
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------

def describe_lightning(lt):
    return (f"files {[stem(f) for f in lt['files']]}; best {stem(lt['best_model_path'])!r} "
            f"({fmt_score(lt['best_model_score'])}); kth {stem(lt['kth_best_model_path'])!r} "
            f"({fmt_score(lt['kth_value'])}); last {stem(lt['last_model_path'])!r}; best_k "
            + json.dumps({stem(k): float(f"{v:.6g}") if math.isfinite(v) else str(v)
                          for k, v in lt["best_k_models"].items()}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ddp-train", required=True, help="path of the ddp-train executable")
    ap.add_argument("--config", default=os.path.join(SOURCE_DIR, "configs", "default.yaml"))
    ap.add_argument("--python", default=os.environ.get("DDP_LIGHTNING_PYTHON", ""),
                    help="the Lightning venv's python: the script re-runs itself with it")
    ap.add_argument("--only", nargs="*", default=None, help="run only these cases")
    ap.add_argument("--keep", default="", help="keep the runs under this directory")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="print Lightning's outcome and ddp-train's metrics for every case")
    args = ap.parse_args()
    reexec_in_venv(args.python)
    pl = import_lightning()
    args.ddp_train = os.path.abspath(args.ddp_train)
    args.config = os.path.abspath(args.config)
    if not os.access(args.ddp_train, os.X_OK):
        print(f"FAILED: ddp-train not found at {args.ddp_train}")
        return 1

    cases = [c for c in CASES if args.only is None or c[0] in args.only]
    if args.only:
        unknown = set(args.only) - {c[0] for c in CASES}
        if unknown:
            print(f"unknown case(s): {sorted(unknown)}; cases: {[c[0] for c in CASES]}")
            return 2
    top = args.keep or tempfile.mkdtemp(prefix="mc-parity-")
    os.makedirs(top, exist_ok=True)
    print(f"PyTorch Lightning {pl.__version__}; {len(cases)} configurations; runs in {top}")
    t_start = time.monotonic()
    agree = 0
    failed = []
    files_only = 0
    for name, settings, options in cases:
        case_dir = os.path.join(top, name)
        shutil.rmtree(case_dir, ignore_errors=True)
        os.makedirs(case_dir)
        run = run_ddp_train(args, case_dir, settings)
        sets = " ".join(f"{k}={v}" for k, v in settings.items())
        if run["rc"] != 0:
            err = run["stderr"].strip().splitlines()
            print(f"{name}: DIFFERENT: ddp-train exited {run['rc']}: "
                  f"{err[-1] if err else '(no output)'}   [{sets}]")
            failed.append(name)
            continue
        if run["steps_per_epoch"] is None:
            run["steps_per_epoch"] = STEPS_PER_EPOCH
        trainer_kw, mc_kw = lightning_settings(settings, run["config"])
        try:
            lt = run_lightning(pl, case_dir, run, trainer_kw, mc_kw)
        except Exception as e:  # a ModelCheckpoint/Trainer error is Lightning's outcome too
            print(f"{name}: MIS-DESIGNED: Lightning raised {type(e).__name__}: {e}   [{sets}]")
            failed.append(name)
            continue
        problems = check_design(run, lt, options, mc_kw)
        if problems:
            print(f"{name}: MIS-DESIGNED: {'; '.join(problems)}   [{sets}]")
            failed.append(name)
            continue
        diffs, notes = compare(run, lt, options, mc_kw)
        note = f" ({'; '.join(notes)})" if notes else ""
        known = KNOWN_DIFFERENCES.get(name)
        if not diffs:
            agree += 1
            if info_missing(run):
                files_only += 1
            extra = ""
            if known:
                extra = f" [marked as a known difference ({known[0]}) but agrees: unmark it]"
            print(f"{name}: agree{note}{extra}")
        elif known and doc_has(known[0]):
            print(f"{name}: DIFFERENT (known, docs/lightning-compat.md \"{known[0]}\": "
                  f"{known[1]}): {'; '.join(diffs)}{note}")
        else:
            if known:
                note += (f" (marked known as \"{known[0]}\", but docs/lightning-compat.md has no "
                         "such entry)")
            print(f"{name}: DIFFERENT: {' | '.join(diffs)}{note}   [{sets}]")
            failed.append(name)
        if args.verbose or diffs:
            print(f"    Lightning: {describe_lightning(lt)}")
            print(f"    Lightning ModelCheckpoint({', '.join(f'{k}={v!r}' for k, v in mc_kw.items())}),"
                  f" Trainer({', '.join(f'{k}={v!r}' for k, v in trainer_kw.items())})")
        if args.verbose:
            vals = {s: r.get("val_loss") for s, r in sorted(run["metrics"].items())
                    if "val_loss" in r}
            print(f"    ddp-train: files {[stem(f) for f in run['files']]}; val_loss {vals}")
            if "checkpoint" in run["summary"]:
                print(f"    ddp-train summary checkpoint: {json.dumps(run['summary']['checkpoint'])}")
    wall = time.monotonic() - t_start
    print(f"{agree}/{len(cases)} configurations agree with PyTorch Lightning {pl.__version__} "
          f"({wall:.0f} s)" + (f"; {files_only} compared on files only (no \"checkpoint\" "
                               "object in the summary)" if files_only else ""))
    if failed:
        print(f"FAILED: {len(failed)} unmarked difference(s) or mis-designed case(s): "
              f"{' '.join(failed)}")
    if not args.keep:
        shutil.rmtree(top, ignore_errors=True)
    return 1 if failed else 0


def info_missing(run):
    return run["summary"].get("checkpoint") is None


if __name__ == "__main__":
    sys.exit(main())
