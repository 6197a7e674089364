"""`debias weights`: the catalog, and real downloads from a local HTTP server on 127.0.0.1 (the
mirror URL is `labels.weights_url_base`): complete, interrupted then resumed, and corrupt."""

from __future__ import annotations

import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from debias.curation.curate import PreprocessConfig
from debias.curation.labels.config import LabelsConfig
from debias.curation.labels.weights import WeightsError, catalog, resolve_providers
from ray_jobs.weights import main as weights_main
from debias.curation.labels.weights import run_weights

ROOT = Path(__file__).resolve().parents[1]


class Mirror:
    """Serves a folder with HTTP Range support; `cut_next` makes the next full response announce the
    whole file and close the connection after that many bytes, as a dropped download does."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.cut_next, self.requests = folder, 0, []
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep pytest output clean
                pass

            def do_GET(self) -> None:
                path = mirror.folder / self.path.lstrip("/")
                mirror.requests.append((self.path, self.headers.get("Range")))
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                start = int(self.headers["Range"].split("=")[1].split("-")[0]) if self.headers.get("Range") else 0
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body, cut = data[start:], mirror.cut_next
                mirror.cut_next = 0
                self.wfile.write(body[:cut] if cut else body)
                if cut:
                    self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture()
def mirror(tmp_path):
    import torchvision

    folder = tmp_path / "mirror"
    folder.mkdir()
    torch.manual_seed(0)
    model = torchvision.models.get_model("resnet18", weights=None, num_classes=365)
    torch.save({"epoch": 90, "arch": "resnet18", "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}},
               folder / "resnet18_places365.pth.tar")
    (folder / "categories_places365.txt").write_text("".join(f"/x/scene_{i} {i}\n" for i in range(365)))
    m = Mirror(folder)
    yield m
    m.server.shutdown()


def places_config(tmp_path: Path, url: str) -> PreprocessConfig:
    return PreprocessConfig(labels=LabelsConfig(mask_provider="none", scene_provider="places365", places_model="resnet18",
                                                weights_dir=str(tmp_path / "weights"), weights_url_base=url))


def test_catalog_lists_official_urls_and_sizes():
    files = {wf.filename: wf for wf in catalog(LabelsConfig(sam_model="vit_h"))}
    assert files["sam_vit_h_4b8939.pth"].url == "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth"
    assert files["sam_vit_h_4b8939.pth"].size_bytes == 2_564_550_879
    assert files["fasterrcnn_resnet50_fpn_coco-258fb6c6.pth"].url.startswith("https://download.pytorch.org/models/")
    assert files["fasterrcnn_resnet50_fpn_coco-258fb6c6.pth"].digest == "sha256:258fb6c6"
    assert files["resnet50_places365.pth.tar"].url == "http://places2.csail.mit.edu/models_places365/resnet50_places365.pth.tar"
    assert "categories_places365.txt" in files
    assert catalog(LabelsConfig(mask_provider="motion", scene_provider="annotations")) == []


def test_download_verify_and_use(tmp_path, mirror, capsys):
    cfg = places_config(tmp_path, mirror.url)
    status = run_weights(cfg, fetch=False)
    assert set(status.values()) == {"missing"}
    status = run_weights(cfg, fetch=True)
    assert status == {"resnet18_places365.pth.tar": "", "categories_places365.txt": ""}
    assert "2 of 2 files ok" in capsys.readouterr().out
    _masks, scenes, paths = resolve_providers(cfg.labels)
    assert scenes == "places365" and paths["places365"].read_bytes() == (mirror.folder / "resnet18_places365.pth.tar").read_bytes()


def test_interrupted_download_resumes(tmp_path, mirror):
    cfg = places_config(tmp_path, mirror.url)
    mirror.cut_next = 3_000_000  # of ~45 MB
    status = run_weights(cfg, fetch=True)
    assert "closed after 3000000 of" in status["resnet18_places365.pth.tar"]
    part = tmp_path / "weights" / "resnet18_places365.pth.tar.part"
    assert part.stat().st_size == 3_000_000 and not (tmp_path / "weights" / "resnet18_places365.pth.tar").exists()
    status = run_weights(cfg, fetch=True)
    assert status["resnet18_places365.pth.tar"] == ""
    assert ("/resnet18_places365.pth.tar", "bytes=3000000-") in mirror.requests  # resumed, not restarted
    assert (tmp_path / "weights" / "resnet18_places365.pth.tar").read_bytes() == \
        (mirror.folder / "resnet18_places365.pth.tar").read_bytes()


def test_corrupt_download_fails_the_load_check_and_the_command(tmp_path, mirror, capsys):
    (mirror.folder / "resnet18_places365.pth.tar").write_bytes(b"<html>not a checkpoint</html>" * 100)
    cfg = places_config(tmp_path, mirror.url)
    with pytest.raises(SystemExit) as exit_info:
        weights_main(["labels.mask_provider=none", "labels.scene_provider=places365",
                      "labels.places_model=resnet18", f"labels.weights_dir={tmp_path / 'weights'}",
                      f"labels.weights_url_base={mirror.url}", "--download"])
    assert exit_info.value.code == 1
    out = capsys.readouterr().out
    assert "BROKEN" in out and "does not load" in out and "labels.places_model" in out
    with pytest.raises(WeightsError, match="resnet18_places365.pth.tar: does not load"):
        resolve_providers(cfg.labels)


def test_cli_lists_what_the_default_config_needs(tmp_path):
    shown = subprocess.run([sys.executable, "-m", "ray_jobs.cli", "weights", f"labels.weights_dir={tmp_path}"],
                           capture_output=True, text=True, cwd=ROOT)
    assert shown.returncode == 1  # nothing installed
    for name in ("sam_vit_b_01ec64.pth", "fasterrcnn_resnet50_fpn_coco-258fb6c6.pth", "resnet50_places365.pth.tar",
                 "categories_places365.txt", "https://dl.fbaipublicfiles.com/segment_anything/", "MISSING"):
        assert name in shown.stdout
    assert "add --download" in shown.stdout
