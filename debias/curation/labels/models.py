"""The label models alone: loaders for the released checkpoints and batched, device-side cores.

No Ray, no video decoding (so the GPU benchmark runs where PyAV is absent): `debias/curation/labels/masks.py` and
`debias/curation/labels/scenes.py` wrap these cores as Ray Data stages, `debias/curation/labels/weights.py` uses the loaders as load
checks, `benchmarks/bench_labels.py` times the cores in a plain loop against those stages. The cores
take (N, 3, H, W) uint8 tensors, as `debias.curation.video.decode_jpegs_on` decodes them: the stages decode
straight onto the model's device, so the frames never cross to the GPU as pixels.
"""

from __future__ import annotations

import contextlib
from functools import partial
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from debias.curation.labels.config import LabelsConfig

COCO_PERSON = 1  # the person class id in torchvision's COCO detectors
NUM_PLACES = 365
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # the CSAIL release's normalisation


def label_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_context(device: torch.device, autocast: str) -> contextlib.AbstractContextManager:
    """bf16 / fp16 autocast on GPU; CPU stays float32 (CPU autocast is slower for these models)."""
    if device.type != "cuda" or autocast == "off":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if autocast == "bf16" else torch.float16)


def chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


# --- detector + SAM ------------------------------------------------------------------------------

def build_detector(name: str, min_size_px: int, score_min: float = 0.05) -> torch.nn.Module:
    """A torchvision COCO detector with random weights (load a state dict into it); it drops boxes
    scoring under `score_min` itself (torchvision's default is 0.05)."""
    import torchvision

    return torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=91,
                                        min_size=min_size_px, max_size=max(1333, min_size_px),
                                        box_score_thresh=score_min)


def load_detector(path: str | Path, name: str, min_size_px: int = 800, score_min: float = 0.05) -> torch.nn.Module:
    """torchvision's released state dict (as in the hub cache) -> detector in eval mode."""
    model = build_detector(name, min_size_px, score_min)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def sam_with_encoder(depth: int, embed_dim: int, img_size: int, mlp_ratio: float, num_heads: int,
                     global_attn_indexes: list[int], window_size: int, out_chans: int = 256):
    """A randomly initialised segment-anything `Sam` with this image encoder; the prompt encoder and
    mask decoder are SAM's fixed ones."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    grid = img_size // 16
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=depth, embed_dim=embed_dim, img_size=img_size, mlp_ratio=mlp_ratio,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=num_heads, patch_size=16, qkv_bias=True,
            use_rel_pos=True, global_attn_indexes=global_attn_indexes, window_size=window_size, out_chans=out_chans),
        prompt_encoder=PromptEncoder(embed_dim=out_chans, image_embedding_size=(grid, grid),
                                     input_image_size=(img_size, img_size), mask_in_chans=16),
        mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(
            depth=2, embedding_dim=out_chans, mlp_dim=2048, num_heads=8), transformer_dim=out_chans,
            iou_head_depth=3, iou_head_hidden_dim=256),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])


def tiny_sam():
    """A 2-block, 32-wide SAM at 256 px (random weights): the real code paths at CPU-test cost."""
    return sam_with_encoder(depth=2, embed_dim=32, img_size=256, mlp_ratio=4, num_heads=2,
                            global_attn_indexes=[1], window_size=4)


def build_sam(state_dict: dict[str, torch.Tensor]):
    """A segment-anything `Sam` whose image encoder is shaped like `state_dict`'s, with the weights
    loaded. The released vit_b / vit_l / vit_h checkpoints give exactly `sam_model_registry`'s models;
    a smaller encoder (tests) loads the same way."""
    grid = state_dict["image_encoder.pos_embed"].shape[1]  # (1, img/16, img/16, C)
    embed_dim = state_dict["image_encoder.pos_embed"].shape[-1]
    depth = sum(1 for k in state_dict if k.startswith("image_encoder.blocks.") and k.endswith(".norm1.weight"))
    rel = [state_dict[f"image_encoder.blocks.{i}.attn.rel_pos_h"] for i in range(depth)]
    windowed = [r for r in rel if r.shape[0] != 2 * grid - 1]
    sam = sam_with_encoder(
        depth=depth, embed_dim=embed_dim, img_size=grid * 16,
        mlp_ratio=state_dict["image_encoder.blocks.0.mlp.lin1.weight"].shape[0] / embed_dim,
        num_heads=embed_dim // rel[0].shape[1],
        global_attn_indexes=[i for i in range(depth) if rel[i].shape[0] == 2 * grid - 1],
        window_size=(windowed[0].shape[0] + 1) // 2 if windowed else 14,
        out_chans=state_dict["image_encoder.neck.0.weight"].shape[0])
    sam.load_state_dict(state_dict)
    return sam.eval()


def load_sam(path: str | Path):
    """A released SAM checkpoint (a plain state dict, as `sam_model_registry` reads it) -> Sam."""
    return build_sam(torch.load(path, map_location="cpu", weights_only=True))


class PersonDetector:
    """Batched person boxes from a torchvision COCO detector (the model-only core the benchmark times)."""

    def __init__(self, detector: torch.nn.Module, labels: LabelsConfig, device: torch.device) -> None:
        self.detector, self.labels, self.device = detector.to(device).eval(), labels, device

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(N, 3, H, W) uint8 (best on the device) -> per image a (P, 4) xyxy float tensor of person
        boxes on the device, P <= max_people."""
        boxes = []
        for part in chunks(len(images), self.labels.detector_batch_images):
            x = images[part].to(self.device).float() / 255
            with autocast_context(self.device, self.labels.autocast):
                found = self.detector(list(x))
            for d in found:  # sorted by score
                keep = (d["labels"] == COCO_PERSON) & (d["scores"] >= self.labels.person_score_min)
                boxes.append(d["boxes"][keep][: self.labels.max_people].float())
        return boxes


class BoxSegmenter:
    """Box-prompted SAM, batched over images: one image-encoder pass per `sam_batch_images` images,
    then one mask-decoder pass per image over all its boxes; a frame's mask is the union."""

    def __init__(self, sam, labels: LabelsConfig, device: torch.device) -> None:
        from segment_anything.utils.transforms import ResizeLongestSide

        self.sam, self.labels, self.device = sam.to(device).eval(), labels, device
        self.resize = ResizeLongestSide(sam.image_encoder.img_size)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor, boxes: list[torch.Tensor]) -> np.ndarray:
        """(N, 3, H, W) uint8 (best on the device) + per-image (P, 4) boxes -> (N, H, W) bool numpy (the
        stage packs them on the host); no box, no SAM pass."""
        n, (h, w) = len(images), images.shape[-2:]
        out = np.zeros((n, h, w), bool)
        with_people = [i for i in range(n) if len(boxes[i])]
        new_h, new_w = self.resize.get_preprocess_shape(h, w, self.resize.target_length)
        for part in chunks(len(with_people), self.labels.sam_batch_images):
            idx = with_people[part]
            x = images[idx].to(self.device).float()
            x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
            union = torch.zeros((len(idx), h, w), dtype=torch.bool, device=self.device)
            with autocast_context(self.device, self.labels.autocast):
                embeddings = self.sam.image_encoder(self.sam.preprocess(x))
                for j, i in enumerate(idx):
                    sparse, dense = self.sam.prompt_encoder(
                        points=None, boxes=self.resize.apply_boxes_torch(boxes[i].to(self.device), (h, w)), masks=None)
                    low_res, _iou = self.sam.mask_decoder(
                        image_embeddings=embeddings[j : j + 1], image_pe=self.sam.prompt_encoder.get_dense_pe(),
                        sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False)
                    masks = self.sam.postprocess_masks(low_res.float(), (new_h, new_w), (h, w))
                    union[j] = (masks > self.sam.mask_threshold).any(dim=0)[0]
            out[idx] = union.cpu().numpy()  # one device sync per chunk
        return out


# --- Places365 -----------------------------------------------------------------------------------

def load_places365(path: str | Path, arch: str) -> torch.nn.Module:
    """A CSAIL Places365 release (`{'state_dict': {'module.<key>': tensor}}`, `.pth.tar`) -> torchvision
    ResNet with 365 outputs, in eval mode."""
    import torchvision

    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"{path}: not a CSAIL Places365 checkpoint (no 'state_dict')")
    state = {k.removeprefix("module."): v for k, v in checkpoint["state_dict"].items()}
    model = torchvision.models.get_model(arch, weights=None, num_classes=NUM_PLACES)
    model.load_state_dict(state)
    return model.eval()


def load_categories(path: str | Path) -> list[str]:
    """categories_places365.txt (`/a/airfield 0` per line) -> the 365 names in index order."""
    lines = [line.split() for line in Path(path).read_text().splitlines() if line.strip()]
    names = [name for name, _index in sorted(lines, key=lambda parts: int(parts[1]))]
    if len(names) != NUM_PLACES or [int(p[1]) for p in sorted(lines, key=lambda p: int(p[1]))] != list(range(NUM_PLACES)):
        raise ValueError(f"{path}: expected {NUM_PLACES} categories numbered 0..{NUM_PLACES - 1}, got {len(names)}")
    return names


class PlacesClassifier:
    """Batched Places365 probabilities for uint8 images; the model-only core of `Places365Scenes`."""

    def __init__(self, model: torch.nn.Module, labels: LabelsConfig, device: torch.device) -> None:
        self.model, self.labels, self.device = model.to(device).eval(), labels, device
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> np.ndarray:
        """(N, 3, H, W) uint8 (best on the device) -> (N, 365) float32 probabilities (images resized to
        224 x 224)."""
        out = []
        for part in chunks(len(images), self.labels.places_batch_images):
            x = images[part].to(self.device).float() / 255
            x = (F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True, align_corners=False) - self.mean) / self.std
            with autocast_context(self.device, self.labels.autocast):
                logits = self.model(x)
            out.append(torch.softmax(logits.float(), dim=1))
        # one device sync per call, not per chunk: the GPU runs the chunks back to back
        return torch.cat(out).cpu().numpy() if out else np.zeros((0, NUM_PLACES), np.float32)
