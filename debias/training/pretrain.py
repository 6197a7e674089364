"""The pretraining driver: curated shards -> Ray Data clip datasets -> a Ray Train `TorchTrainer` fit.

`run_pretrain` is what `debias pretrain`, every sweep trial (Tune wraps it unchanged), every transfer
fine-tuning run and the demo call; `train_loop_per_worker`, the loop it hands to Ray Train, calls the
plain epoch functions of `debias.training.train`. The run folder (config.json first, then checkpoints and
metrics) is laid out by `debias.training.runs`; the shards are read through `debias.curation.shards`. Both may live on
any storage (`out=s3://...`): Ray Train gets the same URI as its storage path.
"""

from __future__ import annotations

import logging
import math
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import ray
import torch
from tqdm import tqdm
from ray.data.expressions import col
from ray.data import ExecutionOptions
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig
from ray.train import ScalingConfig as RayScaling
from ray.train.torch import TorchTrainer

from debias import storage

from debias.training import runs
from debias.training.clips import CLIP_COLUMNS, ClipCollate, make_clip_fn, make_clip_plan_fn
from debias.cluster import configure_logging, init_ray
from debias.config import from_dict, to_dict
from debias.training.metrics import mode as metric_mode
from debias.training.runs import STATE_FILE, RunWriter, build_model, checkpoint_name
from debias.curation.shards import num_scenes, read_classes, read_scene_names, read_summary, shard_files, summary_digest
from debias.training.tracking import Tracker
from debias.training.train import (Batch, LRSchedule, PretrainConfig, decode_on_device, evaluate, make_optimizer,
                          train_one_epoch)

log = logging.getLogger(__name__)


def split_rows(cfg: PretrainConfig, files: list[str]) -> dict[str, ray.data.Dataset]:
    """The shard rows of each split the run reads (train and eval), only the columns a clip needs."""
    splits = list(dict.fromkeys([cfg.train_split, *cfg.eval_splits]))
    rows = ray.data.read_parquet(files).select_columns(CLIP_COLUMNS + ["split"])
    # Options of these datasets alone (every dataset derived from `rows` shares or copies its context), not
    # of the process: the same blocks in the same order every epoch and every run, so that with the seeded
    # shuffle a rerun of a config reproduces its numbers (streaming order otherwise follows task timing);
    # no per-operator bars, which from three datasets would drown the trainer's line per epoch.
    rows.context.execution_options.preserve_order = True
    rows.context.enable_progress_bars = False
    if not cfg.loader.cache_rows:  # each split's filter is pushed into its own Parquet scan, every epoch
        return {s: rows.filter(expr=col("split") == s) for s in splits}
    # small data: one scan for all splits (a scan costs seconds of task start-up even when tiny), then
    # every epoch streams each split from the object store
    cached = rows.filter(expr=col("split").is_in(splits)).materialize()
    return {s: cached.filter(expr=col("split") == s).materialize() for s in splits}


def ordered_ingest() -> ExecutionOptions:
    """Ray Train's default ingest options with the rows kept in order."""
    options = DataConfig.default_ingest_options()
    options.preserve_order = True
    return options


def clip_dataset(cfg: PretrainConfig, rows: ray.data.Dataset, train: bool) -> ray.data.Dataset:
    with_masked = cfg.loss.lambda_mask > 0 or not train  # eval always measures the masked-clip entropy
    # fresh random windows, crops and flips every epoch: 1:1 per row when training, 1:clip.eval_clips
    # when evaluating (video-level scores). decode_on=tasks also decodes and renders the clips here
    # (OpenCV); decode_on=device keeps them JPEG for the worker's GPU (ClipCollate in the trainer).
    # A fraction of a CPU per task, so that it overlaps the training step instead of waiting for a core.
    make_fn = make_clip_plan_fn if decode_on_device(cfg) else make_clip_fn
    return rows.map_batches(make_fn(cfg.clip, train, with_masked, cfg.seed), batch_format="numpy",
                            batch_size=cfg.optim.batch_size, num_cpus=cfg.loader.clip_cpus)


def check_labelled(rows: ray.data.Dataset, split: str) -> int:
    """The split's row count; unlabelled rows (label_id -1, e.g. a Kinetics test list) cannot be trained on."""
    unlabelled = rows.filter(expr=col("label_id") < 0).count()
    if unlabelled:
        raise ValueError(f"train_split={split!r} holds {unlabelled} unlabelled rows (label_id -1): training "
                         "needs labels; curate a labelled list, or choose another train_split")
    return rows.count()


def run_pretrain(cfg: PretrainConfig, callbacks: list | None = None) -> dict:
    """Fit one model; returns {"name", "run", "history": per-epoch metrics, "final", "checkpoint",
    "best_checkpoint"}.

    `callbacks`: Ray Train callbacks (the sweep passes Tune's TuneReportCallback).
    """
    shards, out = storage.absolute(cfg.shards), storage.absolute(cfg.out)
    storage.check_storage(shards, "shards", write=False)
    storage.check_storage(out, "out")
    files = shard_files(shards)  # FileNotFoundError naming the folder when nothing is committed there
    classes = read_classes(shards)
    scenes = num_scenes(shards)
    if scenes == 0:
        raise ValueError(f"{shards} has no scene labels (preprocessed with labels.scene_provider=none); "
                         "the scene head needs them: preprocess with a scene provider")
    if cfg.model.init_from:  # a wrong weights file fails here, before Ray starts, naming model.init_from
        runs.build_model(cfg.model, len(classes), scenes)
    run = runs.run_path(out, cfg.name)
    runs.write_run_config(run, cfg, classes, read_scene_names(shards), scenes, read_summary(shards),
                          summary_digest(shards))
    log_resume(cfg, run)
    init_ray()
    # 1. read the splits' rows (once, when cached); 2. clips from them, 1:1 (train) or 1:eval_clips (eval)
    rows = split_rows(cfg, files)
    sc = cfg.scaling
    counts = {cfg.train_split: check_labelled(rows[cfg.train_split], cfg.train_split)}
    counts.update({s: rows[s].count() * cfg.clip.eval_clips for s in cfg.eval_splits})
    steps = {s: math.ceil(n / max(1, sc.num_workers) / cfg.optim.batch_size) for s, n in counts.items()}  # local mode: 1
    datasets = {cfg.train_split: clip_dataset(cfg, rows[cfg.train_split], train=True)}
    for split in cfg.eval_splits:
        clips = clip_dataset(cfg, rows[split], train=False)
        datasets[split] = clips.materialize() if cfg.loader.cache_eval_clips else clips
    metric = runs.best_metric(cfg)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": to_dict(cfg), "num_actions": len(classes), "num_scenes": scenes, "run": run,
                           "steps": steps, "best_metric": metric},
        scaling_config=RayScaling(num_workers=sc.num_workers, use_gpu=sc.use_gpu,
                                  resources_per_worker={"CPU": sc.cpus_per_worker}),
        run_config=RunConfig(name=cfg.name, storage_path=out,
                             failure_config=FailureConfig(max_failures=sc.max_failures),
                             checkpoint_config=CheckpointConfig(
                                 num_to_keep=cfg.checkpoint_keep, checkpoint_score_attribute=metric,
                                 checkpoint_score_order=metric_mode(metric)),
                             callbacks=callbacks),
        datasets=datasets,
        # Ray Train applies its own ingest options to the workers' shards: in order there too.
        dataset_config=DataConfig(execution_options=ordered_ingest()),
    )
    trainer.fit()
    history = runs.read_metrics(run)
    per_class = runs.write_class_report(run, classes, cfg.eval_splits[0]) if cfg.eval_splits else []
    final = history[-1] if history else {}
    shown = ", ".join(f"{s}_{m}={final[f'{s}_{m}']:.3f}" for s in cfg.eval_splits
                      for m in ("acc", "video_acc", "top5") if f"{s}_{m}" in final)
    log.info("pretrain [%s]: %d epochs, %s -> %s", cfg.name, len(history), shown, run)
    return {"name": cfg.name, "run": run, "history": history, "final": final, "per_class": per_class,
            "checkpoint": runs.checkpoint_path(run), "best_checkpoint": runs.checkpoint_path(run, "best")}


def log_resume(cfg: PretrainConfig, run: str) -> None:
    """Say, before any work, whether the run starts afresh or takes over the checkpoints already in its
    folder (the loop resumes from the latest: Ray Train's own, or in local mode the folder's)."""
    done = runs.checkpoints(run)
    if not done:
        log.info("pretrain: starting %s (epoch 1 of %d)", run, cfg.optim.epochs)
        return
    epoch = int(storage.name(done[-1]).rsplit("_", 1)[1]) + 1  # the next epoch, 0-based (runs.checkpoint_name)
    if epoch >= cfg.optim.epochs:
        log.info("pretrain: %s already holds all %d epochs (%s): nothing left to train", run, cfg.optim.epochs,
                 storage.name(done[-1]))
    else:
        log.info("pretrain: resuming %s from epoch %d of %d (its checkpoint %s)", run, epoch + 1, cfg.optim.epochs,
                 storage.name(done[-1]))


def train_loop_per_worker(config: dict) -> None:
    """Ray Train worker: `config` = {"cfg": PretrainConfig as a dict, "num_actions", "num_scenes", "run":
    the run folder, "steps": {split: batches per worker per epoch}, "best_metric": what ranks checkpoints}.

    Resumes from the run's latest checkpoint when there is one (model, optimizer with its momentum,
    LR schedule state, epoch); reports (and checkpoints) each epoch; rank 0 writes the epoch's metrics,
    confusion matrices and TensorBoard events through `debias.training.runs.RunWriter`.
    """
    import ray.train
    import ray.train.torch

    configure_logging()  # the driver's level, from the environment the workers inherit
    cfg = from_dict(PretrainConfig, config["cfg"])
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(cfg.scaling.cpus_per_worker)))
    else:
        torch.backends.cudnn.benchmark = True  # fixed clip shapes: cuDNN may pick its fastest kernels once
    torch.manual_seed(cfg.seed)  # same initial weights on every worker (DDP also broadcasts them)
    core = build_model(cfg.model, config["num_actions"], config["num_scenes"], cfg.loss.grl_alpha)
    if cfg.scaling.sync_batchnorm and device.type == "cuda" and ctx.get_world_size() > 1:
        core = torch.nn.SyncBatchNorm.convert_sync_batchnorm(core)
    # Alternating steps, or a mask head the loss does not read, leave parameters without gradient in
    # some backward passes; DDP must be told, or it waits for them.
    unused = cfg.loss.update == "alternating" or cfg.model.mask_head == "separate"
    model = ray.train.torch.prepare_model(core, parallel_strategy_kwargs={"find_unused_parameters": unused})
    optimizer = make_optimizer(core, cfg.optim)
    schedule = LRSchedule(cfg.optim)
    start_epoch = 0
    local = cfg.scaling.num_workers == 0  # Ray Train's local mode keeps no checkpoint: the run folder does
    checkpoint = ray.train.get_checkpoint()
    state = None
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = torch.load(Path(d) / STATE_FILE, map_location=device, weights_only=True)
    elif local and runs.checkpoints(config["run"]):
        state = runs.load_state(runs.checkpoints(config["run"])[-1])
    if state:
        core.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        start_epoch = state["epoch"] + 1
    writer = RunWriter(config["run"], cfg.tensorboard) if rank == 0 else None
    tracker = Tracker(cfg.tracking, cfg.name, to_dict(cfg), config["run"]) if rank == 0 and cfg.tracking.enabled else None
    iter_args = {"batch_size": cfg.optim.batch_size, "prefetch_batches": cfg.loader.prefetch_batches}
    if decode_on_device(cfg):
        iter_args["collate_fn"] = ClipCollate(cfg.clip, device)
    for epoch in range(start_epoch, cfg.optim.epochs):
        schedule.apply(optimizer, epoch)
        grl_alpha = cfg.loss.grl_alpha_at(epoch, cfg.optim.epochs)
        core.set_grl_alpha(grl_alpha)
        warmup = epoch < cfg.optim.head_warmup_epochs
        metrics: dict = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"],
                         "head_lr": optimizer.param_groups[1]["lr"], "grl_alpha": grl_alpha,
                         "checkpoint": checkpoint_name(epoch)}
        t0 = time.perf_counter()
        batches = ray.train.get_dataset_shard(cfg.train_split).iter_torch_batches(
            **iter_args, local_shuffle_buffer_size=4 * cfg.optim.batch_size, local_shuffle_seed=cfg.seed + epoch)
        bar = progress(batches, config["steps"][cfg.train_split], f"[{cfg.name}] epoch {epoch + 1}", rank)
        result = train_one_epoch(model, bar, optimizer, cfg.loss, device, train_backbone=not warmup)
        metrics.update({f"train_{k}": v for k, v in result.items()})
        t1 = time.perf_counter()
        confusion = {}
        evaluated = (epoch + 1) % cfg.eval_every_epochs == 0 or epoch + 1 == cfg.optim.epochs
        for split in cfg.eval_splits if evaluated else []:
            shard = ray.train.get_dataset_shard(split).iter_torch_batches(**iter_args)
            result = evaluate(core, progress(shard, config["steps"][split], f"[{cfg.name}] {split}", rank), device)
            if "confusion" in result:
                confusion[split] = result.pop("confusion")
            metrics.update({f"{split}_{k}": v for k, v in result.items()})
        metrics.update(train_time_s=t1 - t0, eval_time_s=time.perf_counter() - t1)
        schedule.observe(epoch, metrics)
        with tempfile.TemporaryDirectory() as d:
            saved = None
            if writer:
                torch.save({"model": core.state_dict(), "optimizer": optimizer.state_dict(),
                            "schedule": schedule.state_dict(), "epoch": epoch}, Path(d) / STATE_FILE)
                writer.epoch(metrics, confusion)
                if local:
                    writer.checkpoint(d, checkpoint_name(epoch), cfg.checkpoint_keep, config["best_metric"])
                if tracker:
                    tracker.log(metrics, step=epoch)
                saved = ray.train.Checkpoint.from_directory(d)
            # Ray ranks the checkpoints by best_metric: NaN in an epoch that was not evaluated ranks it
            # last (Ray keeps the latest checkpoint regardless, for resuming)
            ranked = {**metrics, **({} if config["best_metric"] in metrics else {config["best_metric"]: math.nan})}
            ray.train.report(ranked, checkpoint=saved, checkpoint_dir_name=checkpoint_name(epoch))
        if rank == 0:
            shown = {k: round(v, 3) for k, v in metrics.items()
                     if isinstance(v, float) and k.endswith(("acc", "loss", "entropy", "_s"))}
            log.info("[%s] epoch %d/%d %s", cfg.name, epoch + 1, cfg.optim.epochs, shown)
    if writer:
        writer.close()
    if tracker:
        tracker.close()


def progress(batches: Iterable[Batch], total: int, desc: str, rank: int) -> Iterable[Batch]:
    """Batches with a progress bar and ETA on rank 0 when stderr is a terminal; as they are otherwise."""
    if rank != 0 or not sys.stderr.isatty():
        return batches
    return tqdm(batches, total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True)
