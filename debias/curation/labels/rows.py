"""What every label step shares: the decoded frames of a batch of rows, on the CPU or on a device, a
model run over clips grouped by frame size, and the step's columns written back, with a row that fails
becoming an error row of that step (never a lost row). The mask steps (masks.py) and the scene steps
(scenes.py) are built on these."""

from __future__ import annotations

from typing import Callable, TypeVar

import cv2
import numpy as np
import pandas as pd
import torch

from debias.curation.codecs import decode_jpeg, decode_jpegs_on
from debias.curation.shards import ERROR_COLUMNS
from debias.curation.video import VideoError, sample_uniform

Clip = TypeVar("Clip")


def _decode_each(batch: pd.DataFrame, stage: str, decode: Callable[[list[bytes]], Clip]) -> tuple[list[Clip | None], pd.DataFrame]:
    """`decode` every good row's JPEG frames; a row whose decode raises becomes an error row. Returns
    the clips (None for rows in error) and the updated error columns."""
    errors = batch[ERROR_COLUMNS].copy()
    clips: list[Clip | None] = []
    for i, row in enumerate(batch.itertuples(index=False)):
        if row.error:
            clips.append(None)
            continue
        try:
            clips.append(decode(list(row.frames)))
        except (VideoError, ValueError) as e:
            clips.append(None)
            errors.iloc[i] = [f"{stage} for {row.video_id}: {e}", f"{stage}_failed", stage]
    return clips, errors


def decode_rows(batch: pd.DataFrame, stage: str, max_frames: int = 0,
                half_size: bool = False) -> tuple[list[np.ndarray | None], pd.DataFrame]:
    """Decode every good row's JPEG frames on the CPU to (T, H, W, 3) uint8 RGB, or only `max_frames` of
    them spread evenly over the row when that is fewer (a step that needs a clip's background, not each
    frame), at half size with `half_size` (ceil(H/2), ceil(W/2)); a corrupt frame makes the row an error
    row. A batch with `pixels` (`make_decode_fn(keep_pixels=True)`: the frames before JPEG) is read from
    them instead, with no decode. Returns the clips (None for rows in error) and the error columns."""
    def picked(n: int) -> np.ndarray | slice:
        return sample_uniform(n, max_frames) if 0 < max_frames < n else slice(None)

    if "pixels" in batch.columns:
        def half(clip: np.ndarray) -> np.ndarray:
            t, h, w, _ = clip.shape
            if h % 2:  # odd: frame by frame, to ceil(H/2) as libjpeg's reduced decode gives
                return np.stack([cv2.resize(f, ((w + 1) // 2, (h + 1) // 2), interpolation=cv2.INTER_AREA) for f in clip])
            # even: the clip as one tall image, one call (2x2 areas never straddle two frames)
            return cv2.resize(clip.reshape(t * h, w, 3), ((w + 1) // 2, t * h // 2),
                              interpolation=cv2.INTER_AREA).reshape(t, h // 2, (w + 1) // 2, 3)
        # the two columns themselves, not itertuples: per call, that and a copy of the error columns cost
        # more than a scene label's own work (pandas 3, one-row batches inside a `Decoder`)
        clips = [None if error else (half(pixels[picked(len(pixels))]) if half_size else pixels[picked(len(pixels))])
                 for pixels, error in zip(batch["pixels"], batch["error"])]
        return clips, batch[ERROR_COLUMNS]

    def decode(jpegs: list[bytes]) -> np.ndarray:
        idx = picked(len(jpegs))
        chosen = jpegs[idx] if isinstance(idx, slice) else [jpegs[i] for i in idx]
        return np.stack([decode_jpeg(j, half_size) for j in chosen])
    return _decode_each(batch, stage, decode)


def _stack_frames(frames: list[torch.Tensor]) -> torch.Tensor:
    if not frames or any(f.shape != frames[0].shape for f in frames):
        raise ValueError(f"a clip needs frames of one size, got {[tuple(f.shape) for f in frames]}")
    return torch.stack(frames)


def decode_rows_on(device: torch.device, batch: pd.DataFrame, stage: str) -> tuple[list[torch.Tensor | None], pd.DataFrame]:
    """Decode every good row's JPEG frames onto `device` as (T, 3, H, W) uint8, as `decode_rows` does
    on the CPU (same error rows). The frames of all good rows go to one `decode_jpegs_on` call, so a
    GPU decodes them as one nvJPEG batch; only when that call fails are the rows decoded one by one,
    to find the corrupt frame's row."""
    jpegs = [f for row in batch.itertuples(index=False) if not row.error for f in row.frames]
    try:
        decoded = iter(decode_jpegs_on(device, jpegs) if jpegs else [])
    except (VideoError, ValueError):
        return _decode_each(batch, stage, lambda row_jpegs: _stack_frames(decode_jpegs_on(device, row_jpegs)))
    # each good row takes its own frames from the batch's, in order
    return _decode_each(batch, stage, lambda row_jpegs: _stack_frames([next(decoded) for _ in row_jpegs]))


def run_by_size(clips: list[torch.Tensor | None], model: Callable[[torch.Tensor], np.ndarray]) -> list[np.ndarray | None]:
    """Run `model` ((N, 3, H, W) uint8 -> N results) once per frame size over the frames of all clips of
    that size; returns each clip's slice of the results (None for None)."""
    sizes = {tuple(c.shape[-2:]) for c in clips if c is not None}
    results: list[np.ndarray | None] = [None] * len(clips)
    for size in sizes:
        idx = [i for i, c in enumerate(clips) if c is not None and tuple(c.shape[-2:]) == size]
        out, start = model(torch.cat([clips[i] for i in idx])), 0
        for i in idx:
            results[i] = out[start : start + len(clips[i])]
            start += len(clips[i])
    return results


def with_columns(batch: pd.DataFrame, results: list[dict | None], errors: pd.DataFrame, empty: dict) -> pd.DataFrame:
    """`batch` with a step's columns (`empty`'s keys: each row's result, or the default for None) and its
    error columns. A step only ever turns good rows into error rows, so the error columns are written
    only when `errors` says so (each column set costs ~0.1 ms in pandas 3, per call)."""
    out = batch.assign(**{key: [r[key] if r is not None else default for r in results] for key, default in empty.items()})
    if (errors["error"].to_numpy() != batch["error"].to_numpy()).any():
        out[ERROR_COLUMNS] = errors.to_numpy()
    return out
