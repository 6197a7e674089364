import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from debias.config import ConfigError, load_config, parse_overrides
from debias.curation.curate import PreprocessConfig
from debias.curation.synth import SynthConfig
from debias.training.train import PretrainConfig
from debias.experiments.demo import DemoConfig
from debias.experiments.pipeline import PipelineConfig
from debias.experiments.sweep import SweepConfig
from debias.experiments.transfer import TransferConfig

ROOT = Path(__file__).resolve().parents[1]


def test_unknown_key_wrong_type_and_bad_value_name_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"optim\.lrr: unknown key"):
        load_config(PretrainConfig, bad)
    with pytest.raises(ConfigError, match=r"optim\.lr: expected a number"):
        load_config(PretrainConfig, None, ["optim.lr=fast"])
    with pytest.raises(ConfigError, match=r"loss\.lambda_mask: must be >= 0"):
        load_config(PretrainConfig, None, ["loss.lambda_mask=-1"])
    with pytest.raises(ConfigError, match=r"model\.backbone: must be one of"):
        load_config(PretrainConfig, None, ["model.backbone=resnet50"])
    with pytest.raises(ConfigError, match=r"bias: must be in \[0, 1\]"):
        load_config(SynthConfig, None, ["bias=1.5"])
    with pytest.raises(ConfigError, match="must look like key=value"):
        parse_overrides(["lr"])


def test_overrides_apply_on_top_of_the_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("name: run1\noptim:\n  lr: 0.1\n  epochs: 3\n")
    cfg = load_config(PretrainConfig, f, ["optim.lr=0.2", "eval_splits=[val]"])
    assert (cfg.name, cfg.optim.lr, cfg.optim.epochs, cfg.eval_splits) == ("run1", 0.2, 3, ["val"])
    assert cfg.optim.momentum == PretrainConfig().optim.momentum


def test_an_override_keeps_the_rest_of_its_section_at_that_sections_defaults():
    """The demo's pretrain section has defaults of its own (epochs, CPUs a worker, evaluation every 2nd
    epoch); setting one of its keys keeps the others."""
    cfg = load_config(DemoConfig, None, ["pretrain.optim.lr=0.1"])
    assert cfg.pretrain.optim.lr == 0.1
    assert dataclasses.replace(cfg.pretrain, optim=DemoConfig().pretrain.optim) == DemoConfig().pretrain


def test_demo_yaml_is_the_embedded_default():
    assert load_config(DemoConfig, ROOT / "configs/demo.yaml") == DemoConfig()


def test_cli_lists_jobs_and_rejects_a_bad_key_before_any_work():
    out = subprocess.run([sys.executable, "-m", "ray_jobs.cli", "--help"], capture_output=True, text=True, check=True)
    for job in ("demo", "synth", "preprocess", "pretrain"):
        assert job in out.stdout
    bad = subprocess.run([sys.executable, "-m", "ray_jobs.pretrain", "optim.lrr=1"], capture_output=True, text=True)
    assert bad.returncode != 0 and "optim.lrr: unknown key" in bad.stderr
    shown = subprocess.run([sys.executable, "-m", "ray_jobs.synth", "some/dir", "bias=0.5", "--print-config"],
                           capture_output=True, text=True, check=True)
    assert "out: some/dir" in shown.stdout and "bias: 0.5" in shown.stdout


# Every shipped config and the class it configures (a new config file must be added here).
SHIPPED = {"demo.yaml": DemoConfig, "synth.yaml": SynthConfig, "preprocess": PreprocessConfig,
           "pretrain": PretrainConfig, "repro": PretrainConfig, "sweep": SweepConfig, "transfer": TransferConfig,
           "pipeline": PipelineConfig}
SHIPPED_FILES = sorted((ROOT / "configs").rglob("*.yaml"))


def test_every_shipped_config_has_a_class():
    assert {f.parent.name if f.parent.name != "configs" else f.name for f in SHIPPED_FILES} == set(SHIPPED)
    assert {f.stem for f in (ROOT / "configs" / "preprocess").glob("*.yaml")} >= {
        "synth", "kinetics400", "minikinetics200", "ucf101", "hmdb51", "diving48", "folder"}


@pytest.mark.parametrize("path", SHIPPED_FILES, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_shipped_configs_state_only_what_differs_and_round_trip(path):
    """A shipped file holds no key at its default (one new field is one edit, in code), and what
    --print-config shows loads back to the same config."""
    import yaml

    from debias.config import dump_yaml, minimal

    cls = SHIPPED.get(path.parent.name) or SHIPPED[path.name]
    data = yaml.safe_load(path.read_text()) or {}
    assert minimal(cls, data) == data, f"{path.name}: keys at their defaults: remove them"
    cfg = load_config(cls, path)
    printed = path.parent / f".{path.stem}.printed.yaml"
    try:
        printed.write_text(dump_yaml(cfg))
        assert load_config(cls, printed) == cfg
    finally:
        printed.unlink(missing_ok=True)


def test_minimal_drops_defaults_but_keeps_what_switches_a_section_on():
    from debias.config import minimal

    default = PretrainConfig()
    assert minimal(PretrainConfig, {"name": default.name, "optim": {"lr": default.optim.lr * 2,
                                                                    "epochs": default.optim.epochs}}) == {
        "optim": {"lr": default.optim.lr * 2}}
    assert minimal(PretrainConfig, {"optim": {"lr": PretrainConfig().optim.lr}}) == {}
    # the demo's pretrain section has defaults of its own: its epochs are not PretrainConfig's
    demo_epochs = DemoConfig().pretrain.optim.epochs
    assert minimal(DemoConfig, {"pretrain": {"optim": {"epochs": demo_epochs}}}) == {}
    assert minimal(DemoConfig, {"pretrain": {"optim": {"epochs": PretrainConfig().optim.epochs}}}) != {}
    # an Optional section given at all its defaults is still given: it switches the section on
    assert minimal(PipelineConfig, {"synth": {"bias": SynthConfig().bias}}) == {"synth": {}}
