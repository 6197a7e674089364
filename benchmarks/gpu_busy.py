"""How busy the GPU was while a benchmark phase ran: nvidia-smi's utilization.gpu (the share of time
the card ran a kernel), sampled every 100 ms in a separate process, so that sampling costs the timed
process nothing. Read beside a rate, it says why the rate is what it is: a phase with the card near
100 % is bound by GPU work (extra kernels of a loader slow the step); one well under 100 % leaves the
card idle between kernels (the host, a lock or the GIL is what the GPU waits on).

    with GpuBusy(device) as busy:
        ...
    busy.pct  # mean utilization in %, None on CPU or without nvidia-smi
"""

from __future__ import annotations

import shutil
import subprocess

import torch


class GpuBusy:
    def __init__(self, device: torch.device, interval_ms: int = 100) -> None:
        self.enabled = device.type == "cuda" and shutil.which("nvidia-smi") is not None
        index = device.index if device.index is not None else torch.cuda.current_device() if self.enabled else 0
        self.command = ["nvidia-smi", "-i", str(index), "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                        f"--loop-ms={interval_ms}"]
        self.pct: float | None = None

    def __enter__(self) -> "GpuBusy":
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, text=True) if self.enabled else None
        return self

    def __exit__(self, *exc) -> None:
        if self.process is None:
            return
        self.process.terminate()
        out, _ = self.process.communicate(timeout=10)
        samples = [float(line) for line in out.split() if line.strip().replace(".", "", 1).isdigit()]
        # the first sample covers time before the phase began
        self.pct = round(sum(samples[1:]) / len(samples[1:]), 1) if len(samples) > 1 else None
