"""Label-model throughput: each model as a Ray Data actor stage vs the same model in a plain loop.

    PYTHONPATH=. python benchmarks/bench_labels.py --device cuda        # real-size models, ~3 min on an H100
    PYTHONPATH=. python benchmarks/bench_labels.py --quick              # tiny models on CPU, ~1 min

Models (randomly initialised: speed does not depend on the weights, and no weights file or network
is needed): SAM's box-prompted segmentation (`vit_b`, the real architecture; 2 person boxes per
image), the person detector (torchvision Faster R-CNN ResNet-50 FPN, resizing to 800 px as in
`labels.detector_min_size_px`) and Places365 (ResNet-50, 365 classes). `--quick`: a 2-block SAM at
256 px, the MobileNetV3 detector at 64 px and ResNet-18. Frames are synthesised in memory (smooth
colour fields with noise and a figure, about 19 KB a JPEG at 224 px, like real frames; no video
decoding, no PyAV). On GPU the models run under `--autocast` (bf16 default).

Per model, over the same images in blocks of `--rows` rows of `--frames-per-row` frames:

- loop, the model alone: the core (`BoxSegmenter` with two fixed boxes per image, `PersonDetector`,
  `PlacesClassifier`) called on each block's frames as one (N, 3, H, W) uint8 tensor that is already
  decoded and already on the device. It includes the core's own work only: conversion to float,
  resize and normalisation, the forward passes in chunks of `--batch` images, and the copy of the
  small result to the host. It excludes JPEG decoding and any copy of pixels to the device.
- stage, what the preprocess job runs: rows whose `frames` column holds the frames as JPEG bytes (as
  the decode stage stores them) go through `map_batches(..., batch_format="pandas",
  compute=ActorPoolStrategy(size=A, max_concurrent_calls_per_actor=C), num_gpus=1/A)` (`--actors` A,
  default 1: a whole GPU; `--calls` C, default 2 on a GPU: two blocks at once in threads on their own
  CUDA streams, so that one block's decode overlaps the other's forward pass). The actor decodes each block with
  `debias.curation.labels.masks.decode_rows_on` (the production stages' decoder: one nvJPEG batch onto the GPU) and
  runs the same core through `debias.curation.labels.masks.run_by_size`, as `SamMasks` and `Places365Scenes` do.
- decode, the stage's extra work alone: the same blocks' JPEG rows decoded onto the device by
  `decode_rows_on`, block after block. With the decode at or under the loop's rate, the card's JPEG
  decoder (not Ray) is what bounds the stage.
- decode then model, the stage's per-block work (`decode_rows_on`, then the core) in a plain loop,
  one block at a time: the stage over it is what Ray (actor, blocks, concurrent calls) costs or gains.
  Information only; the bar stays stage against the model alone.

With a GPU, the card's busy share (nvidia-smi) over the loop and over the stage run says whether the
stage leaves the GPU idle. Rates are steady-state: the first block of each loop, and for the stage
everything up to the end of the last actor's first block (model load, warm-up), are not counted. The
bar is stage >= 85 % of loop. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Callable

import cv2
import numpy as np
import pandas as pd
import torch

from debias.curation.labels.config import LabelsConfig
from debias.curation.labels.models import NUM_PLACES, BoxSegmenter, PersonDetector, PlacesClassifier, build_detector, tiny_sam
from debias.curation.labels.rows import decode_rows_on, run_by_size
from debias.curation.codecs import decode_jpegs_on, encode_jpeg
from debias.curation.video import thread_stream
from gpu_busy import GpuBusy  # benchmarks/, beside this script

BAR = 0.85
POOL_BLOCKS = 4  # distinct blocks of images; the run cycles through them (speed does not depend on content)


def build_core(model: str, quick: bool, device: torch.device, labels: LabelsConfig) -> Callable[[torch.Tensor], np.ndarray]:
    """The model-only callable a stage wraps: uint8 (N, 3, H, W) on the device -> a small numpy result."""
    torch.manual_seed(0)
    if model == "sam":
        from segment_anything import sam_model_registry

        sam = tiny_sam() if quick else sam_model_registry["vit_b"]()
        segment = BoxSegmenter(sam, labels, device)

        def run(images: torch.Tensor) -> np.ndarray:
            h, w = images.shape[-2:]  # two people per frame, side by side
            boxes = torch.tensor([[0.1 * w, 0.2 * h, 0.45 * w, 0.95 * h], [0.55 * w, 0.2 * h, 0.9 * w, 0.95 * h]])
            return segment(images, [boxes] * len(images)).mean(axis=(1, 2))
        return run
    if model == "detector":
        name = "fasterrcnn_mobilenet_v3_large_320_fpn" if quick else "fasterrcnn_resnet50_fpn"
        detect = PersonDetector(build_detector(name, labels.detector_min_size_px), labels, device)
        return lambda images: np.array([len(b) for b in detect(images)])
    import torchvision

    classify = PlacesClassifier(torchvision.models.get_model("resnet18" if quick else "resnet50", weights=None,
                                                             num_classes=NUM_PLACES), labels, device)
    return lambda images: classify(images).argmax(axis=1)


class Stage:
    """The Ray Data actor: builds the core once; per block, decodes the rows' JPEG frames onto its
    device and runs the core on them. Reads: frames, video_id, error. Writes (per row): images
    (frames labelled), done_s (when its block finished), actor (process id)."""

    def __init__(self, model: str, quick: bool, labels: LabelsConfig) -> None:
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.run = build_core(model, quick, self.device, labels)

    def __call__(self, batch: pd.DataFrame) -> dict:
        with thread_stream(self.device):  # as the production stages: concurrent calls overlap
            clips, errors = decode_rows_on(self.device, batch, "bench")
            if errors.error.any():
                raise RuntimeError(f"benchmark frames failed to decode: {errors.error[errors.error != ''].iloc[0]}")
            outs = run_by_size(clips, self.run)  # numpy results: the device work is done
        n = len(outs)
        return {"images": np.array([len(o) for o in outs]), "done_s": np.full(n, time.perf_counter()),
                "actor": np.full(n, os.getpid())}


def synth_images(n: int, size_px: int, seed: int) -> np.ndarray:
    """Smooth random colour fields with sensor-like noise and a figure-like blob: frames the models
    treat as images, and which compress like real frames."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, size_px, size_px, 3), np.uint8)
    for i in range(n):
        base = rng.integers(0, 256, (size_px // 8, size_px // 8, 3), dtype=np.uint8)
        smooth = cv2.resize(base, (size_px, size_px), interpolation=cv2.INTER_LINEAR).astype(np.float32)
        images[i] = np.clip(smooth + rng.normal(0, 6, smooth.shape), 0, 255).astype(np.uint8)
    images[:, size_px // 5 : -size_px // 20, size_px // 8 : size_px // 2 - 8] = rng.integers(0, 256, 3, dtype=np.uint8)
    return images


def jpeg_rows(images: np.ndarray, frames_per_row: int, block: int) -> pd.DataFrame:
    """One block of label rows as the decode stage emits them: `frames_per_row` JPEG frames a row."""
    jpegs = [encode_jpeg(image, 90) for image in images]
    return pd.DataFrame([{"video_id": f"b{block}r{r}", "frames": jpegs[s : s + frames_per_row],
                          "error": "", "error_code": "", "error_stage": ""}
                         for r, s in enumerate(range(0, len(jpegs), frames_per_row))])


def steady_rate(sizes: list[int], done_s: list[float], start_s: float) -> float:
    """Images per second finished after `start_s` (the end of warm-up)."""
    after = [(n, t) for n, t in zip(sizes, done_s) if t > start_s]
    return float(sum(n for n, _ in after) / max(max(t for _, t in after) - start_s, 1e-9)) if after else 0.0


def measure(model: str, args: argparse.Namespace, labels: LabelsConfig, device: torch.device, rows: int) -> dict:
    import ray
    from ray.data import ActorPoolStrategy

    block_images = rows * args.frames_per_row
    pool = [jpeg_rows(synth_images(block_images, args.image_px, b), args.frames_per_row, b) for b in range(POOL_BLOCKS)]
    # the loop's input: each block's frames decoded once, before timing, onto the device
    decoded = [torch.stack(decode_jpegs_on(device, [f for frames in p.frames for f in frames])) for p in pool]
    core = build_core(model, args.quick, device, labels)
    core(decoded[0])  # warm-up (cuDNN autotune, lazy init)
    t = time.perf_counter()
    core(decoded[1])
    block_s = time.perf_counter() - t
    num_blocks = int(min(args.max_batches, max(args.min_batches, args.seconds / max(block_s, 1e-6))))

    def timed_blocks(work: Callable[[int], object]) -> tuple[float, float | None]:
        """Steady images/s of `work(block)` run block after block (synchronised), and the GPU's busy %."""
        done = []
        with GpuBusy(device) as busy:
            for b in range(num_blocks):
                work(b)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                done.append(time.perf_counter())
        return steady_rate([block_images] * num_blocks, done, done[0]), busy.pct

    loop, loop_busy = timed_blocks(lambda b: core(decoded[b % POOL_BLOCKS]))  # the plain loop
    # The work the stage adds, alone: each block's JPEG rows decoded onto the device by the production
    # decoder. Near the loop's rate or under it, the card's JPEG decoder is what the stage waits on.
    decode, _ = timed_blocks(lambda b: decode_rows_on(device, pool[b % POOL_BLOCKS], "bench"))
    # The stage's whole per-block work (decode, then the core) one block after another without Ray:
    # the stage over this is what Ray's actor, blocks and concurrent calls cost or gain.
    plain, _ = timed_blocks(lambda b: run_by_size(decode_rows_on(device, pool[b % POOL_BLOCKS], "bench")[0], core))
    core = decoded = None  # free the loop's model and frames on the device before the stage loads its own
    if device.type == "cuda":
        torch.cuda.empty_cache()

    ds = ray.data.from_pandas([pool[b % POOL_BLOCKS] for b in range(num_blocks)]).map_batches(  # a block a batch
        Stage, fn_constructor_args=(model, args.quick, labels), batch_size=rows, batch_format="pandas",
        num_gpus=1 / args.actors if device.type == "cuda" else 0, num_cpus=1,
        compute=ActorPoolStrategy(size=args.actors, max_concurrent_calls_per_actor=args.calls,
                                  enable_true_multi_threading=args.calls > 1))
    with GpuBusy(device) as stage_busy:
        out = pd.concat([pd.DataFrame(b) for b in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0)])
    blocks = out.groupby(["actor", "done_s"], as_index=False).images.sum()
    warm_s = blocks.groupby("actor").done_s.min().max()  # every actor has finished its first block
    stage = steady_rate(blocks.images.tolist(), blocks.done_s.tolist(), warm_s)
    assert out.images.sum() == num_blocks * block_images, "the stage lost images"
    return {"loop_images_per_s": round(loop, 2), "stage_images_per_s": round(stage, 2),
            "stage_over_loop": round(stage / loop, 3), "meets_bar": stage >= BAR * loop,
            "decode_images_per_s": round(decode, 2), "decode_over_loop": round(decode / loop, 3),
            "decode_then_model_images_per_s": round(plain, 2), "stage_over_decode_then_model": round(stage / plain, 3),
            # busy share of the card: the loop's, and the stage's (model load and warm-up included)
            "loop_gpu_busy_pct": loop_busy, "stage_gpu_busy_pct": stage_busy.pct,
            "blocks": num_blocks, "block_images": block_images}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="tiny models (CPU smoke run)")
    parser.add_argument("--models", default="sam,detector,places365")
    parser.add_argument("--frames-per-row", type=int, default=0, help="JPEG frames per row, a clip (default: 16; 4 quick)")
    parser.add_argument("--rows", type=int, default=0,
                        help="rows per Ray block, one stage batch (default: Places365 32, as resources.label_batch_size, "
                             "so that a fast model gets enough work per Ray task; SAM and detector 4; 2 quick)")
    parser.add_argument("--batch", type=int, default=0,
                        help="images per model forward pass (default: SAM and detector 16, Places365 128 on GPU; 4 quick)")
    parser.add_argument("--image-px", type=int, default=0, help="frame size (default: 224; 64 quick)")
    parser.add_argument("--seconds", type=float, default=0, help="target loop time per model (default: 15 GPU, 5 quick)")
    parser.add_argument("--actors", type=int, default=1,
                        help="stage actors sharing the device (default 1: measured on an H200, a second actor sharing "
                             "the GPU made Places365 slower; 1 on CPU, where a second actor would take a second core)")
    parser.add_argument("--calls", type=int, default=0,
                        help="blocks an actor runs at once, in threads on their own CUDA streams, as "
                             "resources.label_calls_per_actor in the preprocess job (default: 2 on a GPU, 1 on CPU)")
    parser.add_argument("--min-batches", type=int, default=6, help="fewest blocks per model")
    parser.add_argument("--max-batches", type=int, default=200, help="most blocks per model")
    parser.add_argument("--autocast", default="bf16", choices=["bf16", "fp16", "off"])
    args = parser.parse_args()
    args.image_px = args.image_px or (64 if args.quick else 224)
    args.frames_per_row = args.frames_per_row or (4 if args.quick else 16)
    args.seconds = args.seconds or (5.0 if args.quick else 15.0)
    args.calls = args.calls or (2 if args.device == "cuda" else 1)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible")
    if device.type == "cpu":
        torch.set_num_threads(1)  # the stage's actor holds one CPU (Ray sets its OMP_NUM_THREADS=1): same for the loop

    import ray

    ray.init(address="local", num_cpus=max(4, os.cpu_count() or 1), num_gpus=1 if device.type == "cuda" else 0,
             include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    t0 = time.perf_counter()
    results: dict = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                     "quick": args.quick, "autocast": args.autocast if device.type == "cuda" else "off",
                     "image_px": args.image_px, "frames_per_row": args.frames_per_row, "stage_actors": args.actors,
                     "calls_per_actor": args.calls,
                     "torch": torch.__version__}
    for model in args.models.split(","):
        t = time.perf_counter()
        batch = args.batch or (4 if args.quick else 128 if model == "places365" else 16)
        rows = args.rows or (2 if args.quick else 32 if model == "places365" else 4)
        labels = LabelsConfig(autocast=args.autocast, detector_min_size_px=64 if args.quick else 800,
                              sam_batch_images=batch, detector_batch_images=batch, places_batch_images=batch)
        try:
            results[model] = {**measure(model, args, labels, device, rows), "batch": batch}
        except Exception as e:  # noqa: BLE001 - one model's failure must not cost the others' numbers
            results[model] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        results[model]["seconds"] = round(time.perf_counter() - t, 1)
        print(f"{model}: {results[model]}", flush=True)
    results["all_meet_bar"] = all(r.get("meets_bar", False) for k, r in results.items() if isinstance(r, dict))
    results["seconds"] = round(time.perf_counter() - t0, 1)
    ray.shutdown()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
