"""Weights: list, download and verify the checkpoints a preprocess config needs.

    debias weights --config configs/preprocess/minikinetics200.yaml              # list, with status
    debias weights --config configs/preprocess/minikinetics200.yaml --download   # fetch what is missing, verify

Lists every checkpoint the config's label providers use (detector + SAM for mask_provider auto/sam,
Places365 + its category names for scene_provider auto/places365) with its official URL, size and
the path where it is expected (labels.weights_dir; the detector is also found in torch.hub's
cache, where torchvision puts it). --download fetches missing or broken files
(resuming an interrupted download) from the official URL, or from labels.weights_url_base when set
(a mirror), then checks that each file loads. Exits non-zero while any file is missing or broken.
No Ray cluster is needed.
"""

from __future__ import annotations

import sys

from tqdm import tqdm

from debias.curate import PreprocessConfig
from debias.weights import WeightFile, catalog, check_file, download, fix_hint, locate, source_url
from ray_jobs.common import job_parser, load_job_config


def _size(wf: WeightFile) -> str:
    mb = wf.size_bytes / 1e6
    return f"{wf.size_bytes} B" if wf.size_exact and mb < 1 else f"{'' if wf.size_exact else '~'}{mb:.1f} MB"


def run_weights(cfg: PreprocessConfig, fetch: bool, config_path: str | None = None) -> dict[str, str]:
    """Filename -> problem ('' = ok), after downloading when `fetch`."""
    labels = cfg.labels
    files = catalog(labels)
    if not files:
        print(f"weights: mask_provider={labels.mask_provider} and scene_provider={labels.scene_provider} need no weights")
        return {}
    official = not labels.weights_url_base  # a mirror may serve other builds: the load check decides
    status = {}
    for wf in files:
        path = locate(wf, labels)
        problem = check_file(wf, path, official)
        if problem and fetch:
            url = source_url(wf, labels)
            if path.exists():
                path.unlink()  # broken: fetch again
            with tqdm(total=None, unit="B", unit_scale=True, desc=wf.filename, file=sys.stdout) as bar:
                def progress(got: int, total: int) -> None:
                    bar.total = total if total >= 0 else None
                    bar.update(got - bar.n)
                try:
                    download(url, path, progress)
                    problem = check_file(wf, path, official)
                except OSError as e:
                    problem = f"download failed: {e}"
        status[wf.filename] = problem
        print(f"{'ok' if not problem else 'MISSING' if problem == 'missing' else 'BROKEN':8} {wf.key:22} "
              f"{wf.filename:44} {_size(wf):>10}  {path}\n         official: {wf.url}"
              + (f"\n         problem: {problem}; {fix_hint(wf, config_path)}" if problem and problem != "missing" else ""))
    bad = [name for name, problem in status.items() if problem]
    print(f"weights: {len(files) - len(bad)} of {len(files)} files ok in {labels.weights_path('')}"
          + (f"; missing or broken: {', '.join(bad)}" + ("" if fetch else " (add --download to fetch them)") if bad else ""))
    return status


def main(argv: list[str] | None = None) -> None:
    parser = job_parser("debias weights", __doc__)
    parser.add_argument("--download", action="store_true", help="fetch missing or broken files, then verify them")
    args = parser.parse_args(argv)
    # only the label section of the preprocess config is read: its other paths may be a curation's
    status = run_weights(load_job_config(PreprocessConfig, args, paths_used=("labels.*",)), args.download, args.config)
    if any(status.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
