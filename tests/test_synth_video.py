import csv
import hashlib
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest

from debias.curation.sources import read_annotation
from debias.curation.synth import SynthConfig, generate
from debias.curation.codecs import pack_mask, unpack_mask
from debias.curation.video import VideoError, decode_window, resize_crop, sample_uniform

TINY = dict(train_per_class=3, val_per_class=1, ood_val_per_class=1, ood_test_per_class=2, target_train_per_class=1,
            target_test_per_class=1)


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "benchmark.json"}


def test_synth_writes_real_h264_with_ground_truth_and_is_deterministic(tmp_path):
    a = generate(SynthConfig(out=str(tmp_path / "a"), **TINY))
    generate(SynthConfig(out=str(tmp_path / "b"), **TINY))
    assert a["videos"]["source"] == {"train": 18, "val": 6, "ood_val": 6, "ood_test": 12}
    assert a["videos"]["target"] == {"train": 5, "test": 5}
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")  # byte-identical for one seed
    generate(SynthConfig(out=str(tmp_path / "c"), seed=1, **TINY))
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")

    task = tmp_path / "a" / "source"
    rows = list(csv.DictReader(open(task / "manifest.csv")))
    assert list(rows[0]) == ["label", "youtube_id", "time_start", "time_end", "split"]
    video = task / "videos" / f"{rows[0]['youtube_id']}.mp4"
    with av.open(str(video)) as c:
        assert c.streams.video[0].codec_context.name == "h264"
    decoded = decode_window(video)
    masks, scene_id = read_annotation(str(task / "annotations"), rows[0]['youtube_id'])
    assert len(decoded.frames) == len(masks) == 16
    assert 0 <= scene_id < 6 * 3  # 3 scenes per action by default
    # The figure is where its mask says: masked pixels differ from the unmasked background.
    frame, mask = decoded.frames[0].astype(int), masks[0]
    assert 0.005 < mask.mean() < 0.3
    assert np.abs(frame[mask].mean(0) - frame[~mask].mean(0)).max() > 10


def test_bias_sets_home_scene_share_and_ood_is_independent(tmp_path):
    generate(SynthConfig(out=str(tmp_path), bias=0.8, train_per_class=60, val_per_class=0, ood_val_per_class=30,
                         ood_test_per_class=30, target_train_per_class=0, target_test_per_class=0, frame_size_px=32,
                         num_frames=4))
    task = tmp_path / "source"
    homes = __import__("json").loads((task / "annotations" / "scene_homes.json").read_text())
    assert len(homes) == 18 and homes[:3] == ["walk_left"] * 3  # scenes 0-2: walk_left's home group
    home, used = Counter(), Counter()
    for row in csv.DictReader(open(task / "manifest.csv")):
        _, scene = read_annotation(str(task / "annotations"), row['youtube_id'])
        split = "ood" if row["split"].startswith("ood_") else row["split"]
        home[split, homes[scene] == row["label"]] += 1
        used[split, scene] += 1
    train_home = home["train", True] / (home["train", True] + home["train", False])
    ood_home = home["ood", True] / (home["ood", True] + home["ood", False])
    assert 0.75 <= train_home <= 0.9  # 0.8 + the 1/6 chance of drawing home anyway: 0.83
    assert ood_home < 0.3  # 1/6 expected
    # every scene of a home group is used in training (the group, not one scene, is the home)
    assert all(used["train", k] >= 5 for k in range(18))


def test_decode_errors_name_the_file(tmp_path):
    with pytest.raises(VideoError, match="file not found") as e:
        decode_window(tmp_path / "nope.mp4")
    assert e.value.code == "missing_file"
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(VideoError, match="empty.mp4"):
        decode_window(tmp_path / "empty.mp4")
    (tmp_path / "text.mp4").write_text("this is not a video\n" * 20)
    with pytest.raises(VideoError, match="text.mp4") as e:
        decode_window(tmp_path / "text.mp4")
    assert e.value.code == "undecodable"


def test_geometry_and_mask_packing():
    assert sample_uniform(10, 5).tolist() == [1, 3, 5, 7, 9]
    assert sample_uniform(3, 6).tolist() == [0, 0, 1, 1, 2, 2]  # short clips repeat frames
    image = np.zeros((48, 64, 3), np.uint8)
    assert resize_crop(image, 32, 28).shape == (28, 28, 3)
    mask = np.random.default_rng(0).random((28, 28)) > 0.5
    assert np.array_equal(unpack_mask(pack_mask(mask), 28, 28), mask)
    assert len(pack_mask(mask)) == 28 * 28 // 8


def test_scenes_of_a_home_match_in_colour_and_differ_in_texture_and_layout():
    from debias.curation.synth import scene_specs, scene_texture

    specs = scene_specs(seed=0, task_id=0, num_groups=6, per_group=3, palette="group")
    pictures = [scene_texture(s, 68).reshape(-1, 3).astype(float) for s in specs]
    for g in range(6):
        group = pictures[3 * g: 3 * g + 3]
        means = np.array([p.mean(0) for p in group])
        assert np.abs(means - means[0]).max() < 2.5, g  # colour-matched: mean colours within rounding and noise
        assert len({(s.upper, s.lower, s.shape, s.horizon_frac) for s in specs[3 * g: 3 * g + 3]}) == 3
        for a in range(3):
            for b in range(a + 1, 3):  # ... yet different pictures, pixel by pixel
                assert np.abs(group[a] - group[b]).mean() > 10, (g, a, b)
    # another home's colours differ (the group's colour is the shortcut a model may take) ...
    assert np.abs(pictures[0].mean(0) - pictures[3].mean(0)).max() > 5
    # ... and with palette=scene every scene has colours of its own
    own = scene_specs(seed=0, task_id=0, num_groups=1, per_group=3, palette="scene")
    assert len({s.colours for s in own}) == 3 and all(s.mean_colour is None for s in own)
