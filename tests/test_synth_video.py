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

TINY = dict(train_per_class=3, val_per_class=1, ood_per_class=2, target_train_per_class=1, target_test_per_class=1)


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "benchmark.json"}


def test_synth_writes_real_h264_with_ground_truth_and_is_deterministic(tmp_path):
    a = generate(SynthConfig(out=str(tmp_path / "a"), **TINY))
    generate(SynthConfig(out=str(tmp_path / "b"), **TINY))
    assert a["videos"]["source"] == {"train": 18, "val": 6, "ood": 12}
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
    assert 0 <= scene_id < 6
    # The figure is where its mask says: masked pixels differ from the unmasked background.
    frame, mask = decoded.frames[0].astype(int), masks[0]
    assert 0.005 < mask.mean() < 0.3
    assert np.abs(frame[mask].mean(0) - frame[~mask].mean(0)).max() > 10


def test_bias_sets_home_scene_share_and_ood_is_independent(tmp_path):
    generate(SynthConfig(out=str(tmp_path), bias=0.8, train_per_class=60, val_per_class=0, ood_per_class=60,
                         target_train_per_class=0, target_test_per_class=0, frame_size_px=32, num_frames=4))
    task = tmp_path / "source"
    actions = __import__("json").loads((task / "actions.json").read_text())
    home = Counter()
    for row in csv.DictReader(open(task / "manifest.csv")):
        _, scene = read_annotation(str(task / "annotations"), row['youtube_id'])
        home[row["split"], scene == actions.index(row["label"])] += 1
    train_home = home["train", True] / (home["train", True] + home["train", False])
    ood_home = home["ood", True] / (home["ood", True] + home["ood", False])
    assert 0.75 <= train_home <= 0.9  # 0.8 + the 1/6 chance of drawing home anyway: 0.83
    assert ood_home < 0.3  # 1/6 expected


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
