"""The checkpoints a preprocess config needs: where they come from, where they go, whether they load.

`catalog(labels)` lists every file the configured providers use (for `auto`, the files that would
make it pick the real models). `resolve_providers` turns `auto` into a concrete provider and makes
`sam` / `places365` strict: a missing or corrupt file stops the job before any video is decoded,
naming the file, the config key and the `debias weights` command. `download` fetches a file with
resume (HTTP Range) into a `.part` file and renames it only once complete and loadable.
"""

from __future__ import annotations

import hashlib
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from tqdm import tqdm

from debias.curation.labels.models import load_categories, load_detector, load_places365, load_sam
from debias.curation.labels.config import LabelsConfig

if TYPE_CHECKING:
    from debias.curation.curate import PreprocessConfig

CHUNK_BYTES = 1 << 20
SAM_FILES = {"vit_b": ("sam_vit_b_01ec64.pth", 375_042_383), "vit_l": ("sam_vit_l_0b3195.pth", 1_249_524_607),
             "vit_h": ("sam_vit_h_4b8939.pth", 2_564_550_879)}
PLACES_URL = "http://places2.csail.mit.edu/models_places365/"
PLACES_APPROX_MB = {"resnet18": 45.0, "resnet50": 97.0}  # not verified byte-exactly (see README)
CATEGORIES = ("categories_places365.txt",
              "https://raw.githubusercontent.com/csailvision/places365/master/categories_places365.txt",
              6833, "md5:06c963b85866bd0649f97cb43dd16673")


class WeightsError(RuntimeError):
    """A checkpoint is missing or does not load; the message says which file, key and command."""


@dataclass(frozen=True)
class WeightFile:
    role: str  # detector, sam, places365, places365_categories
    key: str  # the config key that picks this file
    filename: str
    url: str  # the official download URL
    size_bytes: int  # official size; exact when `size_exact`, else approximate
    size_exact: bool
    digest: str  # "sha256:<prefix>" / "md5:<hex>" of the official file, "" when unknown
    load: Callable[[Path], object]  # raises when the file is not a loadable checkpoint of this kind


def _torchvision_detector(labels: LabelsConfig) -> WeightFile:
    from torchvision.models import get_model_weights

    weights = get_model_weights(labels.detector).DEFAULT
    filename = weights.url.rsplit("/", 1)[1]
    # torchvision names files <name>-<first hex digits of the sha256>.pth (torch.hub checks the same)
    return WeightFile("detector", "labels.detector", filename, weights.url,
                      round(weights.meta["_file_size"] * 1024 * 1024), False,
                      f"sha256:{filename.rsplit('-', 1)[1].split('.')[0]}",
                      lambda p: load_detector(p, labels.detector, labels.detector_min_size_px))


def catalog(labels: LabelsConfig) -> list[WeightFile]:
    """Every checkpoint the configured providers can use."""
    files = []
    if labels.mask_provider in ("auto", "sam"):
        sam_name, sam_size = SAM_FILES[labels.sam_model]
        files += [_torchvision_detector(labels),
                  WeightFile("sam", "labels.sam_model", sam_name,
                             f"https://dl.fbaipublicfiles.com/segment_anything/{sam_name}", sam_size, True, "", load_sam)]
    if labels.scene_provider in ("auto", "places365"):
        arch = labels.places_model
        name, url, size, digest = CATEGORIES
        files += [WeightFile("places365", "labels.places_model", f"{arch}_places365.pth.tar",
                             f"{PLACES_URL}{arch}_places365.pth.tar", round(PLACES_APPROX_MB[arch] * 1e6), False, "",
                             lambda p: load_places365(p, arch)),
                  WeightFile("places365_categories", "labels.places_model", name, url, size, True, digest,
                             load_categories)]
    return files


def locate(wf: WeightFile, labels: LabelsConfig) -> Path:
    """Where the file is: labels.weights_dir, or for the detector torch.hub's cache where torchvision
    puts it (`<torch hub dir>/checkpoints`); the weights_dir path when it is in neither."""
    path = labels.weights_path(wf.filename)
    if wf.role == "detector" and not path.exists():
        import torch

        cached = Path(torch.hub.get_dir()) / "checkpoints" / wf.filename
        return cached if cached.is_file() else path
    return path


def source_url(wf: WeightFile, labels: LabelsConfig) -> str:
    return f"{labels.weights_url_base.rstrip('/')}/{wf.filename}" if labels.weights_url_base else wf.url


def _digest_matches(path: Path, digest: str) -> bool:
    algo, expected = digest.split(":", 1)
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK_BYTES), b""):
            h.update(block)
    return h.hexdigest().startswith(expected)


def check_file(wf: WeightFile, path: Path, official: bool = True) -> str:
    """'' when `path` is usable, else why not. `official`: also compare size / digest with the
    official release (a mirror may serve other builds; the load check decides for them)."""
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if official and wf.size_exact and size != wf.size_bytes:
        return f"size {size} bytes, the official file has {wf.size_bytes}"
    if official and wf.digest and not _digest_matches(path, wf.digest):
        return f"checksum differs from the official file ({wf.digest})"
    try:
        wf.load(path)
    except Exception as e:  # noqa: BLE001 - any failure to load means the same to the user
        return f"does not load: {type(e).__name__}: {str(e)[:200]}"
    return ""


def fix_hint(wf: WeightFile, config_path: str | None) -> str:
    cmd = f"debias weights --config {config_path or 'YOUR_PREPROCESS_CONFIG'} --download"
    return f"fetch it with `{cmd}` (or set labels.weights_dir; the file is picked by {wf.key})"


def resolve_providers(labels: LabelsConfig, config_path: str | None = None) -> tuple[str, str, dict[str, Path]]:
    """(mask provider, scene provider, role -> weights path). `auto` becomes sam / places365 when all
    their files are present and load, else motion / clusters (announced here and recorded per row).
    Strict providers raise WeightsError before any video is touched."""
    by_role = {wf.role: wf for wf in catalog(labels)}
    paths = {role: locate(wf, labels) for role, wf in by_role.items()}

    def usable(roles: tuple[str, ...], strict: bool) -> bool:
        for role in roles:
            problem = check_file(by_role[role], paths[role], official=False)
            if problem and strict:
                raise WeightsError(f"{paths[role]}: {problem}; {fix_hint(by_role[role], config_path)}")
            if problem:
                print(f"labels: {paths[role]} {problem}")
                return False
        return True

    masks, scenes = labels.mask_provider, labels.scene_provider
    if masks in ("auto", "sam"):
        real = usable(("detector", "sam"), strict=masks == "sam")
        masks = "sam" if real else "motion"
        if not real:
            print("labels: mask_provider=auto -> motion (weight-free moving-foreground masks; "
                  "run `debias weights --download` for detector + SAM)")
    if scenes in ("auto", "places365"):
        real = usable(("places365", "places365_categories"), strict=scenes == "places365")
        scenes = "places365" if real else "clusters"
        if not real:
            print("labels: scene_provider=auto -> clusters (weight-free background clusters; "
                  "run `debias weights --download` for Places365)")
    print(f"labels: masks by {masks}, scene labels by {scenes}")
    return masks, scenes, paths


def download(url: str, dest: Path, progress: Callable[[int, int], None] | None = None, timeout_s: float = 60.0) -> None:
    """Fetch `url` into `dest`: bytes go to `dest.part` and a rerun resumes from its size (HTTP Range).
    Raises OSError when the server sends fewer bytes than it announced (the `.part` file stays)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as e:
        if e.code != 416:  # 416: the .part file already holds everything
            raise
        os.replace(part, dest)
        return
    with response:
        resumed = response.status == 206
        length = int(response.headers.get("Content-Length", -1))
        total = (have if resumed else 0) + length if length >= 0 else -1
        got = have if resumed else 0
        with open(part, "ab" if resumed else "wb") as f:
            while block := response.read(CHUNK_BYTES):
                f.write(block)
                got += len(block)
                if progress:
                    progress(got, total)
    if total >= 0 and got < total:
        raise OSError(f"{url}: connection closed after {got} of {total} bytes; rerun to resume")
    os.replace(part, dest)


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
