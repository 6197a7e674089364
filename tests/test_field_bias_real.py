"""The counterfactual clips built from real videos: the 18 real clips curated with motion masks (no model
weights), then every clip kind checked against its definition pixel by pixel: geometry, the masks aligned
with the frames they were computed on, the person pixels kept, the backgrounds and fills where the mask is
0, the gates' reasons. (A model trained on 18 videos would be meaningless; the clips are not.)"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from debias.config import load_config
from debias.evaluation.counterfactual import (MEAN_RGB, GateConfig, background_rng, centre_clip, coverage, scuba_gate, stripes,
                                   swap_frames)
from debias.evaluation.field_bias import FieldMeasuresConfig, plan_rows, row_clips

ROOT = Path(__file__).resolve().parents[1]
CLIP_LEN, CROP = 16, 64


@pytest.fixture(scope="module")
def real_shards(real_clips, tmp_path_factory, ray_local):
    """The curation of the recorded real-clips run (benchmarks/bias_real_clips.py)."""
    spec = importlib.util.spec_from_file_location("bias_real_clips", ROOT / "benchmarks" / "bias_real_clips.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert (script.CLIP_LEN, script.CROP_PX) == (CLIP_LEN, CROP)
    return script.curate(real_clips, tmp_path_factory.mktemp("real"))


@pytest.mark.slow
def test_counterfactual_clips_of_real_videos_follow_their_definitions(real_shards):
    cfg = load_config(FieldMeasuresConfig, None, ["split=test", "fill=mean", "backgrounds.copies=2"])
    plan = plan_rows(real_shards, cfg).to_pylist()
    assert len(plan) == 18 and all(r["label_id"] != r["partner_label_id"] for r in plan)
    kept = {"scuba": 0, "person": 0, "swap": 0}
    for row in plan:
        frames, masks = centre_clip(row["frames"], row["human_masks"], row["height"], row["width"], CLIP_LEN, CROP)
        # the masks belong to these frames: the stored per-frame coverage is the coverage of the frame's mask
        assert np.allclose(coverage(masks), row_coverage(real_shards, row["video_id"]), atol=1e-6), row["video_id"]
        clips, reasons = row_clips(row, CLIP_LEN, CROP, cfg)
        assert np.array_equal(clips["clean"], frames) and frames.shape == (CLIP_LEN, CROP, CROP, 3)
        assert all(c.shape == frames.shape and c.dtype == np.uint8 for c in clips.values())
        assert (reasons["drop_scuba"] == "") == (scuba_gate(masks, GateConfig()) == "") == ("scuba_stripes_0" in clips)
        if "scuba_stripes_1" in clips:
            kept["scuba"] += 1
            for c in (0, 1):
                image = stripes(CROP, CROP, background_rng(0, row["video_id"], row["clip_index"], 0, c))
                s = clips[f"scuba_stripes_{c}"]
                assert np.array_equal(s[masks], frames[masks])  # the people, exactly
                assert np.array_equal(s[~masks], np.broadcast_to(image, s.shape)[~masks])  # the image elsewhere
                assert (clips[f"scufo_stripes_{c}"] == s[CLIP_LEN // 2]).all()  # one frame, repeated
            assert not np.array_equal(clips["scuba_stripes_0"], clips["scuba_stripes_1"])  # two backgrounds
        if "background_only" in clips:
            kept["person"] += 1
            union = masks.any(axis=0)
            bg = clips["background_only"]
            assert np.array_equal(bg[:, ~union], frames[:, ~union])
            means = frames.reshape(CLIP_LEN, -1, 3).mean(axis=1).round()
            assert np.abs(bg[:, union].astype(int) - means[:, None]).max() <= 1  # each frame's mean colour
            assert np.array_equal(clips["human_only"][masks], frames[masks])
            assert (clips["human_only"][~masks] == MEAN_RGB).all()
        assert ("action_swap" in clips) == (reasons["drop_swap"] == "") == bool(swap_frames(masks, GateConfig()).any())
        if "action_swap" in clips:
            kept["swap"] += 1
            band = np.flatnonzero(swap_frames(masks, GateConfig()))
            pick = band[np.linspace(0, len(band) - 1, CLIP_LEN).round().astype(int)]
            swap = clips["action_swap"]
            assert np.array_equal(swap[masks[pick]], frames[pick][masks[pick]])
            assert not np.array_equal(swap[~masks[pick]], frames[pick][~masks[pick]])  # another video's scene
    # motion masks on these clips: some pass each rule and some do not (the rules decide, not the data)
    assert 0 < kept["person"] and 0 < kept["swap"], kept
    assert kept["scuba"] < 18, kept


def row_coverage(shards: str, video_id: str) -> np.ndarray:
    """The stored mask_coverage of a video's centre window (the curated frames are 64 px: no crop)."""
    from debias.curation.shards import read_parquet, shard_files

    for f in shard_files(shards):
        table = read_parquet(f, columns=["video_id", "mask_coverage"]).to_pylist()
        for r in table:
            if r["video_id"] == video_id:
                stored = np.asarray(r["mask_coverage"])
                start = max(0, (len(stored) - CLIP_LEN) // 2)
                return stored[np.minimum(np.arange(start, start + CLIP_LEN), len(stored) - 1)]
    raise KeyError(video_id)
