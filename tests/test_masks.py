"""Human masks: detector + SAM from checkpoints in their released formats, the weight-free motion
masks, strict / auto provider choice, all run as Ray Data actor stages."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from debias.curation.curate import DecodeConfig, Decoder, make_decode_fn
from debias.curation.labels.config import LabelsConfig
from debias.curation.labels.models import BoxSegmenter, PersonDetector, load_detector, load_sam, tiny_sam
from debias.curation.labels.masks import MOTION_MODEL_FRAMES, MotionMasks, SamMasks, motion_masks, open_3x3
from debias.curation.labels.rows import decode_rows, decode_rows_on
from debias.curation.sources import InputConfig, read_annotation, read_source
from debias.curation.synth import SynthConfig, generate
from debias.curation.codecs import decode_jpeg, encode_jpeg, unpack_mask
from debias.curation.video import MEDIAN_FRAMES, resize_crop, sample_uniform, temporal_median
from debias.curation.labels.weights import WeightsError, catalog, resolve_providers

DETECTOR = "fasterrcnn_mobilenet_v3_large_320_fpn"  # the smallest torchvision COCO detector


def write_tiny_sam(path: Path) -> None:
    """A randomly initialised tiny SAM saved as the released checkpoints are: a plain state dict that
    `sam_model_registry` would load."""
    torch.manual_seed(0)
    sam = tiny_sam()
    torch.save(sam.state_dict(), path)


def write_person_detector(path: Path) -> None:
    """A randomly initialised torchvision detector whose box classifier always says "person", so
    every image yields person boxes for SAM; saved as torchvision releases its weights."""
    from debias.curation.labels.models import build_detector

    torch.manual_seed(0)
    model = build_detector(DETECTOR, 64)
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.weight.zero_()
        model.roi_heads.box_predictor.cls_score.bias.fill_(-10.0)
        model.roi_heads.box_predictor.cls_score.bias[1] = 10.0
    torch.save(model.state_dict(), path)


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate(SynthConfig(out=str(out), train_per_class=2, val_per_class=0, ood_val_per_class=0, ood_test_per_class=0,
                         target_train_per_class=0, target_test_per_class=0))
    return out / "source"


def synth_rows(task: Path, decode: DecodeConfig) -> list[dict]:
    rows, _ = read_source(InputConfig(source="kinetics", manifest=str(task / "manifest.csv")))
    return [make_decode_fn(decode)(r)[0] for r in rows]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> tuple[Path, LabelsConfig]:
    d = tmp_path_factory.mktemp("weights")
    labels = LabelsConfig(mask_provider="sam", scene_provider="none", weights_dir=str(d), detector=DETECTOR,
                          detector_min_size_px=64, sam_batch_images=3, detector_batch_images=5, max_people=2)
    files = {wf.role: wf.filename for wf in catalog(labels)}
    write_person_detector(d / files["detector"])
    write_tiny_sam(d / files["sam"])
    return d, labels


def test_sam_checkpoint_loads_with_its_architecture(weights):
    d, labels = weights
    sam = load_sam(labels.weights_path("sam_vit_b_01ec64.pth"))
    assert sam.image_encoder.img_size == 256 and len(sam.image_encoder.blocks) == 2
    assert sam.image_encoder.blocks[0].window_size == 4 and sam.image_encoder.blocks[1].window_size == 0


def test_sam_stage_in_ray_data_matches_the_model_alone(ray_local, synth, weights):
    """The actor stage (batched over rows, detector and SAM batches of other sizes) gives the same
    masks as the segmenter run on all frames at once."""
    import ray
    from ray.data import ActorPoolStrategy

    d, labels = weights
    rows = synth_rows(synth, DecodeConfig(num_frames=4, short_side_px=32, crop_px=32))[:5]
    rows[1] = {**rows[1], "error": "decode failed earlier", "error_code": "x", "error_stage": "decode"}
    mask_provider, _scenes, paths = resolve_providers(labels)
    assert mask_provider == "sam"
    ds = ray.data.from_items(rows).map_batches(
        SamMasks, fn_constructor_args=(str(paths["detector"]), str(paths["sam"]), labels), batch_format="pandas",
        batch_size=4, num_cpus=1, compute=ActorPoolStrategy(size=1))
    out = {r["video_id"]: r for r in ds.take_all()}
    assert len(out) == len(rows)

    detect = PersonDetector(load_detector(paths["detector"], DETECTOR, 64), labels, torch.device("cpu"))
    segment = BoxSegmenter(load_sam(paths["sam"]), labels, torch.device("cpu"))
    good = [r for r in rows if not r["error"]]
    frames = np.stack([np.stack([decode_jpeg(f) for f in r["frames"]]) for r in good])  # the CPU decoder
    images = torch.from_numpy(frames.reshape(-1, 32, 32, 3)).permute(0, 3, 1, 2)
    expected = segment(images, detect(images)).reshape(len(good), 4, 32, 32)
    assert expected.any(), "the always-person detector must prompt SAM"
    for r, want in zip(good, expected):
        got = out[r["video_id"]]
        assert got["mask_source"] == "sam" and got["error"] == ""
        masks = np.stack([unpack_mask(m, 32, 32) for m in got["human_masks"]])
        np.testing.assert_array_equal(masks, want)
        np.testing.assert_allclose(got["mask_coverage"], want.mean(axis=(1, 2)), rtol=1e-6)
        assert got["person_frac"] == pytest.approx(want.any(axis=(1, 2)).mean())
    assert out[rows[1]["video_id"]]["error"] == "decode failed earlier"


def jpeg_rows(sizes: list[tuple[int, int]], frames: int = 3, seed: int = 0) -> pd.DataFrame:
    """A label batch as the decode stage emits it: per row `frames` JPEGs of one (height, width)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, (h, w) in enumerate(sizes):
        images = rng.integers(0, 256, (frames, h // 4, w // 4, 3), dtype=np.uint8).repeat(4, 1).repeat(4, 2)
        rows.append({"video_id": f"v{i}", "frames": [encode_jpeg(im, 90) for im in images], "height": h, "width": w,
                     "error": "", "error_code": "", "error_stage": ""})
    return pd.DataFrame(rows)


def test_device_decode_fails_only_the_row_with_a_corrupt_frame():
    """One batched decode for the good rows; a corrupt frame (or one of another size) makes only its row
    an error row, with the same error columns as the CPU decoder's, and rows of other sizes decode."""
    batch = jpeg_rows([(32, 32), (32, 32), (48, 40), (32, 32), (32, 32)])
    batch.at[1, "frames"] = [batch.frames[1][0], b"not a jpeg", batch.frames[1][2]]
    batch.at[3, "frames"] = [batch.frames[3][0], batch.frames[2][0]]
    batch.loc[4, ["error", "error_code", "error_stage"]] = ["decode failed earlier", "x", "decode"]
    clips, errors = decode_rows_on(torch.device("cpu"), batch, "masks")
    cpu_clips, cpu_errors = decode_rows(batch, "masks")
    assert [c is None for c in clips] == [c is None for c in cpu_clips] == [False, True, False, True, True]
    for clip, want in zip(clips, cpu_clips):
        if want is not None:
            assert clip.dtype == torch.uint8
            np.testing.assert_array_equal(clip.permute(0, 2, 3, 1).numpy(), want)
    assert clips[2].shape == (3, 3, 48, 40)
    assert errors.error_code.tolist() == cpu_errors.error_code.tolist() == ["", "masks_failed", "", "masks_failed", "x"]
    assert errors.error[1].startswith("masks for v1: corrupt JPEG frame") and errors.error[4] == "decode failed earlier"


def test_sam_stage_labels_a_batch_of_mixed_sizes_around_a_corrupt_row(weights):
    """The stage itself (no Ray): frames of two sizes and a corrupt row in one batch; every good row gets
    the masks of the model alone."""
    _dir, labels = weights
    _mask_provider, _scenes, paths = resolve_providers(labels)
    batch = jpeg_rows([(32, 32), (48, 40), (32, 32), (32, 32)], seed=1)
    batch.at[2, "frames"] = [b"\xff\xd8 truncated"] * 3
    out = SamMasks(str(paths["detector"]), str(paths["sam"]), labels)(batch)
    assert out.error_code.tolist() == ["", "", "masks_failed", ""]
    detect = PersonDetector(load_detector(paths["detector"], DETECTOR, 64), labels, torch.device("cpu"))
    segment = BoxSegmenter(load_sam(paths["sam"]), labels, torch.device("cpu"))
    for i in (0, 1, 3):
        images = torch.from_numpy(np.stack([decode_jpeg(f) for f in batch.frames[i]])).permute(0, 3, 1, 2)
        want = segment(images, detect(images))
        assert want.any(), "the always-person detector must prompt SAM"
        got = np.stack([unpack_mask(m, batch.height[i], batch.width[i]) for m in out.human_masks[i]])
        np.testing.assert_array_equal(got, want)
        assert out.mask_source[i] == "sam"
    assert out.human_masks[2] == [] and out.mask_source[2] == ""


def test_named_sam_fails_before_any_video_on_missing_or_corrupt_weights(tmp_path, weights):
    d, labels = weights
    empty = LabelsConfig(mask_provider="sam", scene_provider="none", weights_dir=str(tmp_path), detector=DETECTOR)
    with pytest.raises(WeightsError, match=r"fasterrcnn_mobilenet.*missing.*debias weights --config .* --download.*labels.detector"):
        resolve_providers(empty, "my.yaml")
    (tmp_path / "fasterrcnn_mobilenet_v3_large_320_fpn-907ea3f9.pth").write_bytes(
        (d / "fasterrcnn_mobilenet_v3_large_320_fpn-907ea3f9.pth").read_bytes())
    (tmp_path / "sam_vit_b_01ec64.pth").write_bytes((d / "sam_vit_b_01ec64.pth").read_bytes()[:5000])  # truncated
    with pytest.raises(WeightsError, match=r"sam_vit_b_01ec64\.pth: does not load.*labels\.sam_model"):
        resolve_providers(empty)


def test_auto_falls_back_to_motion_and_says_so(tmp_path, capsys):
    masks, scenes, _ = resolve_providers(LabelsConfig(mask_provider="auto", scene_provider="none",
                                                      weights_dir=str(tmp_path)))
    assert masks == "motion" and scenes == "none"
    assert "mask_provider=auto -> motion" in capsys.readouterr().out


def test_motion_masks_find_the_synthetic_person(synth):
    """Against the benchmark's ground truth on a few videos: most of the person is found."""
    decode = DecodeConfig(num_frames=16, short_side_px=32, crop_px=32)
    rows = synth_rows(synth, decode)
    labels = LabelsConfig()
    tp = pred_n = true_n = 0
    for r in rows:
        clip = np.stack([decode_jpeg(f) for f in r["frames"]])
        truth, _ = read_annotation(str(synth / "annotations"), r['youtube_id'])
        truth = np.stack([resize_crop(m.astype(np.uint8), 32, 32, nearest=True) > 0 for m in truth[r["frame_indices"]]])
        pred = motion_masks(clip, labels.motion_threshold, labels.motion_colour_ratio)
        tp, pred_n, true_n = tp + (pred & truth).sum(), pred_n + pred.sum(), true_n + truth.sum()
    assert tp / true_n > 0.5 and tp / pred_n > 0.25  # measured on 360 videos: recall 0.75, precision 0.44


@pytest.mark.parametrize("frames", [1, 2, 5, 16, 17, 31, 32, 40])
def test_temporal_median_is_the_per_pixel_median_of_at_most_32_frames(frames):
    """The sorting network equals numpy's (upper) median for any T, padded or not."""
    clip = np.random.default_rng(frames).integers(0, 256, (frames, 6, 5, 3), dtype=np.uint8)
    used = clip[sample_uniform(frames, MEDIAN_FRAMES)] if frames > MEDIAN_FRAMES else clip
    assert np.array_equal(temporal_median(clip), np.sort(used, axis=0)[len(used) // 2])


def test_label_steps_in_the_decoder_read_the_frames_before_jpeg(synth):
    """Inside a Decoder the steps read `pixels` (no second JPEG decode; masked at half size from them):
    the same stored frames, masks that find the person as well as the stored JPEGs' do, and `pixels`
    never leaves the actor."""
    decode = DecodeConfig(num_frames=16, short_side_px=64, crop_px=64)
    inputs, _ = read_source(InputConfig(source="kinetics", manifest=str(synth / "manifest.csv")))
    fused = [Decoder(decode, ((MotionMasks, (20.0, 3.0)),))(r)[0] for r in inputs]
    assert all("pixels" not in r for r in fused)
    stored = MotionMasks(20.0, 3.0)(pd.DataFrame([make_decode_fn(decode)(r)[0] for r in inputs])).to_dict("records")
    scores = {}
    for name, rows in (("fused", fused), ("stored", stored)):
        tp = pred_n = true_n = 0
        for r in rows:
            truth, _ = read_annotation(str(synth / "annotations"), r["youtube_id"])
            truth = np.stack([resize_crop(m.astype(np.uint8), 64, 64, nearest=True) > 0 for m in truth[r["frame_indices"]]])
            pred = np.stack([unpack_mask(m, 64, 64) for m in r["human_masks"]])
            tp, pred_n, true_n = tp + (pred & truth).sum(), pred_n + pred.sum(), true_n + truth.sum()
        scores[name] = (tp / true_n, tp / pred_n)
    assert [r["frames"] for r in fused] == [r["frames"] for r in stored]
    (recall, precision), (stored_recall, stored_precision) = scores["fused"], scores["stored"]
    assert recall > 0.5 and precision > 0.25, scores
    assert recall > stored_recall - 0.05 and precision > stored_precision - 0.05, scores


def test_decoder_keeps_frames_before_jpeg_only_for_the_steps_that_read_them(synth, monkeypatch):
    """`pixels` is made only when a step reads frames (motion masks, clusters): a job whose steps read
    none (annotations, none) pays no copy. Steps see the same RGB frames as the stored JPEGs hold."""
    import debias.curation.curate as curate
    from debias.curation.labels.masks import NoMasks
    from debias.curation.labels.scenes import NoScenes

    seen = []
    real = curate.make_decode_fn
    monkeypatch.setattr(curate, "make_decode_fn", lambda cfg, keep_pixels=False: seen.append(keep_pixels) or real(cfg, keep_pixels))
    decode = DecodeConfig(num_frames=8, short_side_px=32, crop_px=32)
    Decoder(decode, ((NoMasks, ()), (NoScenes, ())))
    Decoder(decode, ((MotionMasks, (20.0, 3.0)), (NoScenes, ())))
    assert seen == [False, True]
    inputs, _ = read_source(InputConfig(source="kinetics", manifest=str(synth / "manifest.csv")))
    row = real(decode, keep_pixels=True)(inputs[0])[0]
    jpeg = np.stack([decode_jpeg(f) for f in row["frames"]]).astype(int)
    def off(pixels: np.ndarray) -> float:
        return float(np.abs(pixels.astype(int) - jpeg).mean())
    assert off(row["pixels"]) < 8 and off(row["pixels"]) < off(row["pixels"][..., ::-1]) / 2  # RGB as the JPEGs, not BGR


@pytest.mark.parametrize("height", [64, 63])
def test_half_size_frames_from_pixels_equal_frame_by_frame(height):
    """decode_rows at half size from `pixels`: one resize over the clip's stacked frames where the height is
    even, frame by frame where odd; both equal resizing each frame to ceil(H/2) x ceil(W/2)."""
    import cv2

    clip = np.random.default_rng(0).integers(0, 256, (5, height, 41, 3), dtype=np.uint8)
    batch = pd.DataFrame([{"pixels": clip, "frames": [], "error": "", "error_code": "", "error_stage": ""}])
    (half,), _ = decode_rows(batch, "masks", half_size=True)
    expected = np.stack([cv2.resize(f, (21, (height + 1) // 2), interpolation=cv2.INTER_AREA) for f in clip])
    assert half.shape == expected.shape and np.array_equal(half, expected)


def test_motion_masks_ignore_a_static_scene():
    rng = np.random.default_rng(0)
    scene = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert not motion_masks(np.repeat(scene[None], 8, axis=0), 20.0, 3.0).any()


def test_motion_masks_of_a_long_clip_mask_every_frame_from_a_model_of_32():
    """Under sampling=paper a clip holds hundreds of frames: what moves, and so the person's colours, is
    read from MOTION_MODEL_FRAMES frames spread over it, and every frame gets its mask, those between
    the 32 as well as theirs. Both with and without the tolerance the half-size masks use."""
    rng = np.random.default_rng(0)
    frames, size = 150, 48
    scene = rng.integers(0, 100, (size // 4, size // 4, 3), dtype=np.uint8).repeat(4, axis=0).repeat(4, axis=1)  # dark tiles
    clip = np.repeat(scene[None], frames, axis=0)
    truth = np.zeros((frames, size, size), bool)
    for i in range(frames):  # a red figure walking across
        x = 4 + i * 36 // frames
        clip[i, 16:32, x:x + 8] = (220, 40, 40)
        truth[i, 16:32, x:x + 8] = True
    model = sample_uniform(frames, MOTION_MODEL_FRAMES)
    between = np.setdiff1d(np.arange(frames), model)
    for tolerance_px in (0, 1):
        pred = motion_masks(clip, 20.0, 3.0, tolerance_px)
        assert pred.shape == truth.shape
        scores = {}
        for name, idx in (("model", model), ("between", between)):
            found = (pred[idx] & truth[idx]).sum()
            scores[name] = (found / truth[idx].sum(), found / pred[idx].sum())  # recall, precision
        (recall, precision), (model_recall, model_precision) = scores["between"], scores["model"]
        assert recall > 0.9 and precision > 0.7, (tolerance_px, scores)
        assert recall > model_recall - 0.02 and precision > model_precision - 0.02, (tolerance_px, scores)


@pytest.mark.parametrize("shape", [(4, 7, 9), (2, 56, 56), (3, 1, 5), (1, 2, 2)])
def test_open_3x3_is_cv2_opening_of_each_frame(shape):
    import cv2

    masks = np.random.default_rng(sum(shape)).random(shape) > 0.4
    square = np.ones((3, 3), np.uint8)
    expected = np.stack([cv2.morphologyEx(m.astype(np.uint8), cv2.MORPH_OPEN, square) for m in masks]).astype(bool)
    assert np.array_equal(open_3x3(masks), expected)


def test_real_clips_through_the_motion_stage(ray_local, real_clips):
    import ray
    from ray.data import ActorPoolStrategy

    with open(real_clips / "MANIFEST.tsv") as f:
        names = [r["filename"] for r in csv.DictReader(f, delimiter="\t")][:6]
    decode = DecodeConfig(num_frames=8, short_side_px=64, crop_px=64)
    rows = [{"video_id": n, "label": "x", "split": "train", "source_path": str(real_clips / n), "time_start": 0.0,
             "time_end": -1.0, "error": "", "error_code": "", "error_stage": ""} for n in names]
    ds = ray.data.from_items(rows).flat_map(make_decode_fn(decode)).map_batches(
        MotionMasks, fn_constructor_args=(20.0, 3.0), batch_format="pandas", batch_size=3,
        num_cpus=1, compute=ActorPoolStrategy(size=1))
    out = pd.DataFrame(ds.take_all())
    ok = out[out.error == ""]
    assert len(ok) >= 4, out[["video_id", "error"]]
    assert set(ok.mask_source) == {"motion"}
    coverage = np.concatenate(ok.mask_coverage.to_list())
    assert len(coverage) == 8 * len(ok) and 0 < coverage.mean() < 0.6  # something moves; not everything
    assert all(len(m) == 64 * 64 // 8 for masks in ok.human_masks for m in masks)


def test_detector_is_found_in_the_torch_hub_cache(tmp_path, weights, monkeypatch):
    """torchvision downloads land in <torch hub dir>/checkpoints; no need to copy them."""
    d, labels = weights
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    detector = "fasterrcnn_mobilenet_v3_large_320_fpn-907ea3f9.pth"
    (hub / detector).write_bytes((d / detector).read_bytes())
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "sam_vit_b_01ec64.pth").write_bytes((d / "sam_vit_b_01ec64.pth").read_bytes())
    masks, _, paths = resolve_providers(LabelsConfig(mask_provider="sam", scene_provider="none", detector=DETECTOR,
                                                     weights_dir=str(tmp_path / "weights")))
    assert masks == "sam" and paths["detector"] == hub / detector


def test_sam_stage_matches_segment_anythings_own_predictor_on_the_same_weights(weights):
    """Golden test against the reference code: segment-anything's `SamPredictor` (its own resize, padding,
    normalisation and box transform) with box prompts, on the same random weights. A preprocessing
    mistake (channel order, a missing normalisation, boxes not rescaled) changes the masks here, which the
    comparisons with our own core alone cannot show."""
    from segment_anything import SamPredictor

    d, labels = weights
    paths = {wf.role: d / wf.filename for wf in catalog(labels)}
    sam = load_sam(paths["sam"])
    segment = BoxSegmenter(sam, labels, torch.device("cpu"))
    predictor = SamPredictor(sam)
    rng = np.random.default_rng(0)
    for h, w in ((96, 128), (120, 80)):  # landscape and portrait: the longest side is resized to 256
        image = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (9, 9), 3)  # RGB, as frames are
        image[h // 4: 3 * h // 4, w // 3: 2 * w // 3] = (220, 40, 40)  # a block the boxes hold
        boxes = np.array([[w / 3 - 4, h / 4 - 4, 2 * w / 3 + 4, 3 * h / 4 + 4], [2, 2, w / 2, h / 2]], np.float32)
        ours = segment(to_chw(image)[None], [torch.from_numpy(boxes)])[0]
        predictor.set_image(image, image_format="RGB")
        theirs = np.zeros((h, w), bool)
        for box in boxes:
            masks, _scores, _logits = predictor.predict(box=box, multimask_output=False)
            theirs |= masks[0]
        assert theirs.any() and (~theirs).any(), "a degenerate reference mask cannot tell the two apart"
        # the resize before the encoder differs only in its rounding (PIL uint8 against float antialias)
        assert (ours == theirs).mean() > 0.99, (h, w, (ours == theirs).mean())
        # a plain mistake is far outside that: the frames in BGR order (or boxes at half scale: ~0.95)
        bgr = segment(to_chw(np.ascontiguousarray(image[..., ::-1]))[None], [torch.from_numpy(boxes)])[0]
        assert (bgr == theirs).mean() < 0.97


def to_chw(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W), as the model cores take frames."""
    return torch.from_numpy(image).permute(2, 0, 1).contiguous()
