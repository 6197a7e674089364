"""Using a trained run: its videos' evaluation clips built exactly as training built them, and predict.

A video goes through the curation's own decode step (`make_decode_fn` with the run's stored frame
sampling and sizes: PyAV decode, resize + centre crop, JPEG) and then the trainer's own evaluation
clip step (`plan_clips` + `render_clips` with the run's `clip` config: `eval_clips` evenly spaced
windows, centre crop), so predict sees the pixels evaluation saw, JPEG artefacts included. The trap
this avoids: PyAV decode gives BGR frames, the stored JPEGs decode to RGB, and the model wants RGB.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from debias import storage
from debias.training.clips import ClipConfig, plan_clips, render_clips
from debias.config import check
from debias.curation.curate import DecodeConfig, make_decode_fn
from debias.training.models import SDN
from debias.curation.shards import NO_ERROR
from debias.curation.sources import Row

log = logging.getLogger(__name__)


@dataclass
class PredictConfig:
    run: str = ""  # the training run folder (OUT/NAME of `debias pretrain`), local or a URI
    checkpoint: str = "latest"  # latest, best (by the run's best_metric) or a checkpoint path
    videos: list[str] = field(default_factory=list)  # video files, local or URIs
    top_k: int = 5
    device: str = "auto"  # auto (a GPU where there is one), cpu, cuda, cuda:1, ...
    batch_clips: int = 16  # clips per forward pass
    format: Literal["text", "json"] = "text"

    def __post_init__(self) -> None:
        check(bool(self.run), "run", "needs the training run folder (--run RUN)")
        check(bool(self.videos), "videos", "needs at least one video file")
        check(self.top_k >= 1, "top_k", "must be >= 1")
        check(self.batch_clips >= 1, "batch_clips", "must be >= 1")


def decode_config(preprocessing: dict) -> DecodeConfig:
    """The curation's decode settings a run was trained on: `RunInfo.preprocessing["decode"]` (sampling,
    num_frames, sample_fps, clips_per_video, short_side_px, crop_px, jpeg_quality as the shards' summary
    recorded them; a key it lacks keeps DecodeConfig's default)."""
    return DecodeConfig(**preprocessing["decode"])


def video_row(path: str, video_id: str = "", label: str = "") -> Row:
    """A decode-step input row for one video file (a local path or a URI), the whole video as its window."""
    return {"video_id": video_id or Path(storage.name(path)).stem, "label": label, "source_path": str(path),
            "time_start": 0.0, "time_end": -1.0, **NO_ERROR}


def eval_clips(cfg: ClipConfig, batch: dict) -> np.ndarray:
    """Each row's `cfg.eval_clips` evaluation clips, rendered as the trainer renders them.

    Reads: frames (per row: JPEG bytes per stored frame), height, width. Returns (N, eval_clips,
    clip_len, crop_px, crop_px, 3) uint8 RGB, what `SDN` takes once the first two axes are merged.
    """
    n = len(batch["frames"])
    rows = {"frames": batch["frames"], "height": batch["height"], "width": batch["width"],
            "label_id": np.zeros(n, np.int64)}  # plan_clips counts rows by label_id
    plans = plan_clips(cfg, False, rows, np.random.default_rng(0))  # evaluation draws nothing at random
    clips = render_clips(cfg, rows, plans, with_masked=False, rng=np.random.default_rng(0))["clips"]
    return clips.reshape(n, cfg.eval_clips, *clips.shape[1:])


@torch.no_grad()
def run_clips(model: SDN, clips: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C, T, H, W, 3) uint8 -> pooled backbone features (N, D) and action logits (N, A), each the
    mean over a row's C clips, float32 on the CPU."""
    n, c = clips.shape[:2]
    x = torch.from_numpy(np.ascontiguousarray(clips)).to(device).flatten(0, 1)
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        features = model.features(x)
        logits = model.action_head(features)
    return (features.float().view(n, c, -1).mean(1).cpu(), logits.float().view(n, c, -1).mean(1).cpu())


def pick_device(device: str) -> torch.device:
    """auto: the first GPU where there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@torch.no_grad()
def predict_video(model: SDN, classes: list[str], decode: DecodeConfig, clip: ClipConfig, path: str,
                  top_k: int = 5, device: torch.device = torch.device("cpu"), batch_clips: int = 16) -> dict:
    """Video-level prediction: the softmax averaged over every evaluation clip of the video (all its
    rows when the run's sampling stores several per video). Returns {video, clips, top: [{class,
    label_id, prob}] (top_k, best first), error}; a video that cannot be decoded has error set (the
    reason names the file) and an empty top."""
    rows = make_decode_fn(decode)(video_row(path))
    if rows[0]["error"]:
        return {"video": path, "clips": 0, "top": [], "error": rows[0]["error"]}
    batch = {k: [r[k] for r in rows] for k in ("frames", "height", "width")}
    clips = eval_clips(clip, batch)  # (rows, C, T, H, W, 3)
    flat = clips.reshape(-1, 1, *clips.shape[2:])
    probs = torch.cat([run_clips(model, flat[i:i + batch_clips], device)[1].softmax(1)
                       for i in range(0, len(flat), batch_clips)]).mean(0)
    top = probs.topk(min(top_k, len(probs)))
    return {"video": path, "clips": len(flat), "error": "",
            "top": [{"class": classes[i], "label_id": int(i), "prob": float(p)}
                    for p, i in zip(top.values.tolist(), top.indices.tolist())]}


def predict(cfg: PredictConfig) -> dict:
    """Load the run's model once and predict every video of `cfg.videos`: {run, checkpoint, videos: [one
    `predict_video` result per video, in order]}. A broken video is an entry with its error, not a crash."""
    from debias.training.runs import load_model

    device = pick_device(cfg.device)
    model, info = load_model(cfg.run, cfg.checkpoint, device=device)
    decode = decode_config(info.preprocessing)
    log.info("predict: %s (%s) on %s, %d classes, %d clips per row", info.uri, info.checkpoint, device,
             info.num_actions, info.config.clip.eval_clips)
    results = [predict_video(model, info.classes, decode, info.config.clip, v, cfg.top_k, device, cfg.batch_clips)
               for v in cfg.videos]
    return {"run": info.uri, "checkpoint": info.checkpoint, "videos": results}
