"""The shard schema: the one place that defines what a curated Parquet row holds.

One row per video. Frames are JPEG bytes at the stored resolution (`height` x `width`), human masks
are bit-packed per frame at the same resolution (np.packbits of the (height, width) bool mask), scene
labels are stored hard (`scene_id`) and soft (`scene_probs`, a distribution over the scene classes).
`mask_source` / `scene_source` name the provider that produced them, so a fallback is never silent.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 1

SHARD_SCHEMA = pa.schema(
    [
        pa.field("schema_version", pa.int16(), nullable=False),
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("label", pa.string(), nullable=False),
        pa.field("label_id", pa.int32(), nullable=False),  # index into OUT/classes.json
        pa.field("split", pa.string(), nullable=False),
        pa.field("source_path", pa.string(), nullable=False),
        pa.field("fps", pa.float32(), nullable=False),  # native frame rate of the source video
        pa.field("frame_indices", pa.list_(pa.int32()), nullable=False),  # decoded-frame index of each stored frame
        pa.field("height", pa.int32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("frames", pa.list_(pa.binary()), nullable=False),  # JPEG, RGB
        pa.field("human_masks", pa.list_(pa.binary()), nullable=False),  # bit-packed (height, width) bool
        pa.field("mask_coverage", pa.list_(pa.float32()), nullable=False),  # masked share of each frame
        pa.field("person_frac", pa.float32(), nullable=False),  # share of frames with any person pixel
        pa.field("mask_source", pa.string(), nullable=False),
        pa.field("scene_id", pa.int32(), nullable=False),  # hard pseudo label (argmax / annotation)
        pa.field("scene_probs", pa.list_(pa.float32()), nullable=False),  # soft pseudo label
        pa.field("scene_source", pa.string(), nullable=False),
    ]
)

ERROR_SCHEMA = pa.schema(
    [
        pa.field("video_id", pa.string()),
        pa.field("source_path", pa.string()),
        pa.field("stage", pa.string()),  # which step rejected it: source, decode, masks, scenes
        pa.field("reason_code", pa.string()),  # short category, counted in summary.json
        pa.field("reason", pa.string()),  # readable message naming the file
    ]
)


def shard_schema_markdown() -> str:
    """The schema as a markdown table (the README's copy is checked against this in the tests)."""
    lines = ["| column | type |", "|---|---|"]
    lines += [f"| `{f.name}` | `{f.type}` |" for f in SHARD_SCHEMA]
    return "\n".join(lines)
