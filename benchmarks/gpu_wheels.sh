#!/usr/bin/env bash
# Builds .whl/: the Python packages benchmarks/gpu.sh installs on a GPU machine that has PyTorch but
# no network (Python 3.12 there). Ray's wheel is 79 MB, over what the device tool carries (64 MiB),
# so its Java jars, dashboard web client, RLlib, Serve and LLM packages (unused by the benchmarks)
# are dropped and the wheel's RECORD rewritten to match.
#
#   bash benchmarks/gpu_wheels.sh      # then carry .whl and run: bash benchmarks/gpu.sh $OUT
set -euo pipefail
mkdir -p .whl /tmp/debias-wheels
platform=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
          --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
python3 -m pip download -q --no-deps "${platform[@]}" -d /tmp/debias-wheels ray==2.60.0
python3 -m pip download -q --no-deps "${platform[@]}" -d .whl jsonschema jsonschema-specifications referencing \
  rpds-py pydantic pydantic-core annotated-types typing-inspection tensorboardX segment-anything==1.0
python3 - <<'PY'
import zipfile
from pathlib import Path

src = next(Path("/tmp/debias-wheels").glob("ray-2.60.0-*.whl"))
drop = ("ray/jars/", "ray/dashboard/client/build/", "ray/rllib/", "ray/serve/", "ray/llm/")
zin = zipfile.ZipFile(src)
kept = [i for i in zin.infolist() if not i.filename.startswith(drop)]
names = {i.filename for i in kept}
with zipfile.ZipFile(Path(".whl") / src.name, "w", zipfile.ZIP_DEFLATED) as zout:
    for info in kept:
        data = zin.read(info.filename)
        if info.filename.endswith(".dist-info/RECORD"):
            data = "".join(line + "\n" for line in data.decode().splitlines() if line.split(",")[0] in names).encode()
        zout.writestr(info, data)
PY
du -sh .whl
