"""Decoding: deterministic sampling, resizing, the decord/PyAV split and isolation, on real files."""

from __future__ import annotations

import os
import runpy
import signal
import threading
import time

import numpy as np
import pytest

from conftest import REPO
from lmft_core.demo_data import write_mp4
from lmft_core.video import (
    DecodeError,
    IsolatedDecoder,
    _decode_decord,
    _decode_pyav,
    decode_clip,
    is_transient_reason,
    resize_frames,
    sample_frame_indices,
)


def test_sampling_is_segment_midpoints():
    idx, short = sample_frame_indices(160, 16)
    assert idx.tolist() == list(range(5, 160, 10)) and not short
    idx, short = sample_frame_indices(300, 16)
    assert idx.tolist() == [int((i + 0.5) * 300 / 16) for i in range(16)]


def test_short_video_repeats_frames_in_order_and_is_flagged():
    idx, short = sample_frame_indices(5, 8)
    assert short and idx.tolist() == [0, 0, 1, 2, 2, 3, 4, 4]
    assert np.all(np.diff(idx) >= 0) and set(idx.tolist()) == set(range(5))
    idx, short = sample_frame_indices(8, 8)
    assert idx.tolist() == list(range(8)) and not short
    with pytest.raises(DecodeError, match="no frames"):
        sample_frame_indices(0, 8)


def test_resize_short_side_then_center_crop():
    frames = np.zeros((1, 40, 80, 3), dtype=np.uint8)
    frames[:, :, 20:60] = 255  # the centre square of a 2:1 frame is white, the side borders black
    out = resize_frames(frames, 20)
    assert out.shape == (1, 20, 20, 3)
    # only the centre square survives (nothing stretched, borders cropped); the outermost columns
    # carry a little of the black border through the bilinear filter
    assert out[:, :, 1:-1].min() >= 250 and out.min() >= 200
    tall = resize_frames(np.full((2, 90, 30, 3), 7, np.uint8), 16)
    assert tall.shape == (2, 16, 16, 3) and np.all(tall == 7)


def test_decode_clip_samples_the_stated_frames(tmp_path):
    # Frame k has brightness 10 * k: the decoded clip must show the sampled indices' brightness.
    n = 20
    frames = np.stack([np.full((48, 64, 3), 10 * k, np.uint8) for k in range(n)])
    path = tmp_path / "ramp.mp4"
    write_mp4(frames, path, fps=10)
    clip = decode_clip(str(path), 8, 32)
    assert clip.decoder == "decord" and clip.num_video_frames == n and not clip.short
    assert clip.frames.shape == (8, 32, 32, 3) and clip.frames.dtype == np.uint8
    np.testing.assert_allclose(clip.frames.reshape(8, -1).mean(axis=1), 10 * clip.frame_indices, atol=3)
    assert clip.frame_indices.tolist() == sample_frame_indices(n, 8)[0].tolist()


REAL = {
    # file: (expected decoder, number of frames, short for 16-frame clips, what the note says ("": a clean decode))
    "decord__examples__flipping_a_pancake.mkv": ("decord", 310, False, ""),
    "mmaction2__tests__test.avi": ("decord", 164, False, ""),
    "moviepy__clip1024.flv": ("decord", 174, False, ""),
    "moviepy__big_buck_bunny_432_433.webm": ("decord", 24, False, ""),
    "decord__tests__video_90.mov": ("decord", 3, True, ""),
    "mmpose__demo__demo.mp4": ("decord", 5, True, ""),
    "moviepy__pigs_in_a_polka.gif": ("pyav", 30, False, ""),
    # corrupt: header says 50 frames, 28 decodable; decord opens it but fails, PyAV salvages the 28
    "decord__tests__corrupted.mp4": ("pyav", 28, False, "PyAV stopped after 28 frames: InvalidDataError"),
}
BROKEN = {  # file: the sentence its reason begins with
    "moviepy__doc_result_empty_0bytes.webm": "The file is empty (0 bytes): copy or download it again.",
    "derived__mmaction2_demo_truncated50pct_nomoov.mp4": "The MP4 file has no index (moov box): it was cut short while "
                                                         "being downloaded or copied; download it again.",
}


def test_real_and_broken_files_through_the_isolated_decoder(shared_videos):
    with IsolatedDecoder(timeout_s=60) as dec:
        for name, (decoder, n, short, note) in REAL.items():
            clip = dec.decode(str(shared_videos / name), 16, 32)
            assert (clip.decoder, clip.num_video_frames, clip.short) == (decoder, n, short), name
            assert (note in clip.note and "decord: " in clip.note) if note else clip.note == "", (name, clip.note)
            assert clip.frames.shape == (16, 32, 32, 3)
            assert clip.frame_indices.tolist() == sample_frame_indices(n, 16)[0].tolist()
        for name, sentence in BROKEN.items():
            with pytest.raises(DecodeError) as e:
                dec.decode(str(shared_videos / name), 16, 32)
            assert e.value.reason.startswith(sentence) and not e.value.transient, e.value.reason
        # after the sentence, both libraries' own messages
        assert " decord: RuntimeError: " in e.value.reason and "; PyAV: InvalidDataError: " in e.value.reason
        assert e.value.decoder == "decord+pyav"
        # the child survives rejects: a good file still decodes afterwards
        assert dec.decode(str(shared_videos / "mmaction2__tests__test.avi"), 8, 32).frames.shape == (8, 32, 32, 3)


def pyav_frames(path) -> np.ndarray:
    import av

    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])])


# the reliability run's damaged-file maker: an MP4 remuxed with its index first, then cut
cut_with_index_first = runpy.run_path(str(REPO / "benchmarks" / "reliability.py"))["cut_with_index_first"]


def test_truncated_mp4_is_salvaged_by_pyav_from_its_first_frames(tmp_path, shared_videos):
    """decord cannot use an MP4 cut in half; PyAV decodes the frames before the cut, and the clip is sampled from
    exactly those: it equals the same frames of the intact file."""
    src = shared_videos / "mmaction2__demo__demo.mp4"
    cut = cut_with_index_first(src, tmp_path / "cut.mp4", 0.5)
    clip = decode_clip(str(cut), 8, 32)
    intact = pyav_frames(src)
    assert clip.decoder == "pyav" and 100 < clip.num_video_frames < len(intact) == 280
    assert clip.frame_indices.tolist() == sample_frame_indices(clip.num_video_frames, 8)[0].tolist()
    assert clip.note.startswith("decord: ") and f"PyAV stopped after {clip.num_video_frames} frames" in clip.note
    assert "the header lists 280 frames" in clip.note
    np.testing.assert_array_equal(clip.frames, resize_frames(intact[clip.frame_indices], 32))


def test_a_cut_avi_decodes_its_first_frames_and_says_so(tmp_path, shared_videos):
    """A UCF101-style AVI cut in half: decord decodes the frames that are there, without complaint; the header
    still lists all 164, so the clip's note says the file is cut short."""
    intact = shared_videos / "mmaction2__tests__test.avi"
    cut = tmp_path / "cut.avi"
    cut.write_bytes(intact.read_bytes()[: intact.stat().st_size // 2])
    clip = decode_clip(str(cut), 8, 32)
    assert clip.decoder == "decord" and 50 < clip.num_video_frames < 164
    assert clip.note == f"decord found {clip.num_video_frames} of the 164 frames the header lists: the file is cut short"
    expected = resize_frames(pyav_frames(intact)[clip.frame_indices], 32)
    assert np.abs(clip.frames.astype(int) - expected).mean() < 1.0  # the same frames as the intact file's


def test_a_video_too_small_to_resize_is_rejected_with_a_sentence(tmp_path):
    from PIL import Image

    path = tmp_path / "dot.gif"
    frames = [Image.new("RGB", (1, 1), (40 * i, 0, 0)) for i in range(3)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
    with pytest.raises(DecodeError) as e:
        decode_clip(str(path), 4, 32)
    assert e.value.reason.startswith("The video is 1x1 pixels, too small to make a clip from") and e.value.decoder == "pyav"


def test_rotated_clip_comes_back_portrait_before_the_crop(shared_videos):
    """The file's frames are stored landscape (320 x 568) with a 90-degree rotation tag: decord applies the tag,
    so the clip equals PyAV's raw frames turned a quarter clockwise, then resized and cropped."""
    path = shared_videos / "decord__tests__video_90.mov"
    raw = pyav_frames(path)
    assert raw.shape == (3, 320, 568, 3)  # stored landscape: H < W
    clip = decode_clip(str(path), 4, 32)
    assert clip.frames.shape == (4, 32, 32, 3)
    rotated = np.ascontiguousarray(np.rot90(raw, k=-1, axes=(1, 2)))  # portrait, H=568 > W=320
    assert rotated.shape == (3, 568, 320, 3)
    expected = resize_frames(rotated[clip.frame_indices], 32)
    assert np.abs(clip.frames.astype(int) - expected).mean() < 1.0
    # the crop of the unrotated frames is a different picture: the check above depends on the rotation
    assert np.abs(clip.frames.astype(int) - resize_frames(raw[clip.frame_indices], 32)).mean() > 10


def test_pyav_path_applies_rotation_as_decord_does(shared_videos):
    """The PyAV fallback turns frames by the same rotation tag: its frames equal decord's (up to YUV->RGB rounding)."""
    path = str(shared_videos / "decord__tests__video_90.mov")
    by_decord, idx_d, n_d, _ = _decode_decord(path, 4)
    by_pyav, idx_p, n_p, _, stopped = _decode_pyav(path, 4)
    assert (n_d, idx_d.tolist(), stopped) == (n_p, idx_p.tolist(), "")
    assert by_pyav.shape == by_decord.shape == (4, 568, 320, 3)
    assert np.abs(by_pyav.astype(int) - by_decord).mean() < 2.0
    assert np.abs(by_pyav.astype(int) - np.rot90(by_decord, k=2, axes=(1, 2))).mean() > 10  # not turned the wrong way


def test_a_child_that_died_while_idle_costs_no_video(shared_videos):
    good = str(shared_videos / "moviepy__clip1024.flv")
    with IsolatedDecoder(timeout_s=30) as dec:
        dec.decode(good, 4, 32)
        # Killed between videos (as the OOM killer would): the next good file still decodes.
        proc = dec._proc
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert dec.decode(good, 4, 32).frames.shape == (4, 32, 32, 3)
        assert dec._proc is not proc and dec._proc.poll() is None
        # The child dies between the liveness check and the send (the check cannot see it): the send
        # breaks the pipe, a fresh child is started and the video sent again.
        proc = dec._proc
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.poll = lambda: None  # hide the death from the check before the send
        assert dec.decode(good, 4, 32).frames.shape == (4, 32, 32, 3)
        assert dec._proc is not proc


def test_a_crash_a_kill_or_a_hang_costs_one_video(tmp_path, shared_videos):
    good = str(shared_videos / "moviepy__clip1024.flv")
    # A fifo that is never written blocks the decoder's open() for ever: a file that hangs the decoder.
    fifo = tmp_path / "hang.mp4"
    os.mkfifo(fifo)

    def die_while_decoding(dec: IsolatedDecoder, sig: int) -> DecodeError:
        killer = threading.Timer(0.5, os.kill, (dec._proc.pid, sig))
        killer.start()
        t0 = time.perf_counter()
        with pytest.raises(DecodeError) as e:
            dec.decode(str(fifo), 4, 32)
        killer.join()
        assert time.perf_counter() - t0 < 10
        assert dec.decode(good, 4, 32).frames.shape == (4, 32, 32, 3)  # a fresh child serves the next video
        return e.value

    with IsolatedDecoder(timeout_s=30) as dec:
        dec.decode(good, 4, 32)
        # Crash: the child dies of a signal while it works on a file (as a decoder segfault does): permanent.
        crash = die_while_decoding(dec, signal.SIGSEGV)
        assert crash.reason.startswith("The decoder crashed on this file (SIGSEGV): the file is probably damaged")
        assert not crash.transient and not is_transient_reason(crash.reason)
        # Killed from outside while decoding (as the out-of-memory killer does): transient, retried on the next run.
        for sig in (signal.SIGKILL, signal.SIGTERM):
            killed = die_while_decoding(dec, sig)
            assert killed.transient and is_transient_reason(killed.reason)
            assert killed.reason.startswith(f"transient (retried on the next run): The decoder process was killed from "
                                            f"outside while decoding this file ({sig.name}")
        # Hang: the time limit kills the child; the reject is transient (retried on the next run).
        dec.timeout_s = 1.5
        t0 = time.perf_counter()
        with pytest.raises(DecodeError, match="timed out") as e:
            dec.decode(str(fifo), 4, 32)
        assert time.perf_counter() - t0 < 10
        assert e.value.transient and is_transient_reason(e.value.reason)
        assert e.value.reason.startswith("transient") and "preprocess.decode_timeout_s" in e.value.reason
        assert dec.decode(good, 4, 32).frames.shape == (4, 32, 32, 3)
