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
- **Decoders**: decord first; PyAV (FFmpeg) whenever decord fails: files decord cannot *open* (GIF,
  WebM without a duration, AV1, ...) and files it opens but cannot *decode* (corrupt, truncated: decord
  raises, or returns fewer frames than asked). PyAV decodes up to the first error, so a damaged file
  yields the frames before the damage (a truncated MP4 often has most of them); the clip is sampled from
  those and carries a ``note`` saying what failed. A file decord decodes but whose header lists more
  frames than it found (a cut AVI) gets a note too. PyAV applies rotation metadata as decord does (a
  90-degree phone clip comes back portrait). Nothing is ever silently padded.
- **Isolation** (:class:`IsolatedDecoder`): decord can crash the process or hang on damaged files,
  so decoding runs in a long-lived child interpreter (restarted after a crash, a timeout or
  ``max_videos_per_child`` videos); a crash or hang costs one video, reported as a
  :class:`DecodeError`, never the caller. A child that died while idle (between videos, e.g.
  killed for memory) is replaced before the next video is sent; it costs no video.
- **Reject reasons** (:class:`DecodeError`): each begins with a sentence a person can act on (what is
  wrong with the file and what to do), then the libraries' own messages.
- **Transient failures**: a timeout may pass with a larger ``timeout_s`` or on a less loaded machine, and
  a child killed from outside while it decodes (SIGKILL or SIGTERM: the out-of-memory killer, an
  operator) says nothing about the file; their :class:`DecodeError` is ``transient`` and its reason starts
  with :data:`TRANSIENT_PREFIX` (:func:`is_transient_reason`); preprocessing retries such rejects on the
  next run. Every other reason (empty, corrupt, truncated file, decoder crash on the file) is permanent.

This module imports no torch, so the decoder child stays light.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

TRANSIENT_PREFIX = "transient (retried on the next run): "
# Signals that end a decoder child from outside (the out-of-memory killer sends SIGKILL): not the file's fault.
KILLED_FROM_OUTSIDE = (signal.SIGKILL, signal.SIGTERM)


def is_transient_reason(reason: str) -> bool:
    """Whether a reject reason is transient (retried on the next run) rather than permanent."""
    return reason.startswith(TRANSIENT_PREFIX)


class DecodeError(RuntimeError):
    """A video could not be decoded; ``reason`` is the one-line cause stored in the rejects table.

    ``reason`` begins with a sentence a person can act on, then the libraries' raw messages;
    ``transient=True`` prefixes it with :data:`TRANSIENT_PREFIX`. ``decoder``: the decoders that
    tried the file (``"decord+pyav"``, ...; ``""`` when none got to it).
    """

    def __init__(self, reason: str, transient: bool = False, decoder: str = ""):
        if transient and not is_transient_reason(reason):
            reason = TRANSIENT_PREFIX + reason
        super().__init__(reason)
        self.reason = reason
        self.transient = transient
        self.decoder = decoder


@dataclass(frozen=True)
class DecodedClip:
    """A sampled, resized clip.

    ``frames``: uint8 (num_frames, image_size, image_size, 3) RGB; ``frame_indices``: int64
    (num_frames,) indices into the video's decoded frames; ``num_video_frames``: frames the decoder
    found (for a damaged file: the frames before the damage); ``short``: the video had fewer than
    ``num_frames`` frames (frames repeat); ``decoder``: ``"decord"`` or ``"pyav"``; ``note``: what
    failed on the way when the clip was salvaged from a damaged file (``""`` for a clean decode).
    """

    frames: np.ndarray
    frame_indices: np.ndarray
    num_video_frames: int
    short: bool
    decoder: str
    note: str = ""


class _Failed(Exception):
    """One decoder's failure on a file: ``stage`` is ``open``, ``no video`` or ``decode``; the message is the
    library's own, on one line."""

    def __init__(self, stage: str, message: str):
        super().__init__(message)
        self.stage = stage


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
        raise DecodeError(f"The frames have {c} colour channels, not 3 (a decoder bug?).")
    if h < 2 or w < 2:
        raise DecodeError(f"The video is {w}x{h} pixels, too small to make a clip from: remove it from the manifest.")
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


def one_line(e: BaseException) -> str:
    """``e`` as one line: its type and its message (whitespace collapsed, at most 300 characters)."""
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}"


def _decode_decord(path: str, num_frames: int) -> tuple[np.ndarray, np.ndarray, int, bool]:
    import decord

    try:
        vr = decord.VideoReader(path, num_threads=1)
        n = len(vr)
    except Exception as e:  # noqa: BLE001 - decord raises DECORDError or plain RuntimeError
        raise _Failed("open", one_line(e)) from None
    if n <= 0:
        raise _Failed("decode", "the header gives no frames")
    indices, short = sample_frame_indices(n, num_frames)
    unique = np.unique(indices)
    try:
        batch = vr.get_batch(unique.tolist()).asnumpy()
    except Exception as e:  # noqa: BLE001 - decord raises DECORDError, RuntimeError or a size mismatch for a damaged file
        raise _Failed("decode", f"could not decode the sampled frames ({n} in the header): {one_line(e)}") from None
    if batch.shape[0] != len(unique):
        raise _Failed("decode", f"returned {batch.shape[0]} of {len(unique)} requested frames ({n} in the header)")
    return batch[np.searchsorted(unique, indices)], indices, n, short


def _pyav_frames(path: str):
    """Open ``path`` with PyAV: (container, iterator over its first video stream's frames, the frame count
    its header gives or 0)."""
    import av

    try:
        container = av.open(path)
    except Exception as e:  # noqa: BLE001 - av.error.* for unreadable files
        raise _Failed("open", one_line(e)) from None
    if not container.streams.video:
        container.close()
        raise _Failed("no video", "the file holds no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return container, container.decode(stream), stream.frames


def _rgb(frame) -> np.ndarray:
    """A PyAV frame as uint8 (H, W, 3) RGB, turned by its rotation metadata (counter-clockwise degrees)."""
    rgb = frame.to_ndarray(format="rgb24")
    quarter_turns = round(frame.rotation / 90) % 4
    return np.ascontiguousarray(np.rot90(rgb, quarter_turns)) if quarter_turns else rgb


def _listed_frames(path: str) -> int:
    """The frame count the video's header gives (PyAV reads the header only; about a millisecond), 0 if none."""
    try:
        container, _, listed = _pyav_frames(path)
    except _Failed:
        return 0
    container.close()
    return listed


def _decode_pyav(path: str, num_frames: int) -> tuple[np.ndarray, np.ndarray, int, bool, str]:
    """Two passes: count the frames decodable before the first error, then convert only the sampled ones
    (bounded memory). Returns frames, indices, frames found, short, and what ended the count early (the
    error, or fewer frames than the header lists; ``""`` when the file decoded to its end)."""
    container, frames, listed = _pyav_frames(path)
    n, stopped = 0, ""
    with container:
        try:
            for _ in frames:
                n += 1
        except Exception as e:  # noqa: BLE001 - a damaged packet: keep what came before it
            stopped = one_line(e)
    if n == 0:
        raise _Failed("decode", stopped or "no frames")
    if not stopped and n < listed:  # threaded decoding can end at the damage without raising
        stopped = f"the stream ends early: the header lists {listed} frames"
    indices, short = sample_frame_indices(n, num_frames)
    wanted = set(indices.tolist())
    picked: dict[int, np.ndarray] = {}
    container, frames, _ = _pyav_frames(path)
    with container:
        for k, frame in enumerate(frames):
            if k in wanted:
                picked[k] = _rgb(frame)
            if k >= indices[-1]:
                break
    if len(picked) != len(wanted):
        raise _Failed("decode", f"decoded {n} frames on the first pass but fewer on the second")
    return np.stack([picked[k] for k in indices.tolist()]), indices, n, short, stopped


def _mp4_without_index(path: str) -> bool:
    """Whether ``path`` is an MP4/MOV file (ISO base media: top-level boxes, the first ``ftyp``) that has no
    ``moov`` box, the index that writers put last: the file was cut short before it."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        offset, first = 0, True
        while offset + 8 <= size:
            f.seek(offset)
            box_size, box_type = int.from_bytes(f.read(4), "big"), f.read(4)
            if first and box_type != b"ftyp":
                return False
            if box_type == b"moov":
                return False
            if box_size == 1:  # 64-bit size follows the type
                box_size = int.from_bytes(f.read(8), "big")
            if box_size < 8:  # 0: the box runs to the end of the file
                break
            offset, first = offset + box_size, False
    return not first


def _unreadable(path: str, decord_failed: _Failed, pyav_failed: _Failed) -> DecodeError:
    """The reject when neither decoder got a frame: what is wrong with the file, then both libraries' words."""
    raw = f"decord: {decord_failed}; PyAV: {pyav_failed}"
    if _mp4_without_index(path):
        what = ("The MP4 file has no index (moov box): it was cut short while being downloaded or copied; "
                "download it again.")
    elif pyav_failed.stage == "no video":
        what = "The file holds no video stream (audio only, or not a video): remove it from the manifest."
    elif pyav_failed.stage == "decode":
        what = "The file is damaged: not a single frame of it could be decoded; download it again."
    else:
        what = ("Neither decord nor PyAV can read the file: it is damaged or not a video; check it with ffprobe "
                "or download it again.")
    return DecodeError(f"{what} {raw}", decoder="decord+pyav")


def decode_clip(path: str, num_frames: int, image_size: int) -> DecodedClip:
    """Decode, sample and resize one video in this process (see the module docstring).

    Raises :class:`DecodeError` with a one-line reason when the video cannot be decoded.
    """
    if not os.path.exists(path):
        raise DecodeError(f"The file does not exist: check the manifest's path. {path}")
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise DecodeError("The file is empty (0 bytes): copy or download it again.")
    try:
        frames, indices, n, short = _decode_decord(path, num_frames)
        decoder, listed = "decord", _listed_frames(path)
        note = f"decord found {n} of the {listed} frames the header lists: the file is cut short" if n < listed else ""
    except _Failed as decord_failed:
        try:
            frames, indices, n, short, stopped = _decode_pyav(path, num_frames)
        except _Failed as pyav_failed:
            raise _unreadable(path, decord_failed, pyav_failed) from None
        decoder = "pyav"
        damaged = decord_failed.stage == "decode" or stopped
        note = f"decord: {decord_failed}" + (f"; PyAV stopped after {n} frames: {stopped}" if stopped else "") if damaged else ""
    if frames.ndim != 4 or frames.dtype != np.uint8:
        raise DecodeError(f"The decoder returned frames of an unexpected kind (a decoder bug?): shape {frames.shape}, "
                          f"dtype {frames.dtype}.", decoder=decoder)
    try:
        resized = resize_frames(frames, image_size)
    except DecodeError as e:
        e.decoder = decoder
        raise
    return DecodedClip(resized, indices, int(n), bool(short), decoder, note)


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
            replies.send(("error", (e.reason, e.decoder)))
        except Exception as e:  # noqa: BLE001 - anything else is this video's failure, not the child's
            replies.send(("error", (f"Unexpected error while decoding this file (a bug in lmft or a decoder, not "
                                    f"necessarily the file): {one_line(e)} | {traceback.format_exc(limit=2)[-300:]}", "")))


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
                    raise DecodeError(f"No decoder process could be started for this file (the machine may be short "
                                      f"of memory or processes). exit code {code}: {one_line(e)}", transient=True) from None

    def _died_while_decoding(self) -> DecodeError:
        """The child's pipe broke while it decoded a file. Wait for the child's own exit status (it is
        exiting) rather than kill it, then tell a crash on the file (permanent) from a kill from outside
        (transient: nothing is known about the file)."""
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        code = self._stop(kill=True)
        sig = signal.Signals(-code) if code is not None and -code in signal.valid_signals() else None
        if sig in KILLED_FROM_OUTSIDE:
            return DecodeError(f"The decoder process was killed from outside while decoding this file ({sig.name}, as "
                               f"the out-of-memory killer does): that says nothing about the file, so it is tried again; "
                               f"if it recurs, give decoding more memory (fewer decode tasks per machine).", transient=True)
        return DecodeError(f"The decoder crashed on this file ({sig.name if sig else f'exit code {code}'}): the file is "
                           f"probably damaged; check it with ffprobe or download it again.")

    def decode(self, path: str, num_frames: int, image_size: int) -> DecodedClip:
        if not self.isolate:
            return decode_clip(path, num_frames, image_size)
        self._send((path, num_frames, image_size))
        # From here on the request was delivered: a death or hang counts against this file.
        try:
            if not self._replies.poll(self.timeout_s):
                self._stop(kill=True)
                raise DecodeError(f"Decoding timed out after {self.timeout_s:g} s and the decoder process was killed: a "
                                  f"decoder hang, or a slow file or machine; raise preprocess.decode_timeout_s if the "
                                  f"file is just slow.", transient=True)
            status, payload = self._replies.recv()
        except (EOFError, OSError):
            raise self._died_while_decoding() from None
        if status == "error":
            reason, decoder = payload
            raise DecodeError(reason, decoder=decoder)
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
