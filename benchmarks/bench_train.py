"""Training throughput: clips/s of the real training step, on synthetic in-memory tensors and fed by
the real shard loader (Ray Data, `debias.training.pretrain.clip_dataset`), for the baseline and SDN.

    PYTHONPATH=. python benchmarks/bench_train.py --device cuda        # full: r3d_18, 16x112x112, batch 32
    PYTHONPATH=. python benchmarks/bench_train.py --quick --device cpu # narrow model, tiny clips

Bars (issue 5): loader rate >= 90 % of the synthetic rate (the loader is never what the step waits
on); an SDN step (clean + masked clips, twice the forward work) at most 2.2x a baseline step. Both
rates are timed as the trainer runs an epoch (one `train_one_epoch` call, no host sync between
steps); the step ratio compares median synchronised steps (robust on a shared machine). On a
GPU also the model FLOP utilisation of r3d_18 (81 GFLOPs forward per 16x112x112 clip, x3 for a
training step) against the measured bf16 matmul peak and against 989 TFLOP/s (H100/H200 dense bf16).
The shards are written here (moving squares, JPEG-encoded with OpenCV, masks packed, in the shard
schema), so no PyAV and no dataset are needed. The last line is JSON with every figure.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from debias.training.clips import ClipCollate, write_pattern_shards
from debias.config import load_config
from debias.training.models import SDN
from debias.training.train import LossConfig, PretrainConfig, decode_on_device, make_optimizer, train_one_epoch
from gpu_busy import GpuBusy  # benchmarks/, beside this script

R3D18_FWD_GFLOPS_PER_CLIP = 81.0  # 16x112x112 clip (the figure)
H100_BF16_DENSE_TFLOPS = 989.0


def settings(quick: bool, device: torch.device) -> dict:
    if quick:
        return {"model": ["model.backbone=r3d_narrow", "model.width=8"], "frames": 8, "stored_px": 36, "crop_px": 32,
                "batch": 16, "rows": 512, "steps": 24}
    return {"model": ["model.backbone=r3d_18", "model.scene_hidden=512", "model.scene_layers=3"], "frames": 16,
            "stored_px": 128, "crop_px": 112, "batch": 32, "rows": 4096 if device.type == "cuda" else 128,
            "steps": 30 if device.type == "cuda" else 3}


def make_cfg(s: dict, shards: Path, sdn: bool, decode_on: str) -> PretrainConfig:
    weights = ["loss.lambda_scene=0.5", "loss.lambda_mask=0.5"] if sdn else ["loss.lambda_scene=0", "loss.lambda_mask=0"]
    return load_config(PretrainConfig, None, s["model"] + weights + [f"loader.decode_on={decode_on}",
        f"shards={shards}", "eval_splits=[]", f"optim.batch_size={s['batch']}", f"clip.clip_len={s['frames']}",
        f"clip.crop_px={s['crop_px']}", "clip.scales=[1.0, 0.841, 0.707, 0.595, 0.5]", "clip.flip=true"])


def synthetic_batch(s: dict, num_scenes: int, device: torch.device) -> dict:
    shape = (s["batch"], s["frames"], s["crop_px"], s["crop_px"], 3)
    return {"clips": torch.randint(0, 256, shape, dtype=torch.uint8, device=device),
            "masked": torch.randint(0, 256, shape, dtype=torch.uint8, device=device),
            "mask_valid": torch.ones(s["batch"], dtype=torch.bool, device=device),
            "label_id": torch.randint(0, 4, (s["batch"],), device=device),
            "scene_id": torch.randint(0, num_scenes, (s["batch"],), device=device),
            "scene_probs": torch.softmax(torch.randn(s["batch"], num_scenes, device=device), dim=1)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def fresh_model(cfg: PretrainConfig, device: torch.device) -> tuple[SDN, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = SDN(cfg.model, num_actions=4, num_scenes=4).to(device)
    return model, make_optimizer(model, cfg.optim)


def clips_per_s(cfg: PretrainConfig, batches, warmup: int, steps: int, device: torch.device) -> tuple[float, float | None]:
    """Clips/s of `train_one_epoch` over `steps` batches after `warmup` untimed ones, run as the trainer
    runs an epoch: one call, no host sync between steps, so the CPU fetches batches and launches
    kernels ahead of the GPU. Waiting for a batch shows in the time, so a loader that cannot keep
    up shows. Also returns the GPU's busy share (%) over the timed steps (None on CPU)."""
    model, optimizer = fresh_model(cfg, device)
    loss_cfg: LossConfig = cfg.loss
    it = iter(batches)
    train_one_epoch(model, itertools.islice(it, warmup), optimizer, loss_cfg, device)
    sync(device)
    done = []
    with GpuBusy(device) as busy:
        start = time.perf_counter()
        metrics = train_one_epoch(model, (done.append(1) or b for b in itertools.islice(it, steps)), optimizer,
                                  loss_cfg, device)
        sync(device)
        elapsed_s = time.perf_counter() - start
    assert done and metrics["loss"] == metrics["loss"], "no steps, or the loss is NaN"
    return cfg.optim.batch_size * len(done) / elapsed_s, busy.pct


def median_step_clips_per_s(cfg: PretrainConfig, batch: dict, steps: int, device: torch.device) -> float:
    """Clips/s of the median synchronised step on one in-memory batch: a step's cost, robust to other
    work on a shared machine (for the SDN / baseline step ratio)."""
    model, optimizer = fresh_model(cfg, device)
    train_one_epoch(model, [batch] * 3, optimizer, cfg.loss, device)
    times = []
    for _ in range(steps):
        sync(device)
        start = time.perf_counter()
        train_one_epoch(model, [batch], optimizer, cfg.loss, device)
        sync(device)
        times.append(time.perf_counter() - start)
    return cfg.optim.batch_size / statistics.median(times)


def time_loader(cfg: PretrainConfig, s: dict, device: torch.device) -> dict:
    """The real path: the trainer's Ray Data pipeline (windows, multi-scale crop, flip, masked twin)
    and its iterator settings (clips land on `device` in Ray's prefetch threads), timed with the step."""
    from debias.training.pretrain import clip_dataset, split_rows
    from debias.curation.shards import shard_files

    ds = clip_dataset(cfg, split_rows(cfg, shard_files(cfg.shards))[cfg.train_split], train=True)
    iter_args = {"batch_size": s["batch"], "prefetch_batches": cfg.loader.prefetch_batches, "device": device,
                 "collate_fn": ClipCollate(cfg.clip, device) if decode_on_device(cfg) else None}
    # The first batches wait for the pipeline to spin up (tasks, first blocks): a cost per epoch,
    # not per step, so the steady-state rate leaves out the first tenth of the epoch.
    warmup = max(3, s["rows"] // s["batch"] // 10)
    steps = max(1, s["rows"] // s["batch"] - warmup)
    loader, busy_pct = clips_per_s(cfg, ds.iter_torch_batches(drop_last=True, **iter_args), warmup, steps, device)
    # The loader alone (no training step): what it can deliver at most, spin-up included.
    t = time.perf_counter()
    n = sum(len(b["label_id"]) for b in ds.iter_torch_batches(**iter_args))
    sync(device)
    return {"loader_clips_per_s": round(loader, 2), "loader_gpu_busy_pct": busy_pct,
            "loader_only_clips_per_s": round(n / (time.perf_counter() - t), 2)}


def matmul_peak_tflops(device: torch.device) -> float:
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    t, n = time.perf_counter(), 20
    for _ in range(n):
        a @ b
    sync(device)
    return 2 * 8192**3 * n / (time.perf_counter() - t) / 1e12


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="narrow model, tiny clips (a CPU check in a minute)")
    parser.add_argument("--out", help="folder for the generated shards (default: a temporary folder)")
    parser.add_argument("--decode-on", help="loader paths to time, comma-separated, the first is the headline "
                                            "(default: device,tasks on a GPU; tasks on CPU). device: JPEG decode, "
                                            "crops and masked twin on the training device; tasks: Ray Data CPU tasks")
    parser.add_argument("--batch-size", type=int, help="clips per step (default: 32 full, 16 quick); the repro "
                                                       "configs' 4 per GPU is what 8 GPUs x 4 = 32 runs at")
    parser.add_argument("--switch-interval-ms", type=float,
                        help="Python's GIL switch interval for this process (default: Python's 5 ms). The GPU "
                             "loader renders in Ray's prefetch threads beside the training loop, which needs the "
                             "GIL to launch its kernels; a shorter interval hands it back sooner")
    args = parser.parse_args()
    if args.switch_interval_ms:
        sys.setswitchinterval(args.switch_interval_ms / 1e3)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed clip shapes: let cuDNN pick its fastest kernels
    s = settings(args.quick, device)
    s["batch"] = args.batch_size or s["batch"]
    paths = (args.decode_on or ("device,tasks" if device.type == "cuda" else "tasks")).split(",")
    import ray

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        shards = write_pattern_shards(Path(args.out or tmp), {"train": s["rows"]}, num_frames=s["frames"],
                                      size_px=s["stored_px"], rows_per_file=64)
        print(f"wrote {s['rows']} rows of {s['frames']}x{s['stored_px']}px in {time.perf_counter() - t0:.1f} s", flush=True)
        # As the jobs do (debias.cluster.init_ray): at least 4 logical CPUs, so that decode tasks
        # overlap the step on a small machine; no dashboard (a GPU box may lack its extra packages).
        ray.init(address="local", num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        results: dict = {}
        for variant in ("baseline", "sdn"):
            cfg = make_cfg(s, shards, sdn=variant == "sdn", decode_on=paths[0])
            batch = synthetic_batch(s, 4, device)
            synthetic, synthetic_busy_pct = clips_per_s(cfg, itertools.repeat(batch), 3, s["steps"], device)
            synthetic_median = median_step_clips_per_s(cfg, batch, s["steps"], device)
            results[variant] = {"synthetic_clips_per_s": round(synthetic, 2), "synthetic_gpu_busy_pct": synthetic_busy_pct,
                                "synthetic_median_step_clips_per_s": round(synthetic_median, 2)}
            for path in paths:
                loader = time_loader(make_cfg(s, shards, sdn=variant == "sdn", decode_on=path), s, device)
                results[variant][f"decode_on_{path}"] = loader
                print(f"{variant} decode_on={path}: synthetic {synthetic:.1f} clips/s (median step "
                      f"{synthetic_median:.1f}), loader {loader['loader_clips_per_s']:.1f} clips/s, "
                      f"loader alone {loader['loader_only_clips_per_s']:.1f}, "
                      f"loader/synthetic {loader['loader_clips_per_s'] / synthetic:.0%}", flush=True)
            headline = results[variant][f"decode_on_{paths[0]}"]
            results[variant].update(loader_clips_per_s=headline["loader_clips_per_s"],
                                    loader_over_synthetic=round(headline["loader_clips_per_s"] / synthetic, 3))
        ray.shutdown()
    sdn, base = results["sdn"], results["baseline"]
    summary = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
        "mode": "quick" if args.quick else "full", "gil_switch_interval_ms": sys.getswitchinterval() * 1e3,
        "decode_on": paths[0], "model": " ".join(s["model"]), "batch_size": s["batch"],
        "clip": f"{s['frames']}x{s['crop_px']}x{s['crop_px']}",
        "synthetic_clips_per_s": sdn["synthetic_clips_per_s"], "loader_clips_per_s": sdn["loader_clips_per_s"],
        # A step's cost, not the machine's mood: the ratio of median synthetic step times.
        "sdn_step_over_baseline": round(base["synthetic_median_step_clips_per_s"]
                                        / sdn["synthetic_median_step_clips_per_s"], 3),
        "baseline": base, "sdn": sdn,
    }
    summary["bars"] = {"loader_at_least_90pct": min(base["loader_over_synthetic"], sdn["loader_over_synthetic"]) >= 0.9,
                       "sdn_step_at_most_2.2x": summary["sdn_step_over_baseline"] <= 2.2}
    if device.type == "cuda" and not args.quick and s["frames"] == 16 and s["crop_px"] == 112:
        peak = matmul_peak_tflops(device)
        # A baseline step runs its clips once through the backbone; an SDN step runs clean + masked.
        flops = {"baseline": base["synthetic_clips_per_s"] * 3 * R3D18_FWD_GFLOPS_PER_CLIP / 1e3,
                 "sdn": sdn["synthetic_clips_per_s"] * 2 * 3 * R3D18_FWD_GFLOPS_PER_CLIP / 1e3}
        summary["measured_bf16_matmul_tflops"] = round(peak, 1)
        summary["model_tflops"] = {k: round(v, 1) for k, v in flops.items()}
        summary["mfu_vs_measured_peak"] = {k: round(v / peak, 3) for k, v in flops.items()}
        summary["mfu_vs_989_tflops"] = {k: round(v / H100_BF16_DENSE_TFLOPS, 3) for k, v in flops.items()}
    summary["wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
