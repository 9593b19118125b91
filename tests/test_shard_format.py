"""The shard format's frame storage: one JPEG per frame (quality 95, 4:4:4), unpacked to uint8 (B, T, S, S, 3)."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from lmft_core.shards.format import SHARD_PARQUET_OPTIONS, pack_frames, unpack_array
from lmft_core.video import decode_clip


@pytest.fixture(scope="module")
def clips(shared_videos) -> np.ndarray:
    """Two real 8x64x64 clips."""
    return np.stack([decode_clip(str(shared_videos / name), 8, 64).frames
                     for name in ("mmaction2__demo__demo.mp4", "decord__examples__flipping_a_pancake.mkv")])


def test_frames_round_trip_through_parquet_as_jpeg(clips, tmp_path):
    table = pa.table({"frames": pack_frames(clips), "frames_shape": [list(c.shape) for c in clips]})
    pq.write_table(table, tmp_path / "s.parquet", **SHARD_PARQUET_OPTIONS)
    read = pq.read_table(tmp_path / "s.parquet")
    frames = unpack_array(read, "frames", np.uint8)
    assert frames.shape == clips.shape == (2, 8, 64, 64, 3) and frames.dtype == np.uint8 and frames.flags.writeable
    # each frame is a JPEG without chroma subsampling, and unpacking is plain JPEG decoding of it
    for b in range(2):
        for t in range(8):
            img = Image.open(io.BytesIO(read.column("frames")[b][t].as_py()))
            assert img.format == "JPEG" and img.mode == "RGB"
            assert [(h, v) for _, h, v, _ in img.layer] == [(1, 1)] * 3  # sampling factors (1, 1): 4:4:4
            np.testing.assert_array_equal(frames[b, t], np.asarray(img))
    np.testing.assert_array_equal(unpack_array(read.slice(1, 1), "frames", np.uint8), frames[1:])  # a batch sliced from a table
    error = np.abs(frames.astype(int) - clips)
    assert 0 < error.mean() < 2.5 and error.max() < 48  # lossy, but close
    assert 10 * np.log10(255**2 / np.mean(error.astype(float) ** 2)) > 38  # PSNR in dB


def test_rows_with_another_frame_count_than_the_shape_are_an_error(clips):
    table = pa.table({"frames": pack_frames([clips[0], clips[1][:5]]), "frames_shape": [[8, 64, 64, 3], [5, 64, 64, 3]]})
    with pytest.raises(ValueError, match=r"rows hold \[5, 8\] frames, frames_shape says 8"):
        unpack_array(table, "frames", np.uint8)
