"""Using a trained run: predict on real H.264 videos, embed with Ray Data, export to torchvision.

The tiny run is trained in this process (`train_one_epoch`) on clips that went through the curation's
own decode step, then written through `debias.training.runs` as a training job writes it. Its two classes are a
red and a blue square: a model fed BGR instead of RGB would swap them, so predict naming the right
class also checks the colour order end to end.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from debias.training.clips import ClipConfig, write_pattern_shards
from debias.config import ConfigError, to_dict
from debias.curation.curate import DecodeConfig, make_decode_fn
from debias.evaluation.inference import eval_clips, video_row
from debias.training.models import SDN, ModelConfig
from debias.training.runs import RunWriter, checkpoint_name, write_run_config
from debias.curation.shards import shard_files
from debias.training.train import LossConfig, OptimConfig, PretrainConfig, make_optimizer, train_one_epoch
from debias.curation.video import write_mp4

FRAMES, SIZE = 8, 32
CLASSES = ["blue", "red"]  # label_id order
COLOURS = {"blue": (30, 40, 220), "red": (220, 40, 30)}  # RGB
DECODE = DecodeConfig(sampling="uniform", num_frames=FRAMES, short_side_px=SIZE, crop_px=SIZE)
CLIP = ClipConfig(clip_len=FRAMES, crop_px=SIZE, eval_clips=2)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _square_video(path: Path, colour: tuple[int, int, int], seed: int) -> Path:
    """A coloured square drifting over a grey, textured background: 12 frames of 32 x 32, H.264."""
    rng = np.random.default_rng(seed)
    y, x = rng.integers(4, 14, size=2)
    frames = []
    for t in range(12):
        image = np.full((SIZE, SIZE, 3), 128, np.uint8) + rng.integers(0, 10, (SIZE, SIZE, 3), dtype=np.uint8)
        image[y + t // 2:y + t // 2 + 10, x:x + 10] = colour
        frames.append(image)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_mp4(path, np.stack(frames), fps=8)
    return path


def write_run(run: Path, model: SDN, cfg: PretrainConfig, classes: list[str], confusion: dict, metrics: dict) -> None:
    """A run folder as `debias pretrain` leaves it: config.json, one checkpoint, metrics, confusion."""
    scenes = model.scene_head[-1].out_features
    write_run_config(str(run), cfg, classes, [f"scene_{i}" for i in range(scenes)], scenes,
                     {"config": {"decode": to_dict(DECODE)}}, "0" * 64)
    (run / checkpoint_name(0)).mkdir(parents=True)
    torch.save({"model": model.state_dict(), "epoch": 0}, run / checkpoint_name(0) / "state.pt")
    writer = RunWriter(str(run), tensorboard=False)
    writer.epoch({"epoch": 0, "checkpoint": checkpoint_name(0), **metrics}, confusion)
    writer.close()


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """VIDEOS/<class>/<n>.mp4: 6 training videos per class."""
    root = tmp_path_factory.mktemp("videos")
    for k, name in enumerate(CLASSES):
        for i in range(6):
            _square_video(root / name / f"{i}.mp4", COLOURS[name], seed=10 * k + i)
    return root


@pytest.fixture(scope="module")
def run(videos, tmp_path_factory) -> Path:
    """A tiny r3d_narrow run trained here on the decoded videos until it tells red from blue."""
    rows = [r for name in CLASSES for p in sorted((videos / name).glob("*.mp4"))
            for r in make_decode_fn(DECODE)(video_row(str(p)))]
    clips = eval_clips(CLIP, {k: [r[k] for r in rows] for k in ("frames", "height", "width")})
    labels = torch.tensor([CLASSES.index(Path(r["source_path"]).parent.name) for r in rows]).repeat_interleave(2)
    batch = {"clips": torch.from_numpy(clips).flatten(0, 1), "label_id": labels, "scene_id": labels,
             "scene_probs": torch.nn.functional.one_hot(labels, 2).float()}
    cfg = PretrainConfig(model=ModelConfig(width=4), clip=CLIP, loss=LossConfig(lambda_scene=0.0, lambda_mask=0.0),
                         eval_splits=["val"], shards="(in-test)")
    torch.manual_seed(0)
    model = SDN(cfg.model, len(CLASSES), len(CLASSES))
    optimizer = make_optimizer(model, OptimConfig(lr=0.05))
    for _ in range(15):
        metrics = train_one_epoch(model, [batch], optimizer, cfg.loss, torch.device("cpu"))
    assert metrics["acc"] == 1.0
    out = tmp_path_factory.mktemp("runs") / "tiny"
    write_run(out, model.eval(), cfg, CLASSES, {"val": [[5, 1], [0, 6]]}, {"val_acc": 11 / 12, "train_acc": 1.0})
    return out


def test_predict_names_the_class_the_run_learned_and_reports_a_broken_video(run, tmp_path, capsys):
    from ray_jobs.predict import main

    red = _square_video(tmp_path / "new_red.mp4", COLOURS["red"], seed=99)
    blue = _square_video(tmp_path / "new_blue.mp4", COLOURS["blue"], seed=98)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    with pytest.raises(SystemExit) as exit_info:
        main([str(red), str(blue), str(broken), "--run", str(run), "--top-k", "2", "--json", "--device", "cpu"])
    assert exit_info.value.code == 1  # one video failed
    result = json.loads(capsys.readouterr().out)
    by_video = {Path(v["video"]).name: v for v in result["videos"]}
    assert by_video["new_red.mp4"]["top"][0]["class"] == "red"
    assert by_video["new_blue.mp4"]["top"][0]["class"] == "blue"
    assert by_video["new_red.mp4"]["clips"] == CLIP.eval_clips  # one row per video, eval_clips clips each
    assert sum(t["prob"] for t in by_video["new_red.mp4"]["top"]) == pytest.approx(1.0, abs=1e-5)
    assert "broken.mp4" in by_video["broken.mp4"]["error"] and by_video["broken.mp4"]["top"] == []
    assert result["checkpoint"].endswith(checkpoint_name(0))

    main([str(red), "--run", str(run), "--top-k", "1"])  # text: one line per video
    assert capsys.readouterr().out.startswith(f"{red}: red ")


def test_bad_predict_config_names_the_key():
    from debias.evaluation.inference import PredictConfig

    with pytest.raises(ConfigError, match="top_k"):
        PredictConfig(run="r", videos=["v.mp4"], top_k=0)
    with pytest.raises(ConfigError, match="videos"):
        PredictConfig(run="r")


def test_embed_writes_one_row_per_shard_row_and_per_video(run, videos, tmp_path, ray_local):
    from debias.evaluation.embed import EmbedConfig, run_embed

    shards = write_pattern_shards(tmp_path / "pattern", {"train": 10, "val": 5}, num_frames=FRAMES, size_px=SIZE,
                                  rows_per_file=8)
    summary = run_embed(EmbedConfig(run=str(run), input=str(shards), out=str(tmp_path / "emb"), batch_size=4))
    table = pq.read_table(tmp_path / "emb" / "embeddings")
    source = pq.read_table(shard_files(shards), columns=["video_id", "split"])
    assert table.num_rows == source.num_rows == summary["rows"] == 15
    assert sorted(table.column("video_id").to_pylist()) == sorted(source.column("video_id").to_pylist())
    assert table.schema.field("embedding").type.value_type == pa.float32()  # list<float32>
    assert {len(e) for e in table.column("embedding").to_pylist()} == {8 * 4}  # r3d_narrow width 4: 32 features
    assert {len(e) for e in table.column("logits").to_pylist()} == {len(CLASSES)}
    assert summary["embedding_dim"] == 32 and summary["failed"] == 0

    # A folder of videos goes through the decode step first; a broken one is an error row, not a lost one.
    (videos / "red" / "zz_broken.mp4").write_bytes(b"")
    try:
        summary = run_embed(EmbedConfig(run=str(run), input=str(videos), out=str(tmp_path / "emb_videos")))
    finally:
        (videos / "red" / "zz_broken.mp4").unlink()
    table = pq.read_table(tmp_path / "emb_videos" / "embeddings").to_pandas().set_index("video_id")
    assert len(table) == 13 and summary["failed"] == 1 and summary["failures_by_reason"] == {"empty_file": 1}
    assert table.loc["red/zz_broken", "embedding"] is None and "zz_broken.mp4" in table.loc["red/zz_broken", "error"]
    errors = pq.read_table(tmp_path / "emb_videos" / "errors.parquet").to_pylist()
    assert [e["video_id"] for e in errors] == ["red/zz_broken"] and errors[0]["error_code"] == "empty_file"
    good = table[table["error"] == ""]
    predicted = [CLASSES[int(np.argmax(v))] for v in good["logits"]]
    assert predicted == good["label"].tolist()  # the logits are the run's: each video's own colour


def test_export_loads_into_torchvision_r3d_18_and_gives_the_run_s_logits(tmp_path):
    from safetensors.torch import load_file
    from torchvision.models.video import r3d_18

    from debias.evaluation.export import ExportConfig, export_run

    cfg = PretrainConfig(model=ModelConfig(backbone="r3d_18"), clip=CLIP, eval_splits=["val", "ood"], shards="s")
    torch.manual_seed(0)
    model = SDN(cfg.model, len(CLASSES), 4).eval()
    write_run(tmp_path / "r3d", model, cfg, CLASSES, {"val": [[4, 0], [1, 3]], "ood": [[1, 3], [1, 3]]},
              {"val_acc": 0.875, "ood_acc": 0.5})
    card = export_run(ExportConfig(run=str(tmp_path / "r3d"), out=str(tmp_path / "export")))
    out = tmp_path / "export"

    backbone = torch.load(out / "backbone.pth", weights_only=True)
    net = r3d_18()
    missing, unexpected = net.load_state_dict(backbone, strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and unexpected == []
    safe = load_file(out / "backbone.safetensors")
    assert safe.keys() == backbone.keys() and all(torch.equal(safe[k], backbone[k]) for k in safe)

    full = r3d_18(num_classes=len(CLASSES))
    full.load_state_dict({**backbone, **load_file(out / "fc.safetensors")})  # strict: every key
    full.eval()
    clip = torch.randint(0, 256, (1, FRAMES, SIZE, SIZE, 3), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.allclose(full(model.normalize(clip)), model(clip).action, atol=1e-5)

    saved = json.loads((out / "model_card.json").read_text())
    assert saved == json.loads(json.dumps(card))
    assert saved["torchvision_constructor"] == "torchvision.models.video.r3d_18" and saved["feature_dim"] == 512
    assert saved["classes"] == CLASSES and saved["preprocessing"]["decode"]["crop_px"] == SIZE
    assert saved["loss_weights"]["lambda_scene"] == cfg.loss.lambda_scene
    assert saved["metrics"]["val_acc"] == 0.875 and saved["data"]["summary_sha256"] == "0" * 64
    rows = {r["class"]: r for r in saved["per_class"]["rows"]}
    assert rows["blue"]["val_acc"] == 1.0 and rows["blue"]["ood_acc"] == 0.25 and rows["blue"]["drop_ood"] == 0.75
    assert saved["per_class"]["rows"][0]["class"] == "blue"  # the largest drop first
    assert (out / "confusion_val.png").stat().st_size > 0 and (out / "confusion_ood.png").is_file()
    assert "which actions lean on the scene" in (out / "model_card.md").read_text()


def test_export_of_r3d_narrow_says_it_has_no_torchvision_twin(run, tmp_path):
    from debias.evaluation.export import ExportConfig, export_run

    card = export_run(ExportConfig(run=str(run), out=str(tmp_path / "narrow")))
    assert card["torchvision_constructor"] is None and "no torchvision twin" in card["loading"]
    state = torch.load(tmp_path / "narrow" / "backbone.pth", weights_only=True)
    from debias.training.models import narrow_r3d

    narrow_r3d(4, 1).load_state_dict(state)  # strict: the card's recipe rebuilds it


def test_evaluate_returns_a_per_video_confusion_matrix_that_matches_video_accuracy():
    from debias.training.clips import video_key
    from debias.training.train import evaluate

    torch.manual_seed(0)
    model = SDN(ModelConfig(width=4), num_actions=3, num_scenes=2)
    clips = torch.randint(0, 256, (12, FRAMES, SIZE, SIZE, 3), dtype=torch.uint8)
    labels = torch.tensor([0, 0, 1, 1, 2, 2] * 2)
    keys = torch.tensor([video_key(f"v{i // 2}") for i in range(12)])  # 6 videos of 2 clips each
    batches = [{"clips": clips[i:i + 4], "label_id": labels[i:i + 4], "scene_id": torch.zeros(4, dtype=torch.long),
                "video_key": keys[i:i + 4]} for i in range(0, 12, 4)]
    result = evaluate(model, batches, torch.device("cpu"))
    confusion = torch.tensor(result["confusion"])
    assert confusion.shape == (3, 3) and confusion.sum() == 6  # one count per video
    assert confusion.diag().sum().item() / 6 == pytest.approx(result["video_acc"])
    without_videos = evaluate(model, [{k: v for k, v in b.items() if k != "video_key"} for b in batches],
                              torch.device("cpu"))
    assert torch.tensor(without_videos["confusion"]).sum() == 12  # per clip
    assert torch.tensor(without_videos["confusion"]).diag().sum().item() / 12 == pytest.approx(without_videos["acc"])
