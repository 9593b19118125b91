"""Video decoding for preprocessing: deterministic frame sampling, resizing, isolation.

A clip is ``num_frames`` RGB frames sampled from one video and resized to ``image_size`` x
``image_size`` (terms in :mod:`lmft_core.config`).

- **Sampling** (:func:`sample_frame_indices`): the video's ``n`` frames are cut into ``num_frames``
  equal segments and the middle frame of each is taken: ``index_i = floor((i + 0.5) * n / num_frames)``.
  Deterministic (no randomness), in order, and for ``n < num_frames`` it repeats frames in order
  (``n=5, num_frames=8`` -> ``0 0 1 2 2 3 4 4``); such a clip is flagged **short**.
- **Aspect ratio** (:func:`resize_frames`): the short side is resized to ``image_size`` (bilinear,
  antialiased) and the centre ``image_size`` x ``image_size`` square is cropped, as CLIP and
  VideoMAE preprocess; nothing is stretched, the borders of the long side are dropped.
- **Decoders**: decord first. A file decord cannot *open* (GIF, WebM without a duration, AV1, ...)
  is decoded with PyAV. A file decord opens but cannot *decode* (corrupt, truncated: decord raises,
  or returns fewer frames than asked) is rejected with the reason, never silently padded.
  decord applies rotation metadata; PyAV (fallback only) does not.
- **Isolation** (:class:`IsolatedDecoder`): decord can crash the process or hang on damaged files,
  so decoding runs in a long-lived child interpreter (restarted after a crash, a timeout or
  ``max_videos_per_child`` videos); a crash or hang costs one video, reported as a
  :class:`DecodeError`, never the caller. A child that died while idle (between videos, e.g.
  killed for memory) is replaced before the next video is sent; it costs no video.
- **Transient failures**: a timeout may pass with a larger ``timeout_s`` or on a less loaded machine,
  so its :class:`DecodeError` is ``transient`` and its reason starts with :data:`TRANSIENT_PREFIX`
  (:func:`is_transient_reason`); preprocessing retries such rejects on the next run. Every other
  reason (empty, corrupt, truncated file, decoder crash on the file) is permanent.

This module imports no torch, so the decoder child stays light.
"""

from __future__ import annotations

import os
import subprocess
import sys
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

DECODERS = ("decord", "pyav")
TRANSIENT_PREFIX = "transient (retried on the next run): "


def is_transient_reason(reason: str) -> bool:
    """Whether a reject reason is transient (a timeout: retried on the next run) rather than permanent."""
    return reason.startswith(TRANSIENT_PREFIX)


class DecodeError(RuntimeError):
    """A video could not be decoded; ``reason`` is the one-line cause stored in the rejects table.

    ``transient=True`` (a timeout) prefixes the reason with :data:`TRANSIENT_PREFIX`.
    """

    def __init__(self, reason: str, transient: bool = False):
        if transient and not is_transient_reason(reason):
            reason = TRANSIENT_PREFIX + reason
        super().__init__(reason)
        self.reason = reason
        self.transient = transient


@dataclass(frozen=True)
class DecodedClip:
    """A sampled, resized clip.

    ``frames``: uint8 (num_frames, image_size, image_size, 3) RGB; ``frame_indices``: int64
    (num_frames,) indices into the video's decoded frames; ``num_video_frames``: frames the decoder
    found; ``short``: the video had fewer than ``num_frames`` frames (frames repeat);
    ``decoder``: ``"decord"`` or ``"pyav"``.
    """

    frames: np.ndarray
    frame_indices: np.ndarray
    num_video_frames: int
    short: bool
    decoder: str


def sample_frame_indices(num_video_frames: int, num_frames: int) -> tuple[np.ndarray, bool]:
    """Segment-based uniform sampling: (int64 indices (num_frames,), short flag). See module doc."""
    if num_video_frames <= 0:
        raise DecodeError("video has no frames")
    i = np.arange(num_frames, dtype=np.float64)
    idx = np.floor((i + 0.5) * num_video_frames / num_frames).astype(np.int64)
    return np.minimum(idx, num_video_frames - 1), num_video_frames < num_frames


def resize_frames(frames: np.ndarray, image_size: int) -> np.ndarray:
    """uint8 (T, H, W, 3) -> uint8 (T, image_size, image_size, 3): short side to ``image_size``
    (bilinear, antialiased), then centre crop."""
    from PIL import Image

    t, h, w, c = frames.shape
    if c != 3:
        raise DecodeError(f"expected 3 colour channels, got {c}")
    if h < 2 or w < 2:
        raise DecodeError(f"frame size {w}x{h} is too small")
    scale = image_size / min(h, w)
    new_w, new_h = max(image_size, round(w * scale)), max(image_size, round(h * scale))
    left, top = (new_w - image_size) // 2, (new_h - image_size) // 2
    out = np.empty((t, image_size, image_size, 3), dtype=np.uint8)
    for k in range(t):
        img = Image.fromarray(np.ascontiguousarray(frames[k]))
        if (new_w, new_h) != (w, h):
            img = img.resize((new_w, new_h), Image.Resampling.BILINEAR, reducing_gap=None)
        out[k] = np.asarray(img.crop((left, top, left + image_size, top + image_size)))
    return out


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}"


def _decode_decord(path: str, num_frames: int) -> tuple[np.ndarray, np.ndarray, int, bool]:
    import decord

    vr = decord.VideoReader(path, num_threads=1)  # open errors propagate to the caller (-> PyAV)
    n = len(vr)
    indices, short = sample_frame_indices(n, num_frames)
    unique = np.unique(indices)
    try:
        batch = vr.get_batch(unique.tolist()).asnumpy()
    except Exception as e:  # noqa: BLE001 - decord raises DECORDError or plain RuntimeError
        raise DecodeError(f"decord opened the file but could not decode frames ({n} in header): {_one_line(e)}") from None
    if batch.shape[0] != len(unique):
        raise DecodeError(f"decord returned {batch.shape[0]} of {len(unique)} requested frames (truncated file?)")
    frames = batch[np.searchsorted(unique, indices)]
    return frames, indices, n, short


def _decode_pyav(path: str, num_frames: int) -> tuple[np.ndarray, np.ndarray, int, bool]:
    """Two passes: count the decodable frames, then convert only the sampled ones (bounded memory)."""
    import av

    def frames_of(container):
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        return container.decode(stream)

    with av.open(path) as container:
        if not container.streams.video:
            raise DecodeError("no video stream")
        n = sum(1 for _ in frames_of(container))
    indices, short = sample_frame_indices(n, num_frames)
    wanted = set(indices.tolist())
    picked: dict[int, np.ndarray] = {}
    with av.open(path) as container:
        for k, frame in enumerate(frames_of(container)):
            if k in wanted:
                picked[k] = frame.to_ndarray(format="rgb24")
            if k >= indices[-1]:
                break
    if len(picked) != len(wanted):
        raise DecodeError(f"PyAV decoded {n} frames on the first pass but fewer on the second")
    return np.stack([picked[k] for k in indices.tolist()]), indices, n, short


def decode_clip(path: str, num_frames: int, image_size: int) -> DecodedClip:
    """Decode, sample and resize one video in this process (see the module docstring).

    Raises :class:`DecodeError` with a one-line reason when the video cannot be decoded.
    """
    if not os.path.exists(path):
        raise DecodeError(f"file not found: {path}")
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise DecodeError("empty file (0 bytes)")
    try:
        frames, indices, n, short = _decode_decord(path, num_frames)
        decoder = "decord"
    except DecodeError:
        raise
    except Exception as decord_error:  # noqa: BLE001 - decord could not open it: try FFmpeg via PyAV
        try:
            frames, indices, n, short = _decode_pyav(path, num_frames)
            decoder = "pyav"
        except DecodeError as e:
            raise DecodeError(f"decord cannot open ({_one_line(decord_error)}); PyAV: {e.reason}") from None
        except Exception as e:  # noqa: BLE001
            raise DecodeError(f"decord cannot open ({_one_line(decord_error)}); PyAV: {_one_line(e)}") from None
    if frames.ndim != 4 or frames.dtype != np.uint8:
        raise DecodeError(f"decoder returned frames of shape {frames.shape} and dtype {frames.dtype}")
    return DecodedClip(resize_frames(frames, image_size), indices, int(n), bool(short), decoder)


def _serve(requests: Connection, replies: Connection) -> None:
    """Decoder child loop: receive (path, num_frames, image_size), reply ("ok", clip) or ("error", reason)."""
    while True:
        try:
            request = requests.recv()
        except EOFError:
            return
        if request is None:
            return
        try:
            replies.send(("ok", decode_clip(*request)))
        except DecodeError as e:
            replies.send(("error", e.reason))
        except Exception as e:  # noqa: BLE001 - anything else is this video's failure, not the child's
            replies.send(("error", f"unexpected {_one_line(e)} | {traceback.format_exc(limit=2)[-300:]}"))


class IsolatedDecoder:
    """Decode videos in a child process with a per-video time limit.

    The child is a fresh interpreter (``python -m lmft_core.video REQ_FD REPLY_FD``; no fork of a
    threaded Ray worker) that serves videos one at a time over two pipes. :meth:`decode` returns a
    :class:`DecodedClip` or raises :class:`DecodeError`: a decode failure, a child crash, or a
    timeout (the child is then killed and a fresh one started for the next video). A child found dead
    before a video is sent (it died while idle) is replaced without cost to that video. The child is
    also replaced after ``max_videos_per_child`` videos (decord leaks memory on some files).
    ``isolate=False`` decodes in this process (benchmarks, debugging).
    """

    def __init__(self, timeout_s: float = 60.0, max_videos_per_child: int = 200, isolate: bool = True):
        self.timeout_s = timeout_s
        self.max_videos_per_child = max_videos_per_child
        self.isolate = isolate
        self._proc: subprocess.Popen | None = None
        self._requests: Connection | None = None
        self._replies: Connection | None = None
        self._served = 0

    def _start(self) -> None:
        req_r, req_w = os.pipe()
        rep_r, rep_w = os.pipe()
        root = str(Path(__file__).resolve().parents[1])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "lmft_core.video", str(req_r), str(rep_w)],
                pass_fds=(req_r, rep_w), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=env,
            )
        finally:
            os.close(req_r)
            os.close(rep_w)
        self._requests = Connection(req_w, readable=False)
        self._replies = Connection(rep_r, writable=False)
        self._served = 0

    def _stop(self, kill: bool = False) -> int | None:
        """Stop the child; return its exit code."""
        if self._proc is None:
            return None
        proc, self._proc = self._proc, None
        if not kill:
            try:
                self._requests.send(None)
                proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                pass
        if proc.poll() is None:
            proc.kill()
        code = proc.wait()
        self._requests.close()
        self._replies.close()
        return code

    def _send(self, request: tuple) -> None:
        """Deliver ``request`` to a live child. A child that died while idle (found dead before the
        send, or a broken pipe during it) is replaced and the request sent once more: that death
        happened before this video reached the child, so it is not this video's failure."""
        if self._proc is not None and self._served >= self.max_videos_per_child:
            self._stop()
        if self._proc is not None and self._proc.poll() is not None:
            self._stop(kill=True)  # died while idle (killed for memory, ...)
        for attempt in range(2):
            if self._proc is None:
                self._start()
            try:
                self._requests.send(request)
                self._served += 1
                return
            except OSError as e:  # BrokenPipeError: the child died between the check and the send
                code = self._stop(kill=True)
                if attempt == 1:
                    raise DecodeError(f"could not hand the video to a fresh decoder process (exit code {code}): "
                                      f"{_one_line(e)}", transient=True) from None

    def decode(self, path: str, num_frames: int, image_size: int) -> DecodedClip:
        if not self.isolate:
            return decode_clip(path, num_frames, image_size)
        self._send((path, num_frames, image_size))
        # From here on the request was delivered: a death or hang counts against this file.
        try:
            if not self._replies.poll(self.timeout_s):
                self._stop(kill=True)
                raise DecodeError(f"decoding timed out after {self.timeout_s:g} s (decoder hang?); decoder process "
                                  f"killed; raise preprocess.decode_timeout_s if the file is just slow", transient=True)
            status, payload = self._replies.recv()
        except (EOFError, OSError):
            code = self._stop(kill=True)
            raise DecodeError(f"decoder process died (exit code {code}): decoder crash on this file") from None
        if status == "error":
            raise DecodeError(payload)
        return payload

    def close(self) -> None:
        self._stop()

    def __enter__(self) -> IsolatedDecoder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


if __name__ == "__main__":
    # Decoder child: protocol on the two pipe fds; fd 1 goes to stderr so decoder chatter cannot mix in.
    # Import ourselves by name so that pickled clips refer to lmft_core.video, not __main__.
    from lmft_core.video import _serve as serve

    os.dup2(2, 1)
    serve(Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False))
