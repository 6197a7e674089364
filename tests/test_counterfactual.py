"""The counterfactual clips of SCUBA / SCUFO / HAT: geometry, the person pixels kept exactly, the
background exactly the image where the mask is 0; the papers' quality gates just under and over their
thresholds; backgrounds reproducible per clip and never of the clip's own class; the measures' scoring
and bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import docs_render
from debias.config import ConfigError
from debias.evaluation.counterfactual import (MEAN_RGB, GateConfig, action_swap, background_only, background_rng, choose_image,
                                   coverage, human_only, list_images, read_image, scuba, scuba_gate, scufo, stripes,
                                   swap_frames, swap_gate)
from debias.evaluation.field_bias import (BackgroundConfig, FieldBiasConfig, bootstrap_interval, clip_kinds, dropped,
                               per_clip_scores)

T, H, W = 8, 20, 20


def clip(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random frames and a person box that moves right one pixel a frame (16 % of the frame)."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (T, H, W, 3), dtype=np.uint8)
    masks = np.zeros((T, H, W), bool)
    for t in range(T):
        masks[t, 4:12, 2 + t:10 + t] = True
    return frames, masks


def test_scuba_keeps_the_people_exactly_and_is_the_image_elsewhere():
    frames, masks = clip()
    background = stripes(H, W, background_rng(0, "v", 0, 0, 0))
    out = scuba(frames, masks, background)
    assert out.shape == frames.shape and out.dtype == np.uint8
    assert np.array_equal(out[masks], frames[masks])
    assert np.array_equal(out[~masks], np.broadcast_to(background, frames.shape)[~masks])
    still = scufo(out)
    assert still.shape == out.shape and all(np.array_equal(f, out[T // 2]) for f in still)
    assert np.array_equal(scufo(out, 0)[5], out[0])


def test_background_only_fills_the_union_of_the_masks_and_human_only_the_rest():
    frames, masks = clip()
    union = masks.any(axis=0)
    for fill in ("mean", "blur", "zero"):
        bg = background_only(frames, masks, fill, np.random.default_rng(0))
        assert bg.shape == frames.shape
        assert np.array_equal(bg[:, ~union], frames[:, ~union])  # the scene untouched
        # the hole is the same in every frame: no silhouette moves (a per-frame fill would leave one)
        assert not np.array_equal(bg[:, union], frames[:, union])
    bg = background_only(frames, masks, "mean", np.random.default_rng(0))
    assert all(len(np.unique(bg[t][union], axis=0)) == 1 for t in range(T))  # one colour per frame
    only = human_only(frames, masks)
    assert np.array_equal(only[masks], frames[masks])
    assert (only[~masks] == np.asarray(MEAN_RGB, np.uint8)).all()


def test_action_swap_uses_only_frames_in_the_band_on_the_partner_background():
    frames, masks = clip()
    masks[[0, 1, 2]] = False  # below the 5 % band
    masks[3] = True  # 100 %: above it
    cfg = GateConfig()
    band = swap_frames(masks, cfg)
    assert band.tolist() == [False] * 4 + [True] * 4
    background = np.full_like(frames, 7)
    out = action_swap(frames, masks, background, cfg)
    assert out.shape == frames.shape
    # T outputs spread over the 4 usable frames 4..7, each A's people on B's frame at the same position
    pick = np.array([4, 4, 5, 5, 6, 6, 7, 7])
    assert np.array_equal(out, np.where(masks[pick][..., None], frames[pick], background[pick]))
    assert swap_gate(masks, cfg) == ""
    masks[4:] = False
    assert swap_gate(masks, cfg).startswith("swap_band: no frame")


@pytest.mark.parametrize("covered_frames, kept", [(9, True), (8, False)])
def test_scuba_rule_keeps_a_clip_only_if_90_percent_of_frames_have_10_percent_mask(covered_frames, kept):
    masks = np.zeros((10, 10, 10), bool)
    masks[:covered_frames, 0, :] = True  # exactly 10 % of each of these frames
    assert coverage(masks)[0] == pytest.approx(0.1)
    reason = scuba_gate(masks, GateConfig())
    assert (reason == "") is kept
    if not kept:
        assert reason.startswith("scuba_rule: 80% of frames")
    # just under the coverage: 9 frames at 9 % fail
    thin = np.zeros((10, 100, 1), bool)
    thin[:9, :9] = True
    assert scuba_gate(thin, GateConfig()).startswith("scuba_rule")
    assert scuba_gate(thin, GateConfig(scuba_min_coverage=0.09)) == ""


def test_swap_band_edges_are_inclusive_and_bad_gates_fail_naming_the_key():
    masks = np.zeros((3, 20, 1), bool)
    masks[0, :1] = True  # 5 %
    masks[1, :10] = True  # 50 %
    masks[2, :11] = True  # 55 %
    assert swap_frames(masks, GateConfig()).tolist() == [True, True, False]
    with pytest.raises(ConfigError, match="swap_min_coverage"):
        GateConfig(swap_min_coverage=0.6)
    with pytest.raises(ConfigError, match="scuba_min_frame_share"):
        GateConfig(scuba_min_frame_share=1.5)


def test_stripes_are_reproducible_per_clip_and_vary_in_frequency_and_orientation():
    a = stripes(64, 48, background_rng(3, "video/a", 0, 0, 0))
    assert a.shape == (64, 48, 3) and a.dtype == np.uint8
    assert np.array_equal(a, stripes(64, 48, background_rng(3, "video/a", 0, 0, 0)))
    assert len(np.unique(a.reshape(-1, 3), axis=0)) == 2  # a colour and its inverse
    others = [stripes(64, 48, background_rng(3, "video/a", 0, 0, c)) for c in range(1, 6)]
    others += [stripes(64, 48, background_rng(3, "video/b", 0, 0, 0)), stripes(64, 48, background_rng(4, "video/a", 0, 0, 0))]
    assert all(not np.array_equal(a, o) for o in others)
    # both colours present: stripes, not a plain image
    share = [np.mean(np.all(x == x[0, 0], axis=-1)) for x in [a, *others]]
    assert all(0.02 < s < 0.98 for s in share), share


def test_images_never_of_the_clip_own_class_and_reproducible(tmp_path):
    import cv2

    for cls in ("jump", "run", ""):
        (tmp_path / cls).mkdir(exist_ok=True)
        for k in range(3):
            cv2.imwrite(str(tmp_path / cls / f"{cls or 'x'}{k}.png"), np.full((30, 40, 3), k * 50, np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    images = list_images(str(tmp_path))
    assert len(images) == 9 and {c for _, c in images} == {"jump", "run", ""}
    for i in range(50):
        path = choose_image(images, "jump", background_rng(0, f"v{i}", 0, 1, 0))
        assert "/jump/" not in path
    picks = [choose_image(images, "jump", background_rng(0, f"v{i}", 0, 1, 0)) for i in range(20)]
    assert picks == [choose_image(images, "jump", background_rng(0, f"v{i}", 0, 1, 0)) for i in range(20)]
    assert len(set(picks)) > 3  # several images are used
    only_jump = [(p, c) for p, c in images if c == "jump"]
    with pytest.raises(ValueError, match="outside class 'jump'"):
        choose_image(only_jump, "jump", np.random.default_rng(0))
    assert read_image(images[0][0], 10, 12).shape == (10, 12, 3)
    with pytest.raises(ValueError, match="notes.txt: not a readable image"):
        read_image(str(tmp_path / "notes.txt"), 10, 10)


def test_scores_contrast_and_intervals_over_videos():
    backgrounds = BackgroundConfig(copies=2)
    kinds = clip_kinds(backgrounds)
    assert kinds == ["clean", "scuba_stripes_0", "scufo_stripes_0", "scuba_stripes_1", "scufo_stripes_1",
                     "background_only", "human_only", "action_swap"]
    label = np.array([0, 1, 2])
    pred = np.array([
        # clean, scuba0, scufo0, scuba1, scufo1, bg, human, swap
        [0, 0, 1, 0, 0, 0, 0, 1],  # right on SCUBA twice, SCUFO wrong once: contrasted 0.5
        [1, 2, 2, 1, 2, 2, 1, 0],
        [2, -1, -1, -1, -1, -1, -1, -1],  # dropped by every rule
    ])
    results = {"pred": pred, "label_id": label, "partner_label_id": np.array([1, 0, 0]),
               "video_id": np.array(["a", "b", "c"]),
               "error": np.array(["", "", ""], object), "drop_scuba": np.array(["", "", "scuba_rule: 0%"], object),
               "drop_person": np.array(["", "", "no_person: x"], object),
               "drop_swap": np.array(["", "", "swap_band: y"], object)}
    s = per_clip_scores(results, backgrounds)
    assert s["clean_top1"].tolist() == [1, 1, 1]
    assert s["scuba_top1_stripes"][:2].tolist() == [1.0, 0.5] and np.isnan(s["scuba_top1_stripes"][2])
    assert s["scufo_top1_stripes"][:2].tolist() == [0.5, 0.0]
    assert s["contrasted_acc_stripes"][:2].tolist() == [0.5, 0.5]
    assert np.array_equal(s["scuba_top1"], s["scuba_top1_stripes"], equal_nan=True)  # one kind: over kinds = it
    assert s["action_swap_actor_acc"][:2].tolist() == [0, 0] and s["action_swap_background_acc"][:2].tolist() == [1, 1]
    assert dropped(results) == {"scuba_rule": 1, "no_person": 1, "swap_band": 1}
    # two clips of one video count once
    v, lo, hi, n = bootstrap_interval(np.array([1.0, 1.0, 0.0]), np.array(["a", "a", "b"]), 2000, 0.95, 0)
    assert (v, n) == (0.5, 2) and lo == 0.0 and hi == 1.0
    v, lo, hi, n = bootstrap_interval(np.r_[np.ones(60), np.zeros(40)], np.arange(100), 2000, 0.95, 0)
    assert v == 0.6 and 0.48 < lo < 0.53 and 0.67 < hi < 0.72  # ~ 0.6 +- 1.96 sqrt(0.24 / 100)


def test_config_needs_one_model_and_images_dir():
    with pytest.raises(ConfigError, match="run: needs exactly one model"):
        FieldBiasConfig(shards="s")
    with pytest.raises(ConfigError, match="run: needs exactly one model"):
        FieldBiasConfig(run="r", export="e", shards="s")
    with pytest.raises(ConfigError, match="images_dir"):
        BackgroundConfig(kinds=["images"])


def test_bench_bias_quick_times_building_and_forward_on_the_same_clips(tmp_path):
    import importlib.util
    import json
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("bench_bias", Path(__file__).parents[1] / "benchmarks" / "bench_bias.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(["--quick", "--threads", "1", "--out", str(tmp_path / "bench.json")])
    assert result["clips"] == 4 * len(result["kinds"]) == 24  # every kind of every row, both sides
    assert result["build_s"] > 0 and result["forward_s"] > 0 and result["bar"] == 0.20
    assert json.loads((tmp_path / "bench.json").read_text()) == result
    docs_render().render_recorded_by("benchmarks/bench_bias.py", result)  # the docs block renders from it
