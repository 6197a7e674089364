"""Render the generated blocks of README.md and docs/*.md from their sources; check them; record results.

    python docs/render.py                         # rewrite every generated block from its source
    python docs/render.py --check                 # exit 1, naming each block that differs from its source
    python docs/render.py record NAME [--from FILE] -- COMMAND ...
        run COMMAND, store its figures as docs/results/NAME.json with the date, commit, machine and
        command, re-render; the figures are FILE (a job's summary.json) or, without --from, the last
        line of COMMAND's output that is a JSON object (every benchmark prints one)
    python docs/render.py add NAME FILE --command "CMD" [--date D] [--commit C] [--machine M]
        the same for a result produced earlier or elsewhere (FILE: a summary.json or a log whose last
        JSON line holds the figures); date, commit and machine default to now, HEAD and this machine.
        A summary.json that holds its own date, commit, machine and command (the demo's) may also be
        copied into docs/results/ as it is.

A generated block is an HTML comment holding a YAML spec, the generated text, and an end marker:

    <!-- BEGIN generated
    result: demo                      # docs/results/demo.json; or `function: module.name` (returns markdown),
                                      #   or `schema: module.NAME` (a pyarrow schema: its columns and types)
    record: --from out/demo/summary.json -- debias demo     # how NAME.json is made (shown while it is absent)
    rows: runs                        # table: dotted path to a list or dict of rows in the figures
    keys: [baseline, sdn]             # optional: the dict's entries to show, in order
    columns: {run: "{key}", ood: "{ood_acc:.3f}"}   # header: str.format template over one row
    lines: {ffmpeg: "{ffmpeg_fps:,.0f}"}              # instead of rows/columns: a table of one line per
    header: [measure, frames/s]                       #   label, each a template over the figures
    text: "SDN {sdn[ood_acc]:.3f}"    # a line under the table (or alone): one template over the figures
    provenance: false                 # leave out the provenance line (another block of NAME in the page has it)
    -->
    ...generated...
    <!-- END generated -->

Templates read the row's keys (and `key`, the row's name in a dict); a missing value (None) prints
as n/a, a list as its items joined by commas, and `{x±:.3f}` as x ± x_std (mean and standard deviation
over seeds, as the demo's summary holds them). A table ends with its provenance line, so every figure
says where, when and on what it was measured.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import re
import string
import subprocess
import sys
import time
from pathlib import Path

import yaml

from debias.report import provenance

ROOT = Path(__file__).resolve().parent.parent
PROVENANCE = ("date", "commit", "machine", "command")
# at the start of a line only, so that an indented example of a block is left alone
BLOCK = re.compile(r"^(<!-- BEGIN generated\n)(.*?)(^-->\n)(.*?)(^<!-- END generated -->)", re.S | re.M)


class MeanStd:
    """`{x±:.3f}` in a template: x and x_std (a mean and its standard deviation over seeds) as `m ± s`."""

    def __init__(self, mean: float | None, std: float | None) -> None:
        self.mean, self.std = mean, std

    def __format__(self, spec: str) -> str:
        return "n/a" if self.mean is None else f"{self.mean:{spec}} ± {self.std:{spec}}"


class NaFormatter(string.Formatter):
    """str.format where None prints as n/a whatever its format spec (a metric that does not apply), a
    list as its items joined by commas, and a field `x±` as x ± x_std."""

    def get_value(self, key: int | str, args: tuple, kwargs: dict) -> object:
        if isinstance(key, str) and key.endswith("±"):
            return MeanStd(kwargs[key[:-1]], kwargs[f"{key[:-1]}_std"])
        return super().get_value(key, args, kwargs)

    def format_field(self, value: object, format_spec: str) -> str:
        if isinstance(value, list):
            return ", ".join(self.format_field(v, format_spec) for v in value)
        return "n/a" if value is None else super().format_field(value, format_spec)


def results_dir(root: Path) -> Path:
    return root / "docs" / "results"


def documents(root: Path) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def fill(template: str, values: dict, where: str) -> str:
    try:
        return NaFormatter().format(template, **values)
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise ValueError(f"{where}: template {template!r} does not fit the figures ({type(e).__name__}: {e})") from e


def dig(figures: dict, path: str, where: str) -> object:
    value: object = figures
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            raise ValueError(f"{where}: no key {part!r} on the path {path!r}")
        value = value[part]
    return value


def provenance_line(result: dict, name: str, doc: Path, root: Path) -> str:
    link = os.path.relpath(results_dir(root) / f"{name}.json", doc.parent)
    commit = result["commit"] + ("" if result.get("worktree_clean", True) else " with uncommitted changes")
    wall = f", {result['wall_s']:.0f} s" if "wall_s" in result else ""
    source = f" {result['source']}." if "source" in result else ""  # where figures were not stored by their command
    return (f"*Measured {result['date']} at commit `{commit}` on {result['machine']}: `{result['command']}`{wall} "
            f"([{name}.json]({link})).{source}*")


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def table(spec: dict, figures: dict, where: str) -> str:
    if "lines" in spec:
        return markdown_table(spec.get("header", ["measure", "value"]),
                              [[label, fill(t, figures, where)] for label, t in spec["lines"].items()])
    rows = dig(figures, spec["rows"], where) if spec.get("rows") else figures
    if isinstance(rows, dict):
        keys = spec.get("keys") or list(rows)
        missing = [k for k in keys if k not in rows]
        if missing:
            raise ValueError(f"{where}: no rows {missing} under {spec.get('rows') or 'the figures'}")
        rows = [{"key": k, **rows[k]} for k in keys]
    columns = spec["columns"]
    return markdown_table(list(columns), [[fill(t, row, where) for t in columns.values()] for row in rows])


def render_block(spec: dict, doc: Path, root: Path) -> str:
    """The text between a block's spec and its end marker, from the block's source."""
    if "function" in spec or "schema" in spec:
        module, _, name = (spec.get("function") or spec["schema"]).rpartition(".")
        value = getattr(importlib.import_module(module), name)
        if "function" in spec:
            return value() + "\n"
        return markdown_table(["column", "type"], [[f"`{f.name}`", f"`{f.type}`"] for f in value]) + "\n"
    name = spec["result"]
    path = results_dir(root) / f"{name}.json"
    if not path.exists():
        return (f"*Not measured at this checkout: `python docs/render.py record {name} {spec['record']}` "
                f"writes `docs/results/{name}.json` and this block.*\n")
    result = json.loads(path.read_text())
    lacking = [k for k in PROVENANCE if k not in result]
    if lacking:
        raise ValueError(f"{path.relative_to(root)}: lacks {lacking}")
    return render_result(spec, doc, root, result)


def render_result(spec: dict, doc: Path, root: Path, result: dict) -> str:
    """A result block's text from `result` (a results JSON: provenance and figures)."""
    name = spec["result"]
    where = f"{doc.relative_to(root)} block '{name}'"
    # a job's summary.json that holds its own provenance (the demo's) may be dropped in as it is
    figures = result.get("figures", result)
    parts = [table(spec, figures, where)] if "columns" in spec or "lines" in spec else []
    parts += [fill(spec["text"], figures, where)] if "text" in spec else []
    # `provenance: false` where another block of the same result in the page says it
    parts += [provenance_line(result, name, doc, root)] if spec.get("provenance", True) else []
    return "\n\n".join(parts) + "\n"


def render_recorded_by(command: str, figures: dict, root: Path = ROOT) -> list[str]:
    """Every result block whose `record` command contains `command`, rendered from `figures` (what that
    command writes now, e.g. on tiny data in a test) instead of the stored JSON: a key the blocks read
    that the producer no longer writes fails here, naming the block."""
    stand_in = {"date": "now", "commit": "HEAD", "machine": "this machine", "command": command}
    rendered = []
    for doc in documents(root):
        for m in BLOCK.finditer(doc.read_text()):
            spec = yaml.safe_load(m.group(2))
            if "result" in spec and command in spec.get("record", ""):
                rendered.append(render_result(spec, doc, root, {**stand_in, **figures}))
    if not rendered:
        raise ValueError(f"no generated block is recorded by a command containing {command!r}")
    return rendered


def render_document(doc: Path, root: Path) -> str:
    def one(m: re.Match) -> str:
        spec = yaml.safe_load(m.group(2))
        return m.group(1) + m.group(2) + m.group(3) + render_block(spec, doc, root) + m.group(5)
    return BLOCK.sub(one, doc.read_text())


def used_results(root: Path) -> set[str]:
    return {yaml.safe_load(m.group(2)).get("result") for doc in documents(root) for m in BLOCK.finditer(doc.read_text())}


def check(root: Path = ROOT) -> list[str]:
    """Every way the docs disagree with their sources: a stale block, a JSON no block shows, a broken block."""
    problems = []
    for doc in documents(root):
        try:
            fresh = render_document(doc, root)
        except (ValueError, KeyError, TypeError, ImportError, AttributeError, yaml.YAMLError) as e:
            problems.append(f"{doc.relative_to(root)}: {e}")
            continue
        if fresh != doc.read_text():
            stale = [spec.get("result") or spec.get("function") or spec.get("schema") for a, b in zip(BLOCK.finditer(doc.read_text()),
                                                                                BLOCK.finditer(fresh))
                     if a.group(4) != b.group(4) for spec in [yaml.safe_load(a.group(2))]]
            problems.append(f"{doc.relative_to(root)}: stale generated blocks {stale} "
                            "(run `python docs/render.py`)")
    for doc in documents(root):
        specs = [yaml.safe_load(m.group(2)) for m in BLOCK.finditer(doc.read_text())]
        silent = {s["result"] for s in specs if "result" in s} - {s["result"] for s in specs
                                                                 if "result" in s and s.get("provenance", True)}
        if silent:
            problems.append(f"{doc.relative_to(root)}: no block shows the provenance of {sorted(silent)}")
    unused = sorted({p.stem for p in results_dir(root).glob("*.json")} - used_results(root))
    if unused:
        problems.append(f"docs/results: {unused} shown by no generated block")
    return problems


def render(root: Path = ROOT) -> list[Path]:
    """Rewrite every document whose generated blocks changed; returns those documents."""
    changed = []
    for doc in documents(root):
        fresh = render_document(doc, root)
        if fresh != doc.read_text():
            doc.write_text(fresh)
            changed.append(doc)
    return changed


def git_commit(root: Path) -> tuple[str, bool]:
    """HEAD's short hash and whether the tracked files match it."""
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=True)
    dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, check=True)
    return head.stdout.strip(), not dirty.stdout.strip()


def this_machine() -> str:
    """Cores, CPU, memory, GPUs, Python, torch and Ray, and the load average now (as jobs record it)."""
    return provenance()["machine"]


def figures_from(text: str, source: str) -> dict:
    """A JSON object: the whole text, or else its last line that is one."""
    for candidate in [text, *reversed(text.splitlines())]:
        try:
            value = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    raise ValueError(f"{source}: no JSON object in it (neither the whole text nor a line)")


def store(root: Path, name: str, figures: dict, detected: dict) -> Path:
    if not re.fullmatch(r"[a-z0-9_]+", name):
        raise ValueError(f"result name {name!r}: use lower-case letters, digits and _ (it names docs/results/NAME.json)")
    path = results_dir(root) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    # a job that records its own provenance in its summary (the demo) knows it best: it wins
    own = {k: figures[k] for k in (*PROVENANCE, "worktree_clean") if k in figures}
    path.write_text(json.dumps({**detected, **own, "figures": figures}, indent=1) + "\n")
    return path


def now_utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def record(root: Path, name: str, command: list[str], from_file: str | None) -> Path:
    """Run `command` in `root`, store its figures with their provenance as docs/results/NAME.json."""
    commit, clean = git_commit(root)
    machine = this_machine()
    date, t = now_utc(), time.perf_counter()
    proc = subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, text=True)
    out = []
    for line in proc.stdout:  # the command's progress stays visible while it runs
        sys.stdout.write(line)
        out.append(line)
    if proc.wait():
        raise SystemExit(f"record {name}: `{' '.join(command)}` exited {proc.returncode}; nothing recorded")
    wall = time.perf_counter() - t
    text, source = (Path(root, from_file).read_text(), from_file) if from_file else ("".join(out), "its output")
    detected = {"date": date, "commit": commit, "worktree_clean": clean, "machine": f"{machine} at the start",
                "command": " ".join(command), "wall_s": round(wall, 1)}
    return store(root, name, figures_from(text, f"{' '.join(command)}: {source}"), detected)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 naming what differs")
    sub = parser.add_subparsers(dest="action")
    rec = sub.add_parser("record", help="run a command and store its figures")
    rec.add_argument("name")
    rec.add_argument("--from", dest="from_file", help="the JSON the command writes (e.g. out/demo/summary.json)")
    rec.add_argument("command", nargs="*", help="-- COMMAND ... (everything after --)")
    add = sub.add_parser("add", help="store figures produced earlier or elsewhere")
    add.add_argument("name")
    add.add_argument("file")
    add.add_argument("--command", required=True, help="the command that produced FILE")
    add.add_argument("--date", help="when it ran (default: now)")
    add.add_argument("--commit", help="the commit it ran at (default: HEAD)")
    add.add_argument("--machine", help="where it ran (default: this machine)")
    argv = sys.argv[1:] if argv is None else argv
    # the command goes after `--`: split it off first (argparse.REMAINDER would also swallow --from)
    after = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    if args.action == "record":
        command = after or args.command
        if not command:
            parser.error("record: give the command after --")
        print(f"wrote {record(ROOT, args.name, command, args.from_file)}")
    elif args.action == "add":
        commit, clean = git_commit(ROOT)
        detected = {"date": args.date or now_utc(), "commit": args.commit or commit,
                    "worktree_clean": bool(args.commit) or clean,  # a commit given is taken as it stands
                    "machine": args.machine or f"{this_machine()} when added", "command": args.command}
        print(f"wrote {store(ROOT, args.name, figures_from(Path(args.file).read_text(), args.file), detected)}")
    if args.check:
        problems = check()
        print("\n".join(problems) or "generated blocks match their sources")
        raise SystemExit(1 if problems else 0)
    for doc in render():
        print(f"rendered {doc.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
