"""`debias bias` on real video: the 18 real clips of ../shared/data/real_clips (UCF101, HMDB51, Kinetics),
curated with motion masks (no model weights needed), a narrow model trained on them for a few epochs, and
the bias job with example strips of its counterfactual clips.

    PYTHONPATH=. python benchmarks/bias_real_clips.py [--work DIR] [--clips DIR] [--examples N]

A model trained on 18 videos is meaningless and so are its top-1 figures; what this run records is what
the field's rules do on real video and real motion masks: how many videos each protocol keeps, the
reasons it drops the others, and (DIR/bias/examples/*.png) the clips themselves, to check by eye. Their
geometry, mask alignment and fills are tested pixel by pixel in tests/test_field_bias_real.py, on the
same curation (`curate`). The last line printed is the job's summary as one JSON object.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from debias.config import load_config  # noqa: E402
from debias.curation.curate import PreprocessConfig  # noqa: E402
from debias.curation.preprocess import run_preprocess  # noqa: E402
from debias.evaluation.field_bias import FieldBiasConfig, run_bias_eval  # noqa: E402
from debias.training.pretrain import run_pretrain  # noqa: E402
from debias.training.train import PretrainConfig  # noqa: E402

SHARED_CLIPS = ROOT.parent / "shared" / "data" / "real_clips"
CLIP_LEN, CROP_PX = 16, 64


def curate(clips: Path, work: Path) -> str:
    """WORK/videos/<action_class>/<file> (links to the clips, as a dataset folder), curated into
    WORK/data as split `test`: one 16-frame clip of each video at 64 px, motion masks, scene labels from
    the weight-free background clusters (the trainer needs some)."""
    videos = work / "videos"
    for m in csv.DictReader(open(clips / "MANIFEST.tsv"), delimiter="\t"):
        (videos / m["action_class"]).mkdir(parents=True, exist_ok=True)
        link = videos / m["action_class"] / m["filename"]
        if not link.exists():
            link.symlink_to(clips / m["filename"])
    cfg = load_config(PreprocessConfig, None, [
        f"input.root={videos}", f"out={work / 'data'}", "input.split=test", "labels.mask_provider=motion",
        "labels.scene_provider=clusters", "decode.sampling=clips", "decode.clips_per_video=1",
        f"decode.num_frames={CLIP_LEN}", "decode.short_side_px=72", f"decode.crop_px={CROP_PX}"])
    run_preprocess(cfg)
    return cfg.out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="out/bias_real_clips", help="videos, curated data, the run and the bias job's outputs")
    parser.add_argument("--clips", default=str(SHARED_CLIPS))
    parser.add_argument("--examples", type=int, default=18, help="rows whose clips are written as PNG strips (all 18)")
    args = parser.parse_args()
    clips, work = Path(args.clips), Path(args.work).resolve()
    if not (clips / "MANIFEST.tsv").is_file():
        sys.exit(f"{clips}/MANIFEST.tsv not found: this run needs ../shared/data/real_clips beside the repo")
    shutil.rmtree(work, ignore_errors=True)
    shards = curate(clips, work)
    run = run_pretrain(load_config(PretrainConfig, None, [
        f"shards={shards}", f"out={work / 'runs'}", "name=narrow", "train_split=test", "eval_splits=[test]",
        "report_splits=[]", "selection_splits=[]", "loss.lambda_scene=0", "loss.lambda_mask=0",
        f"clip.clip_len={CLIP_LEN}", f"clip.crop_px={CROP_PX}", "optim.epochs=3", "optim.batch_size=6",
        "tensorboard=false", "scaling.num_workers=0"]))
    summary = run_bias_eval(load_config(FieldBiasConfig, None, [
        f"run={run['run']}", f"shards={shards}", f"out={work / 'bias'}", "measures.split=test",
        f"examples={args.examples}", "own_measures=false", "cpus_per_actor=2"]))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
