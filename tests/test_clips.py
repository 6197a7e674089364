"""Clip rendering: the device path (`ClipCollate`, run here on CPU) builds the same clips, masked twins
and targets as the OpenCV path from the same plans, for every fill, crop mode and mixed frame sizes."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from debias.training.clips import (
    CLIP_COLUMNS,
    ClipCollate,
    ClipConfig,
    clip_targets,
    make_clip_plan_fn,
    pack_clips,
    plan_clips,
    render_clips,
    write_pattern_shards,
)
from debias.curation import codecs
from debias.curation.shards import shard_files
from debias.curation.codecs import encode_jpeg


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> dict:
    """Eight rows of 48 px frames and four of 40 px, in one batch (clips of several sizes meet in a batch)."""
    tables = [pq.read_table(shard_files(write_pattern_shards(tmp_path_factory.mktemp(f"p{px}"), {"train": n}, num_frames=12,
                                                             size_px=px, seed=px)), columns=CLIP_COLUMNS)
              for px, n in ((48, 8), (40, 4))]
    table = pa.concat_tables(tables)
    return {k: table.column(k).to_numpy(zero_copy_only=False) for k in CLIP_COLUMNS}


# The torch path on CPU here; on a GPU machine also on CUDA (nvJPEG, a side stream).
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _both(cfg: ClipConfig, train: bool, batch: dict, device: str, monkeypatch) -> tuple[dict, dict]:
    """The OpenCV render and ClipCollate's on `device`, from the same plans. The JPEGs are decoded by
    libjpeg-turbo for both (nvJPEG decodes a few levels apart, tested on its own below), so that what
    is compared is the rendering: crops, resizes, flips, masks, fills, batching."""
    plans = plan_clips(cfg, train, batch, np.random.default_rng(3))
    cpu = render_clips(cfg, batch, plans, True, np.random.default_rng(0)) | clip_targets(cfg, batch, plans)
    decode_on = codecs.decode_jpegs_on
    monkeypatch.setattr(codecs, "decode_jpegs_on",
                        lambda dev, jpegs: [f.to(dev) for f in decode_on(torch.device("cpu"), jpegs)])
    out = ClipCollate(cfg, torch.device(device))(pack_clips(batch, plans, True) | clip_targets(cfg, batch, plans))
    return cpu, {k: v.cpu().numpy() for k, v in out.items()}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fill", ["mean", "zero", "blur"])
@pytest.mark.parametrize("train", [True, False])
def test_device_rendering_equals_opencv_without_resize(batch, fill, train, device, monkeypatch):
    cfg = ClipConfig(clip_len=8, crop_px=32, flip=True, mask_fill=fill, eval_clips=2, mask_tube=fill == "zero",
                     mask_box=fill != "blur")
    cpu, out = _both(cfg, train, batch, device, monkeypatch)
    assert out["clips"].shape == cpu["clips"].shape == (len(batch["label_id"]) * (1 if train else 2), 8, 32, 32, 3)
    assert out["clips"].dtype == np.uint8
    np.testing.assert_array_equal(out["clips"], cpu["clips"])
    # blur: torchvision's Gaussian kernel in float vs OpenCV's fixed point; mean: a float sum on the GPU
    # may round a frame's mean colour the other way
    masked_diff = np.abs(out["masked"].astype(int) - cpu["masked"].astype(int))
    assert masked_diff.max() <= {"blur": 2, "mean": 0 if device == "cpu" else 1, "zero": 0}[fill]
    for key in ("mask_valid", "label_id", "scene_id", "scene_probs", "video_key"):
        np.testing.assert_array_equal(out[key], cpu[key])


@pytest.mark.parametrize("device", DEVICES)
def test_device_rendering_of_multiscale_crops_matches_opencv_up_to_edges(batch, device, monkeypatch):
    """Resized crops: roi_align samples where INTER_LINEAR does; beyond rounding (OpenCV's 11-bit
    weights: off by 1) they differ only where an upscaled crop reads half a pixel beyond its edge
    (OpenCV repeats the edge) and along mask borders (bilinear + 0.5 threshold vs nearest)."""
    cfg = ClipConfig(clip_len=8, crop_px=32, scales=[1.0, 0.841, 0.707, 0.5], flip=True)
    cpu, out = _both(cfg, True, batch, device, monkeypatch)
    diff = np.abs(out["clips"].astype(int) - cpu["clips"].astype(int))
    masked_diff = np.abs(out["masked"].astype(int) - cpu["masked"].astype(int))
    assert diff.mean() < 0.5 and (diff > 2).mean() < 0.005 and (masked_diff > 2).mean() < 0.02


@pytest.mark.skipif(not torch.cuda.is_available(), reason="nvJPEG needs a CUDA device")
def test_nvjpeg_decodes_like_libjpeg_turbo(batch):
    """Same pixels up to the decoders' IDCT and chroma upsampling: on these noisy frames about 2 levels
    on average (measured on an H200: 2.2), the same colours (no channel swap or shift)."""
    jpegs = [f for row in batch["frames"][:4] for f in row]  # rows of one frame size
    gpu = torch.stack(codecs.decode_jpegs_on(torch.device("cuda"), jpegs)).cpu()
    cpu = torch.stack(codecs.decode_jpegs_on(torch.device("cpu"), jpegs))
    assert gpu.shape == cpu.shape == (len(jpegs), 3, 48, 48) and gpu.dtype == torch.uint8
    diff = (gpu.int() - cpu.int()).abs().float()
    assert diff.mean() < 4
    assert (gpu.float().mean(dim=(2, 3)) - cpu.float().mean(dim=(2, 3))).abs().max() < 2


def test_plan_step_keeps_jpegs_and_its_cardinality(batch):
    cfg = ClipConfig(clip_len=8, crop_px=32, eval_clips=3)
    out = make_clip_plan_fn(cfg, train=False, with_masked=False)(batch)
    n = len(batch["label_id"])
    assert len(out["jpegs"]) == len(out["label_id"]) == 3 * n and "packed_masks" not in out
    assert out["jpeg_ends"].shape == (3 * n, 8)
    assert all(len(blob) == ends[-1] for blob, ends in zip(out["jpegs"], out["jpeg_ends"]))
    clips = ClipCollate(cfg, torch.device("cpu"))(out)
    assert clips["clips"].shape == (3 * n, 8, 32, 32, 3) and "masked" not in clips


def test_corrupt_frame_names_the_problem(batch):
    cfg = ClipConfig(clip_len=8, crop_px=32)
    out = make_clip_plan_fn(cfg, train=False, with_masked=False)({k: v[:1] for k, v in batch.items()})
    out["jpegs"][0] = b"not a jpeg" + out["jpegs"][0][10:]
    with pytest.raises(RuntimeError, match="corrupt JPEG"):
        ClipCollate(cfg, torch.device("cpu"))(out)
    assert encode_jpeg(np.zeros((8, 8, 3), np.uint8), 90)[:2] == b"\xff\xd8"  # what a JPEG starts with
