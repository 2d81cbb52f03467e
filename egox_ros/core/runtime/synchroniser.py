"""The frame synchroniser: exo images, camera info, depth, person masks and transforms in; complete frames or drops
with a reason out. Pure Python (no rclpy), like tf2's ``BufferCore``: the ROS node is a thin shell over it, and a
DDS-free path can drive it with message time.

Rules (README, "Frames, drops and time"):
- Frames complete in stamp order. A frame that still waits holds the frames behind it only while it can still
  complete: once a newer depth image (or person mask) has arrived than its own could be, it is dropped at once
  (``depth_missing`` / ``person_mask_missing``), and a frame that waited ``timeout_s`` is dropped with what it lacked
  while the complete frames behind it go on.
- A complete frame that the consumer cannot take (a full generator queue) waits up to ``timeout_s`` from the moment
  it was complete (``generator_busy`` after that), so a burst after a stall drains instead of overflowing; under a
  sustained overload every complete frame waits at most that long, which bounds both the latency and the waiting
  frames. With ``overload`` 'keep_all' it waits as long as it takes (recording); with 'drop_oldest' the engine makes
  room itself by dropping its oldest queued frame (live), so its frames never wait here.
- Time jumps back are decided by the exo image stream alone: an image more than ``time_jump_back_s`` older than the
  newest accepted one is held; ``time_jump_confirm_frames`` such images in a row, each newer than the last, confirm
  the jump (TF, caches and the consumer's window reset; the held images become the new timeline's first frames).
  An image that continues the old timeline first makes the held ones strays (``out_of_order_stamp``). Transforms,
  depth and the node's own published TF never reset anything.
- A transform older than what TF holds for an edge may still be on its way (delayed or reordered): the frame waits
  for it up to ``timeout_s`` (``tf_extrapolation_past`` then), unless the stamp lies beyond ``tf_cache_s`` before the
  edge's newest sample, which no later message could fill (dropped at once).
- The rejected camera info or transform that a frame waited on is named in its drop reason
  (``camera_info_rejected``, ``tf_rejected``); a depth image that could not be used gives ``bad_depth``.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from egox_ros.core.config import param, validate
from egox_ros.core.demonstrator.landmarks import HeadHint
from egox_ros.core.geometry.cameras import CameraModel
from egox_ros.core.geometry.frames import ExoFrame
from egox_ros.core.geometry.transforms import RigidTransform
from egox_ros.core.runtime.tf_buffer import ExtrapolationError, TfBufferCore, TfError


HINT_TF_AGE_S = 0.25      # head_hint: how much older than the image the newest head TF may be


@dataclass
class SyncConfig:
    """Synchronisation of image, camera info, depth and TF, and the generator queue."""
    timeout_s: float = param(1.0, "wall time (the clock passed in) a frame may wait for its camera info, depth and TF (and a complete frame for "
                                  "room in the generator queue) before it is dropped [s]", (0.01, 3600.0))
    depth_tolerance_s: float = param(0.005, "largest stamp difference between an exo image and its depth image [s]",
                                     (0.0, 1.0))
    max_waiting: int = param(64, "frames that may wait for inputs at once; the oldest is dropped beyond", (1, 10000))
    queue_capacity: int = param(4, "synchronised frames queued for the generator (at least one clip); what happens "
                                   "to complete frames beyond it is sync.overload", (1, 10000))
    overload: str = param("drop_oldest", "a complete frame that finds the generator queue full: 'drop_oldest' (live: "
                                         "the oldest queued frame is dropped as generator_busy and the new one "
                                         "queued, so what is published stays fresh under a sustained overload) or "
                                         "'keep_all' (recording: it waits for room as long as it takes, no frame is "
                                         "dropped for lack of room; sync.max_waiting still bounds the frames "
                                         "waiting; egox replay and egox process set it)",
                          choices=("drop_oldest", "keep_all"))
    tf_cache_s: float = param(30.0, "TF history kept per edge [s]", (0.1, 3600.0))
    time_jump_back_s: float = param(1.0, "an exo image this much older than the newest accepted one is a candidate "
                                         "time jump back (a bag that loops) [s]", (0.0, 3600.0))
    time_jump_confirm_frames: int = param(3, "exo images in a row on the new, earlier timeline that confirm a time "
                                             "jump back (TF, window and caches reset); fewer are dropped as strays",
                                          (1, 1000))

    def __post_init__(self) -> None:
        validate(self)


@dataclass
class Drop:
    """Frames dropped for one reason: ``code`` (README's list of drop reasons) and a one-line ``detail``."""
    stamps_ns: list[int]
    code: str
    detail: str


@dataclass
class PendingFrame:
    """An accepted exo image waiting for its inputs. rgb: (H, W, 3) uint8."""
    stamp_ns: int
    rgb: np.ndarray
    frame_id: str
    arrived_s: float                               # on the synchroniser's clock
    waiting_for: tuple[str, str] = ("camera_info_missing", "camera info")   # (drop code, what) if it times out
    complete: ExoFrame | None = None               # the complete frame, while the consumer has no room for it
    complete_s: float | None = None                # since when


@dataclass
class SyncSources:
    """The parts of a frame that come from elsewhere than the synchroniser's own inputs (all optional).

    model_depth: stamp_ns -> (depth_m (H, W) float32 m, stamp_ns of the image it was estimated from) or None while
        there is none within the model's lag; model_depth_active: whether frames take depth from it now.
    person: (stamp_ns, depth_m (H, W) or None, camera) -> the person detector's observation (with ``.mask`` (H, W)
        bool or None) as the depth lets it stand, or None while pending.
    head: (stamp_ns, observation, depth_m, camera, world_T_exo (4, 4)) -> world_T_head (4, 4) or None when the head
        is not visible; replaces the head TF lookup.
    on_reset: called with the new timeline's first stamp when a time jump back is confirmed (lock held).
    """
    model_depth: Callable[[int], tuple[np.ndarray, int] | None] | None = None
    model_depth_active: Callable[[], bool] = lambda: False
    person: Callable[[int, np.ndarray | None, CameraModel], object | None] | None = None
    head: Callable[..., np.ndarray | None] | None = None
    on_reset: Callable[[int], None] = lambda stamp_ns: None


@dataclass
class ImageResult:
    """What add_image did: the frames now accepted (in stamp order; the caller hands them to the person detector or
    the depth model) and the drops."""
    accepted: list[PendingFrame] = field(default_factory=list)
    drops: list[Drop] = field(default_factory=list)
    time_jump: bool = False


class FrameSynchroniser:
    """Pending exo frames and the inputs they wait for. Thread-safe: every method takes ``lock`` (share one with the
    consumer's own state so that ``admit`` runs under it).

    world_frame / head_frame: TF frames of the fixed world and the head (head_frame unused with ``sources.head``).
    exo_frame: the exo optical frame, or "" for each image's own frame id. head_T_ego: the ego optical frame in the
    head frame (default identity). depth_topic: frames need a depth image
    (``add_depth``) unless ``sources.model_depth_active()``. person_masks: frames need a mask (``add_person_mask``).
    clock: seconds, monotonic (wall time live; message time offline).
    """

    def __init__(self, config: SyncConfig, world_frame: str, head_frame: str, exo_frame: str = "",
                 head_T_ego: RigidTransform | None = None, depth_topic: bool = False, person_masks: bool = False, sources: SyncSources | None = None,
                 clock: Callable[[], float] = time.monotonic, lock: threading.Condition | None = None):
        self.config = config
        self.world_frame, self.head_frame, self.exo_frame = world_frame, head_frame, exo_frame
        self.head_T_ego = head_T_ego if head_T_ego is not None else RigidTransform.identity()
        self.depth_topic, self.person_masks = depth_topic, person_masks
        self.sources = sources or SyncSources()
        self.clock = clock
        self.lock = lock if lock is not None else threading.Condition()
        self.tf = TfBufferCore(cache_time_s=config.tf_cache_s)
        self.camera: CameraModel | None = None
        self.camera_size: tuple[int, int] | None = None          # (height, width) of the camera info
        self._camera_rejected: str | None = None                  # why the newest camera info was rejected
        self._tf_rejected: dict[str, str] = {}                    # child frame -> why its newest transform was rejected
        self._depth: dict[int, np.ndarray | str] = {}             # stamp_ns -> depth_m, or why it was rejected
        self._newest_depth_ns = -1
        self._masks: dict[int, np.ndarray] = {}                   # stamp_ns -> (H, W) bool
        self._newest_mask_ns = -1
        self._pending: dict[int, PendingFrame] = {}
        self._last_accepted_ns = -1                               # newest stamp that became a pending frame
        self._jump: list[PendingFrame] = []                       # held images of a candidate time jump back
        self._late_tf: deque = deque(maxlen=4096)                 # transforms far behind the image timeline
        self.depth_lags_ms: list[float] = []                      # model depth lags used since the last drain
        self.time_jumps = 0

    # ------------------------------------------------------------------ inputs
    def set_camera_info(self, camera: CameraModel | None, height: int = 0, width: int = 0,
                        rejected: str | None = None) -> None:
        """The exo camera (its info's size (height, width)), or ``rejected``: why the newest info was unusable (the
        last good camera stays in use)."""
        with self.lock:
            if rejected is not None:
                self._camera_rejected = rejected
                return
            self.camera, self.camera_size, self._camera_rejected = camera, (int(height), int(width)), None

    def add_depth(self, stamp_ns: int, depth_m: np.ndarray | None, rejected: str | None = None) -> None:
        """A depth image (H, W) float32 m registered to the exo image, or ``rejected``: why the image with this
        stamp cannot be used (its frame is dropped as bad_depth)."""
        with self.lock:
            self._depth[stamp_ns] = depth_m if rejected is None else rejected
            self._newest_depth_ns = max(self._newest_depth_ns, stamp_ns)
            while len(self._depth) > 2 * self.config.max_waiting + 8:
                del self._depth[min(self._depth)]

    def add_person_mask(self, stamp_ns: int, mask: np.ndarray) -> None:
        """A person mask (H, W) bool, True on the person, for the exo image with this stamp."""
        with self.lock:
            self._masks[stamp_ns] = mask
            self._newest_mask_ns = max(self._newest_mask_ns, stamp_ns)
            while len(self._masks) > 2 * self.config.max_waiting + 8:
                del self._masks[min(self._masks)]

    def add_transform(self, parent: str, child: str, stamp_ns: int, transform: RigidTransform | None,
                      static: bool = False, rejected: str | None = None) -> str | None:
        """Store parent_T_child; returns why it was rejected (None if stored). ``rejected``: the caller could not
        build the transform (e.g. a non-unit quaternion); frames that then lack it say so when dropped."""
        with self.lock:
            if rejected is None:
                try:
                    self.tf.set_transform(parent, child, stamp_ns, transform, static=static)
                except (TfError, ValueError) as e:
                    rejected = str(e)
            if rejected is not None:
                self._tf_rejected[child.lstrip("/")] = f"transform {parent} -> {child} rejected: {rejected}"
                return rejected
            self._tf_rejected.pop(child.lstrip("/"), None)
            if not static and self._last_accepted_ns - stamp_ns > self._jump_ns:
                self._late_tf.append((parent, child, stamp_ns, transform))
            return None

    def add_image(self, stamp_ns: int, rgb: np.ndarray, frame_id: str) -> ImageResult:
        """An exo image (H, W, 3) uint8; see the module docstring for the time-jump rule."""
        result = ImageResult()
        frame_id = self.exo_frame or frame_id
        with self.lock:
            now = self.clock()
            frame = PendingFrame(stamp_ns, rgb, frame_id, now)
            if not frame_id:
                result.drops.append(Drop([stamp_ns], "bad_image",
                                         "exo image has an empty header.frame_id and inputs.exo_frame is not set"))
            elif stamp_ns < 0:
                result.drops.append(Drop([stamp_ns], "bad_image", f"negative stamp {stamp_ns * 1e-9:.6f} s"))
            elif stamp_ns in self._pending or stamp_ns == self._last_accepted_ns \
                    or any(f.stamp_ns == stamp_ns for f in self._jump):
                result.drops.append(Drop([stamp_ns], "duplicate_stamp",
                                         f"an image with stamp {stamp_ns * 1e-9:.6f} s was already taken"))
            elif self._last_accepted_ns >= 0 and self._last_accepted_ns - stamp_ns > self._jump_ns:
                self._hold_jump_candidate(frame, result)
            elif stamp_ns <= self._last_accepted_ns:
                result.drops.append(Drop([stamp_ns], "out_of_order_stamp",
                                         f"stamp {stamp_ns * 1e-9:.6f} s is not after the last accepted frame "
                                         f"{self._last_accepted_ns * 1e-9:.6f} s"))
            else:
                if self._jump:                   # the old timeline goes on: the held images were strays
                    result.drops.append(self._stray_drop())
                self._accept(frame, result)
        return result

    def head_hint(self, stamp_ns: int, frame_id: str) -> HeadHint | None:
        """Where the head TF puts the head frame's origin in the exo image with this stamp and frame id, for the
        person detector (which person is the demonstrator). None with the head estimated from the image
        (``sources.head``), without a camera info or the transforms, or with the head behind the camera. Head TF
        that has not reached the stamp yet (it often arrives after the image) is taken at its newest, if that is at
        most ``HINT_TF_AGE_S`` older."""
        if self.sources.head is not None:
            return None
        exo_frame = self.exo_frame or frame_id
        with self.lock:
            camera = self.camera
            if camera is None or not exo_frame:
                return None
            try:
                try:
                    exo_T_head = self.tf.lookup_transform(exo_frame, self.head_frame, stamp_ns)
                except ExtrapolationError as e:
                    if e.direction != "future" or e.requested_ns - e.newest_ns > HINT_TF_AGE_S * 1e9:
                        return None
                    exo_T_head = self.tf.lookup_transform(exo_frame, self.head_frame, 0)
            except TfError:
                return None
        head_m = np.asarray(exo_T_head.as_matrix())[:3, 3]
        if not head_m[2] > 0.05:
            return None
        uv, valid = camera.project(torch.as_tensor(head_m, dtype=torch.float32))
        if not bool(valid):
            return None
        u, v = (float(x) for x in uv)
        return HeadHint(uv_px=(u, v), px_per_m=float(camera.fx) / float(head_m[2]))

    # ---------------------------------------------------------------- time jumps
    @property
    def _jump_ns(self) -> int:
        return int(self.config.time_jump_back_s * 1e9)

    def _hold_jump_candidate(self, frame: PendingFrame, result: ImageResult) -> None:
        if self._jump and not (0 < frame.stamp_ns - self._jump[-1].stamp_ns <= max(self._jump_ns, 1)):
            result.drops.append(self._stray_drop())    # not a continuation of the held images: start again
        self._jump.append(frame)
        if len(self._jump) < self.config.time_jump_confirm_frames:
            return
        held, self._jump = self._jump, []
        first_ns = held[0].stamp_ns
        stale = sorted(s for s in self._pending if s > first_ns)
        for s in stale:
            del self._pending[s]
        if stale:
            result.drops.append(Drop(stale, "time_jump_back", f"time jumped back to {first_ns * 1e-9:.3f} s while "
                                                             "the frame waited for inputs"))
        # TF: start the new timeline with what already arrived for it; static transforms stay.
        self.tf.clear()
        newest_ns = held[-1].stamp_ns + self._jump_ns
        for parent, child, stamp, transform in self._late_tf:
            if stamp <= newest_ns:
                self.tf.set_transform(parent, child, stamp, transform)
        self._late_tf.clear()
        self._depth = {s: d for s, d in self._depth.items() if s <= newest_ns}
        self._masks = {s: m for s, m in self._masks.items() if s <= newest_ns}
        self._newest_depth_ns = max(self._depth, default=-1)
        self._newest_mask_ns = max(self._masks, default=-1)
        self._last_accepted_ns = -1
        self.time_jumps += 1
        result.time_jump = True
        self.sources.on_reset(first_ns)
        for f in held:
            self._accept(f, result)

    def _stray_drop(self) -> Drop:
        held, self._jump = self._jump, []
        return Drop([f.stamp_ns for f in held], "out_of_order_stamp",
                    f"{len(held)} image(s) more than sync.time_jump_back_s = {self.config.time_jump_back_s} s behind "
                    f"the stream, not confirmed as a time jump by {self.config.time_jump_confirm_frames} in a row")

    def _accept(self, frame: PendingFrame, result: ImageResult) -> None:
        self._pending[frame.stamp_ns] = frame
        self._last_accepted_ns = frame.stamp_ns
        result.accepted.append(frame)
        if len(self._pending) > self.config.max_waiting:
            overflow = sorted(self._pending)[:-self.config.max_waiting]
            for s in overflow:
                del self._pending[s]
            result.drops.append(Drop(overflow, "too_many_waiting", f"more than sync.max_waiting = "
                                                                   f"{self.config.max_waiting} frames waited"))
            result.accepted = [f for f in result.accepted if f.stamp_ns not in overflow]

    # ------------------------------------------------------------------ output
    def resolve(self, admit: Callable[[ExoFrame], bool]) -> list[Drop]:
        """Hand complete frames to ``admit`` in stamp order (it returns False when it has no room; the frame then
        waits) and drop frames that can no longer complete or waited too long. Call after every input and
        periodically (timeouts)."""
        drops: list[Drop] = []
        with self.lock:
            now = self.clock()
            blocked = False                 # an older complete frame found no room: later ones wait behind it
            for stamp in sorted(self._pending):
                p = self._pending[stamp]
                outcome = p.complete or self._try_complete(p)   # complete once: the head filter sees it once
                if isinstance(outcome, ExoFrame):
                    if not blocked and admit(outcome):
                        del self._pending[stamp]
                        continue
                    blocked = True
                    if p.complete is None:
                        p.complete, p.complete_s = outcome, now
                    p.waiting_for = ("generator_busy", "room in the generator queue")
                    if self.config.overload == "keep_all" or now - p.complete_s <= self.config.timeout_s:
                        continue
                    outcome = ("generator_busy", f"the generator queue stayed full for sync.timeout_s = "
                                                 f"{self.config.timeout_s} s")
                elif outcome is None:
                    if now - p.arrived_s <= self.config.timeout_s:
                        break               # may still complete; later frames keep their order behind it
                    code, what = p.waiting_for
                    outcome = (code, f"waited sync.timeout_s = {self.config.timeout_s} s for {what}")
                del self._pending[stamp]
                drops.append(Drop([stamp], *outcome))
        return drops

    def flush(self) -> list[Drop]:
        """End of stream: every frame still waiting (or held as a time-jump candidate) is dropped, except, with
        overload 'keep_all', complete frames waiting for room."""
        drops = []
        with self.lock:
            if self._jump:
                drops.append(self._stray_drop())
            for p in sorted(self._pending.values(), key=lambda p: p.stamp_ns):
                if p.complete is not None and self.config.overload == "keep_all":
                    continue            # complete, waiting for room: resolve admits it as the queue drains
                drops.append(Drop([p.stamp_ns], "end_of_stream",
                                  f"stream ended while the frame waited for {p.waiting_for[1]}"))
                del self._pending[p.stamp_ns]
        return drops

    def waiting(self) -> int:
        """Frames waiting (for inputs, for room, or held as time-jump candidates)."""
        with self.lock:
            return len(self._pending) + len(self._jump)

    def pending(self, stamp_ns: int) -> PendingFrame | None:
        with self.lock:
            return self._pending.get(stamp_ns)

    def drain_depth_lags_ms(self) -> list[float]:
        with self.lock:
            lags, self.depth_lags_ms = self.depth_lags_ms, []
        return lags

    # ---------------------------------------------------------------- one frame
    def _try_complete(self, p: PendingFrame) -> ExoFrame | tuple[str, str] | None:
        """The complete frame, a (code, detail) drop, or None to keep waiting (p.waiting_for says for what)."""
        if self.camera is None:
            if self._camera_rejected:
                p.waiting_for = ("camera_info_rejected", f"a usable camera info ({self._camera_rejected})")
            else:
                p.waiting_for = ("camera_info_missing", "camera info on exo/camera_info")
            return None
        h, w = p.rgb.shape[:2]
        if self.camera_size != (h, w):
            return ("camera_info_mismatch", f"image is {w}x{h} but camera info says "
                                            f"{self.camera_size[1]}x{self.camera_size[0]}")
        depth_m = None
        if self.sources.model_depth is not None and self.sources.model_depth_active():
            estimate = self.sources.model_depth(p.stamp_ns)
            if estimate is None:
                p.waiting_for = ("depth_missing", "a depth estimate within depth.max_lag_s from the depth model")
                return None
            depth_m, estimated_ns = estimate
            if depth_m.shape != (h, w):
                return ("depth_mismatch", f"model depth is {depth_m.shape[1]}x{depth_m.shape[0]}, image is {w}x{h}")
            self.depth_lags_ms.append((p.stamp_ns - estimated_ns) * 1e-6)
        elif self.depth_topic:
            tol = int(self.config.depth_tolerance_s * 1e9)
            near = [s for s in self._depth if abs(s - p.stamp_ns) <= tol]
            if not near:
                if self._newest_depth_ns > p.stamp_ns + tol:
                    return ("depth_missing", f"no depth image within sync.depth_tolerance_s = "
                                             f"{self.config.depth_tolerance_s} s, and newer depth has arrived")
                p.waiting_for = ("depth_missing",
                                 f"a depth image within {self.config.depth_tolerance_s} s on exo/depth/image_raw")
                return None
            depth_m = self._depth[min(near, key=lambda s: abs(s - p.stamp_ns))]
            if isinstance(depth_m, str):
                return ("bad_depth", depth_m)
            if depth_m.shape != (h, w):
                return ("depth_mismatch", f"depth is {depth_m.shape[1]}x{depth_m.shape[0]}, image is {w}x{h}")
        observation, person_mask = None, None
        if self.sources.person is not None:
            observation = self.sources.person(p.stamp_ns, depth_m, self.camera)
            if observation is None:
                p.waiting_for = ("person_missing", "the person detector's result")
                return None
            person_mask = observation.people_mask
        elif self.person_masks:
            person_mask = self._masks.get(p.stamp_ns)
            if person_mask is None:
                if self._newest_mask_ns > p.stamp_ns:
                    return ("person_mask_missing", "no mask with the image's stamp, and newer masks have arrived")
                p.waiting_for = ("person_mask_missing", "a mask with the image's stamp on exo/person_mask")
                return None
        if person_mask is not None and person_mask.shape != (h, w):
            return ("person_mask_mismatch", f"person mask is {person_mask.shape[1]}x{person_mask.shape[0]}, "
                                            f"image is {w}x{h}")
        try:
            world_T_exo = self.tf.lookup_transform(self.world_frame, p.frame_id, p.stamp_ns)
            world_T_head = None
            if self.sources.head is None:
                world_T_head = self.tf.lookup_transform(self.world_frame, self.head_frame, p.stamp_ns)
        except TfError as e:
            rejected = [why for child, why in self._tf_rejected.items()
                        if child in (p.frame_id.lstrip("/"), self.head_frame.lstrip("/")) or f" {child}" in str(e)]
            if isinstance(e, ExtrapolationError) and e.direction == "past":
                if not self.tf.could_resolve(e):
                    return ("tf_extrapolation_past", f"{e}; older than sync.tf_cache_s = {self.config.tf_cache_s} s "
                                                     "before the newest")
                # A transform delayed on its way (TF from another process, a bag logged at receive time) may
                # still come: wait for it like for a missing one, up to sync.timeout_s.
                p.waiting_for = ("tf_extrapolation_past", f"TF: {e}")
                return None
            if rejected:
                p.waiting_for = ("tf_rejected", f"TF: {e}; {rejected[0]}")
            else:
                p.waiting_for = ("tf_unavailable", f"TF: {e}")
            return None
        if self.sources.head is not None:
            head = self.sources.head(p.stamp_ns, observation, depth_m, self.camera, world_T_exo.as_matrix())
            if head is None:
                return ("head_not_visible", "no head pose from the exo image at or within head.hold_s before it")
            world_T_head = RigidTransform.from_matrix(head)
        return ExoFrame(stamp_ns=p.stamp_ns, rgb=p.rgb, depth_m=depth_m, camera=self.camera,
                        world_T_exo=world_T_exo.as_matrix(), world_T_ego=(world_T_head @ self.head_T_ego).as_matrix(),
                        exo_frame_id=p.frame_id, person_mask=person_mask)
