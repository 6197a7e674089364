"""The debiased trainer: plain `train_one_epoch` / `evaluate` functions and the Ray Train worker loop.

Nothing here needs Ray: the configs, the epoch functions, the optimizer and the LR schedule run on
in-memory batches, in one process or under torch.distributed (the tests do both). The Ray Train worker
loop that calls them, and the driver that fits it, are `debias.training.pretrain`.

Every choice of the paper and of its official code is a config key: the update (joint: one summed
loss; alternating: a step on action + scene, then a step on the masked clips), the GRL scale
(constant or DANN's schedule), the mask head (shared or separate), the LR schedule (cosine, step,
plateau) and a warm-up that trains only the new heads.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import torch

from debias.training.clips import ClipConfig
from debias.config import PathStr, check
from debias.training.losses import (
    action_loss,
    entropy,
    mask_confusion_loss,
    mask_head_loss,
    scene_loss,
)
from debias.training.metrics import higher_is_better
from debias.training.models import SDN, ModelConfig
from debias.training.selection import check_not_reporting, scene_balanced_accuracy
from debias.training.tracking import TrackingConfig


@dataclass
class LossConfig:
    # Weight of the adversarial scene loss, as the official code applies it: the scene head always learns
    # from L_scene with weight 1 (at its own rate), and the backbone gets -grl_alpha * lambda_scene *
    # dL_scene through the reversal. 0 = no adversary: the head is then a probe the backbone never sees.
    # The two weights' defaults are the demo's, chosen on ood_val (configs/sweep/demo.yaml; docs/findings.md).
    lambda_scene: float = 0.2
    lambda_mask: float = 1.0  # weight of the human-mask confusion loss (0 = none); both 0 = baseline
    grl_alpha: float = 1.0  # gradient reversal scale: the backbone gets -alpha * lambda_scene * dL_scene
    # constant: grl_alpha throughout; dann: grl_alpha * (2 / (1 + exp(-10 p)) - 1) with p = epoch / epochs
    # (Ganin & Lempitsky: no reversed gradient while the adversary is still guessing, full scale later)
    grl_schedule: Literal["constant", "dann"] = "constant"
    scene_target: Literal["soft", "hard"] = "soft"
    # joint: L_action + lambda_scene L_scene + lambda_mask L_mask in one step on clean + masked clips
    # (one forward pass over both). alternating (official code): a step on action + scene loss over
    # the clean clips, then a second step on lambda_mask L_mask over their masked twins.
    update: Literal["joint", "alternating"] = "joint"

    def __post_init__(self) -> None:
        for key in ("lambda_scene", "lambda_mask", "grl_alpha"):
            check(getattr(self, key) >= 0, key, "must be >= 0")

    def grl_alpha_at(self, epoch: int, epochs: int) -> float:
        if self.grl_schedule == "constant":
            return self.grl_alpha
        return self.grl_alpha * (2.0 / (1.0 + math.exp(-10.0 * epoch / epochs)) - 1.0)


@dataclass
class OptimConfig:
    lr: float = 0.05
    momentum: float = 0.9
    dampening: float = 0.0  # SGD momentum dampening (official code: 0.9)
    weight_decay: float = 1e-4
    batch_size: int = 32  # per worker
    epochs: int = 30
    # cosine: to 0 over the epochs after warm-up; step: x lr_gamma at each of lr_milestones_epochs;
    # plateau: x lr_gamma when plateau_metric has not improved for plateau_patience_epochs (official code)
    schedule: Literal["cosine", "step", "plateau", "constant"] = "cosine"
    lr_milestones_epochs: list[int] = field(default_factory=list)
    lr_gamma: float = 0.1
    plateau_metric: str = "train_loss"  # any per-epoch metric (e.g. val_loss), in its direction (debias.training.metrics)
    plateau_patience_epochs: int = 10
    # Warm-up of the new heads (official scene-only stage: 5 epochs at 1e-2): the backbone is held
    # still (no update, no momentum) while the heads train at head_warmup_lr.
    head_warmup_epochs: int = 0
    head_warmup_lr: float = 0.01

    def __post_init__(self) -> None:
        check(self.lr > 0, "lr", "must be > 0")
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        check(self.epochs >= 1, "epochs", "must be >= 1")
        check(0 <= self.dampening < 1, "dampening", "must be in [0, 1)")
        check(0 < self.lr_gamma <= 1, "lr_gamma", "must be in (0, 1]")
        check(self.plateau_patience_epochs >= 0, "plateau_patience_epochs", "must be >= 0")
        check(0 <= self.head_warmup_epochs < self.epochs, "head_warmup_epochs", "must be in [0, epochs)")
        check(self.head_warmup_lr > 0, "head_warmup_lr", "must be > 0")
        check(self.schedule != "step" or bool(self.lr_milestones_epochs), "lr_milestones_epochs",
              "the step schedule needs at least one milestone epoch")


@dataclass
class ScalingConfig:
    # 0: Ray Train's local mode: the loop runs in the process that calls fit, without the controller,
    # worker and dataset-split actors a worker group starts (a dozen processes, each importing torch),
    # for models that train in seconds an epoch (the demo's). Ray then keeps no checkpoint: the run
    # writer saves them in the run folder itself, the same layout (debias.training.runs.RunWriter.checkpoint).
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 2.0  # also the torch thread count of a CPU worker
    max_failures: int = 0  # worker-group restarts (from the last checkpoint) before the run fails
    # GPU with several workers: BatchNorm statistics over the global batch (nn.SyncBatchNorm), for
    # few clips per GPU. Off: per-GPU statistics, as the official code's DataParallel had.
    sync_batchnorm: bool = False

    def __post_init__(self) -> None:
        check(self.num_workers >= 0, "num_workers", "must be >= 0 (0: Ray Train's local mode)")
        check(self.num_workers > 0 or self.max_failures == 0, "max_failures",
              "local mode (num_workers 0) has no worker group to restart: needs max_failures 0")
        check(self.cpus_per_worker > 0, "cpus_per_worker", "must be > 0")
        check(self.max_failures >= -1, "max_failures", "must be >= 0 (or -1: unlimited)")


@dataclass
class LoaderConfig:
    cache_rows: bool = True  # hold each split's shard rows (JPEG bytes) in Ray's object store after the
    #                          first read; for datasets that fit in memory: saves a Parquet scan per epoch
    # Render the evaluation clips once per run and hold them in the object store, rather than once per
    # evaluated epoch: they are the same every time (centre windows, seeded fills). Decoded clips and
    # their masked twins take several times the JPEG rows' memory: for small data (the demo's).
    cache_eval_clips: bool = False
    # Where JPEGs become clips: tasks = Ray Data CPU tasks (OpenCV); device = the training worker's
    # device, in Ray's prefetch threads (nvJPEG + crops + masked twin on the GPU; CPU tasks only draw
    # windows). auto = device when training on GPUs (CPU rendering needs ~25 cores per H200), else tasks.
    decode_on: Literal["auto", "tasks", "device"] = "auto"
    clip_cpus: float = 0.5  # CPUs per Ray Data task that plans (and with decode_on=tasks, renders) clips
    prefetch_batches: int = 2  # also the number of threads that render clips with decode_on=device


@dataclass
class PretrainConfig:
    shards: PathStr = "out/shards"  # preprocess output folder (holds shards/ and classes.json)
    out: PathStr = "out/pretrain"  # storage path; the run lives in OUT/NAME
    name: str = "sdn"
    seed: int = 0
    train_split: str = "train"
    eval_splits: list[str] = field(default_factory=lambda: ["val", "ood_val", "ood_test"])
    # Claims are read on report_splits, so nothing chooses on them (best_metric, plateau_metric, a sweep's
    # metric); a sweep chooses on selection_splits (scenes independent of the action, no claim read
    # there) or on a scene-balanced accuracy (debias/training/selection.py). Need not be among eval_splits.
    report_splits: list[str] = field(default_factory=lambda: ["ood_test"])
    selection_splits: list[str] = field(default_factory=lambda: ["ood_val"])
    eval_every_epochs: int = 1  # evaluate the eval splits every N epochs, and always after the last
    tensorboard: bool = True  # also write the per-epoch metrics as TensorBoard events in OUT/NAME/tensorboard
    # ranks the checkpoints ("best" in `debias predict/export --checkpoint best`); "" = the first eval
    # split's accuracy. Maximised when it ends in acc/top5 or holds "entropy", else minimised.
    best_metric: str = ""
    checkpoint_keep: int = 2  # best checkpoints kept by best_metric (Ray keeps the latest besides)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)  # MLflow / W&B beside the run's own files

    def __post_init__(self) -> None:
        check(self.checkpoint_keep >= 1, "checkpoint_keep", "must be >= 1")
        check(self.eval_every_epochs >= 1, "eval_every_epochs", f"must be >= 1, got {self.eval_every_epochs}")
        check(self.eval_every_epochs == 1 or self.optim.schedule != "plateau" or self.optim.plateau_metric.startswith("train_"),
              "eval_every_epochs", f"must be 1 when optim.plateau_metric={self.optim.plateau_metric!r} (an eval "
              "metric) drives the plateau schedule: it reads the metric every epoch")
        check(not set(self.report_splits) & set(self.selection_splits), "selection_splits",
              f"must not share a split with report_splits {self.report_splits}")
        prefixes = ("train_", *(f"{s}_" for s in self.eval_splits))
        check(not self.best_metric or self.best_metric.startswith(prefixes), "best_metric",
              f"must be a per-epoch metric of train_split or an eval split (a name starting with {list(prefixes)}), "
              f"got {self.best_metric!r}")
        # the default ("" = the first eval split's acc, debias.training.runs.best_metric) is a choice as well
        ranked_by = self.best_metric or (f"{self.eval_splits[0]}_acc" if self.eval_splits else "train_acc")
        check_not_reporting(ranked_by, self.report_splits, "best_metric")
        if self.optim.schedule == "plateau":
            check_not_reporting(self.optim.plateau_metric, self.report_splits, "optim.plateau_metric")


Batch = dict[str, torch.Tensor]


def decode_on_device(cfg: PretrainConfig) -> bool:
    """Whether the training workers render clips themselves (`ClipCollate`) rather than Ray Data tasks."""
    return cfg.loader.decode_on == "device" or (cfg.loader.decode_on == "auto" and cfg.scaling.use_gpu)


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _global_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum per-worker totals over all workers (a no-op on one process)."""
    if not _distributed():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return t.tolist()


def _step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor, train_backbone: bool) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if not train_backbone:  # head warm-up: SGD skips parameters without a gradient (no momentum, no decay)
        for p in getattr(model, "module", model).backbone.parameters():
            p.grad = None
    optimizer.step()


def train_one_epoch(model: torch.nn.Module, batches: Iterable[Batch], optimizer: torch.optim.Optimizer,
                    loss_cfg: LossConfig, device: torch.device, train_backbone: bool = True) -> dict[str, float]:
    """One pass over `batches` (joint or alternating update); returns means over the epoch (all workers).

    `model`: an SDN, or one wrapped by DDP. Each batch: clips (B, T, H, W, 3) uint8, label_id (B,),
    scene_id (B,), scene_probs (B, S), and, when lambda_mask > 0, masked (B, T, H, W, 3) uint8 and
    mask_valid (B,). `train_backbone=False` (head warm-up) leaves the backbone untouched.
    Metrics: loss, action_loss, scene_loss, mask_loss, masked_entropy (of the action head on the masked
    clips), acc (action top-1), scene_acc (the adversary's accuracy).
    """
    model.train()
    use_mask = loss_cfg.lambda_mask > 0
    core = getattr(model, "module", model)
    core.set_scene_weight(loss_cfg.lambda_scene)  # lambda_scene acts in the reversal, see LossConfig
    separate_head = core.mask_head is not None
    mask_term = mask_head_loss if separate_head else mask_confusion_loss
    autocast = {"device_type": device.type, "dtype": torch.bfloat16, "enabled": device.type == "cuda"}
    # Running sums stay on the device: a per-step .item() would make the CPU wait for every step,
    # leaving the GPU idle while the next one is launched and its batch fetched.
    sums = {k: torch.zeros((), dtype=torch.float64, device=device) for k in
            ("loss", "action_loss", "scene_loss", "mask_loss", "correct", "scene_correct", "masked_entropy", "n")}
    for batch in batches:
        clips = batch["clips"].to(device, non_blocking=True)
        labels = batch["label_id"].to(device).long()
        target = batch["scene_probs" if loss_cfg.scene_target == "soft" else "scene_id"].to(device)
        b = len(labels)
        joint_masked = use_mask and loss_cfg.update == "joint"
        x = torch.cat([clips, batch["masked"].to(device, non_blocking=True)]) if joint_masked else clips
        with torch.autocast(**autocast):
            out = model(x)
        action_logits, scene_logits = out.action[:b].float(), out.scene[:b].float()
        l_action = action_loss(action_logits, labels)
        l_scene = scene_loss(scene_logits, target)
        loss = l_action + l_scene  # the head learns at weight 1; lambda_scene scales its reversed gradient
        if use_mask:
            if joint_masked:
                masked_action, masked_head = out.action[b:].float(), out.mask[b:].float()
            else:  # alternating: the clean step first, then a forward + step on the masked twins
                _step(model, optimizer, loss, train_backbone)
                with torch.autocast(**autocast):
                    masked_out = model(batch["masked"].to(device, non_blocking=True))
                masked_action, masked_head = masked_out.action.float(), masked_out.mask.float()
            l_mask = mask_term(masked_head, batch["mask_valid"].to(device))
            weighted = loss_cfg.lambda_mask * l_mask
            _step(model, optimizer, loss + weighted if joint_masked else weighted, train_backbone)
            loss = loss.detach() + weighted.detach()
            sums["mask_loss"] += l_mask.detach() * b
            sums["masked_entropy"] += entropy(masked_action.detach()).sum()
        else:
            _step(model, optimizer, loss, train_backbone)
        sums["loss"] += loss.detach() * b
        sums["action_loss"] += l_action.detach() * b
        sums["scene_loss"] += l_scene.detach() * b
        sums["correct"] += (action_logits.argmax(1) == labels).sum()
        sums["scene_correct"] += (scene_logits.argmax(1) == batch["scene_id"].to(device)).sum()
        sums["n"] += b
    totals = dict(zip(sums, _global_sum(torch.stack(list(sums.values())).tolist(), device)))
    n = max(totals.pop("n"), 1.0)
    correct, scene_correct = totals.pop("correct"), totals.pop("scene_correct")
    metrics = {k: v / n for k, v in totals.items()}
    metrics.update(acc=correct / n, scene_acc=scene_correct / n)
    if not use_mask:
        del metrics["mask_loss"], metrics["masked_entropy"]
    return metrics


def _topk_hits(probs: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    return (probs.topk(min(k, probs.shape[1]), dim=1).indices == labels[:, None]).any(dim=1).sum().item()


@torch.no_grad()
def evaluate(model: SDN, batches: Iterable[Batch], device: torch.device) -> dict[str, float | list[list[int]]]:
    """Action loss and accuracy per clip, accuracy per video (mean softmax over a video's clips: rows sharing
    `video_key`), top-1 and top-5; the scene head's accuracy (how much scene the features still carry);
    and, when batches hold masked clips, the mean entropy of the masked-clip prediction.

    Keys: loss (action cross-entropy per clip), acc, top5, scene_acc, video_acc, video_top5 and scene_balanced_acc
    (per video, each (action, scene) pair weighing the same: debias.training.selection) if batches hold video_key, masked_entropy
    (if batches hold masked clips), and confusion: (A, A) nested lists of counts, row = true class, column =
    predicted, per video (mean softmax) when batches hold video_key, else per clip; its diagonal over its row
    sums is the per-class accuracy (which actions lean on the scene: compare an in-distribution split's with
    an out-of-context one's).
    """
    model.eval()
    autocast = {"device_type": device.type, "dtype": torch.bfloat16, "enabled": device.type == "cuda"}
    sums = {"loss": 0.0, "correct": 0.0, "top5": 0.0, "scene_correct": 0.0, "masked_entropy": 0.0, "masked_n": 0.0,
            "n": 0.0}
    confusion = None  # (A, A) clip-level counts, once the first batch tells A
    videos: dict[int, list] = {}  # video_key -> [sum of softmax (A,), number of clips, label]
    for batch in batches:
        clips = batch["clips"].to(device)
        labels = batch["label_id"].to(device).long()
        with torch.autocast(**autocast):
            out = model(clips)
            if "masked" in batch:
                masked_action = model(batch["masked"].to(device)).action.float()
                sums["masked_entropy"] += entropy(masked_action).sum().item()
                sums["masked_n"] += len(labels)
        probs = out.action.float().softmax(dim=1)
        sums["loss"] += action_loss(out.action.float(), labels).item() * len(labels)
        sums["correct"] += _topk_hits(probs, labels, 1)
        sums["top5"] += _topk_hits(probs, labels, 5)
        sums["scene_correct"] += (out.scene.argmax(1) == batch["scene_id"].to(device)).sum().item()
        sums["n"] += len(labels)
        if confusion is None:
            confusion = torch.zeros(probs.shape[1], probs.shape[1], dtype=torch.float64)
        confusion.index_put_((labels.cpu(), probs.argmax(1).cpu()), torch.ones(len(labels), dtype=torch.float64),
                             accumulate=True)
        for key, p, label, scene in zip(batch["video_key"].tolist() if "video_key" in batch else [],
                                        probs.cpu(), labels.tolist(), batch["scene_id"].tolist()):
            entry = videos.setdefault(key, [torch.zeros_like(p), 0, label, scene])
            entry[0] += p
            entry[1] += 1
    t = dict(zip(sums, _global_sum(list(sums.values()), device)))
    n = max(t["n"], 1.0)
    out_metrics = {"loss": t["loss"] / n, "acc": t["correct"] / n, "top5": t["top5"] / n,
                   "scene_acc": t["scene_correct"] / n}
    if _distributed():  # a video's clips may sit on several workers: merge the per-video sums
        gathered: list = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, videos)
        videos = {}
        for part in gathered:
            for key, (p, count, label, scene) in part.items():
                entry = videos.setdefault(key, [torch.zeros_like(p), 0, label, scene])
                entry[0] += p
                entry[1] += count
    if videos:
        probs = torch.stack([p / count for p, count, *_ in videos.values()])
        labels = torch.tensor([label for _, _, label, _ in videos.values()])
        scenes = torch.tensor([scene for *_, scene in videos.values()])
        out_metrics.update(video_acc=_topk_hits(probs, labels, 1) / len(videos),
                           video_top5=_topk_hits(probs, labels, 5) / len(videos),
                           scene_balanced_acc=scene_balanced_accuracy(probs.argmax(1), labels, scenes))
        confusion = torch.zeros(probs.shape[1], probs.shape[1], dtype=torch.float64)
        confusion.index_put_((labels, probs.argmax(1)), torch.ones(len(labels), dtype=torch.float64), accumulate=True)
    elif confusion is not None:  # per clip: each worker counted its own clips
        confusion = torch.tensor(_global_sum(confusion.flatten().tolist(), device), dtype=torch.float64).view_as(confusion)
    if confusion is not None:
        out_metrics["confusion"] = confusion.long().tolist()
    if t["masked_n"]:
        out_metrics["masked_entropy"] = t["masked_entropy"] / t["masked_n"]
    return out_metrics


def make_optimizer(model: SDN, cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD over two parameter groups, backbone then heads (the warm-up gives them different rates)."""
    groups = [{"params": list(model.backbone.parameters())}, {"params": model.head_parameters()}]
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, dampening=cfg.dampening,
                           weight_decay=cfg.weight_decay)


class LRSchedule:
    """Per-epoch learning rates of the (backbone, heads) groups: head warm-up, then cosine, step,
    plateau or constant. Closed-form in the epoch (plus the plateau's state), so a resumed run gets
    exactly the rates the uninterrupted run would have had."""

    def __init__(self, cfg: OptimConfig) -> None:
        self.cfg = cfg
        self.plateau_factor, self.best, self.bad_epochs = 1.0, None, 0

    def lrs(self, epoch: int) -> tuple[float, float]:
        c = self.cfg
        if epoch < c.head_warmup_epochs:
            return 0.0, c.head_warmup_lr
        if c.schedule == "cosine":
            factor = 0.5 * (1.0 + math.cos(math.pi * (epoch - c.head_warmup_epochs) / (c.epochs - c.head_warmup_epochs)))
        elif c.schedule == "step":
            factor = c.lr_gamma ** sum(epoch >= m for m in c.lr_milestones_epochs)
        elif c.schedule == "plateau":
            factor = self.plateau_factor
        else:
            factor = 1.0
        return c.lr * factor, c.lr * factor

    def apply(self, optimizer: torch.optim.Optimizer, epoch: int) -> None:
        for group, lr in zip(optimizer.param_groups, self.lrs(epoch)):
            group["lr"] = lr

    def observe(self, epoch: int, metrics: dict[str, float]) -> None:
        """After an epoch: the plateau schedule reads its metric."""
        c = self.cfg
        if c.schedule != "plateau" or epoch < c.head_warmup_epochs:
            return
        if c.plateau_metric not in metrics:
            raise KeyError(f"optim.plateau_metric: no metric {c.plateau_metric!r}; this run reports {sorted(metrics)}")
        value = metrics[c.plateau_metric]
        sign = 1.0 if higher_is_better(c.plateau_metric) else -1.0
        if self.best is None or sign * value > sign * self.best:
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs > c.plateau_patience_epochs:
                self.plateau_factor *= c.lr_gamma
                self.bad_epochs = 0

    def state_dict(self) -> dict:
        return {"plateau_factor": self.plateau_factor, "best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.plateau_factor, self.best, self.bad_epochs = state["plateau_factor"], state["best"], state["bad_epochs"]
