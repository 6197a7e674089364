"""The shard schema: the one place that defines what a curated Parquet row holds.

One row per video. Frames are JPEG bytes at the stored resolution (`height` x `width`), human masks
are bit-packed per frame at the same resolution, scene labels are stored hard and soft, and
`mask_source` / `scene_source` name the provider that produced them, so a fallback is never silent.
The README's schema table is generated from here (`shard_schema_markdown`) and checked by a test.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 2  # 2: clip_index, padded; frame_indices count from the window's start


def _f(name: str, type_: pa.DataType, doc: str) -> pa.Field:
    return pa.field(name, type_, nullable=False, metadata={"doc": doc})


SHARD_SCHEMA = pa.schema([
    _f("schema_version", pa.int16(), "version of this schema (bumped on any change)"),
    _f("video_id", pa.string(), "id from the manifest (YouTube id for Kinetics, <class>/<stem> for a folder)"),
    _f("clip_index", pa.int32(), "clip of the video (0; 0..N-1 with decode.sampling=clips): (video_id, clip_index) is unique"),
    _f("label", pa.string(), "action class name"),
    _f("label_id", pa.int32(), "index of `label` in OUT/classes.json"),
    _f("split", pa.string(), "split from the manifest (train, val, ood, test, ...)"),
    _f("source_path", pa.string(), "the video file the row was decoded from"),
    _f("fps", pa.float32(), "native frame rate of the source video"),
    _f("frame_indices", pa.list_(pa.int32()), "index of each stored frame among the decoded frames of the video's time window"),
    _f("padded", pa.bool_(), "the video was shorter than the clip: its last frame is repeated (decode.sampling=seed)"),
    _f("height", pa.int32(), "stored frame height in pixels"),
    _f("width", pa.int32(), "stored frame width in pixels"),
    _f("frames", pa.list_(pa.binary()), "JPEG bytes per stored frame (RGB)"),
    _f("human_masks", pa.list_(pa.binary()), "per frame: np.packbits of the (height, width) bool person mask"),
    _f("mask_coverage", pa.list_(pa.float32()), "per frame: share of pixels masked as person"),
    _f("person_frac", pa.float32(), "share of frames with any person pixel (the paper keeps >= 0.7)"),
    _f("mask_source", pa.string(), "provider of the masks: sam (detector + SAM), motion (weight-free), annotations, none"),
    _f("scene_id", pa.int32(), "hard scene label (labels.scene_hard: argmax of scene_probs or per-frame majority vote; cluster; annotation); -1 = none"),
    _f("scene_probs", pa.list_(pa.float32()), "soft scene label: distribution over scene classes (places365: mean over frames of the 365 probabilities)"),
    _f("scene_source", pa.string(), "provider of the scene labels: places365, clusters (weight-free, K classes), annotations, none"),
])

ERROR_SCHEMA = pa.schema([
    pa.field("video_id", pa.string()),
    pa.field("source_path", pa.string()),
    pa.field("stage", pa.string()),  # which step rejected it: source, download, decode, masks, scenes
    pa.field("reason_code", pa.string()),  # short category, counted in summary.json
    pa.field("reason", pa.string()),  # readable message naming the file
])


DOWNLOAD_SCHEMA = pa.schema([  # OUT/downloads.parquet: one row per YouTube id, across runs
    pa.field("youtube_id", pa.string()),
    pa.field("status", pa.string()),  # ok, failed
    pa.field("reason_code", pa.string()),  # failed: unavailable, private, removed, geo_blocked, timeout, other
    pa.field("reason", pa.string()),  # the URL and yt-dlp's message
    pa.field("path", pa.string()),  # ok: the downloaded file
    pa.field("trimmed", pa.bool_()),  # the file holds only the time window (section download)
    pa.field("attempts", pa.int32()),
    pa.field("updated_utc", pa.string()),  # ISO time of the last attempt
])

def shard_schema_markdown() -> str:
    """The schema as a markdown table (the README holds a copy; a test keeps them equal)."""
    lines = ["| column | type | meaning |", "|---|---|---|"]
    lines += [f"| `{f.name}` | `{f.type}` | {f.metadata[b'doc'].decode()} |" for f in SHARD_SCHEMA]
    return "\n".join(lines)
