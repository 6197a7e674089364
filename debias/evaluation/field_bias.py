"""Scene-bias evaluation in the field's own terms, on any model and any curated split with person masks.

The measures (definitions: docs/bias-eval.md; the clips: `debias.counterfactual`), each top-1 over the
clips a protocol keeps, with a bootstrap interval over videos:

- `scuba_top1_KIND` (SCUBA, Li et al. ICCV 2023): the people on a static background of KIND (generated
  `stripes`, or `images` from a folder such as Places365's test images); higher = less reliance on the
  background. `scufo_top1_KIND`: one frame of that clip repeated; lower = less static-appearance bias.
  `contrasted_acc_KIND`: the share of clips right on SCUBA and wrong on its SCUFO copy. Without the
  suffix: over every kind;
- `background_only_top1`, `human_only_top1`, `action_swap_actor_acc` / `action_swap_background_acc`
  (HAT, Chung et al. NeurIPS 2022): the scene without the people, the people without the scene, and
  A's people on B's moving background scored against A's action and B's.

`plan_rows` pairs every clip with its swap partner and its background images in the driver (seeded per
clip), `build_clips` renders every counterfactual clip of a batch of rows (pure numpy, a Ray Data task),
`Scorer` runs the model on them (a Ray Data actor), `metrics` turns the per-clip predictions into the
measures. `field_bias_measures` runs the same steps in this process, for a job that holds a model already;
`run_bias_eval` is `debias bias`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import nn

from debias import storage
from debias.evaluation.bias import BiasConfig, measure_bias
from debias.curation.labels.fill import Fill
from debias.config import PathStr, check, to_dict
from debias.evaluation.counterfactual import (GateConfig, action_swap, background_only, background_rng, centre_clip,
                                   choose_image, human_only, list_images, person_gate, read_image, scuba,
                                   scuba_gate, scufo, stripes, swap_gate)
from debias.curation.shards import read_classes, read_parquet, shard_files, write_parquet

log = logging.getLogger(__name__)

BackgroundKind = Literal["stripes", "images"]
ROW_COLUMNS = ["video_id", "clip_index", "label", "label_id", "split", "frames", "human_masks", "height", "width"]
# What every row carries from the plan to the results (the rest of the plan is pixels).
PASS_COLUMNS = ["video_id", "clip_index", "label_id", "partner_label_id", "partner_video_id"]
# The seeded streams of a clip beside its backgrounds' (numbered by kind): its swap partner, its noise fill.
PARTNER_STREAM, FILL_STREAM = 100, 101
REASONS = ["error", "drop_scuba", "drop_person", "drop_swap"]  # "" = kept; else why the clip is not scored


@dataclass
class BackgroundConfig:
    kinds: list[BackgroundKind] = field(default_factory=lambda: ["stripes"])
    # images: every image below this folder (local or a URI), e.g. Places365 test_256; images in a
    # subfolder named as an action class are never the background of a clip of that action
    images_dir: PathStr = ""
    copies: int = 1  # backgrounds per clip and kind (StillMix: 5 for UCF101 and HMDB51, 1 for Kinetics)

    def __post_init__(self) -> None:
        check(len(self.kinds) >= 1 and len(set(self.kinds)) == len(self.kinds), "kinds",
              f"needs at least one of stripes, images, each once, got {self.kinds}")
        check("images" not in self.kinds or bool(self.images_dir), "images_dir",
              "needs the folder of background images when kinds holds images")
        check(self.copies >= 1, "copies", "must be >= 1")


@dataclass
class FieldMeasuresConfig:
    """How the field's measures are taken on one split (the clips, the rules, the intervals)."""

    split: str = "val"  # the split evaluated
    max_videos: int = 2000  # rows of the split (a seeded sample beyond that): the driver pairs them in memory
    fill: Fill = "blur"  # how people are removed for background-only and the swap's background (HAT inpaints)
    backgrounds: BackgroundConfig = field(default_factory=BackgroundConfig)
    gates: GateConfig = field(default_factory=GateConfig)
    bootstrap: int = 1000  # resamples of the videos for each interval
    ci_level: float = 0.95
    seed: int = 0  # backgrounds, swap partners, the sample beyond max_videos, the bootstrap
    batch_size: int = 8  # rows per batch (each row is 4 + 2 x kinds x copies clips)

    def __post_init__(self) -> None:
        for key in ("max_videos", "bootstrap", "batch_size"):
            check(getattr(self, key) >= 1, key, "must be >= 1")
        check(0.5 <= self.ci_level < 1.0, "ci_level", "must be in [0.5, 1)")


@dataclass
class FieldBiasConfig:
    """`debias bias`: one model, one curated split."""

    run: PathStr = ""  # a training run folder (OUT/NAME), local or a URI ...
    checkpoint: str = "latest"  # ... and its checkpoint: latest, best or a checkpoint folder
    export: PathStr = ""  # ... or a `debias export` folder (backbone, fc and model_card.json) instead of run
    shards: PathStr = ""  # a `debias preprocess` output with person masks
    out: PathStr = "out/bias"  # summary.json, report.md, bias_eval.png, clips.parquet (one row per clip)
    measures: FieldMeasuresConfig = field(default_factory=FieldMeasuresConfig)
    build_cpus: float = 1.0  # per clip-building task
    actors: int = 1  # model actors
    gpus_per_actor: float = 1.0  # where the cluster has GPUs; on a CPU-only cluster the actors use CPUs
    cpus_per_actor: float = 1.0  # also the torch thread count of a CPU actor
    examples: int = 0  # write the counterfactual clips of this many rows as PNG strips to OUT/examples
    # The project's own measures (debias/evaluation/bias.py) beside them, on own.{scene,fit,test}_split of
    # the same shards, at the model's clip_len and crop_px; they need scene labels and those splits, and
    # are skipped (saying why) otherwise.
    own_measures: bool = True
    own: BiasConfig = field(default_factory=BiasConfig)

    def __post_init__(self) -> None:
        check(bool(self.run) != bool(self.export), "run",
              "needs exactly one model: a training run (--run RUN) or an exported backbone (export=DIR)")
        check(bool(self.shards), "shards", "needs curated data with person masks (--shards DIR)")
        check(self.actors >= 1, "actors", "must be >= 1")
        check(self.gpus_per_actor >= 0, "gpus_per_actor", "must be >= 0")
        check(self.build_cpus > 0 and self.cpus_per_actor > 0, "build_cpus", "CPUs must be > 0")
        check(self.examples >= 0, "examples", "must be >= 0")


@dataclass
class Model:
    """A model to evaluate: anything with `forward(clips_uint8 (B, T, H, W, 3)) -> (action logits, ...)`,
    its classes (index = label_id) and the clip it takes."""

    net: nn.Module
    classes: list[str]
    clip_len: int
    crop_px: int
    source: str


def load_eval_model(run: str = "", checkpoint: str = "latest", export: str = "") -> Model:
    """A training run's model (`runs.load_model`) or an exported backbone with its action head
    (`debias export`: backbone.safetensors, fc.safetensors, model_card.json), on the CPU."""
    from debias.training.runs import load_model

    if run:
        net, info = load_model(run, checkpoint)
        return Model(net, info.classes, info.config.clip.clip_len, info.config.clip.crop_px, info.checkpoint)
    from safetensors.torch import load as load_safetensors

    from debias.training.models import SDN, ModelConfig, load_backbone

    card_path = storage.join(storage.absolute(export), "model_card.json")
    if not storage.is_file(card_path):
        raise FileNotFoundError(f"{export}: not a `debias export` folder (no model_card.json)")
    card = storage.read_json(card_path)
    model_cfg = ModelConfig(**{**card["training_config"]["model"], "init_from": ""})
    net = SDN(model_cfg, len(card["classes"]), 1)  # the scene head is not exported and not used here
    load_backbone(net.backbone, load_safetensors(storage.read_bytes(storage.join(export, "backbone.safetensors"))))
    fc = load_safetensors(storage.read_bytes(storage.join(export, "fc.safetensors")))
    net.action_head.load_state_dict({"weight": fc["fc.weight"], "bias": fc["fc.bias"]})
    clip = card["preprocessing"]["clip"]
    return Model(net.eval(), card["classes"], clip["clip_len"], clip["crop_px"], storage.absolute(export))


def clip_kinds(backgrounds: BackgroundConfig) -> list[str]:
    """The clips built per row, in the order of the second axis of `make_build_fn`'s clips."""
    per_background = [f"{p}_{k}_{c}" for k in backgrounds.kinds for c in range(backgrounds.copies) for p in ("scuba", "scufo")]
    return ["clean", *per_background, "background_only", "human_only", "action_swap"]


# The field's measures that move with a model's reliance on the scene (over every background kind), each
# with the direction in which the model relies more on it (+1: higher = more scene-reliant), as the demo's
# separation table and the transfer table read them. SCUFO is left out: it measures reliance on static
# appearance, the people's included.
FIELD_MEASURES = {"scuba_top1": -1, "contrasted_acc": -1, "background_only_top1": +1, "human_only_top1": -1,
                  "action_swap_background_acc": +1}


# --- the plan: which rows, their partners and backgrounds (driver) ------------------------------------

def plan_rows(shards: str, cfg: FieldMeasuresConfig) -> pa.Table:
    """The rows of `cfg.split` (up to max_videos, in (video_id, clip_index) order), each with its swap
    partner's frames and masks (a row of another action, seeded per row; any other row when the split
    has one action) and, for kind images, its background image per copy (`bg_images`)."""
    tables = [read_parquet(f, columns=ROW_COLUMNS) for f in shard_files(shards)]
    rows = pa.concat_tables([t.filter(pc.equal(t["split"], cfg.split)) for t in tables])
    if rows.num_rows == 0:
        raise ValueError(f"{shards}: no rows in split '{cfg.split}' (bias evaluation)")
    rows = rows.sort_by([("video_id", "ascending"), ("clip_index", "ascending")])
    keep = np.sort(np.random.default_rng(cfg.seed).permutation(rows.num_rows)[:cfg.max_videos])
    rows = rows.take(pa.array(keep))
    labels = np.asarray(rows["label_id"].to_pylist())
    ids, clips = rows["video_id"].to_pylist(), rows["clip_index"].to_pylist()
    partner = np.empty(len(labels), np.int64)
    for i, label in enumerate(labels):
        others = np.flatnonzero(labels != label)
        others = others if len(others) else np.delete(np.arange(len(labels)), i)
        partner[i] = others[background_rng(cfg.seed, ids[i], clips[i], PARTNER_STREAM, 0).integers(len(others))] if len(others) else i
    images = list_images(cfg.backgrounds.images_dir) if "images" in cfg.backgrounds.kinds else []
    if "images" in cfg.backgrounds.kinds and not images:
        raise ValueError(f"backgrounds.images_dir: no images in {cfg.backgrounds.images_dir}")
    kind = cfg.backgrounds.kinds.index("images") if images else 0
    names = rows["label"].to_pylist()
    bg = [[choose_image(images, names[i], background_rng(cfg.seed, ids[i], clips[i], kind, c))
           for c in range(cfg.backgrounds.copies)] if images else [] for i in range(len(labels))]
    b = rows.take(pa.array(partner))
    return rows.append_column("partner_video_id", b["video_id"]).append_column(
        "partner_label_id", b["label_id"]).append_column("b_frames", b["frames"]).append_column(
        "b_human_masks", b["human_masks"]).append_column("b_height", b["height"]).append_column(
        "b_width", b["width"]).append_column("bg_images", pa.array(bg, pa.list_(pa.string())))


# --- the clips (Ray Data tasks) -----------------------------------------------------------------------

def row_clips(row: dict, clip_len: int, crop_px: int, cfg: FieldMeasuresConfig) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Every counterfactual clip of one plan row (`plan_rows`), by kind (`clip_kinds`; a kind its gate
    drops is absent), and the reasons (REASONS, "" = kept)."""
    frames, masks = centre_clip(row["frames"], row["human_masks"], row["height"], row["width"], clip_len, crop_px)
    h, w = frames.shape[1:3]
    gates = cfg.gates
    reasons = {"error": "", "drop_scuba": scuba_gate(masks, gates), "drop_person": person_gate(masks),
               "drop_swap": swap_gate(masks, gates)}
    out = {"clean": frames}
    if not reasons["drop_scuba"]:
        for k, kind in enumerate(cfg.backgrounds.kinds):
            for c in range(cfg.backgrounds.copies):
                image = (read_image(row["bg_images"][c], h, w) if kind == "images" else
                         stripes(h, w, background_rng(cfg.seed, row["video_id"], row["clip_index"], k, c)))
                out[f"scuba_{kind}_{c}"] = scuba(frames, masks, image)
                out[f"scufo_{kind}_{c}"] = scufo(out[f"scuba_{kind}_{c}"])
    rng = background_rng(cfg.seed, row["video_id"], row["clip_index"], FILL_STREAM, 0)
    if not reasons["drop_person"]:
        out["background_only"] = background_only(frames, masks, cfg.fill, rng)
        out["human_only"] = human_only(frames, masks)
    if not reasons["drop_swap"]:
        b_frames, b_masks = centre_clip(row["b_frames"], row["b_human_masks"], row["b_height"], row["b_width"],
                                        clip_len, crop_px)
        if b_frames.shape != frames.shape:
            reasons["drop_swap"] = f"swap_size: partner {row['partner_video_id']} is {b_frames.shape[1:3]}, not {(h, w)}"
        else:
            out["action_swap"] = action_swap(frames, masks, background_only(b_frames, b_masks, cfg.fill, rng), gates)
    return out, reasons


def make_build_fn(clip_len: int, crop_px: int, cfg: FieldMeasuresConfig):
    """Batch step (pyarrow batch of plan rows) -> clips (N, K, T, H, W, 3) uint8 in `clip_kinds` order,
    built (N, K) bool, REASONS and PASS_COLUMNS. A row that fails (a corrupt frame, an unreadable image)
    becomes a row with `error` naming the video and no clips, not a lost block."""
    kinds = clip_kinds(cfg.backgrounds)

    def build(batch: pa.Table) -> dict:
        rows = batch.to_pylist()
        clips = np.zeros((len(rows), len(kinds), clip_len, crop_px, crop_px, 3), np.uint8)
        built = np.zeros((len(rows), len(kinds)), bool)
        reasons: dict[str, list[str]] = {k: [] for k in REASONS}
        for i, row in enumerate(rows):
            try:
                made, why = row_clips(row, clip_len, crop_px, cfg)
            except Exception as e:  # noqa: BLE001 - any failure of one row is that row's reason
                made, why = {}, {**dict.fromkeys(REASONS, ""), "error": f"{row['video_id']}: {type(e).__name__}: {e}"}
            for j, kind in enumerate(kinds):
                if kind in made and made[kind].shape == clips.shape[2:]:
                    clips[i, j], built[i, j] = made[kind], True
            if "clean" in made and not built[i, 0]:
                why["error"] = f"{row['video_id']}: stored frames {made['clean'].shape[1:3]} smaller than crop {crop_px}"
                built[i] = False
            for k in REASONS:
                reasons[k].append(why[k])
        return {"clips": clips, "built": built, **{k: np.asarray(v, dtype=object) for k, v in reasons.items()},
                **{k: np.asarray([r[k] for r in rows]) for k in PASS_COLUMNS}}

    return build


@torch.no_grad()
def predict_built(net: nn.Module, clips: np.ndarray, built: np.ndarray, batch_clips: int = 16,
                  device: torch.device = torch.device("cpu")) -> np.ndarray:
    """(N, K, T, H, W, 3) clips, (N, K) built -> (N, K) top-1 class, -1 where not built. `net` is on `device`."""
    pred = np.full(built.shape, -1, np.int64)
    flat = clips[built]
    out = [net(torch.from_numpy(np.ascontiguousarray(flat[s:s + batch_clips])).to(device))[0].argmax(1).cpu()
           for s in range(0, len(flat), batch_clips)]
    if out:
        pred[built] = torch.cat(out).numpy()
    return pred


class Scorer:
    """The model step as a Ray Data actor: loads the model once, returns per row the top-1 of every
    clip (`pred`, (N, K)) with REASONS and PASS_COLUMNS; the clips themselves go no further."""

    def __init__(self, run: str, checkpoint: str, export: str, device: str, threads: int) -> None:
        self.device = torch.device(device)
        if self.device.type == "cpu":
            torch.set_num_threads(threads)
        self.net = load_eval_model(run, checkpoint, export).net.to(self.device)

    def __call__(self, batch: dict) -> dict:
        pred = predict_built(self.net, batch["clips"], batch["built"], device=self.device)
        return {"pred": pred, **{k: batch[k] for k in REASONS + PASS_COLUMNS}}


# --- the measures -------------------------------------------------------------------------------------

def bootstrap_interval(values: np.ndarray, groups: np.ndarray, resamples: int, level: float,
                       seed: int) -> tuple[float, float, float, int]:
    """The mean of `values` (one per clip, NaN = not scored) over their videos, and its percentile
    bootstrap interval: the videos (`groups`) are resampled, each video the mean of its clips. Returns
    (mean, low, high, videos); NaNs when no clip was scored."""
    ok = ~np.isnan(values)
    if not ok.any():
        return float("nan"), float("nan"), float("nan"), 0
    _, inverse = np.unique(groups[ok], return_inverse=True)
    per_video = np.bincount(inverse, weights=values[ok]) / np.bincount(inverse)
    rng = np.random.default_rng(seed)
    means = per_video[rng.integers(len(per_video), size=(resamples, len(per_video)))].mean(axis=1)
    tail = 100 * (1 - level) / 2
    return (float(per_video.mean()), float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail)),
            len(per_video))


def per_clip_scores(results: dict[str, np.ndarray], backgrounds: BackgroundConfig) -> dict[str, np.ndarray]:
    """Per measure, one value per clip (1 right / 0 wrong, or the mean over background copies; NaN = not
    scored): the field's measures and the clean top-1, from the Scorer's rows."""
    kinds = clip_kinds(backgrounds)
    pred, label = results["pred"], results["label_id"]
    scored = pred >= 0

    def right(kind: str, target: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        j = kinds.index(kind)
        return (pred[:, j] == (label if target is None else target)).astype(float), scored[:, j]

    def nan_unless(values: np.ndarray, ok: np.ndarray) -> np.ndarray:
        return np.where(ok, values, np.nan)

    out = {"clean_top1": nan_unless(*right("clean"))}
    for kind in backgrounds.kinds:
        su = [right(f"scuba_{kind}_{c}") for c in range(backgrounds.copies)]
        sf = [right(f"scufo_{kind}_{c}") for c in range(backgrounds.copies)]
        ok = su[0][1]
        out[f"scuba_top1_{kind}"] = nan_unless(np.mean([v for v, _ in su], axis=0), ok)
        out[f"scufo_top1_{kind}"] = nan_unless(np.mean([v for v, _ in sf], axis=0), ok)
        out[f"contrasted_acc_{kind}"] = nan_unless(np.mean([a * (1 - b) for (a, _), (b, _) in zip(su, sf)], axis=0), ok)
    for name in ("scuba_top1", "scufo_top1", "contrasted_acc"):  # over every kind (one kind: the same values)
        out[name] = np.mean([out[f"{name}_{kind}"] for kind in backgrounds.kinds], axis=0)
    out["background_only_top1"] = nan_unless(*right("background_only"))
    out["human_only_top1"] = nan_unless(*right("human_only"))
    out["action_swap_actor_acc"] = nan_unless(*right("action_swap"))
    out["action_swap_background_acc"] = nan_unless(*right("action_swap", results["partner_label_id"]))
    return out


def metrics(results: dict[str, np.ndarray], cfg: FieldMeasuresConfig) -> dict[str, dict]:
    """Every measure: {value, ci_low, ci_high, videos} (value: mean over videos of the mean over their
    clips; None where no clip was scored)."""
    out = {}
    for name, values in per_clip_scores(results, cfg.backgrounds).items():
        v, lo, hi, n = bootstrap_interval(values, results["video_id"], cfg.bootstrap, cfg.ci_level, cfg.seed)
        out[name] = {"value": v, "ci_low": lo, "ci_high": hi, "videos": n} if n else dict.fromkeys(
            ("value", "ci_low", "ci_high"), None) | {"videos": 0}
    return out


def dropped(results: dict[str, np.ndarray]) -> dict[str, int]:
    """Clips each rule (and failure) dropped, by reason code (the text before the colon)."""
    counts: Counter[str] = Counter()
    for k in REASONS:
        for reason in results[k]:
            if reason:
                counts[f"{k}: {reason.split(':')[0]}" if k == "error" else reason.split(":")[0]] += 1
    return dict(counts)


def _concat(batches: list[dict]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def field_bias_measures(net: nn.Module, shards: str, clip_len: int, crop_px: int,
                        cfg: FieldMeasuresConfig) -> dict[str, float]:
    """The field's measures of one model, in this process (no Ray): a flat dict, each measure's value and
    its interval as NAME, NAME_low, NAME_high (fractions), plus the clips each rule dropped as
    dropped_REASON. For a job that already holds its models (the demo, transfer)."""
    plan = plan_rows(shards, cfg)
    build = make_build_fn(clip_len, crop_px, cfg)
    batches = []
    for s in range(0, plan.num_rows, cfg.batch_size):
        built = build(plan.slice(s, cfg.batch_size))
        batches.append({"pred": predict_built(net, built["clips"], built["built"]),
                        **{k: built[k] for k in REASONS + PASS_COLUMNS}})
    results = _concat(batches)
    flat: dict[str, float] = {}
    for name, m in metrics(results, cfg).items():
        flat |= {k: math.nan if v is None else v for k, v in
                 ((name, m["value"]), (f"{name}_low", m["ci_low"]), (f"{name}_high", m["ci_high"]))}
    return flat | {f"dropped_{k}": float(n) for k, n in dropped(results).items()}


# --- the job ------------------------------------------------------------------------------------------

def own_measures(model: Model, cfg: FieldBiasConfig) -> dict:
    """debias/evaluation/bias.py's measures on the same shards, or {"skipped": why}."""
    from debias.curation.shards import num_scenes

    if not cfg.own_measures:
        return {"skipped": "own_measures=false"}
    scenes = num_scenes(cfg.shards)
    splits = set()
    for f in shard_files(cfg.shards):
        splits |= set(read_parquet(f, columns=["split"])["split"].to_pylist())
    need = {cfg.own.scene_split, cfg.own.fit_split, cfg.own.test_split}
    if scenes == 0 or not need <= splits:
        return {"skipped": f"needs scene labels (the shards have {scenes} scene classes) and splits {sorted(need)} "
                           f"(the shards have {sorted(splits)})"}
    own = dataclasses.replace(cfg.own, clip_len=model.clip_len, crop_px=model.crop_px)
    return measure_bias(model.net, cfg.shards, len(model.classes), scenes, own)


def run_bias_eval(cfg: FieldBiasConfig) -> dict:
    """`debias bias`: the field's measures and the project's own for one model on one split; writes
    OUT/summary.json, OUT/report.md, OUT/bias_eval.png, OUT/clips.parquet (one row per clip: its
    predictions and drop reasons) and, with `examples`, OUT/examples/*.png. Returns the summary."""
    import ray
    from ray.data import ActorPoolStrategy

    from debias.cluster import init_ray
    from debias.report import provenance

    t0 = time.perf_counter()
    out = storage.absolute(cfg.out)
    storage.check_storage(out, "out")
    model = load_eval_model(cfg.run, cfg.checkpoint, cfg.export)  # a wrong folder fails here, before Ray
    classes = read_classes(cfg.shards)
    if classes != model.classes:
        raise ValueError(f"{cfg.shards}: its classes ({len(classes)}) are not the model's ({len(model.classes)}, "
                         f"{model.source}): label_id would mean different actions")
    m = cfg.measures
    plan = plan_rows(cfg.shards, m)
    init_ray()
    ds = ray.data.from_arrow(plan).repartition(max(1, -(-plan.num_rows // m.batch_size)))
    ds = ds.map_batches(make_build_fn(model.clip_len, model.crop_px, m), batch_format="pyarrow",
                        batch_size=m.batch_size, num_cpus=cfg.build_cpus)
    gpus = cfg.gpus_per_actor if ray.cluster_resources().get("GPU", 0) > 0 else 0
    ds = ds.map_batches(Scorer, fn_constructor_args=(cfg.run, cfg.checkpoint, cfg.export, "cuda" if gpus else "cpu",
                                                     max(1, int(cfg.cpus_per_actor))),
                        batch_format="numpy", batch_size=m.batch_size, num_cpus=cfg.cpus_per_actor, num_gpus=gpus,
                        compute=ActorPoolStrategy(size=cfg.actors))
    results = _concat([{k: np.asarray(v) for k, v in b.items()} for b in ds.iter_batches(batch_format="numpy",
                                                                                          batch_size=None)])
    order = np.lexsort((results["clip_index"], results["video_id"]))  # the actors finish in any order
    results = {k: v[order] for k, v in results.items()}
    eval_s = time.perf_counter() - t0
    summary = {**provenance(), "model": model.source, "shards": storage.absolute(cfg.shards), "split": m.split,
               "clips": len(results["video_id"]), "videos": len(set(results["video_id"].tolist())),
               "chance": 1 / len(classes), "metrics": metrics(results, m), "dropped": dropped(results),
               "own_measures": own_measures(model, cfg), "gpus_per_actor": gpus, "eval_s": round(eval_s, 1),
               "total_s": round(time.perf_counter() - t0, 1), "config": to_dict(cfg)}
    write_outputs(cfg, out, summary, results, plan, model)
    log.info("bias: %d clips of %d videos -> %s in %.0f s", summary["clips"], summary["videos"], out, summary["total_s"])
    return summary


# --- outputs ------------------------------------------------------------------------------------------

def clips_table(results: dict[str, np.ndarray], kinds: list[str], classes: list[str]) -> pa.Table:
    """One row per clip: PASS_COLUMNS, the label, each kind's predicted class (null = not built) and REASONS."""
    columns = {k: pa.array(results[k].tolist()) for k in PASS_COLUMNS}
    columns["label"] = pa.array([classes[i] for i in results["label_id"]])
    for j, kind in enumerate(kinds):
        p = results["pred"][:, j]
        columns[f"pred_{kind}"] = pa.array([classes[i] if i >= 0 else None for i in p.tolist()], pa.string())
    columns |= {k: pa.array([str(r) for r in results[k]]) for k in REASONS}
    return pa.table(columns)


def plot_metrics(summary: dict, path: str) -> None:
    """One horizontal bar per measure with its interval; a dashed line at chance."""
    from debias.report import plt, save_figure

    names = [k for k, m in summary["metrics"].items() if m["videos"]]
    values = [summary["metrics"][k] for k in names]
    fig, ax = plt.subplots(figsize=(6.5, 0.38 * len(names) + 1.2))
    y = np.arange(len(names))[::-1]
    ax.barh(y, [m["value"] for m in values], color="C0", alpha=0.6,
            xerr=[[m["value"] - m["ci_low"] for m in values], [m["ci_high"] - m["value"] for m in values]], capsize=3)
    ax.axvline(summary["chance"], color="grey", linestyle="--", linewidth=1, label="chance")
    ax.set_yticks(y, [f"{k} ({m['videos']} videos)" for k, m in zip(names, values)], fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_title(f"{summary['split']}: top-1 with {summary['config']['measures']['ci_level']:.0%} bootstrap intervals over videos",
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def write_examples(plan: pa.Table, model: Model, cfg: FieldMeasuresConfig, rows: int, folder: str) -> list[str]:
    """The first `rows` rows' clips as PNG strips (rows: the clip kinds, columns: every frame;
    black where a gate dropped a kind), rebuilt with the same seeded steps as the evaluation."""
    import cv2

    kinds = clip_kinds(cfg.backgrounds)
    build = make_build_fn(model.clip_len, model.crop_px, cfg)
    paths = []
    for i in range(min(rows, plan.num_rows)):
        built = build(plan.slice(i, 1))
        strip = np.concatenate([np.concatenate(list(built["clips"][0, j]), axis=1) for j in range(len(kinds))], axis=0)
        ok, png = cv2.imencode(".png", cv2.cvtColor(strip, cv2.COLOR_RGB2BGR))
        name = f"{i:03d}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', str(built['video_id'][0]))}_{built['clip_index'][0]}.png"
        storage.write_bytes(storage.join(folder, name), png.tobytes())
        paths.append(name)
    return paths


def report_markdown(summary: dict, kinds: list[str], examples: list[str]) -> str:
    from debias.report import table

    rows = [{"measure": k, "top-1": m["value"], f"{summary['config']['measures']['ci_level']:.0%} interval":
             f"{m['ci_low']:.3f} – {m['ci_high']:.3f}" if m["videos"] else "n/a", "videos": m["videos"]}
            for k, m in summary["metrics"].items()]
    own = summary["own_measures"]
    own_rows = [{"measure": k, "value": v} for k, v in own.items() if isinstance(v, (int, float))]
    lines = [f"# Scene-bias evaluation: {summary['model']}", "",
             f"{summary['date']}, commit {summary['commit']}; split `{summary['split']}` of `{summary['shards']}`: "
             f"{summary['clips']} clips of {summary['videos']} videos; chance {summary['chance']:.3f}.", "",
             table(rows, list(rows[0])), "", "![measures with intervals](bias_eval.png)", "",
             "SCUBA / SCUFO / contrasted accuracy: Li et al., ICCV 2023 (StillMix); background-only, human-only, "
             "action-swap: Chung et al., NeurIPS 2022 (HAT). Definitions and where this implementation differs: "
             "docs/bias-eval.md in the debias repository.", "",
             "## Clips dropped by a rule (each a row of clips.parquet with its reason)", "",
             table([{"reason": k, "clips": n} for k, n in sorted(summary["dropped"].items())], ["reason", "clips"])
             if summary["dropped"] else "(none)", "",
             "## The project's own measures (debias/evaluation/bias.py)", "",
             table(own_rows, ["measure", "value"]) if own_rows else f"skipped: {own.get('skipped', '')}", ""]
    if examples:
        lines += ["## Example clips", "", f"Rows, top to bottom: {', '.join(kinds)} (black: dropped).", ""]
        lines += [f"![{e}](examples/{e})" for e in examples] + [""]
    return "\n".join(lines)


def write_outputs(cfg: FieldBiasConfig, out: str, summary: dict, results: dict, plan: pa.Table, model: Model) -> None:
    kinds = clip_kinds(cfg.measures.backgrounds)
    storage.delete(storage.join(out, "examples"))
    examples = write_examples(plan, model, cfg.measures, cfg.examples, storage.join(out, "examples"))
    storage.write_json(storage.join(out, "summary.json"), summary)
    write_parquet(storage.join(out, "clips.parquet"), clips_table(results, kinds, model.classes))
    plot_metrics(summary, storage.join(out, "bias_eval.png"))
    storage.write_text(storage.join(out, "report.md"), report_markdown(summary, kinds, examples))
