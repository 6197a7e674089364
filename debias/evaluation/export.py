"""Export a run's backbone for reuse outside this project, with a model card; per-class results.

OUT/backbone.pth and OUT/backbone.safetensors hold the backbone's state dict under torchvision's own key
names: `torchvision.models.video.r3d_18()` (or mc3_18, r2plus1d_18) `.load_state_dict(sd, strict=False)`
leaves only `fc.weight` / `fc.bias` missing. OUT/fc.safetensors holds the action head as that `fc`, so
`r3d_18(num_classes=len(classes))` loads both strictly and gives the run's action logits. r3d_narrow has
no torchvision twin: its state dict is exported all the same (keys of `debias.training.models.narrow_r3d`), and the
card says so. OUT/model_card.json and OUT/model_card.md describe the export: classes, preprocessing,
training config and loss weights, metrics at the exported checkpoint, the shards' summary digest, and
per class the accuracy on each eval split with its drop from in-distribution to out-of-context (which
actions lean on the scene), with a confusion-matrix plot per split.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass

import torch

from debias import storage
from debias.config import check, to_dict
from debias.report import table
from debias.training.confusion import class_drops, plot_confusion
from debias.training.runs import RunInfo, load_model, read_confusion, read_metrics

TORCHVISION_TWINS = {"r3d_18", "mc3_18", "r2plus1d_18"}  # backbones that are torchvision's own constructors


@dataclass
class ExportConfig:
    run: str = ""  # the training run folder (OUT/NAME), local or a URI
    checkpoint: str = "latest"  # latest, best (by the run's best_metric) or a checkpoint path
    out: str = "out/export"

    def __post_init__(self) -> None:
        check(bool(self.run), "run", "needs the training run folder (--run RUN)")


def _state_bytes(state: dict[str, torch.Tensor]) -> tuple[bytes, bytes]:
    """A state dict as torch.save bytes and as safetensors bytes."""
    from safetensors.torch import save

    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue(), save({k: v.contiguous() for k, v in state.items()})


def model_card(info: RunInfo, files: dict[str, str], feature_dim: int,
               confusions: dict[str, list[list[int]]], confusion_epoch: int | None) -> dict:
    """The model card's content (what model_card.json holds). `files`: name -> sha256. `confusions`:
    per eval split, the run's confusion matrix at `confusion_epoch` (the run's latest epoch)."""
    cfg = info.config
    backbone = cfg.model.backbone
    twin = backbone in TORCHVISION_TWINS
    loss = cfg.loss
    in_split = cfg.eval_splits[0] if cfg.eval_splits else ""
    return {
        "run": info.uri,
        "checkpoint": info.checkpoint,
        "epoch": info.metrics.get("epoch"),
        "backbone": backbone,
        "torchvision_constructor": f"torchvision.models.video.{backbone}" if twin else None,
        "loading": (f"{backbone}(num_classes={info.num_actions}); load_state_dict(backbone) with strict=False "
                    "leaves only fc.* missing; fc.safetensors holds the action head as fc" if twin else
                    f"r3d_narrow has no torchvision twin: debias.training.models.narrow_r3d(width={cfg.model.width}, "
                    f"blocks={cfg.model.blocks}).load_state_dict(backbone); fc.safetensors: nn.Linear({feature_dim}, "
                    f"{info.num_actions}) as fc"),
        "feature_dim": feature_dim,
        "files": files,
        "classes": info.classes,
        "preprocessing": info.preprocessing,
        "loss_weights": {"lambda_scene": loss.lambda_scene, "lambda_mask": loss.lambda_mask,
                         "grl_alpha": loss.grl_alpha, "grl_schedule": loss.grl_schedule,
                         "scene_target": loss.scene_target, "update": loss.update},
        "training_config": to_dict(cfg),
        "metrics": {k: v for k, v in info.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
        "data": {"shards": cfg.shards, "summary_sha256": info.data_digest},
        # the run keeps the confusion of its latest epoch only: the exported checkpoint's unless it is "best"
        "per_class": {"in_distribution_split": in_split, "epoch": confusion_epoch,
                      "rows": class_drops(confusions, info.classes, in_split) if confusions else []},
    }


def card_markdown(card: dict) -> str:
    """model_card.md: the card for people."""
    metrics = card["metrics"]
    shown = {k: v for k, v in metrics.items() if k.endswith(("acc", "top5", "loss"))}
    lines = [f"# Model card: {card['backbone']} from {card['run']}", "",
             f"Checkpoint `{card['checkpoint']}` (epoch {card['epoch']}).", "",
             "## Loading", "", card["loading"] + ".", "",
             "Input: (B, 3, T, H, W) float RGB in [0, 1], normalised with mean "
             f"{card['preprocessing']['mean']} and std {card['preprocessing']['std']} (torchvision's video "
             "models' convention); this project's SDN takes (B, T, H, W, 3) uint8 RGB and normalises itself.", "",
             "## Files", "", table([{"file": k, "sha256": v} for k, v in card["files"].items()], ["file", "sha256"]), "",
             f"## Classes ({len(card['classes'])})", "", ", ".join(card["classes"]), "",
             "## Preprocessing", "", "```json", json.dumps(card["preprocessing"], indent=1), "```", "",
             "## Training", "", "Loss weights: " + ", ".join(f"{k}={v}" for k, v in card["loss_weights"].items()) + ".",
             f"Shards: `{card['data']['shards']}`, summary.json sha256 `{card['data']['summary_sha256']}`.", "",
             "## Metrics at this checkpoint", "",
             table([{"metric": k, "value": v} for k, v in sorted(shown.items())], ["metric", "value"]), ""]
    rows = card["per_class"]["rows"]
    if rows:
        columns = list(rows[0])
        lines += ["## Per class: which actions lean on the scene", "",
                  f"Accuracy per eval split (epoch {card['per_class']['epoch']}); drop = "
                  f"{card['per_class']['in_distribution_split']} accuracy minus the split's, largest first.", "",
                  table(rows, columns), ""]
    lines += ["## Full training config", "", "```json", json.dumps(card["training_config"], indent=1), "```", ""]
    return "\n".join(lines)


def export_run(cfg: ExportConfig) -> dict:
    """Write OUT/backbone.pth, backbone.safetensors, fc.safetensors, model_card.json, model_card.md and
    confusion_SPLIT.png per eval split; returns the card."""
    model, info = load_model(cfg.run, cfg.checkpoint)
    backbone = model.backbone.state_dict()
    head = {"fc.weight": model.action_head.weight.detach(), "fc.bias": model.action_head.bias.detach()}
    pth, safe = _state_bytes(backbone)
    blobs = {"backbone.pth": pth, "backbone.safetensors": safe, "fc.safetensors": _state_bytes(head)[1]}
    storage.makedirs(cfg.out)
    for name, data in blobs.items():
        storage.write_bytes(storage.join(cfg.out, name), data)
    confusions = read_confusion(info.uri)  # {} for a run without confusion matrices
    history = read_metrics(info.uri)
    epoch = history[-1]["epoch"] if history and confusions else None
    for split, matrix in confusions.items():
        plot_confusion(matrix, info.classes, storage.join(cfg.out, f"confusion_{split}.png"), f"{split} (epoch {epoch})")
    card = model_card(info, {n: hashlib.sha256(b).hexdigest() for n, b in blobs.items()},
                      model.action_head.in_features, confusions, epoch)
    storage.write_json(storage.join(cfg.out, "model_card.json"), card)
    storage.write_text(storage.join(cfg.out, "model_card.md"), card_markdown(card))
    return card
