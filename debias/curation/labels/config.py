"""Who labels the curated clips: human-mask and scene-label providers and their model settings.

`auto` (the default) uses the real models (detector + SAM, Places365) where their weights are
installed in `weights_dir`, otherwise the weight-free option (motion foreground, background
clusters); the choice is printed and recorded in every row (`mask_source`, `scene_source`).
Naming a model (`sam`, `places365`) is strict: missing or corrupt weights stop the job before any
video is decoded. `annotations` reads a dataset's own ground truth (the synthetic benchmark);
`none` stores empty masks / no scene label.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from debias.config import check

MaskProvider = Literal["auto", "sam", "motion", "annotations", "none"]
SceneProvider = Literal["auto", "places365", "clusters", "annotations", "none"]
Detector = Literal["fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2", "maskrcnn_resnet50_fpn",
                   "fasterrcnn_mobilenet_v3_large_320_fpn"]


@dataclass
class LabelsConfig:
    mask_provider: MaskProvider = "auto"
    scene_provider: SceneProvider = "auto"
    annotations_dir: str = ""  # default: annotations/ beside the manifest
    weights_dir: str = "~/.cache/debias/weights"  # where `debias weights` puts checkpoints and providers look
    weights_url_base: str = ""  # `debias weights` downloads from here (a mirror) instead of the official URLs
    # Detector + SAM masks (the person boxes prompt SAM; a frame's mask is the union over its people).
    detector: Detector = "fasterrcnn_resnet50_fpn"  # torchvision COCO detector
    detector_min_size_px: int = 800  # the detector's own resize (torchvision default); small frames are upscaled
    person_score_min: float = 0.5  # keep person boxes scoring at least this
    max_people: int = 16  # person boxes per frame that prompt SAM, highest scores first
    sam_model: Literal["vit_b", "vit_l", "vit_h"] = "vit_b"
    # Places365 scene labels: soft = mean probability over frames, hard = argmax of it or majority vote.
    places_model: Literal["resnet18", "resnet50"] = "resnet50"
    places_mask_people: bool = False  # classify frames with people filled by the frame's mean colour
    scene_hard: Literal["argmax", "vote"] = "argmax"
    # Images per forward pass inside a label actor (a row holds decode.num_frames images).
    detector_batch_images: int = 16
    sam_batch_images: int = 8
    places_batch_images: int = 64
    autocast: Literal["bf16", "fp16", "off"] = "bf16"  # on GPU only; CPU runs float32
    # Weight-free masks: moving pixels (vs the clip's temporal median) seed a person colour model.
    motion_threshold: float = 20.0  # max abs RGB difference (0-255) that still counts as background
    motion_colour_ratio: float = 3.0  # a colour is person when this much likelier among moving pixels
    # Weight-free scene labels: k-means over background appearance, fitted once on a sample of videos.
    scene_clusters: int = 8
    cluster_fit_videos: int = 256  # videos decoded to fit the clusters (before the pipeline starts)
    cluster_temperature: float = 0.5  # soft label = softmax(-distance / temperature), distance in median fit distances

    def __post_init__(self) -> None:
        check(self.detector_min_size_px >= 32, "detector_min_size_px", "must be >= 32")
        check(0.0 <= self.person_score_min <= 1.0, "person_score_min", "must be in [0, 1]")
        check(self.max_people >= 1, "max_people", "must be >= 1")
        for key in ("detector_batch_images", "sam_batch_images", "places_batch_images"):
            check(getattr(self, key) >= 1, key, "must be >= 1")
        check(self.motion_threshold > 0, "motion_threshold", "must be > 0")
        check(self.motion_colour_ratio > 0, "motion_colour_ratio", "must be > 0")
        check(self.scene_clusters >= 2, "scene_clusters", "must be >= 2")
        check(self.cluster_fit_videos >= self.scene_clusters, "cluster_fit_videos",
              f"must be >= scene_clusters ({self.scene_clusters})")
        check(self.cluster_temperature > 0, "cluster_temperature", "must be > 0")

    def weights_path(self, filename: str) -> Path:
        return Path(self.weights_dir).expanduser() / filename
