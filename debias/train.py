"""The debiased trainer: plain `train_one_epoch` / `evaluate` functions and the Ray Train worker loop.

`train_loop_per_worker` is what `ray_jobs/pretrain.py` hands to `TorchTrainer`; everything else here
runs without Ray (the tests call it on in-memory batches).
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal

import torch

from debias.clips import ClipConfig
from debias.config import check, from_dict
from debias.losses import action_loss, entropy, mask_confusion_loss, scene_loss
from debias.models import SDN, ModelConfig


@dataclass
class LossConfig:
    lambda_scene: float = 0.2  # weight of the adversarial scene loss (0 = no scene adversary)
    lambda_mask: float = 1.0  # weight of the human-mask confusion loss (0 = none); both 0 = baseline
    grl_alpha: float = 1.0  # gradient reversal scale: the backbone gets -alpha * lambda_scene * dL_scene
    scene_target: Literal["soft", "hard"] = "soft"

    def __post_init__(self) -> None:
        for key in ("lambda_scene", "lambda_mask", "grl_alpha"):
            check(getattr(self, key) >= 0, key, "must be >= 0")


@dataclass
class OptimConfig:
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 32  # per worker
    epochs: int = 30
    schedule: Literal["cosine", "constant"] = "cosine"

    def __post_init__(self) -> None:
        check(self.lr > 0, "lr", "must be > 0")
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        check(self.epochs >= 1, "epochs", "must be >= 1")


@dataclass
class ScalingConfig:
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 2.0  # also the torch thread count of a CPU worker
    max_failures: int = 0  # worker-group restarts (from the last checkpoint) before the run fails

    def __post_init__(self) -> None:
        check(self.num_workers >= 1, "num_workers", "must be >= 1")
        check(self.cpus_per_worker > 0, "cpus_per_worker", "must be > 0")


@dataclass
class LoaderConfig:
    cache_rows: bool = True  # hold each split's shard rows (JPEG bytes) in Ray's object store after the
    #                          first read; for datasets that fit in memory: saves a Parquet scan per epoch
    clip_cpus: float = 0.5  # CPUs per Ray Data task that decodes JPEGs into clips
    prefetch_batches: int = 2


@dataclass
class PretrainConfig:
    shards: str = "out/shards"  # preprocess output folder (holds shards/ and classes.json)
    out: str = "out/pretrain"  # storage path; the run lives in OUT/NAME
    name: str = "sdn"
    seed: int = 0
    train_split: str = "train"
    eval_splits: list[str] = field(default_factory=lambda: ["val", "ood"])
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)


Batch = dict[str, torch.Tensor]


def _global_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum per-worker totals over all workers (a no-op on one process)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return t.tolist()


def train_one_epoch(model: SDN, batches: Iterable[Batch], optimizer: torch.optim.Optimizer, loss_cfg: LossConfig,
                    device: torch.device) -> dict[str, float]:
    """One pass over `batches` with the joint SDN update; returns means over the epoch (all workers).

    Each batch: clips (B, T, H, W, 3) uint8, label_id (B,), scene_id (B,), scene_probs (B, S), and, when
    lambda_mask > 0, masked (B, T, H, W, 3) uint8 and mask_valid (B,). Clean and masked clips go through
    one forward pass (one DDP synchronisation, one set of BatchNorm statistics).
    """
    model.train()
    use_mask = loss_cfg.lambda_mask > 0
    sums = {"loss": 0.0, "action_loss": 0.0, "scene_loss": 0.0, "mask_loss": 0.0, "correct": 0.0,
            "scene_correct": 0.0, "masked_entropy": 0.0, "n": 0.0}
    for batch in batches:
        clips = batch["clips"].to(device, non_blocking=True)
        labels = batch["label_id"].to(device).long()
        b = len(labels)
        x = torch.cat([clips, batch["masked"].to(device, non_blocking=True)]) if use_mask else clips
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            action_logits, scene_logits = model(x)
        action_logits, scene_logits = action_logits.float(), scene_logits.float()
        clean_logits = action_logits[:b]
        target = batch["scene_probs" if loss_cfg.scene_target == "soft" else "scene_id"].to(device)
        l_action = action_loss(clean_logits, labels)
        l_scene = scene_loss(scene_logits[:b], target)
        loss = l_action + loss_cfg.lambda_scene * l_scene
        if use_mask:
            masked_logits = action_logits[b:]
            l_mask = mask_confusion_loss(masked_logits, batch["mask_valid"].to(device))
            loss = loss + loss_cfg.lambda_mask * l_mask
            sums["mask_loss"] += l_mask.item() * b
            sums["masked_entropy"] += entropy(masked_logits.detach()).sum().item()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sums["loss"] += loss.item() * b
        sums["action_loss"] += l_action.item() * b
        sums["scene_loss"] += l_scene.item() * b
        sums["correct"] += (clean_logits.argmax(1) == labels).sum().item()
        sums["scene_correct"] += (scene_logits[:b].argmax(1) == batch["scene_id"].to(device)).sum().item()
        sums["n"] += b
    totals = dict(zip(sums, _global_sum(list(sums.values()), device)))
    n = max(totals.pop("n"), 1.0)
    correct, scene_correct = totals.pop("correct"), totals.pop("scene_correct")
    metrics = {k: v / n for k, v in totals.items()}
    metrics.update(acc=correct / n, scene_acc=scene_correct / n)
    if not use_mask:
        del metrics["mask_loss"], metrics["masked_entropy"]
    return metrics


@torch.no_grad()
def evaluate(model: SDN, batches: Iterable[Batch], device: torch.device) -> dict[str, float]:
    """Clip-level top-1 action accuracy, the scene head's accuracy (how much scene the features still
    carry) and, when batches hold masked clips, the mean entropy of the masked-clip prediction."""
    model.eval()
    sums = {"correct": 0.0, "scene_correct": 0.0, "masked_entropy": 0.0, "masked_n": 0.0, "n": 0.0}
    for batch in batches:
        clips = batch["clips"].to(device)
        labels = batch["label_id"].to(device).long()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            action_logits, scene_logits = model(clips)
            if "masked" in batch:
                masked_logits, _ = model(batch["masked"].to(device))
                sums["masked_entropy"] += entropy(masked_logits.float()).sum().item()
                sums["masked_n"] += len(labels)
        sums["correct"] += (action_logits.argmax(1) == labels).sum().item()
        sums["scene_correct"] += (scene_logits.argmax(1) == batch["scene_id"].to(device)).sum().item()
        sums["n"] += len(labels)
    t = dict(zip(sums, _global_sum(list(sums.values()), device)))
    out = {"acc": t["correct"] / max(t["n"], 1.0), "scene_acc": t["scene_correct"] / max(t["n"], 1.0)}
    if t["masked_n"]:
        out["masked_entropy"] = t["masked_entropy"] / t["masked_n"]
    return out


def make_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _epoch: 1.0)
    return optimizer, scheduler


def train_loop_per_worker(config: dict) -> None:
    """Ray Train worker: `config` = {"cfg": PretrainConfig as a dict, "num_actions", "num_scenes"}.

    Resumes from the run's latest checkpoint when there is one; reports (and checkpoints) each epoch
    and appends the epoch's metrics to OUT/NAME/metrics.jsonl from rank 0.
    """
    import ray.train
    import ray.train.torch

    cfg = from_dict(PretrainConfig, config["cfg"])
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(cfg.scaling.cpus_per_worker)))
    torch.manual_seed(cfg.seed)  # same initial weights on every worker (DDP also broadcasts them)
    model = SDN(cfg.model, config["num_actions"], config["num_scenes"], cfg.loss.grl_alpha)
    model = ray.train.torch.prepare_model(model)
    core: SDN = model.module if hasattr(model, "module") else model
    optimizer, scheduler = make_optimizer(model, cfg.optim)
    start_epoch = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = torch.load(Path(d) / "state.pt", map_location=device, weights_only=True)
        core.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch = state["epoch"] + 1
    metrics_file = Path(cfg.out).resolve() / cfg.name / "metrics.jsonl"
    iter_args = {"batch_size": cfg.optim.batch_size, "prefetch_batches": cfg.loader.prefetch_batches}
    for epoch in range(start_epoch, cfg.optim.epochs):
        train_shard = ray.train.get_dataset_shard(cfg.train_split)
        metrics: dict = {"epoch": epoch, "lr": scheduler.get_last_lr()[0]}
        t0 = time.perf_counter()
        batches = train_shard.iter_torch_batches(**iter_args, local_shuffle_buffer_size=4 * cfg.optim.batch_size,
                                                 local_shuffle_seed=cfg.seed + epoch)
        metrics.update({f"train_{k}": v for k, v in train_one_epoch(model, batches, optimizer, cfg.loss, device).items()})
        scheduler.step()
        t1 = time.perf_counter()
        for split in cfg.eval_splits:
            result = evaluate(core, ray.train.get_dataset_shard(split).iter_torch_batches(**iter_args), device)
            metrics.update({f"{split}_{k}": v for k, v in result.items()})
        metrics.update(train_time_s=t1 - t0, eval_time_s=time.perf_counter() - t1)
        with tempfile.TemporaryDirectory() as d:
            saved = None
            if rank == 0:
                torch.save({"model": core.state_dict(), "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(), "epoch": epoch}, Path(d) / "state.pt")
                metrics_file.parent.mkdir(parents=True, exist_ok=True)
                with open(metrics_file, "a") as f:
                    f.write(json.dumps(metrics) + "\n")
                saved = ray.train.Checkpoint.from_directory(d)
            ray.train.report(metrics, checkpoint=saved)
        if rank == 0:
            shown = {k: round(v, 3) for k, v in metrics.items() if k.endswith(("acc", "loss", "entropy", "_s"))}
            print(f"[{cfg.name}] epoch {epoch + 1}/{cfg.optim.epochs} {shown}", flush=True)


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The per-epoch metrics a run wrote (latest run of each epoch wins after a resume)."""
    path = Path(run_dir) / "metrics.jsonl"
    by_epoch: dict[int, dict] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                m = json.loads(line)
                by_epoch[m["epoch"]] = m
    return [by_epoch[e] for e in sorted(by_epoch)]

