"""Scene-label providers: Ray Data steps that add a soft and a hard scene label to each row.

Every provider writes scene_probs (soft label: a distribution over its scene classes), scene_id
(hard label; -1 = none) and scene_source. Providers:

- `Places365Scenes` (`places365`): the CSAIL Places365 ResNet-18 / ResNet-50 on every stored frame
  (optionally with the people filled by the frame's mean colour); soft = mean probability over the
  frames (365 floats), hard = its argmax or the majority vote of the per-frame argmaxes.
- `ClusterScenes` (`clusters`, weight-free): k-means over background appearance (colour and
  gradient-orientation histograms of the clip's temporal median), fitted once on a sample of the
  videos before the pipeline starts; soft = softmax over negative centroid distances. K is
  `labels.scene_clusters`, or fewer on a small dataset (`cluster_count`).
- `AnnotationScenes` (`annotations`): a dataset's own scene id, one-hot.
- `NoScenes` (`none`): no label.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Callable, NamedTuple

import cv2
import numpy as np
import pandas as pd

from debias.curation.labels.fill import fill_people_torch
from debias.curation.curate import PreprocessConfig, apply_per_row, make_decode_fn
from debias.curation.labels.models import PlacesClassifier, label_device, load_categories, load_places365
from debias.curation.labels.config import LabelsConfig
from debias.curation.labels.rows import decode_rows, decode_rows_on, run_by_size, with_columns
from debias.curation.codecs import unpack_masks_on
from debias.curation.sources import Row, read_annotated_scene_names, read_annotation
from debias.curation.video import MEDIAN_FRAMES, temporal_median, thread_stream

SCENE_COLUMNS = {"scene_id": -1, "scene_probs": [], "scene_source": ""}


def hard_label(frame_probs: np.ndarray, rule: str) -> int:
    """(T, C) per-frame probabilities -> one class: argmax of the mean, or the most frequent per-frame
    argmax (ties go to the higher mean probability)."""
    mean = frame_probs.mean(axis=0)
    if rule == "argmax":
        return int(mean.argmax())
    votes = np.bincount(frame_probs.argmax(axis=1), minlength=frame_probs.shape[1])
    tied = np.flatnonzero(votes == votes.max())
    return int(tied[mean[tied].argmax()])


# --- Places365 -----------------------------------------------------------------------------------

class Places365Scenes:
    """Places365 pseudo scene labels. Loads the classifier once per actor (GPU when it has one).

    Reads: frames, human_masks (with places_mask_people), height, width, video_id, error.
    Writes: scene_id, scene_probs (365), scene_source = "places365".
    """

    source = "places365"

    def __init__(self, model_path: str, categories_path: str, labels: LabelsConfig) -> None:
        load_categories(categories_path)  # a release whose names do not match its 365 outputs stops here
        self.labels = labels
        self.device = label_device()
        self.classifier = PlacesClassifier(load_places365(model_path, labels.places_model), labels, self.device)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        with thread_stream(self.device):  # concurrent calls of this actor overlap (preprocess: 2 per actor)
            clips, errors = decode_rows_on(self.device, batch, "scenes")
            if self.labels.places_mask_people:
                clips = [None if c is None else fill_people_torch(
                         c, unpack_masks_on(self.device, list(row.human_masks), row.height, row.width), "mean")
                         for c, row in zip(clips, batch.itertuples(index=False))]
            probs = run_by_size(clips, self.classifier)
        results = [None if p is None else {"scene_id": hard_label(p, self.labels.scene_hard),
                                           "scene_probs": p.mean(axis=0).tolist(), "scene_source": self.source}
                   for p in probs]
        return with_columns(batch, results, errors, SCENE_COLUMNS)


# --- weight-free: background clusters ------------------------------------------------------------

def background_features(clip: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) uint8 -> appearance of the static background: the temporal median (a moving
    person mostly vanishes from it) as a 4x4x4 colour histogram, an 8-bin gradient-orientation
    histogram (stripes, checks, texture direction), both square-rooted so that Euclidean distance is
    the Hellinger distance, and the mean colour in [0, 1]. 75 floats on comparable scales, used
    as they are: standardising each dimension would blow up rare colour bins."""
    background = temporal_median(clip)
    # 4 bins a channel, counted as np.histogramdd counts them in a third of its time
    colour = np.bincount((background.reshape(-1, 3) // 64).astype(np.intp) @ np.array([16, 4, 1]), minlength=64)
    grey = cv2.cvtColor(background, cv2.COLOR_RGB2GRAY).astype(np.float32)
    gx, gy = cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1)
    angle = np.mod(np.arctan2(gy, gx), np.pi)  # orientation, sign-free
    orient = np.histogram(angle, bins=8, range=(0, np.pi), weights=np.hypot(gx, gy))[0]
    return np.concatenate([np.sqrt(colour / colour.sum()), np.sqrt(orient / max(orient.sum(), 1e-6)),
                           background.reshape(-1, 3).mean(0) / 255]).astype(np.float32)


def kmeans(x: np.ndarray, k: int, seed: int, iters: int = 50) -> np.ndarray:
    """Lloyd's k-means with k-means++ seeding: (N, D) -> (k, D) centroids."""
    rng = np.random.default_rng(seed)
    centroids = [x[rng.integers(len(x))]]
    for _ in range(1, k):
        d2 = np.min([((x - c) ** 2).sum(1) for c in centroids], axis=0)
        centroids.append(x[rng.choice(len(x), p=d2 / d2.sum())] if d2.sum() > 0 else x[rng.integers(len(x))])
    c = np.stack(centroids)
    for _ in range(iters):
        assign = ((x[:, None] - c[None]) ** 2).sum(-1).argmin(1)
        new = np.stack([x[assign == j].mean(0) if (assign == j).any() else c[j] for j in range(k)])
        if np.allclose(new, c):
            break
        c = new
    return c


MIN_FIT_VIDEOS_PER_CLUSTER = 2  # a centroid fitted on one video is that video, not a kind of scene


def cluster_count(requested: int, fit_videos: int) -> int:
    """K for `fit_videos` decoded fit videos: `labels.scene_clusters`, or fewer so that each cluster
    has two fit videos on average, but never under 2 (one class is no scene label)."""
    if fit_videos < 2:
        raise ValueError(f"only {fit_videos} video(s) decoded to fit the scene clusters, at least 2 needed "
                         "(labels.scene_provider=none curates without scene labels)")
    return max(2, min(requested, fit_videos // MIN_FIT_VIDEOS_PER_CLUSTER))


def fit_scene_clusters(rows: list[Row], cfg: PreprocessConfig) -> dict:
    """Decode a seeded sample of `labels.cluster_fit_videos` good manifest rows, fit k-means on their
    background features, K = `cluster_count` (said in the log when fewer than labels.scene_clusters).
    Returns the model as plain arrays (it travels to the actors); `clusters` is K."""
    labels = cfg.labels
    good = [r for r in rows if not r["error"]]
    sample = random.Random(cfg.seed).sample(good, min(len(good), labels.cluster_fit_videos))
    # 16 frames spread over each video are enough for a median background, whatever the job's sampling
    decode = make_decode_fn(dataclasses.replace(cfg.decode, sampling="uniform", num_frames=16))
    feats = []
    for row in sample:
        decoded = decode(row)[0]  # the first clip stands for the video
        if not decoded["error"]:
            clip, _errors = decode_rows(pd.DataFrame([decoded]), "scenes")
            feats.append(background_features(clip[0]))
    k = cluster_count(labels.scene_clusters, len(feats))
    if k < labels.scene_clusters:
        print(f"preprocess: {len(feats)} of {len(sample)} sampled videos decoded for the scene clusters, "
              f"too few for labels.scene_clusters={labels.scene_clusters} (2 fit videos a cluster): using K={k}")
    x = np.stack(feats)
    centroids = kmeans(x, k, cfg.seed)
    nearest = np.sqrt(((x[:, None] - centroids[None]) ** 2).sum(-1)).min(1)
    return {"centroids": centroids, "scale": float(np.median(nearest)) + 1e-6, "fit_videos": len(feats), "clusters": k}


def cluster_probs(features: np.ndarray, model: dict, temperature: float) -> np.ndarray:
    """(N, D) features -> (N, K) soft labels: softmax of -distance / (temperature * median fit distance)."""
    d = np.sqrt(((features[:, None] - model["centroids"][None]) ** 2).sum(-1)) / (temperature * model["scale"])
    e = np.exp(-(d - d.min(1, keepdims=True)))
    return (e / e.sum(1, keepdims=True)).astype(np.float32)


class ClusterScenes:
    """Weight-free pseudo scene labels: the nearest background-appearance cluster.

    Reads: frames, video_id, error. Writes: scene_id (cluster), scene_probs (K), scene_source = "clusters".
    """

    source = "clusters"
    reads_pixels = True  # inside a `Decoder`: the frames before JPEG

    def __init__(self, model: dict, temperature: float) -> None:
        self.model, self.temperature = model, temperature

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        clips, errors = decode_rows(batch, "scenes", max_frames=MEDIAN_FRAMES)  # all the median takes
        results = []
        for clip in clips:
            if clip is None:
                results.append(None)
                continue
            probs = cluster_probs(background_features(clip)[None], self.model, self.temperature)[0]
            results.append({"scene_id": int(probs.argmax()), "scene_probs": probs.tolist(), "scene_source": self.source})
        return with_columns(batch, results, errors, SCENE_COLUMNS)


# --- dataset annotations and none ----------------------------------------------------------------

class AnnotationScenes:
    """Scene labels from a dataset's annotations: hard id and a one-hot soft label.

    Reads: youtube_id, video_id, error. Writes: scene_id, scene_probs, scene_source.
    """

    source = "annotations"

    def __init__(self, annotations_dir: str) -> None:
        self.dir = annotations_dir
        self.num_scenes = len(read_annotated_scene_names(self.dir))

    def _one(self, row: pd.Series) -> dict:
        _masks, scene_id = read_annotation(self.dir, row.youtube_id or row.video_id)  # named by the manifest's id
        probs = np.zeros(self.num_scenes, np.float32)
        probs[scene_id] = 1.0
        return {"scene_id": scene_id, "scene_probs": probs.tolist(), "scene_source": self.source}

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        return apply_per_row(batch, self._one, "scenes", SCENE_COLUMNS)


class NoScenes:
    """No scene label (scene_id -1, empty scene_probs): such shards cannot train the scene loss.
    Reads: error. Writes: scene_id, scene_probs, scene_source = "none"."""

    source = "none"

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        none = {"scene_id": -1, "scene_probs": [], "scene_source": self.source}
        return apply_per_row(batch, lambda row: none, "scenes", SCENE_COLUMNS)


class SceneStep(NamedTuple):
    """A resolved scene provider: the Ray Data step class, its constructor args, and what each
    scene_id means (OUT/scenes.json; `len(names)` is the number of scene classes, K for clusters)."""

    cls: Callable
    args: tuple
    names: list[str]


def scene_names(cfg: PreprocessConfig, provider: str, weights: dict[str, Path], clusters: int = 0) -> list[str]:
    """What each scene_id means: Places365 categories, `clusters` cluster numbers, the dataset's scene
    names, or nothing."""
    if provider == "places365":
        return load_categories(weights["places365_categories"])
    if provider == "clusters":
        if clusters < 2:
            raise ValueError("scene_names of the clusters needs their fitted K (fewer than labels.scene_clusters "
                             "on a small dataset): use scene_step(...).names")
        return [f"cluster_{k}" for k in range(clusters)]
    if provider == "annotations":
        return read_annotated_scene_names(cfg.annotations_dir())
    return []


def scene_step(cfg: PreprocessConfig, provider: str, weights: dict[str, Path], rows: list[Row]) -> SceneStep:
    """The step of a resolved provider; `clusters` fits its k-means here, on the driver, so that every
    actor labels with the same clusters."""
    if provider == "places365":
        return SceneStep(Places365Scenes, (str(weights["places365"]), str(weights["places365_categories"]), cfg.labels),
                         scene_names(cfg, provider, weights))
    if provider == "clusters":
        model = fit_scene_clusters(rows, cfg)
        print(f"preprocess: scene clusters fitted on {model['fit_videos']} videos (K={model['clusters']})")
        return SceneStep(ClusterScenes, (model, cfg.labels.cluster_temperature),
                         scene_names(cfg, provider, weights, model["clusters"]))
    if provider == "annotations":
        return SceneStep(AnnotationScenes, (str(cfg.annotations_dir()),), scene_names(cfg, provider, weights))
    return SceneStep(NoScenes, (), [])
