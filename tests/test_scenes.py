"""Scene labels: Places365 from a CSAIL-format checkpoint, soft / hard labels, the weight-free
background clusters against the synthetic benchmark's scene ids, as Ray Data actor stages."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from debias.curation import shards
from debias.curation.labels.fill import fill_people
from debias.curation.curate import DecodeConfig, PreprocessConfig, make_decode_fn
from debias.curation.labels.config import LabelsConfig
from debias.curation.labels.masks import MotionMasks
from debias.curation.labels.models import PlacesClassifier, load_categories, load_places365
from debias.curation.labels.scenes import ClusterScenes, Places365Scenes, cluster_count, fit_scene_clusters, hard_label, scene_step
from debias.curation.sources import InputConfig, read_source
from debias.curation.sources import read_annotation
from debias.curation.synth import SynthConfig, generate
from debias.curation.codecs import decode_jpeg, encode_jpeg, pack_mask, unpack_mask
from debias.curation.labels.weights import WeightsError, catalog, resolve_providers

DECODE = DecodeConfig(num_frames=4, short_side_px=32, crop_px=32)


def write_csail_places(path: Path, arch: str = "resnet18") -> None:
    """A randomly initialised Places365 ResNet saved as the CSAIL release is: a `.pth.tar` dict with
    `state_dict` keys carrying DataParallel's `module.` prefix."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, weights=None, num_classes=365)
    torch.save({"epoch": 90, "arch": arch, "best_prec1": 54.7,
                "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)


def write_categories(path: Path) -> None:
    path.write_text("".join(f"/x/scene_{i} {i}\n" for i in range(365)))


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    # one scene per home: colour clusters can tell those apart (home groups share their colours)
    generate(SynthConfig(out=str(out), train_per_class=4, val_per_class=0, ood_val_per_class=0, ood_test_per_class=0,
                         target_train_per_class=0, target_test_per_class=0, scenes_per_action=1))
    return out / "source"


def synth_config(task: Path, **labels) -> PreprocessConfig:
    return PreprocessConfig(input=InputConfig(source="kinetics", manifest=str(task / "manifest.csv")),
                            decode=DECODE, labels=LabelsConfig(**labels))


@pytest.fixture(scope="module")
def places(tmp_path_factory) -> LabelsConfig:
    d = tmp_path_factory.mktemp("weights")
    write_csail_places(d / "resnet18_places365.pth.tar")
    write_categories(d / "categories_places365.txt")
    return LabelsConfig(mask_provider="none", scene_provider="places365", places_model="resnet18",
                        weights_dir=str(d), places_batch_images=5, places_mask_people=True, scene_hard="vote")


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (T, 3, H, W), as the model cores take frames."""
    return torch.from_numpy(frames).permute(0, 3, 1, 2)


def test_hard_label_argmax_vs_vote():
    # frame 0 is very sure of class 2; frames 1-2 mildly prefer class 1
    p = np.array([[0.0, 0.0, 1.0], [0.3, 0.4, 0.3], [0.3, 0.4, 0.3]])
    assert hard_label(p, "argmax") == 2 and hard_label(p, "vote") == 1


def test_csail_checkpoint_loads_and_bad_files_are_named(tmp_path, places):
    model = load_places365(places.weights_path("resnet18_places365.pth.tar"), "resnet18")
    assert model.fc.out_features == 365
    torch.save({"model": {}}, tmp_path / "other.pth.tar")
    with pytest.raises(ValueError, match="other.pth.tar: not a CSAIL Places365 checkpoint"):
        load_places365(tmp_path / "other.pth.tar", "resnet18")
    (tmp_path / "cats.txt").write_text("/a/airfield 0\n")
    with pytest.raises(ValueError, match="cats.txt: expected 365 categories"):
        load_categories(tmp_path / "cats.txt")
    assert load_categories(places.weights_path("categories_places365.txt"))[364] == "/x/scene_364"


def test_places365_stage_in_ray_data_matches_the_model_alone(ray_local, synth, places):
    """Masks then Places365 on person-masked frames, as the preprocess job chains them; soft label =
    mean of the per-frame probabilities, hard label = majority vote, both from the model alone."""
    import ray
    from ray.data import ActorPoolStrategy

    cfg = synth_config(synth)
    rows, _ = read_source(cfg.input)
    masks, scenes, paths = resolve_providers(places)
    assert (masks, scenes) == ("none", "places365")
    ds = (ray.data.from_items(rows[:4]).flat_map(make_decode_fn(DECODE))
          .map_batches(MotionMasks, fn_constructor_args=(20.0, 3.0), batch_format="pandas", batch_size=4,
                       num_cpus=0.5, compute=ActorPoolStrategy(size=1))
          .map_batches(Places365Scenes, fn_constructor_args=(str(paths["places365"]), str(paths["places365_categories"]), places),
                       batch_format="pandas", batch_size=4, num_cpus=0.5, compute=ActorPoolStrategy(size=1)))
    out = ds.take_all()
    assert len(out) == 4
    classifier = PlacesClassifier(load_places365(paths["places365"], "resnet18"), places, torch.device("cpu"))
    for r in out:
        assert r["error"] == "" and r["scene_source"] == "places365" and len(r["scene_probs"]) == 365
        clip = np.stack([decode_jpeg(f) for f in r["frames"]])
        people = np.stack([unpack_mask(m, 32, 32) for m in r["human_masks"]])
        frame_probs = classifier(to_tensor(fill_people(clip, people, "mean", np.random.default_rng(0))))
        np.testing.assert_allclose(r["scene_probs"], frame_probs.mean(0), atol=1e-5)
        assert r["scene_id"] == hard_label(frame_probs, "vote")
        assert sum(r["scene_probs"]) == pytest.approx(1.0, abs=1e-4)


def test_places365_stage_fills_people_on_the_device_as_the_numpy_path(places):
    """The stage itself (no Ray): people filled on the device (`fill_people_torch`) classify as with the
    numpy `fill_people`, over a batch with frames of two sizes and a corrupt row that alone fails."""
    _masks, _scenes, paths = resolve_providers(places)
    rng = np.random.default_rng(0)
    rows = []
    for i, (h, w) in enumerate([(32, 32), (40, 48), (32, 32), (40, 48)]):
        frames = rng.integers(0, 256, (3, h // 4, w // 4, 3), dtype=np.uint8).repeat(4, 1).repeat(4, 2)
        people = np.zeros((3, h, w), bool)
        people[:, 4 : h - 4, 8 + i : w // 2] = True  # a person-shaped block, a different one per row
        rows.append({"video_id": f"v{i}", "frames": [encode_jpeg(f, 90) for f in frames], "height": h, "width": w,
                     "human_masks": [pack_mask(m) for m in people], "error": "", "error_code": "", "error_stage": ""})
    batch = pd.DataFrame(rows)
    batch.at[2, "frames"] = [batch.frames[2][0], b"not a jpeg", batch.frames[2][2]]
    out = Places365Scenes(str(paths["places365"]), str(paths["places365_categories"]), places)(batch)
    assert out.error_code.tolist() == ["", "", "scenes_failed", ""] and out.scene_probs[2] == []
    classifier = PlacesClassifier(load_places365(paths["places365"], "resnet18"), places, torch.device("cpu"))
    for i in (0, 1, 3):
        clip = np.stack([decode_jpeg(f) for f in batch.frames[i]])
        people = np.stack([unpack_mask(m, batch.height[i], batch.width[i]) for m in batch.human_masks[i]])
        frame_probs = classifier(to_tensor(fill_people(clip, people, "mean", rng)))
        np.testing.assert_allclose(out.scene_probs[i], frame_probs.mean(0), atol=1e-5)
        assert out.scene_id[i] == hard_label(frame_probs, "vote") and out.scene_source[i] == "places365"
        unmasked = classifier(to_tensor(clip)).mean(0)
        assert np.abs(unmasked - frame_probs.mean(0)).max() > 1e-4, "the fill must change what the model sees"


def test_named_places365_fails_on_missing_weights(tmp_path):
    with pytest.raises(WeightsError, match=r"resnet50_places365\.pth\.tar: missing.*debias weights.*labels\.places_model"):
        resolve_providers(LabelsConfig(mask_provider="none", scene_provider="places365", weights_dir=str(tmp_path)))


def test_background_clusters_recover_the_synthetic_scenes(ray_local, synth):
    """The weight-free option: K = 6 clusters against the benchmark's 6 scene ids, through Ray Data."""
    import ray
    from ray.data import ActorPoolStrategy

    cfg = synth_config(synth, mask_provider="none", scene_provider="clusters", scene_clusters=6, cluster_fit_videos=24)
    rows, _ = read_source(cfg.input)
    model = fit_scene_clusters(rows, cfg)
    assert model["fit_videos"] == 24
    out = pd.DataFrame(ray.data.from_items(rows).flat_map(make_decode_fn(DECODE)).map_batches(
        ClusterScenes, fn_constructor_args=(model, cfg.labels.cluster_temperature), batch_format="pandas",
        batch_size=8, num_cpus=0.5, compute=ActorPoolStrategy(size=1)).take_all())
    truth = [read_annotation(str(synth / "annotations"), v)[1] for v in out.youtube_id]  # named by the manifest's id
    table = pd.crosstab(out.scene_id, truth)
    purity = table.max(axis=1).sum() / len(out)
    assert purity >= 0.9, table  # measured on 360 videos: 1.0
    assert set(out.scene_source) == {"clusters"}
    probs = np.stack(out.scene_probs.to_list())
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert (probs.argmax(1) == out.scene_id.to_numpy()).all()


def test_real_clips_get_cluster_labels(ray_local, real_clips):
    import ray
    from ray.data import ActorPoolStrategy

    with open(real_clips / "MANIFEST.tsv") as f:
        names = [r["filename"] for r in csv.DictReader(f, delimiter="\t")][:8]
    rows = [{"video_id": n, "label": "x", "split": "train", "source_path": str(real_clips / n), "time_start": 0.0,
             "time_end": -1.0, "error": "", "error_code": "", "error_stage": ""} for n in names]
    cfg = PreprocessConfig(decode=DecodeConfig(num_frames=4, short_side_px=64, crop_px=64),
                           labels=LabelsConfig(scene_clusters=3, cluster_fit_videos=8))
    model = fit_scene_clusters(rows, cfg)
    out = pd.DataFrame(ray.data.from_items(rows).flat_map(make_decode_fn(cfg.decode)).map_batches(
        ClusterScenes, fn_constructor_args=(model, cfg.labels.cluster_temperature), batch_format="pandas",
        batch_size=4, num_cpus=0.5, compute=ActorPoolStrategy(size=1)).take_all())
    ok = out[out.error == ""]
    assert len(ok) >= 6 and ok.scene_id.between(0, 2).all()
    assert ok.scene_id.nunique() >= 2  # different videos, different backgrounds


def test_background_colour_histogram_counts_as_numpy_histogramdd():
    from debias.curation.labels.scenes import background_features
    from debias.curation.video import temporal_median

    clip = np.random.default_rng(0).integers(0, 256, (9, 30, 40, 3), dtype=np.uint8)
    counts = np.histogramdd(temporal_median(clip).reshape(-1, 3) // 64, bins=(4, 4, 4), range=((0, 4),) * 3)[0].ravel()
    assert np.allclose(background_features(clip)[:64], np.sqrt(counts / counts.sum()))


def test_cluster_count_serves_a_small_dataset():
    assert [cluster_count(8, n) for n in (2, 3, 4, 5, 9, 15, 16, 256)] == [2, 2, 2, 2, 4, 7, 8, 8]
    with pytest.raises(ValueError, match="only 1 video.*labels.scene_provider=none"):
        cluster_count(8, 1)


def test_default_clusters_on_a_folder_of_four_real_videos(real_clips, tmp_path, capsys):
    """`debias preprocess ROOT --out OUT` with the defaults (labels.scene_clusters=8) on 4 videos: K=2, said."""
    root = tmp_path / "videos"
    (root / "clips").mkdir(parents=True)
    for name in ["Kop0sDqOn-c.mp4", "abseiling_k400.mp4", "mmaction2__demo_demo.mp4",
                 "50_FIRST_DATES_drink_u_nm_np1_fr_goo_29.mp4"]:
        (root / "clips" / name).symlink_to(real_clips / name)
    cfg = PreprocessConfig(input=InputConfig(root=str(root)), decode=DecodeConfig(short_side_px=64, crop_px=64))
    assert cfg.labels.scene_clusters == 8
    rows, _ = read_source(cfg.input)
    step = scene_step(cfg, "clusters", {}, rows)
    model = step.args[0]
    assert (model["fit_videos"], model["clusters"], len(model["centroids"])) == (4, 2, 2)
    assert step.names == ["cluster_0", "cluster_1"]
    assert "too few for labels.scene_clusters=8 (2 fit videos a cluster): using K=2" in capsys.readouterr().out
    probs = step.cls(*step.args)(pd.DataFrame([make_decode_fn(cfg.decode)(rows[0])[0]])).scene_probs[0]
    assert len(probs) == 2


def test_preprocess_job_on_a_fresh_machine_uses_the_weight_free_providers(ray_local, synth, tmp_path, capsys):
    """`auto` with no weights installed: the job runs, says so, and every row records its providers."""
    from debias.curation.preprocess import run_preprocess

    cfg = PreprocessConfig(out=str(tmp_path / "out"), decode=DECODE,
                           input=InputConfig(source="kinetics", manifest=str(synth / "manifest.csv")),
                           labels=LabelsConfig(weights_dir=str(tmp_path / "no_weights"), scene_clusters=6))
    summary = run_preprocess(cfg)
    assert "mask_provider=auto -> motion" in capsys.readouterr().out
    assert summary["mask_source"] == ["motion"] and summary["scene_source"] == ["clusters"]
    out = str(tmp_path / "out")
    table = pa.concat_tables([shards.read_parquet(f, columns=["scene_probs"]) for f in shards.shard_files(out)])
    assert table.num_rows == summary["videos_ok"] == 24
    assert all(len(p) == 6 for p in table.column("scene_probs").to_pylist())
    assert shards.read_scene_names(out) == [f"cluster_{k}" for k in range(6)] and summary["num_scenes"] == 6


def test_scene_names_say_what_each_id_means(synth, places):
    from debias.curation.labels.scenes import scene_names

    _masks, _scenes, paths = resolve_providers(places)
    cfg = synth_config(synth, scene_clusters=5)
    assert scene_names(cfg, "places365", paths)[0] == "/x/scene_0" and len(scene_names(cfg, "places365", paths)) == 365
    assert scene_names(cfg, "clusters", paths, clusters=5) == [f"cluster_{k}" for k in range(5)]
    with pytest.raises(ValueError, match=r"fitted K.*scene_step\(...\).names"):
        scene_names(cfg, "clusters", paths)  # labels.scene_clusters may not be the K fitted
    assert len(scene_names(cfg, "annotations", paths)) == 6 and scene_names(cfg, "none", paths) == []


def test_places365_stage_matches_the_csail_release_transform_on_the_same_weights(places):
    """Golden test against the reference preprocessing of the CSAIL Places365 release (run_placesCNN_basic.py:
    PIL image -> Resize((224, 224)) -> ToTensor -> Normalize(ImageNet mean, std)) on the same random
    weights: channel order, scaling or normalisation mistakes change the probabilities here."""
    from PIL import Image
    from torchvision import transforms as trn

    paths = {wf.role: Path(places.weights_dir) / wf.filename for wf in catalog(places)}
    model = load_places365(paths["places365"], "resnet18")
    classifier = PlacesClassifier(model, places, torch.device("cpu"))
    centre_crop = trn.Compose([trn.Resize((224, 224)), trn.ToTensor(),
                               trn.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for h, w in ((112, 112), (96, 160), (256, 200)):
            image = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (7, 7), 2)
            image[h // 4: h // 2, : w // 2] = (230, 30, 30)  # a red block: colour order matters
            ours = np.log(classifier(torch.from_numpy(image).permute(2, 0, 1)[None])[0])
            reference = torch.log_softmax(model(centre_crop(Image.fromarray(image))[None]), 1)[0].numpy()
            # random weights give near-uniform probabilities: compare log-probabilities, on their own spread
            spread = reference.std()
            assert np.abs(ours - reference).max() < 0.05 * spread  # PIL resizes in uint8, we in float
            # a plain mistake is far outside that: the frames in BGR order
            bgr = np.log(classifier(torch.from_numpy(image[..., ::-1].copy()).permute(2, 0, 1)[None])[0])
            assert np.abs(bgr - reference).max() > 0.5 * spread
