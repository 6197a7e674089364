"""Label-model throughput: each model as a Ray Data actor stage vs the same model in a plain loop.

    PYTHONPATH=. python benchmarks/bench_labels.py --device cuda        # real-size models, ~3 min on an H100
    PYTHONPATH=. python benchmarks/bench_labels.py --quick              # tiny models on CPU, ~1 min

Models (randomly initialised: speed does not depend on the weights, and no weights file or network
is needed): SAM's box-prompted segmentation (`vit_b`, the real architecture; 2 person boxes per
image), the person detector (torchvision Faster R-CNN ResNet-50 FPN, resizing to 800 px as in
`labels.detector_min_size_px`) and Places365 (ResNet-50, 365 classes). `--quick`: a 2-block SAM at
256 px, the MobileNetV3 detector at 64 px and ResNet-18. Frames are synthesised in memory (no video
decoding, no PyAV). On GPU the models run under `--autocast` (bf16 default), batched as in the stages.

Per model: the loop calls the model core (`BoxSegmenter`, `PersonDetector`, `PlacesClassifier`) on
consecutive batches of `--batch` images (per-model defaults); the stage runs the same core in a
`map_batches(..., compute=ActorPoolStrategy(size=A), num_gpus=1/A)` actor pool (`--actors`: 2 on a GPU, 1 on CPU) over the same images as
Ray blocks of one batch each. Both rates are steady-state (the first batch, with model load and
warm-up, is not counted); the bar is stage >= 85 % of loop. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from debias.labels import LabelsConfig
from debias.label_models import NUM_PLACES, BoxSegmenter, PersonDetector, PlacesClassifier, build_detector, tiny_sam

BAR = 0.85


def build_core(model: str, quick: bool, device: torch.device, labels: LabelsConfig):
    """The model-only callable a stage wraps: uint8 (N, H, W, 3) -> a small numpy result."""
    torch.manual_seed(0)
    if model == "sam":
        from segment_anything import sam_model_registry

        sam = tiny_sam() if quick else sam_model_registry["vit_b"]()
        segment = BoxSegmenter(sam, labels, device)

        def run(images: np.ndarray) -> np.ndarray:
            h, w = images.shape[1:3]  # two people per frame, side by side
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
    """The Ray Data actor: builds the core once, runs it on each batch of images."""

    def __init__(self, model: str, quick: bool, labels: LabelsConfig) -> None:
        self.run = build_core(model, quick, torch.device("cuda" if torch.cuda.is_available() else "cpu"), labels)

    def __call__(self, batch: dict) -> dict:
        return {"out": self.run(batch["data"]), "done_s": np.full(len(batch["data"]), time.perf_counter())}


def synth_images(n: int, size_px: int, seed: int) -> np.ndarray:
    """Smooth random colour fields with two figure-like blobs: frames the models treat as images."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, size_px // 8, size_px // 8, 3), dtype=np.uint8)
    images = base.repeat(8, axis=1).repeat(8, axis=2)
    images[:, size_px // 5 : -size_px // 20, size_px // 8 : size_px // 2 - 8] = rng.integers(0, 256, 3, dtype=np.uint8)
    return np.ascontiguousarray(images)


def steady_rate(batch_sizes: list[int], done_s: list[float]) -> float:
    """Images per second after the first batch (model load and warm-up excluded)."""
    return sum(batch_sizes[1:]) / max(done_s[-1] - done_s[0], 1e-9)


def measure(model: str, args: argparse.Namespace, labels: LabelsConfig, device: torch.device, batch: int) -> dict:
    import ray
    from ray.data import ActorPoolStrategy

    core = build_core(model, args.quick, device, labels)
    probe = synth_images(batch, args.image_px, 0)
    core(probe)  # warm-up (cuDNN autotune, lazy init)
    t = time.perf_counter()
    core(probe)
    batch_s = time.perf_counter() - t
    num_batches = int(min(args.max_batches, max(args.min_batches, args.seconds / max(batch_s, 1e-6))))
    batches = [synth_images(batch, args.image_px, i + 1) for i in range(num_batches)]

    sizes, done = [], []
    for b in batches:  # the plain loop
        core(b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        sizes.append(len(b))
        done.append(time.perf_counter())
    loop = steady_rate(sizes, done)
    del core
    if device.type == "cuda":
        torch.cuda.empty_cache()

    ds = ray.data.from_numpy(batches).map_batches(  # one block per batch, as the decode stage emits them
        Stage, fn_constructor_args=(model, args.quick, labels), batch_size=batch, batch_format="numpy",
        num_gpus=1 / args.actors if device.type == "cuda" else 0, num_cpus=1, compute=ActorPoolStrategy(size=args.actors))
    sizes, done = [], []
    for out in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0):
        sizes.append(len(out["out"]))
        done.append(float(out["done_s"].max()))
    order = np.argsort(done)
    stage = steady_rate([sizes[i] for i in order], sorted(done))
    return {"loop_images_per_s": round(loop, 2), "stage_images_per_s": round(stage, 2),
            "stage_over_loop": round(stage / loop, 3), "meets_bar": stage >= BAR * loop,
            "batches": num_batches, "batch": batch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="tiny models (CPU smoke run)")
    parser.add_argument("--models", default="sam,detector,places365")
    parser.add_argument("--batch", type=int, default=0,
                        help="images per batch (default: SAM and detector 16, Places365 128 on GPU; 4 quick)")
    parser.add_argument("--image-px", type=int, default=0, help="frame size (default: 224; 64 quick)")
    parser.add_argument("--seconds", type=float, default=0, help="target loop time per model (default: 15 GPU, 5 quick)")
    parser.add_argument("--actors", type=int, default=0,
                        help="stage actors sharing the device (default: 2 on a GPU, so that one moves its next block "
                             "while the other computes, as resources.label_gpus=0.5 allows in the preprocess job; 1 on "
                             "CPU, where a second actor would also take a second core)")
    parser.add_argument("--min-batches", type=int, default=6)
    parser.add_argument("--max-batches", type=int, default=200)
    parser.add_argument("--autocast", default="bf16", choices=["bf16", "fp16", "off"])
    args = parser.parse_args()
    args.image_px = args.image_px or (64 if args.quick else 224)
    args.seconds = args.seconds or (5.0 if args.quick else 15.0)
    args.actors = args.actors or (2 if args.device == "cuda" else 1)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible")
    if device.type == "cpu":
        torch.set_num_threads(1)  # the stage's actor holds one CPU (Ray sets its OMP_NUM_THREADS=1): same for the loop

    import ray

    ray.init(num_cpus=max(4, os.cpu_count() or 1), num_gpus=1 if device.type == "cuda" else 0,
             include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    t0 = time.perf_counter()
    results: dict = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                     "quick": args.quick, "autocast": args.autocast if device.type == "cuda" else "off",
                     "image_px": args.image_px, "stage_actors": args.actors, "torch": torch.__version__}
    for model in args.models.split(","):
        t = time.perf_counter()
        # a small classifier needs bigger batches than SAM to keep a GPU busy between Ray tasks
        batch = args.batch or (4 if args.quick else 128 if model == "places365" else 16)
        labels = LabelsConfig(autocast=args.autocast, detector_min_size_px=64 if args.quick else 800,
                              sam_batch_images=batch, detector_batch_images=batch, places_batch_images=batch)
        try:
            results[model] = measure(model, args, labels, device, batch)
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
