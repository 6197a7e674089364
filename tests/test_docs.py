"""The README and docs/: every generated block equals what its JSON (or the code) gives, results carry
their provenance, recording a result is one command, and the README stays a manual."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ray_jobs.cli import JOBS

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("render", ROOT / "docs" / "render.py")
render = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(render)

PAGE = """# Page

<!-- BEGIN generated
result: bench
record: -- python bench.py
keys: [small, large]
columns:
  case: "{key}"
  rate: "{rate:,.1f}"
  note: "{note}"
  over seeds: "{acc±:.2f}"
text: "Ratio {ratio:.2f}."
-->
<!-- END generated -->

<!-- BEGIN generated
result: bench
record: -- python bench.py
text: "Seeds {seeds}."
provenance: false
-->
<!-- END generated -->
"""


def copy_docs(dst: Path) -> Path:
    shutil.copy(ROOT / "README.md", dst / "README.md")
    shutil.copytree(ROOT / "docs", dst / "docs", ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    return dst


def git_repo(path: Path) -> Path:
    run = lambda *a: subprocess.run(["git", "-C", str(path), *a], check=True, capture_output=True)  # noqa: E731
    run("init", "-q")
    (path / "README.md").write_text("# Repo\n")
    (path / "docs").mkdir()
    (path / "docs" / "page.md").write_text(PAGE)
    run("add", "README.md", "docs/page.md")
    run("-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "docs")
    return path


def test_generated_blocks_match_their_sources():
    assert render.check(ROOT) == []


def test_the_shard_schema_table_is_generated_from_the_code():
    specs = [m.group(2) for m in render.BLOCK.finditer((ROOT / "docs" / "schema.md").read_text())]
    assert any(re.search(r"^function: [\w.]+\.shard_schema_markdown$", s, re.M) for s in specs)


def test_a_changed_figure_a_missing_field_or_an_unshown_result_fails_the_check(tmp_path):
    root = copy_docs(tmp_path)
    results = root / "docs" / "results"
    result = json.loads((results / "embed_cpu.json").read_text())
    result["figures"]["loop_rows_per_s"] = 1234.5
    (results / "embed_cpu.json").write_text(json.dumps(result))
    assert render.check(root) == ["docs/benchmarks.md: stale generated blocks ['embed_cpu'] (run `python docs/render.py`)"]
    render.render(root)
    assert render.check(root) == [] and "| plain loop (rows/s) | 1234.5 |" in (root / "docs" / "benchmarks.md").read_text()

    commit = result.pop("commit")
    (results / "embed_cpu.json").write_text(json.dumps(result))
    assert any("embed_cpu.json: lacks ['commit']" in p for p in render.check(root))

    result["commit"] = commit
    (results / "embed_cpu.json").write_text(json.dumps(result))
    (results / "orphan.json").write_text(json.dumps(result))
    assert render.check(root) == ["docs/results: ['orphan'] shown by no generated block"]

    del result["figures"]["loop_rows_per_s"]  # a summary that changed shape: the block and the key are named
    (results / "embed_cpu.json").write_text(json.dumps(result))
    (results / "orphan.json").unlink()
    assert any("block 'embed_cpu'" in p and "'loop_rows_per_s'" in p for p in render.check(root))


def test_record_runs_the_command_and_stores_its_figures_with_their_provenance(tmp_path):
    root = git_repo(tmp_path)
    page = root / "docs" / "page.md"
    assert "python docs/render.py record bench -- python bench.py" in render.render_document(page, root)  # how to make it

    figures = {"small": {"rate": 1500.25, "note": "a", "acc": 0.5, "acc_std": 0.25},
               "large": {"rate": 20.0, "note": None, "acc": None, "acc_std": None}, "ratio": 0.5, "seeds": [0, 1]}
    script = f"import json; print('warming up'); print(json.dumps({figures!r}))"
    path = render.record(root, "bench", [sys.executable, "-c", script], None)
    stored = json.loads(path.read_text())
    assert stored["figures"] == figures
    assert stored["commit"] == subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                                              capture_output=True, text=True).stdout.strip()
    assert stored["worktree_clean"] and stored["command"].endswith(script)  # tracked files as committed
    assert "cores" in stored["machine"] and "load average" in stored["machine"] and stored["date"]
    assert render.check(root) != []  # the page still shows the placeholder
    render.render(root)
    text = page.read_text()
    assert "| small | 1,500.2 | a | 0.50 ± 0.25 |\n| large | 20.0 | n/a | n/a |" in text and "Ratio 0.50." in text
    assert text.count("*Measured") == 1 and "Seeds 0, 1.\n<!-- END" in text  # said once per page
    assert f"at commit `{stored['commit']}`" in text and "(../docs/results/bench.json)" not in text
    assert "[bench.json](results/bench.json)" in text and render.check(root) == []

    # a job's own summary file, named with --from; a failing command records nothing
    (root / "out").mkdir()
    summary = {**figures, "ratio": 0.75}
    write = f"import json; open('out/summary.json', 'w').write(json.dumps({summary!r}))"
    render.record(root, "bench", [sys.executable, "-c", write], "out/summary.json")
    assert json.loads(path.read_text())["figures"]["ratio"] == 0.75
    own = {**summary, "date": "2026-01-02 03:04 UTC", "commit": "feedbee", "worktree_clean": False,
           "machine": "the job's machine", "command": "debias demo"}  # a job's own provenance wins
    write = f"import json; open('out/summary.json', 'w').write(json.dumps({own!r}))"
    render.record(root, "bench", [sys.executable, "-c", write], "out/summary.json")
    assert {k: json.loads(path.read_text())[k] for k in own if k in render.PROVENANCE} == \
        {k: own[k] for k in render.PROVENANCE}
    path.write_text(json.dumps(own))  # a summary with its own provenance, dropped in as it is
    render.render(root)
    assert "at commit `feedbee with uncommitted changes` on the job's machine: `debias demo`" in page.read_text()
    assert render.check(root) == []

    page.write_text(PAGE.replace('text: "Ratio {ratio:.2f}."', 'text: "Ratio {ratio:.2f}."\nprovenance: false'))
    render.render(root)
    assert render.check(root) == ["docs/page.md: no block shows the provenance of ['bench']"]
    with pytest.raises(SystemExit, match="exited 3; nothing recorded"):
        render.record(root, "bench", [sys.executable, "-c", "raise SystemExit(3)"], None)
    assert json.loads(path.read_text()) == own


def test_the_command_line_records_and_checks(tmp_path):
    log = tmp_path / "bench.log"
    log.write_text('loop 1\n{"rate": 3}\n')
    assert render.figures_from(log.read_text(), str(log)) == {"rate": 3}
    with pytest.raises(ValueError, match="no JSON object"):
        render.figures_from("no figures here\n", "x.log")
    done = subprocess.run([sys.executable, str(ROOT / "docs" / "render.py"), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def headings(page: Path) -> set[str]:
    """The anchors GitHub gives a page's headings."""
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.*)$", page.read_text(), re.M)}


def test_readme_is_a_manual():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    # what CI runs (.ci/run's last line, less pip's -q) is the README's test command, the whole suite
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1].replace("install -q ", "install ")
    assert f"```bash\n{ci}\n```" in readme and ci.endswith("pytest --all"), ci
    for page in render.documents(ROOT):
        text = page.read_text()
        for phrase in ("session", "next gpu", "before this", "not yet", "todo"):
            assert phrase not in text.lower(), f"{page.name} speaks of history or plans: {phrase!r}"
        for link, anchor in re.findall(r"\]\(([^)#:]*)(?:#([^)]*))?\)", text):  # relative links lead somewhere
            target = page.parent / link if link else page
            assert target.exists(), f"{page.name}: broken link {link}"
            assert not anchor or anchor in headings(target), f"{page.name}: no heading #{anchor} in {link or page.name}"
        for path in re.findall(r"\b((?:configs|benchmarks)/[\w./-]*[a-z0-9]\.(?:yaml|py|sh))\b", text):
            assert (ROOT / path).exists(), f"{page.name}: no file {path}"  # named files exist (X.yaml: a blank)
        # every job it names is one the command has (JOB: a blank)
        jobs = set(re.findall(r"(?:`|^)debias ([a-z]\w*)", text, re.M))
        assert jobs <= set(JOBS), f"{page.name}: no such debias job {sorted(jobs - set(JOBS))}"
