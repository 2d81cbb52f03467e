"""Person detectors: the interface, their config, and a worker thread that runs one beside the camera stream.

A detector turns one exo image into a :class:`PersonObservation` (person mask and head keypoints). Built in:
``mediapipe`` (MediaPipe's pose, face detection and face-mesh models, bundled in the ``mediapipe==0.10.21`` wheel; see
mediapipe_detector.py). The node can instead take masks from a topic (``person.source: topic``), which gives masks
but no head keypoints.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from egox_ros.core.config import param, validate
from egox_ros.core.demonstrator.landmarks import HeadHint, PersonObservation

PERSON_SOURCES = ("auto", "none", "mediapipe", "topic")   # not "off": YAML reads that as false


@dataclass
class PersonConfig:
    """The demonstrator's mask in the exo image, and what the prior does with it."""
    source: str = param("auto", "person masks and head keypoints: 'mediapipe' (built-in models, on the exo "
                                "image), 'topic' (masks on exo/person_mask, mono8, same stamp and size as the "
                                "image; no head keypoints), 'none' (no masks: the demonstrator is fused into the "
                                "prior), or 'auto': mediapipe, for every generator and head source (the released "
                                "priors never show the demonstrator)", choices=PERSON_SOURCES)
    mask_threshold: float = param(0.5, "a pixel is the person where the segmentation score exceeds this", (0.0, 1.0))
    dilate_px: int = param(0, "grow the mask by this many pixels [px]; 0: as the released tools use their person "
                              "masks (the depth-edge filter, fusion.edge_*, already drops the smeared depth around "
                              "a person; on the Ego-Exo4D development clips 4 px cost 0.011 IoU with the released "
                              "priors and 0.06 dB against the real ego video)", (0, 64))
    body_region: bool = param(True, "keep the mask to the body's outline around its skeleton (limbs, torso, "
                                    "head): the segmentation also covers what the person holds out and the table "
                                    "under their hands, which belong in the prior")
    depth_tolerance_m: float = param(0.0, "where the exo frame's depth is known, mask pixels farther than this "
                                          "(plus 5 % of the distance) in front of or behind the person's skeleton "
                                          "leave the mask (a counter or floor behind the person, a monitor in "
                                          "front); 0: off, the default (on the Ego-Exo4D development clips what "
                                          "the mask takes beyond the person lies at the person's own depth; 0.1-"
                                          "0.25 gave no better prior, see docs/benchmarks.md) [m]", (0.0, 10.0))
    min_detection_confidence: float = param(0.5, "MediaPipe person / face detection threshold", (0.0, 1.0))
    other_people: int = param(0, "other people masked beside the demonstrator, at most this many (found on the image "
                                 "with the demonstrator blanked out, then tracked; the released priors leave out "
                                 "every person): about one pose run per person and detected image, so 0 live; "
                                 "egox replay / process set 2 unless given", (0, 4))
    face_mesh: bool = param(False, "refine the head keypoints with MediaPipe's face mesh when the face is visible "
                                   "(5-13 ms per frame; only the face fit uses them, which the head from the whole "
                                   "body replaced: off by default)")

    def __post_init__(self) -> None:
        validate(self)


class PersonDetector(Protocol):
    """One exo image in, the demonstrator out. Detectors may track between calls; reset() forgets that."""
    name: str

    def detect(self, rgb: np.ndarray, head_hint: HeadHint | None = None) -> PersonObservation:
        """rgb: (H, W, 3) uint8 exo image. Returns masks of shape (H, W) bool and keypoints in its pixels.
        head_hint: where the head TF puts the demonstrator's head (with a recorded head pose), or None; a detector
        may use it to prefer that person over others in view."""
        ...

    def reset(self) -> None:
        ...

    def close(self) -> None:
        ...


def resolve_person_source(config: PersonConfig) -> str:
    """config.source with 'auto' decided: 'mediapipe' whatever the head source and generator (the demonstrator
    stays out of every prior, as in the released ones; before issue 17 'auto' meant none for the prior generator
    with a head TF)."""
    return "mediapipe" if config.source == "auto" else config.source


def dilate_mask(mask: np.ndarray, radius_px: int) -> np.ndarray:
    """(H, W) bool grown by a square of radius_px; the work covers only the mask's bounding box."""
    if radius_px <= 0 or not mask.any():
        return mask
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    y0, y1 = rows[0], rows[-1] + 1
    x0, x1 = cols[0], cols[-1] + 1
    r, k = radius_px, 2 * radius_px + 1
    padded = np.zeros((y1 - y0 + 4 * r, x1 - x0 + 4 * r), bool)
    padded[2 * r:-2 * r, 2 * r:-2 * r] = mask[y0:y1, x0:x1]
    grown = sliding_window_view(padded, k, axis=1).any(axis=-1)        # (h + 4r, w + 2r)
    grown = sliding_window_view(grown, k, axis=0).any(axis=-1)         # (h + 2r, w + 2r)
    out = mask.copy()
    gy0, gx0 = y0 - r, x0 - r                                          # image position of grown[0, 0]
    sy0, sx0 = max(0, -gy0), max(0, -gx0)
    ey, ex = min(grown.shape[0], mask.shape[0] - gy0), min(grown.shape[1], mask.shape[1] - gx0)
    out[gy0 + sy0:gy0 + ey, gx0 + sx0:gx0 + ex] |= grown[sy0:ey, sx0:ex]
    return out


SKIPPED = "skipped: the detector fell behind"    # on_result's error for an image the detector skipped


class AsyncPersonDetector:
    """Runs a detector on a worker thread over every submitted image, in stamp order.

    Unlike depth (where an older estimate will do), a mask and a head pose belong to exactly one image, so every
    image is detected when the detector keeps up; at most `capacity` images wait (the oldest is skipped beyond).
    Live (``max_lag_s`` set: sync.overload 'drop_oldest'), a queued image more than ``max_lag_s`` older (stamps)
    than the newest submitted one is skipped too, so a detector slower than the camera keeps pace instead of
    letting frames time out (``person_missing``). A skipped image's result holds the mask of the newest detected
    image if that is at most ``max_lag_s`` older, else it has no mask; its head is None (the head tracker holds the
    pose). Skips are counted (``skipped``). Results are kept for the newest `keep` stamps. Thread-safe.
    on_result(stamp_ns, observation, error) runs on the worker thread after each image (error 'skipped: ...' for a
    skipped one, on the submitting thread); it must not block long.
    """

    def __init__(self, detector: PersonDetector, capacity: int = 64, keep: int = 128,
                 on_result: Callable[[int, PersonObservation, str | None], None] | None = None,
                 max_lag_s: float | None = None):
        self.detector = detector
        self.capacity, self.keep = capacity, keep
        self.max_lag_ns = None if max_lag_s is None else int(max_lag_s * 1e9)
        self._newest_detected: tuple[int, np.ndarray] | None = None     # (stamp_ns, mask) of the newest with a mask
        self.on_result = on_result
        self._queue: deque[tuple[int, np.ndarray, HeadHint | None]] = deque()
        self._results: OrderedDict[int, PersonObservation] = OrderedDict()
        self._generation = 0
        self._busy = False
        self._running = True
        self._cond = threading.Condition()
        self.detected = self.found = self.skipped = self.failed = 0
        self.last_error = ""
        self.last_ms = 0.0
        self._worker = threading.Thread(target=self._work, name="egox-person", daemon=True)
        self._worker.start()

    def submit(self, stamp_ns: int, rgb: np.ndarray, head_hint: HeadHint | None = None) -> None:
        """Queue an exo image (H, W, 3) uint8 with its head hint (see PersonDetector.detect); stamps increase
        between resets."""
        skipped = []
        with self._cond:
            self._queue.append((stamp_ns, rgb, head_hint))
            while len(self._queue) > self.capacity or (
                    self.max_lag_ns is not None and stamp_ns - self._queue[0][0] > self.max_lag_ns):
                old_ns = self._queue.popleft()[0]
                self.skipped += 1
                observation = PersonObservation(mask=self._held_mask(old_ns), head=None)
                self._store(old_ns, observation)
                skipped.append((old_ns, observation))
            self._cond.notify_all()
        if self.on_result is not None:
            for old_ns, observation in skipped:
                self.on_result(old_ns, observation, SKIPPED)

    def _held_mask(self, stamp_ns: int) -> np.ndarray | None:
        """The newest detected mask for a skipped image, if it is at most max_lag_s older (lock held)."""
        if self._newest_detected is None or self.max_lag_ns is None:
            return None
        detected_ns, mask = self._newest_detected
        return mask if 0 <= stamp_ns - detected_ns <= self.max_lag_ns else None

    def result_for(self, stamp_ns: int) -> PersonObservation | None:
        """The observation of the image with this stamp, or None while it is not done."""
        with self._cond:
            return self._results.get(stamp_ns)

    def busy_or_pending(self) -> bool:
        with self._cond:
            return self._busy or bool(self._queue)

    def reset(self) -> None:
        """Forget queued images, results and the detector's tracking (the stream jumped back in time)."""
        with self._cond:
            self._queue.clear()
            self._results.clear()
            self._newest_detected = None
            self._generation += 1

    def stats(self) -> dict[str, str]:
        with self._cond:
            values = {"detected": str(self.detected), "with_person": str(self.found), "skipped": str(self.skipped),
                      "failed": str(self.failed), "detector_ms": f"{self.last_ms:.1f}"}
            if self.last_error:
                values["last_error"] = self.last_error
        return values

    def close(self) -> None:
        with self._cond:
            self._running = False
            self._cond.notify_all()
        self._worker.join(timeout=10.0)
        self.detector.close()

    def _store(self, stamp_ns: int, observation: PersonObservation) -> None:
        self._results[stamp_ns] = observation
        while len(self._results) > self.keep:
            self._results.popitem(last=False)

    def _work(self) -> None:
        seen_generation = 0
        while True:
            with self._cond:
                self._cond.wait_for(lambda: not self._running or bool(self._queue))
                if not self._running:
                    return
                stamp_ns, rgb, head_hint = self._queue.popleft()
                generation = self._generation
                self._busy = True
            error = None
            started = time.perf_counter()
            try:
                if generation != seen_generation:
                    self.detector.reset()
                    seen_generation = generation
                observation = self.detector.detect(rgb, head_hint)
            except Exception as e:  # noqa: BLE001 - a failing detector must not stop the stream; reported
                error = f"{type(e).__name__}: {e}"
                observation = PersonObservation(mask=None, head=None)
            elapsed_ms = (time.perf_counter() - started) * 1e3
            with self._cond:
                if generation == self._generation:      # else reset meanwhile: discard
                    self._store(stamp_ns, observation)
                    if observation.mask is not None:
                        self._newest_detected = (stamp_ns, observation.people_mask)
                    self.detected += 1
                    self.found += int(observation.found)
                    self.last_ms = elapsed_ms
                    if error is not None:
                        self.failed += 1
                        self.last_error = error
                self._cond.notify_all()
            if self.on_result is not None and generation == self._generation:
                try:
                    self.on_result(stamp_ns, observation, error)
                except Exception as e:  # noqa: BLE001 - the caller's problem must not kill the thread
                    with self._cond:
                        self.last_error = f"on_result: {type(e).__name__}: {e}"
            with self._cond:        # idle only once the result is delivered: a lockstep caller (egox process)
                self._busy = False  # must not run on while on_result still reports from this thread
                self._cond.notify_all()
