"""A training run, on any storage: the one module that knows a run folder's layout, writes it and reads it back.

    RUN = OUT/NAME (a local folder or a URI such as s3://bucket/runs/sdn)
      config.json                 written when the run starts, before any epoch: the PretrainConfig, the
                                  classes, num_actions, num_scenes, the scene names, the preprocessing the
                                  model expects and a digest of the shards' summary it trains on
      checkpoint_epoch_NNNN/      Ray Train checkpoints (state.pt: model, optimizer, LR schedule, epoch);
                                  Ray keeps the `checkpoint_keep` best by `best_metric` and always the latest
      metrics.jsonl               one line per epoch (rank 0), naming the epoch's checkpoint
      confusion/SPLIT.json        the confusion matrix of each eval split at the latest epoch
      confusion_SPLIT.png         ... as a plot, and per_class.json: each class's accuracy on every eval
                                  split and its drop from the first (in-distribution) to the others
      tensorboard/                TensorBoard events (tensorboardX)

A run is self-describing: `load_model(RUN)` rebuilds the model from config.json and a checkpoint, also
for a run killed before `fit()` returned. `checkpoint_path(RUN_OR_CHECKPOINT)` is the one lookup of the
latest (or best) checkpoint; `backbone_weights` reads the backbone that `model.init_from` names.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch

from debias import storage
from debias.config import ConfigError, from_dict, to_dict
from debias.training.confusion import class_drops, plot_confusion
from debias.training.metrics import higher_is_better
from debias.training.models import KINETICS_MEAN, KINETICS_STD, SDN, ModelConfig, load_backbone

if TYPE_CHECKING:
    from debias.training.train import PretrainConfig

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_PREFIX = "checkpoint_"
STATE_FILE = "state.pt"  # inside a checkpoint folder


def run_path(out: str, name: str) -> str:
    """The run folder OUT/NAME (OUT made absolute when local: Ray's workers run elsewhere)."""
    return storage.join(storage.absolute(out), name)


def checkpoint_name(epoch: int) -> str:
    """The folder name of epoch `epoch`'s checkpoint; names sort by epoch."""
    return f"{CHECKPOINT_PREFIX}epoch_{epoch:04d}"


def best_metric(cfg: PretrainConfig) -> str:
    """The metric that ranks checkpoints: `cfg.best_metric`, or the first eval split's accuracy."""
    if cfg.best_metric:
        return cfg.best_metric
    return f"{cfg.eval_splits[0]}_acc" if cfg.eval_splits else "train_acc"


def preprocessing(cfg: PretrainConfig, data_summary: dict) -> dict:
    """What a video must go through to reach this model, as stored with the run: the curation's decode
    settings (from the shards' summary) and the trainer's clip settings. Model input: (B, T, H, W, 3)
    uint8 RGB clips; the model converts to float and normalises with `mean` / `std` itself."""
    decode = data_summary.get("config", {}).get("decode", {})
    return {
        "decode": {k: decode[k] for k in ("sampling", "num_frames", "sample_fps", "clips_per_video", "short_side_px",
                                          "crop_px", "jpeg_quality") if k in decode},
        "clip": {"clip_len": cfg.clip.clip_len, "crop_px": cfg.clip.crop_px, "eval_clips": cfg.clip.eval_clips},
        "colour": "RGB",
        "layout": "B,T,H,W,3 uint8",
        "mean": list(KINETICS_MEAN),
        "std": list(KINETICS_STD),
    }


def write_run_config(run: str, cfg: PretrainConfig, classes: list[str], scene_names: list[str],
                     num_scenes: int, data_summary: dict, data_digest: str) -> None:
    """config.json, written before training starts (a killed run can be loaded back)."""
    storage.write_json(storage.join(run, CONFIG_FILE), {
        "config": to_dict(cfg),
        "classes": classes,
        "num_actions": len(classes),
        "num_scenes": num_scenes,
        "scene_names": scene_names,
        "best_metric": best_metric(cfg),
        "preprocessing": preprocessing(cfg, data_summary),
        "data": {"shards": cfg.shards, "summary_sha256": data_digest,
                 "videos_ok": data_summary.get("videos_ok"), "ok_by_split": data_summary.get("ok_by_split")},
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })


@dataclass
class RunInfo:
    """What config.json says about a run, and which checkpoint was loaded (with its epoch's metrics)."""

    uri: str
    config: PretrainConfig
    classes: list[str]
    num_actions: int
    num_scenes: int
    scene_names: list[str]
    preprocessing: dict
    data_digest: str
    best_metric: str
    checkpoint: str = ""
    metrics: dict = dataclasses.field(default_factory=dict)


def read_run(run: str) -> RunInfo:
    """The run's description from its config.json; names the file when it is missing."""
    from debias.training.train import PretrainConfig

    run = storage.absolute(run)
    path = storage.join(run, CONFIG_FILE)
    if not storage.is_file(path):
        raise FileNotFoundError(f"{run}: not a training run (no {CONFIG_FILE}); pass a run folder OUT/NAME "
                                "written by `debias pretrain`, `debias sweep` or `debias transfer`")
    data = storage.read_json(path)
    return RunInfo(uri=run, config=from_dict(PretrainConfig, data["config"]), classes=data["classes"],
                   num_actions=data["num_actions"], num_scenes=data["num_scenes"], scene_names=data["scene_names"],
                   preprocessing=data["preprocessing"], data_digest=data["data"]["summary_sha256"],
                   best_metric=data["best_metric"])


def checkpoints(run: str) -> list[str]:
    """The run's checkpoint folders (full paths or URIs), oldest epoch first."""
    return [storage.join(run, n) for n in storage.list_dir(run)
            if n.startswith(CHECKPOINT_PREFIX) and storage.is_file(storage.join(run, n, STATE_FILE))]


def read_metrics(run: str) -> list[dict]:
    """The per-epoch metrics (after a resume, the latest attempt at each epoch)."""
    path = storage.join(storage.absolute(run), METRICS_FILE)
    if not storage.is_file(path):
        return []
    by_epoch: dict[int, dict] = {}
    for line in storage.read_text(path).splitlines():
        if line.strip():
            m = json.loads(line)
            by_epoch[m["epoch"]] = m
    return [by_epoch[e] for e in sorted(by_epoch)]


def checkpoint_path(run_or_checkpoint: str, which: Literal["latest", "best"] = "latest") -> str:
    """A checkpoint folder as given, or a run's latest or best (by its best_metric) checkpoint."""
    path = storage.absolute(run_or_checkpoint)
    if storage.is_file(storage.join(path, STATE_FILE)):
        return path
    found = checkpoints(path)
    if not found:
        raise FileNotFoundError(f"{path}: neither a checkpoint ({STATE_FILE}) nor a run folder with "
                                f"{CHECKPOINT_PREFIX}* checkpoints")
    if which == "latest":
        return found[-1]
    metric = read_run(path).best_metric
    names = {storage.name(c): c for c in found}
    sign = 1.0 if higher_is_better(metric) else -1.0
    best: tuple[float, str] | None = None
    for m in read_metrics(path):
        if m.get("checkpoint") in names and metric in m and (best is None or sign * m[metric] > sign * best[0]):
            best = (m[metric], names[m["checkpoint"]])
    if best is None:
        raise FileNotFoundError(f"{path}: no kept checkpoint has a recorded {metric}")
    return best[1]


def load_state(checkpoint: str) -> dict:
    """The state.pt of a checkpoint folder (model, optimizer, schedule, epoch), on the CPU."""
    data = storage.read_bytes(storage.join(checkpoint, STATE_FILE))
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def load_model(run_or_checkpoint: str, checkpoint: str = "latest",
               device: str | torch.device = "cpu") -> tuple[SDN, RunInfo]:
    """The whole SDN (backbone and heads) of a run, in eval mode, and the run's description.

    `run_or_checkpoint`: a run folder, or one of its checkpoint folders. `checkpoint`: "latest", "best"
    (by the run's best_metric) or a checkpoint folder of the run."""
    path = storage.absolute(run_or_checkpoint)
    if storage.is_file(storage.join(path, STATE_FILE)):
        run, ckpt = storage.parent(path), path
    else:
        run = path
        ckpt = checkpoint_path(run, checkpoint) if checkpoint in ("latest", "best") else storage.absolute(checkpoint)
    info = read_run(run)
    model = SDN(dataclasses.replace(info.config.model, init_from=""), info.num_actions, info.num_scenes,
                info.config.loss.grl_alpha)
    state = load_state(ckpt)
    model.load_state_dict(state["model"])
    info.checkpoint = ckpt
    info.metrics = next((m for m in read_metrics(run) if m.get("checkpoint") == storage.name(ckpt)), {})
    return model.to(device).eval(), info


def backbone_weights(path: str) -> dict[str, torch.Tensor]:
    """The backbone weights that `model.init_from` names, keyed as in `models.build_backbone`'s module.

    `path`: one of our checkpoints (a checkpoint folder or a run folder: its latest checkpoint, or a
    state.pt), or a torchvision weights file (the whole video ResNet's state dict; its `fc` is dropped)."""
    def fail(message: str) -> ConfigError:
        return ConfigError(f"model.init_from: {path}: {message}")

    full = storage.absolute(path)
    if storage.is_dir(full):
        try:
            full = storage.join(checkpoint_path(full), STATE_FILE)
        except FileNotFoundError as e:
            raise fail(str(e)) from None
    if not storage.is_file(full):
        raise fail(f"no such file ({full})")
    try:
        state = torch.load(io.BytesIO(storage.read_bytes(full)), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise fail(f"cannot be read as torch weights ({type(e).__name__}: {e})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):  # our checkpoint
        return {k[len("backbone."):]: v for k, v in state["model"].items() if k.startswith("backbone.")}
    if isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values()):  # torchvision
        return {k: v for k, v in state.items() if not k.startswith("fc.")}
    raise fail("neither a pretrain checkpoint ({'model': ...}) nor a state dict of tensors")


def build_model(cfg: ModelConfig, num_actions: int, num_scenes: int, grl_alpha: float = 1.0) -> SDN:
    """A new SDN with its backbone initialised from `cfg.init_from` when set (the heads start fresh)."""
    model = SDN(cfg, num_actions, num_scenes, grl_alpha)
    if cfg.init_from:
        try:
            load_backbone(model.backbone, backbone_weights(cfg.init_from))
        except ValueError as e:
            raise ConfigError(f"model.init_from: {cfg.init_from}: {e}") from None
    return model


class RunWriter:
    """Rank 0's writer of a run's per-epoch outputs: metrics.jsonl, confusion matrices, TensorBoard.

    Object stores have no append: each epoch rewrites metrics.jsonl whole (a few KB). TensorBoard events
    go straight into RUN/tensorboard on a local disk; for a URI they are written to a local folder and
    uploaded after every epoch (tensorboardX's own S3 writer ignores AWS_ENDPOINT_URL)."""

    def __init__(self, run: str, tensorboard: bool) -> None:
        from tensorboardX import SummaryWriter

        self.run = run
        self.lines = [json.dumps(m) for m in read_metrics(run)]  # a resumed run keeps its earlier epochs
        self.events_dir = None
        self.events = None
        if tensorboard:
            local = not storage.is_uri(run)
            self.events_dir = storage.join(run, "tensorboard") if local else tempfile.mkdtemp(prefix="debias-tb-")
            self.events = SummaryWriter(logdir=self.events_dir, flush_secs=30)

    def epoch(self, metrics: dict[str, Any], confusion: dict[str, list[list[int]]]) -> None:
        epoch = metrics["epoch"]
        self.lines = [line for line in self.lines if json.loads(line)["epoch"] != epoch] + [json.dumps(metrics)]
        storage.write_text(storage.join(self.run, METRICS_FILE), "\n".join(self.lines) + "\n")
        for split, matrix in confusion.items():
            storage.write_json(storage.join(self.run, "confusion", f"{split}.json"),
                               {"epoch": epoch, "rows_true_cols_predicted": matrix})
        if self.events is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.events.add_scalar(key, value, global_step=epoch)
            self.events.flush()
            if storage.is_uri(self.run):
                storage.upload(self.events_dir, storage.join(self.run, "tensorboard"))

    def checkpoint(self, local_dir: str, name: str, keep: int, metric: str) -> None:
        """Ray Train's local mode keeps no checkpoint (scaling.num_workers 0): save the epoch's folder as
        RUN/NAME, as Ray does with workers, and keep what Ray's CheckpointConfig keeps: the `keep` best
        by `metric` (an epoch without it ranks last) and the latest. Call after `epoch`."""
        storage.upload(local_dir, storage.join(self.run, name))
        found = {storage.name(c): c for c in checkpoints(self.run)}
        scores = {m.get("checkpoint"): m.get(metric, math.nan) for m in map(json.loads, self.lines)}
        sign = 1.0 if higher_is_better(metric) else -1.0

        def rank(n: str) -> float:  # NaN (not evaluated) and unknown rank last
            score = scores.get(n, math.nan)
            return -math.inf if math.isnan(score) else sign * score

        kept = set(sorted(found, key=lambda n: (rank(n), n), reverse=True)[:keep]) | {max(found)}  # ties: the later, as Ray
        for n in set(found) - kept:
            storage.delete(found[n])

    def close(self) -> None:
        if self.events is not None:
            self.events.close()


def read_confusion(run: str) -> dict[str, list[list[int]]]:
    """Each eval split's confusion matrix at the run's latest epoch (rows: true class, columns: predicted)."""
    folder = storage.join(storage.absolute(run), "confusion")
    return {os.path.splitext(n)[0]: storage.read_json(storage.join(folder, n))["rows_true_cols_predicted"]
            for n in storage.list_dir(folder) if n.endswith(".json")}


def write_class_report(run: str, classes: list[str], in_split: str) -> list[dict]:
    """At the end of a run: per_class.json (each class's accuracy per eval split, its drop from `in_split`
    to the others: the actions that lean on their scene) and a confusion_SPLIT.png per split."""
    confusion = read_confusion(run)
    for split, matrix in confusion.items():
        plot_confusion(matrix, classes, storage.join(run, f"confusion_{split}.png"), f"{storage.name(run)}: {split}")
    rows = class_drops(confusion, classes, in_split) if in_split in confusion else []
    storage.write_json(storage.join(run, "per_class.json"), rows)
    return rows
