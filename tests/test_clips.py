"""Clip rendering: the device path (`ClipCollate`, run here on CPU) builds the same clips, masked twins
and targets as the OpenCV path from the same plans, for every fill, crop mode and mixed frame sizes."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from debias.clips import (
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
from debias.video import encode_jpeg


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> dict:
    """Eight rows of 48 px frames and four of 40 px, in one batch (clips of several sizes meet in a batch)."""
    tables = [pq.read_table(write_pattern_shards(tmp_path_factory.mktemp(f"p{px}"), {"train": n}, num_frames=12,
                                                 size_px=px, seed=px) / "shards", columns=CLIP_COLUMNS)
              for px, n in ((48, 8), (40, 4))]
    table = pa.concat_tables(tables)
    return {k: table.column(k).to_numpy(zero_copy_only=False) for k in CLIP_COLUMNS}


# The torch path on CPU here; on a GPU machine also on CUDA (nvJPEG, a side stream).
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _both(cfg: ClipConfig, train: bool, batch: dict, device: str = "cpu") -> tuple[dict, dict]:
    plans = plan_clips(cfg, train, batch, np.random.default_rng(3))
    cpu = render_clips(cfg, batch, plans, True, np.random.default_rng(0)) | clip_targets(cfg, batch, plans)
    out = ClipCollate(cfg, torch.device(device))(pack_clips(batch, plans, True) | clip_targets(cfg, batch, plans))
    return cpu, {k: v.cpu().numpy() for k, v in out.items()}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fill", ["mean", "zero", "blur"])
@pytest.mark.parametrize("train", [True, False])
def test_device_rendering_equals_opencv_without_resize(batch, fill, train, device):
    cfg = ClipConfig(clip_len=8, crop_px=32, flip=True, mask_fill=fill, eval_clips=2, mask_tube=fill == "zero")
    cpu, out = _both(cfg, train, batch, device)
    assert out["clips"].shape == cpu["clips"].shape == (len(batch["label_id"]) * (1 if train else 2), 8, 32, 32, 3)
    assert out["clips"].dtype == np.uint8
    clip_diff = np.abs(out["clips"].astype(int) - cpu["clips"].astype(int))
    masked_diff = np.abs(out["masked"].astype(int) - cpu["masked"].astype(int))
    if device == "cpu":  # the same libjpeg-turbo decode: identical, but for blur's float vs fixed-point kernel
        assert clip_diff.max() == 0 and masked_diff.max() <= (2 if fill == "blur" else 0)
    else:  # nvJPEG's IDCT and chroma upsampling differ from libjpeg-turbo's: on these noisy frames by
        #    2.2 levels on average (measured on an H200), more where the chroma noise is strongest
        assert clip_diff.mean() < 3 and masked_diff.mean() < 3 and (clip_diff > 16).mean() < 0.02
    for key in ("mask_valid", "label_id", "scene_id", "scene_probs", "video_key"):
        np.testing.assert_array_equal(out[key], cpu[key])


@pytest.mark.parametrize("device", DEVICES)
def test_device_rendering_of_multiscale_crops_matches_opencv_up_to_edges(batch, device):
    """Resized crops: roi_align samples where INTER_LINEAR does; beyond rounding they differ only where an upscaled crop
    reads half a pixel beyond its edge (OpenCV repeats the edge) and along mask borders (bilinear+0.5
    vs nearest)."""
    cfg = ClipConfig(clip_len=8, crop_px=32, scales=[1.0, 0.841, 0.707, 0.5], flip=True)
    cpu, out = _both(cfg, True, batch, device)
    diff = np.abs(out["clips"].astype(int) - cpu["clips"].astype(int))
    masked_diff = np.abs(out["masked"].astype(int) - cpu["masked"].astype(int))
    if device == "cpu":  # OpenCV rounds its weights to 11 bits: off by 1
        assert diff.mean() < 0.5 and (diff > 2).mean() < 0.005 and (masked_diff > 2).mean() < 0.02
    else:  # and nvJPEG decodes a few levels apart from libjpeg-turbo
        assert diff.mean() < 3 and (diff > 16).mean() < 0.02 and (masked_diff > 16).mean() < 0.04


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
