"""The egox engine: every component of the node wired together, without ROS (no rclpy).

Inputs (decoded images, depth, camera, transforms, person masks) go in with their stamps; the engine synchronises
them (core/runtime/synchroniser.py), runs the person detector and the depth models on their own workers, estimates the
head from the exo image when asked to, keeps the rolling window, renders priors and runs the generator clip by clip, and
reports everything through an ``EngineEvents`` object: clips, drops with their reason, person masks, head
estimates, input problems. The ROS node (ros/node.py) is a thin shell over it that decodes messages and publishes
events; ``egox process`` drives it from a bag without DDS.

Two ways to run the generator: ``start()`` runs it on the engine's own worker threads (the live node: the fusion of
the next clip beside the splat, generator and publishing of this one), or the caller runs ``generate_ready()`` itself
(offline, deterministic; the same priors, one clip after the other).

Long on purpose (about 750 lines): it is one object, EgoEngine, whose state (window, queues, workers, head
tracker, frame accounting) every input and every output path touches.
"""
from __future__ import annotations

import threading
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import torch

from egox_ros.core.config import InputsConfig, OutputsConfig, RuntimeConfig
from egox_ros.core.demonstrator import make_person_detector
from egox_ros.core.demonstrator.detector import SKIPPED, AsyncPersonDetector, resolve_person_source
from egox_ros.core.demonstrator.estimate import is_person_sized, measure_person_head
from egox_ros.core.demonstrator.head_tracker import HeadEstimate, HeadTracker
from egox_ros.core.demonstrator.landmarks import PersonObservation
from egox_ros.core.demonstrator.mask_depth import refine_observation
from egox_ros.core.depth.estimator import make_depth_estimator
from egox_ros.core.egox.weights import WeightsError
from egox_ros.core.generators import EgoGenerator, PriorGenerator, make_generator
from egox_ros.core.geometry.cameras import CameraModel, PinholeCamera
from egox_ros.core.geometry.frames import ExoFrame, FrameWindow
from egox_ros.core.geometry.transforms import RigidTransform
from egox_ros.core.runtime.pipeline import ClipOutput, EgoPipeline, PriorRenderer, ego_camera_from_config
from egox_ros.core.runtime.synchroniser import Drop, FrameSynchroniser, ImageResult, SyncSources

HELD_FRAMES = 256   # frames between person detections remembered until they complete (8.5 s at 30 Hz)
FUSED_CLIPS = 1     # start(): fused clips waiting for the draw stage (one keeps both stages busy, and latency low)

ENGINE_SECTIONS = ("inputs", "outputs", "sync", "runtime", "depth", "depth_alignment", "person", "head",
                   "ego_camera", "window", "fusion", "prior", "generator", "egox")


class EngineEvents:
    """What the engine reports; override what you need (every method may be called from a worker thread)."""

    def dropped(self, drop: Drop) -> None:
        """Frames dropped for one reason (README's list)."""

    def clip(self, output: ClipOutput, latency_s: float) -> None:
        """A generated clip: output.request.frames / .priors and output.result.rgb / .valid, oldest first."""

    def person_mask(self, stamp_ns: int, mask: np.ndarray, frame_id: str) -> None:
        """The person detector's mask (H, W) bool of the exo image with this stamp."""

    def head(self, stamp_ns: int, estimate: HeadEstimate) -> None:
        """The head estimated from the exo image (inputs.head_source 'exo'), at a frame's stamp."""

    def note(self, code: str, detail: str, count: int = 1) -> None:
        """A problem with an input that is not a frame (a rejected transform, a failed depth model, ...)."""

    def log(self, level: str, text: str) -> None:
        """'info' / 'warning' / 'error' messages for the operator."""

    def progress(self) -> None:
        """The frame accounting changed (see EgoEngine.accounting)."""


@dataclass
class FrameAccounting:
    """Counts of the frame life cycle; invariant: received == published + dropped + waiting + queued.
    `lost` images never reached the engine (counted by the caller, e.g. from DDS sequence numbers)."""
    received: int = 0
    published: int = 0
    lost: int = 0
    dropped: Counter = field(default_factory=Counter)   # reason code -> frames
    last_received_ns: int = 0
    received_times: deque = field(default_factory=lambda: deque(maxlen=1000))    # engine-clock arrival times [s]
    published_times: deque = field(default_factory=lambda: deque(maxlen=1000))


def propagate_mask(mask: np.ndarray, previous: np.ndarray, steps: float) -> np.ndarray:
    """A person mask (H, W) bool carried ``steps`` detection intervals ahead along the track from ``previous`` (the
    detection before it): shifted by steps times the move of the mask's centroid between the two (whole pixels),
    joined with the mask itself (the person is on the way between). The mask unchanged when either is empty or
    the move is more than a quarter of the image (a new person, not a track)."""
    now, before = _centroid(mask), _centroid(previous)
    if now is None or before is None:
        return mask
    h, w = mask.shape
    move_y, move_x = now[0] - before[0], now[1] - before[1]
    if abs(move_y) > h / 4 or abs(move_x) > w / 4:
        return mask
    dy, dx = int(round(move_y * steps)), int(round(move_x * steps))
    if dy == 0 and dx == 0:
        return mask
    out = mask.copy()
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] |= mask[max(-dy, 0):h + min(-dy, 0),
                                                                     max(-dx, 0):w + min(-dx, 0)]
    return out


def _centroid(mask: np.ndarray) -> tuple[float, float] | None:
    """Mean (row, column) of a (H, W) bool mask's pixels, None when empty (from its row and column counts: a
    fraction of np.nonzero's time on a whole image)."""
    count = int(np.count_nonzero(mask))
    if not count:
        return None
    per_row, per_col = np.count_nonzero(mask, axis=1), np.count_nonzero(mask, axis=0)
    return (float(per_row @ np.arange(mask.shape[0])) / count, float(per_col @ np.arange(mask.shape[1])) / count)


def head_to_ego(outputs: OutputsConfig) -> RigidTransform:
    """The ego optical frame in the head frame, from outputs.head_to_ego_xyz_m / _rpy_rad."""
    return RigidTransform.from_xyz_rpy(outputs.head_to_ego_xyz_m, outputs.head_to_ego_rpy_rad)


class EgoEngine:
    """See the module docstring. ``configs``: section name -> config object, for every name in ENGINE_SECTIONS
    (what ros/config.py's parameter_sections() builds from the node's parameters). ``clock``: seconds, monotonic;
    timeouts and the depth topic's silence are measured on it (wall time live, message time offline).
    Raises ValueError for inconsistent settings and when a depth or person model cannot load."""

    def __init__(self, configs: dict[str, object], events: EngineEvents | None = None,
                 clock: Callable[[], float] = time.monotonic, generator: EgoGenerator | None = None):
        """generator: use this one (prepared or not) instead of building the configured one, e.g. to keep a loaded
        model across engines; generator.backend is then not applied."""
        try:
            self._build(configs, events or EngineEvents(), clock, generator)
        except BaseException:
            for worker in (getattr(self, "depth_estimator", None), getattr(self, "person_detector", None)):
                if worker is not None:         # models that loaded before a later part failed
                    worker.close()
            raise

    def _build(self, configs: dict[str, object], events: EngineEvents, clock: Callable[[], float],
               generator: EgoGenerator | None) -> None:
        self.events = events
        self.clock = clock
        self.inputs: InputsConfig = configs["inputs"]
        self.sync = configs["sync"]
        self.depth_config, self.head_config = configs["depth"], configs["head"]
        generator_config = configs["generator"]
        runtime: RuntimeConfig = configs["runtime"]
        live = self.sync.overload == "drop_oldest"     # the live node; egox replay / process keep every frame
        if runtime.torch_threads:   # before any model loads; every core starves the callbacks on a busy machine
            torch.set_num_threads(runtime.torch_threads)
        self._worker: threading.Thread | None = None
        self.depth_estimator = self.person_detector = None
        self.person_config = configs["person"]
        self.person_config.source = resolve_person_source(self.person_config)
        if self.inputs.head_source == "exo" and self.person_config.source != "mediapipe":
            raise ValueError(f"inputs.head_source 'exo' needs person.source 'mediapipe' (the head keypoints come "
                             f"from it); person.source is {self.person_config.source!r}")
        # Depth models load here (a missing or incompatible folder raises, saying why). A 'topic' source without the
        # topic (inputs.use_depth false) has no depth and no fallback.
        if self.depth_config.source != "topic" or self.inputs.use_depth:
            self.depth_estimator = make_depth_estimator(self.depth_config, configs["depth_alignment"],
                                                        on_result=self._on_depth_estimate)
        self._last_depth_s: float | None = None     # the depth topic's silence: images arriving without depth
        self._first_image_s: float | None = None
        self._last_image_s: float | None = None
        self._flush_after_workers = False
        # The demonstrator: person masks (a detector on its own worker, or a mask input) and, with head_source
        # 'exo', the head pose estimated from the detector's head keypoints.
        detector = make_person_detector(self.person_config)
        # Live (sync.overload 'drop_oldest') the detector skips images it cannot reach within half the sync
        # timeout, holding the newest mask, rather than letting their frames time out as person_missing.
        self.person_detector = None if detector is None else AsyncPersonDetector(
            detector, capacity=self.sync.max_waiting, on_result=self._on_person,
            max_lag_s=self.sync.timeout_s / 2 if live else None)
        # runtime.person_stride: the detector sees every n-th accepted image; the others hold (_held_observation).
        # Live with the default (0), twice as few while frames are being dropped for lack of time (overloaded).
        self.person_stride = runtime.person_stride or (3 if live else 1)
        self.person_stride_overloaded = 2 * self.person_stride if live and not runtime.person_stride \
            else self.person_stride
        self._overload_ns: int | None = None             # stamp of the newest frame that replaced one in the queue
        self._since_detected = 0                         # accepted images since the last one submitted
        self._submitted: deque[int] = deque(maxlen=8)    # stamps submitted to the detector, oldest first
        # The exo frame id of each image submitted to the detector, for its mask: the frame may be complete (and
        # no longer pending) by the time the detector's callback runs, since resolve() on another thread can take
        # the result as soon as it is stored.
        self._detector_frame_ids: OrderedDict[int, str] = OrderedDict()
        self._held: dict[int, int] = {}                  # stamp of a frame not submitted -> the stamp it holds
        self._held_masks: dict[int, PersonObservation] = {}   # the newest held observations made
        self._held_reports: list[tuple[int, np.ndarray, str]] = []   # their masks, for events.person_mask
        self._not_a_person: deque[int] = deque(maxlen=8)  # detections whose frame found them not person-sized
        self.head_tracker = HeadTracker(self.head_config) if self.inputs.head_source == "exo" else None
        self.last_head: HeadEstimate | None = None
        self.head_counts: Counter = Counter()            # measured / held / not_visible / depth_rejected
        self.ego_camera: PinholeCamera = ego_camera_from_config(configs["ego_camera"])
        self.generator_problem = ""                      # why the configured generator is not in use
        self.prior_clip_frames = generator_config.prior_clip_frames     # of the prior generator, also as fallback
        try:
            self.generator: EgoGenerator = generator or make_generator(generator_config, configs["egox"])
            self.generator.check_ego_camera(self.ego_camera)
            self.generator_state = "loading"
        except (WeightsError, ValueError) as e:
            self.generator = self._fall_back(generator_config.name, e)
        if generator_config.backend == "ray" and self.generator_state == "loading" and generator is None:
            from egox_ros.core.generators.pool import RayGeneratorPool
            self.generator = RayGeneratorPool(self.generator, generator_config, configs["egox"],
                                              generator_config.replicas, generator_config.ray_address,
                                              runtime.torch_threads)
        fusion_config, window_config = configs["fusion"], configs["window"]
        self.pipeline = EgoPipeline(PriorRenderer(configs["prior"], fusion_config, self.ego_camera,
                                                  generator_config.device,
                                                  splat_threads=runtime.splat_threads),
                                    self.generator)
        self.fusion_frames = min(fusion_config.window_frames, window_config.max_frames)
        self.window = FrameWindow(window_config)
        self.queue_capacity = max(self.sync.queue_capacity, self.generator.clip_frames)

        # State shared by the input calls, the depth / person workers' result callbacks and the generator worker;
        # the synchroniser shares the lock, so its admit() call runs under it.
        self.lock = threading.Condition()
        self.frames = FrameSynchroniser(
            self.sync, self.inputs.world_frame, self.inputs.head_frame, self.inputs.exo_frame,
            head_to_ego(configs["outputs"]), depth_topic=self.depth_topic,
            person_masks=self.person_config.source == "topic",
            sources=SyncSources(
                model_depth=None if self.depth_estimator is None else self._model_depth,
                model_depth_active=self.depth_from_model,
                person=None if self.person_detector is None else self._person_observation,
                head=None if self.head_tracker is None else self._estimate_head,
                on_reset=self._on_reset),
            clock=clock, lock=self.lock)
        self._queue: deque[tuple[ExoFrame, list[ExoFrame]]] = deque()   # frame, its fusion context
        self._in_generator = 0                           # frames taken from the queue, not yet out
        self._replaced: list[int] = []                   # stamps dropped from the full queue for newer frames
        self._replaced_recent: set[int] = set()          # such stamps still in the window, kept out of contexts
        self._in_flight: deque = deque()                 # pool: ((handle, rendered clip), started), oldest first
        self._fused: deque = deque()                     # start(): (prepared clip, started) for the draw stage
        self._fusion_worker: threading.Thread | None = None
        self._flush_requested = False
        self._running = True
        self.stats = FrameAccounting()
        self.notes: Counter = Counter()                  # non-frame events (bad depth, ...) for diagnostics

    def _on_reset(self, _stamp_ns: int) -> None:
        """A confirmed time jump back (lock held): the window starts over."""
        self.window.clear()
        self._replaced_recent.clear()

    # ------------------------------------------------------------------ inputs
    @property
    def depth_topic(self) -> bool:
        """Whether depth images come in through add_depth (inputs.use_depth with depth.source 'topic')."""
        return self.inputs.use_depth and self.depth_config.source == "topic"

    def set_camera_info(self, camera: CameraModel | None, height: int = 0, width: int = 0,
                        rejected: str | None = None) -> None:
        """The exo camera and its info's size, or why the newest info was unusable."""
        if rejected is not None:
            self.note("bad_camera_info", f"camera info rejected: {rejected}")
        self.frames.set_camera_info(camera, height, width, rejected)
        self.resolve()

    def add_depth(self, stamp_ns: int, depth_m: np.ndarray | None, rejected: str | None = None) -> None:
        """A depth image (H, W) float32 m registered to the exo image, or why the one with this stamp is unusable."""
        self._last_depth_s = self.clock()
        if rejected is not None:
            self.note("bad_depth", f"depth image at {stamp_ns * 1e-9:.3f} s rejected: {rejected}")
            self.frames.add_depth(stamp_ns, None, rejected=f"depth image rejected: {rejected}")
        else:
            if not np.isfinite(depth_m).any():
                self.note("depth_without_valid_pixels", f"depth image at {stamp_ns * 1e-9:.3f} s has no valid "
                                                        "pixel (all zero / NaN): its frame gets an empty prior")
            self.frames.add_depth(stamp_ns, depth_m)
        self.resolve()

    def add_person_mask(self, stamp_ns: int, mask: np.ndarray) -> None:
        """A person mask (H, W) bool from another segmenter (person.source 'topic')."""
        self.frames.add_person_mask(stamp_ns, mask)
        self.resolve()

    def add_transforms(self, transforms: list[tuple[str, str, int, RigidTransform | None, str | None]],
                       static: bool = False, what: str = "bad_tf") -> None:
        """(parent, child, stamp_ns, parent_T_child or None, why it could not be built or None) per transform."""
        for parent, child, stamp_ns, transform, problem in transforms:
            problem = self.frames.add_transform(parent, child, stamp_ns, transform, static=static, rejected=problem)
            if problem is not None:
                self.note(what, f"transform {parent} -> {child} rejected: {problem}")
        self.resolve()

    def add_image(self, stamp_ns: int, rgb: np.ndarray | None, frame_id: str, rejected: str | None = None) -> None:
        """An exo image (H, W, 3) uint8 RGB, or why the one with this stamp could not be decoded (bad_image)."""
        now = self.clock()
        with self.lock:     # received and where the frame went, in one step (the accounting invariant)
            self.stats.received += 1
            self.stats.received_times.append(now)
            self.stats.last_received_ns = max(self.stats.last_received_ns, stamp_ns)
            if rejected is None:
                result = self.frames.add_image(stamp_ns, rgb, frame_id)
            else:
                result = ImageResult(drops=[Drop([stamp_ns], "bad_image", rejected)])
            self._count_drops(result.drops)
        self._last_image_s = now
        if self._first_image_s is None:
            self._first_image_s = now
        if rejected is not None:
            self._report_drops(result.drops)
            return
        if result.time_jump:
            for worker in (self.depth_estimator, self.person_detector, self.head_tracker):
                if worker is not None:
                    worker.reset()
            with self.lock:
                self._since_detected = 0
                self._overload_ns = None
                self._submitted.clear()
                self._held.clear()
                self._held_masks.clear()
                self._not_a_person.clear()
            self.events.log("warning", f"time jumped back to {result.accepted[0].stamp_ns * 1e-9:.3f} s (confirmed "
                                       f"by {self.sync.time_jump_confirm_frames} exo images): TF, window and sync "
                                       "reset")
            self.note("time_jump_back", "time jump back", log=False)
        for frame in result.accepted:   # accepted frames only, in stamp order; depth follows the person result
            if self.person_detector is not None and self._detect_next(frame.stamp_ns):
                self._detector_frame_ids[frame.stamp_ns] = frame.frame_id
                while len(self._detector_frame_ids) > 4 * self.sync.max_waiting:
                    self._detector_frame_ids.popitem(last=False)
                self.person_detector.submit(frame.stamp_ns, frame.rgb,
                                            self.frames.head_hint(frame.stamp_ns, frame.frame_id))
            elif self.depth_from_model():
                self.depth_estimator.submit(frame.stamp_ns, frame.rgb)
        self._report_drops(result.drops)
        self.resolve()

    def count_lost(self, images: int) -> None:
        """Exo images lost before they reached the engine (counted, never seen)."""
        with self.lock:
            self.stats.lost += images

    def flush(self) -> None:
        """End of stream: drop frames still waiting for inputs and let the generator finish the last, partial
        clip (padded). Waits for the depth models and the person detector first, so frames waiting for their
        results still get them."""
        with self.lock:
            if self.workers_busy():
                self._flush_after_workers = True
                return
            drops = self.frames.flush()
            self._count_drops(drops)
            self._flush_requested = True
            self.lock.notify_all()
        self._report_drops(drops)
        self.events.progress()

    def tick(self) -> None:
        """Call periodically (e.g. 10 Hz): timeouts of waiting frames, and a flush that waited for the workers."""
        self._flush_if_workers_idle()
        self.resolve()

    # ---------------------------------------------------------------- depth and person workers
    def depth_from_model(self) -> bool:
        """Whether frames now take their depth from the model: source model/video, or a depth topic that has been
        silent for depth.topic_timeout_s while images kept arriving."""
        if self.depth_estimator is None:
            return False
        if self.depth_config.source != "topic":
            return True
        if self._last_image_s is None:
            return False
        since = self._last_depth_s if self._last_depth_s is not None else self._first_image_s
        return self._last_image_s - since > self.depth_config.topic_timeout_s

    def _model_depth(self, stamp_ns: int) -> tuple[np.ndarray, int] | None:
        estimate = self.depth_estimator.estimate_for(stamp_ns, self.depth_config.max_lag_s)
        return None if estimate is None else (estimate.depth_m, estimate.stamp_ns)

    def _on_depth_estimate(self, error: str | None) -> None:
        """The depth worker finished an image (its thread)."""
        if error is not None:
            self.note("depth_model_failed", f"depth model failed: {error}")
        self.resolve()

    def workers_busy(self) -> bool:
        """Whether the depth models or the person detector still work on (or have queued) an image, or still
        deliver a result (their callbacks count as work: a caller that waits for idle workers, like egox process,
        never runs alongside them). A flush that waited for them is done by the next tick()."""
        return any(w is not None and w.busy_or_pending() for w in (self.depth_estimator, self.person_detector))

    def _flush_if_workers_idle(self) -> None:
        with self.lock:
            flush = self._flush_after_workers and not self.workers_busy()
            if flush:
                self._flush_after_workers = False
        if flush:
            self.flush()

    def _on_person(self, stamp_ns: int, observation: PersonObservation, error: str | None) -> None:
        """The person detector finished an image (its thread): report the mask, hand the image to the depth
        models with the person left out of their alignment fit, and let frames waiting for it complete."""
        if error == SKIPPED:
            self.note("person_detector_skipped", f"image at {stamp_ns * 1e-9:.3f} s: {error}", log=False)
        elif error is not None:
            self.note("person_detector_failed", f"person detector failed at {stamp_ns * 1e-9:.3f} s: {error}")
        pending = self.frames.pending(stamp_ns)
        people = observation.people_mask
        if pending is not None and self.depth_from_model():
            self.depth_estimator.submit(stamp_ns, pending.rgb, static_mask=None if people is None else ~people)
        frame_id = self._detector_frame_ids.pop(stamp_ns, None)
        if people is not None and frame_id is not None:
            self.events.person_mask(stamp_ns, people, frame_id)
        self.resolve()

    def _detect_next(self, stamp_ns: int) -> bool:
        """Whether the detector gets this accepted image (every person_stride-th, the first after a reset; every
        person_stride_overloaded-th within 1 s of a frame replaced in the full queue); if not, the frame will hold
        the observation of the newest image submitted before it."""
        with self.lock:
            overloaded = self._overload_ns is not None and 0 <= stamp_ns - self._overload_ns < 1_000_000_000
            stride = self.person_stride_overloaded if overloaded else self.person_stride
            if self._since_detected >= stride or not self._submitted:
                self._since_detected = 1
                self._submitted.append(stamp_ns)
                return True
            self._since_detected += 1
            self._held[stamp_ns] = self._submitted[-1]
            if len(self._held) > HELD_FRAMES:      # frames dropped before they completed (stamp order: oldest first)
                del self._held[next(iter(self._held))]
            return False

    def _person_observation(self, stamp_ns: int, depth_m: np.ndarray | None,
                            camera: CameraModel) -> PersonObservation | None:
        """The detector's observation of a frame whose depth is known (lock held), None while pending: a
        detection the depth shows to be far smaller or larger than a person (demonstrator/estimate.py
        is_person_sized) is no person: no mask, no head (counted as the note 'not_a_person'). The mask loses what
        the depth shows is not the person (person.depth_tolerance_m, demonstrator/mask_depth.py). A frame the
        detector did not get (runtime.person_stride) holds the observation of the image submitted before it."""
        source_ns = self._held.get(stamp_ns)
        if source_ns is not None:
            if stamp_ns not in self._held_masks:   # asked again while the frame waits for other inputs: kept
                observation = self._held_observation(stamp_ns, source_ns)
                if observation is None:
                    return None
                self._held_masks[stamp_ns] = observation
                while len(self._held_masks) > 16:
                    del self._held_masks[next(iter(self._held_masks))]
                pending = self.frames.pending(stamp_ns)
                people = observation.people_mask
                if people is not None and pending is not None:      # reported by resolve(), unlocked
                    self._held_reports.append((stamp_ns, people, pending.frame_id))
            return self._held_masks[stamp_ns]
        observation = self.person_detector.result_for(stamp_ns)
        if observation is None:
            return None
        if observation.others:      # other people the depth shows not person-sized are left out the same way
            observation = replace(observation, others=tuple(
                o for o in observation.others if is_person_sized(o, camera, depth_m, self.head_config)))
        if not observation.found or is_person_sized(observation, camera, depth_m, self.head_config):
            return refine_observation(observation, depth_m, self.person_config)
        self._not_a_person.append(stamp_ns)
        self.note("not_a_person", f"detection at {stamp_ns * 1e-9:.3f} s is not person-sized in the depth",
                  log=False)
        return PersonObservation(mask=None, head=None, detector_ms=observation.detector_ms,
                                 others=observation.others)

    def _held_observation(self, stamp_ns: int, source_ns: int) -> PersonObservation | None:
        """The observation of a frame the detector skipped by stride (lock held): the mask of the image submitted
        before it (None while that is pending), moved along the person's track and joined with where it was, so
        that it still covers a moving person; no head (the head tracker holds it). A detection its own frame
        found not person-sized gives no mask here either."""
        source = self.person_detector.result_for(source_ns)
        if source is None:
            return None
        if source.mask is None or source_ns in self._not_a_person:
            return PersonObservation(mask=None, head=None, others=source.others)
        mask = source.mask
        earlier = [s for s in self._submitted if s < source_ns]
        before = self.person_detector.result_for(earlier[-1]) if earlier else None
        if source.detector_ms > 0 and before is not None and before.detector_ms > 0 and before.mask is not None:
            mask = propagate_mask(mask, before.mask, (stamp_ns - source_ns) / (source_ns - earlier[-1]))
        return PersonObservation(mask=mask, head=None, others=source.others)

    def _estimate_head(self, stamp_ns: int, observation: PersonObservation, depth_m: np.ndarray | None,
                       camera: CameraModel, world_T_exo: np.ndarray) -> np.ndarray | None:
        """world_T_head (4, 4) of a frame whose other inputs are complete (stamp order, once per frame; lock held):
        measured from the whole body (or the head keypoints), filtered, held for head.hold_s when the head is not
        seen. None: no head for longer than head.hold_s."""
        measurement = measure_person_head(observation, camera, depth_m, self.head_config, world_T_exo)
        estimate = self.head_tracker.update(stamp_ns, measurement, world_T_exo)
        self.head_counts[estimate.state if estimate is not None else "not_visible"] += 1
        if measurement is not None and measurement.depth_rejected:
            self.head_counts["depth_rejected"] += 1
        self.last_head = estimate
        if estimate is None:
            return None
        self.events.head(stamp_ns, estimate)
        return estimate.world_T_head

    # ------------------------------------------------------------- synchronisation
    def resolve(self) -> None:
        """Hand complete frames to the window and the generator queue, oldest first; report the drops."""
        with self.lock:
            queued = len(self._queue)
            drops = self.frames.resolve(self._admit)
            if self._replaced:
                drops.append(Drop(self._replaced, "generator_busy", "replaced in the full generator queue by a "
                                                                    "newer frame (sync.overload 'drop_oldest')"))
                self._replaced = []
            self._count_drops(drops)
            admitted = len(self._queue) != queued
            held_masks, self._held_reports = self._held_reports, []
        for stamp_ns, mask, frame_id in held_masks:
            self.events.person_mask(stamp_ns, mask, frame_id)
        self._report_drops(drops)
        if admitted and not drops:
            self.events.progress()

    def _admit(self, frame: ExoFrame) -> bool:
        """A complete frame into the window and the generator queue. When the queue is full: with sync.overload
        'drop_oldest' the oldest queued frame makes room (a generator_busy drop, reported by resolve), else False
        (the frame waits: as long as it takes with 'keep_all'). Runs under the lock."""
        if len(self._queue) >= self.queue_capacity:
            if self.sync.overload != "drop_oldest":
                return False
            old, _ = self._queue.popleft()
            self._replaced.append(old.stamp_ns)
            self._overload_ns = frame.stamp_ns
            self._replaced_recent.add(old.stamp_ns)
        self.window.append(frame)
        context = self.window.newest(self.window.config.max_frames, up_to_ns=frame.stamp_ns)
        self._queue.append((frame, self._published_context(context)))
        self.lock.notify_all()
        return True

    def _published_context(self, context: list[ExoFrame]) -> list[ExoFrame]:
        """The newest fusion.window_frames of ``context`` (oldest first) that were not replaced in the full queue
        (lock held): under overload the fusion lifts only frames that are published, so that its work falls with
        the output rate instead of staying at the camera's (each frame lifted costs about 11 ms of CPU at 640x480).
        Without replaced frames (sync.overload 'keep_all', or no overload) simply the newest window_frames."""
        if self._replaced_recent:
            context = [f for f in context if f.stamp_ns not in self._replaced_recent]
            oldest = context[0].stamp_ns if context else 0
            self._replaced_recent = {ns for ns in self._replaced_recent if ns >= oldest}
        return context[-self.fusion_frames:]

    # ------------------------------------------------------------------ generation
    def _fall_back(self, name: str, error: Exception | str) -> EgoGenerator:
        """The prior generator in place of `name`, which cannot run; the reason goes to the log and diagnostics."""
        self.generator_problem = f"generator '{name}' unavailable, publishing priors instead: {error}"
        self.generator_state = "fallback"
        self.events.log("error", self.generator_problem)
        return PriorGenerator(self.prior_clip_frames)

    def prepare_generator(self) -> None:
        """Load the generator's models (on the calling thread); a failure falls back to the prior generator."""
        if self.generator_state != "loading":
            return
        started = time.monotonic()
        try:
            self.generator.prepare()
        except Exception as e:  # noqa: BLE001 - missing or broken weights must not take the node down
            if hasattr(self.generator, "close"):
                self.generator.close()
            with self.lock:
                self.generator = self.pipeline.generator = self._fall_back(self.generator.name,
                                                                           f"{type(e).__name__}: {e}")
            return
        self.generator_state = "ready"
        self.events.log("info", f"generator '{self.generator.name}' ready after {time.monotonic() - started:.1f} s")

    def start(self) -> None:
        """Run the generator on the engine's own worker threads (the models load first). Two stages, so that two
        cores work on successive clips: a fusion thread takes clips from the queue, oldest first, and fuses them
        (PriorRenderer.prepare), a draw thread splats their priors, runs the generator and publishes; at most
        FUSED_CLIPS fused clips wait between them. With a pool of replicas, clips are rendered on one thread and
        sent to the pool, and a second thread publishes the results in order."""
        self._worker = threading.Thread(target=self._work, name="egox-generator", daemon=True)
        self._worker.start()

    def _wait_until(self, ready: Callable[[], bool]) -> bool:
        """Wait (lock held) until ready() or the engine closes; False when it closed."""
        self.lock.wait_for(lambda: not self._running or ready())
        return self._running

    def _clip_ready(self) -> bool:
        """A whole clip is queued, or a flush asks for the last, partial one (lock held)."""
        return len(self._queue) >= self.generator.clip_frames or self._flush_requested

    def _pooled(self) -> bool:
        return hasattr(self.generator, "submit")

    def _take_clip(self) -> list[tuple[ExoFrame, list[ExoFrame]]]:
        """The next whole clip, or after a flush the last partial one; [] if none is ready. Lock held."""
        if self._pooled() and len(self._in_flight) >= self.generator.capacity:
            return []                              # every replica busy: the queue fills, then back-pressures
        clip_frames = self.generator.clip_frames
        if len(self._queue) < clip_frames and not self._flush_requested:
            return []
        if len(self._queue) < clip_frames:         # end of stream: the last, partial clip (padded)
            self._flush_requested = False
        clip = [self._queue.popleft() for _ in range(min(clip_frames, len(self._queue)))]
        self._in_generator += len(clip)
        return [(f, self._published_context(c)) for f, c in clip]    # without frames replaced since admission

    def _work(self) -> None:
        self.prepare_generator()
        if self._pooled():
            threading.Thread(target=self._collect, name="egox-pool-results", daemon=True).start()
        else:
            self._fusion_worker = threading.Thread(target=self._fuse_clips, name="egox-fusion", daemon=True)
            self._fusion_worker.start()
            self._draw_clips()
            return
        while True:
            with self.lock:
                if not self._wait_until(lambda: self._clip_ready() and not (
                        self._pooled() and len(self._in_flight) >= self.generator.capacity)):
                    return
                clip = self._take_clip()
            if clip:
                self.resolve()                     # complete frames that waited for room in the queue
                if self._pooled():
                    self._submit(clip)
                else:
                    self._generate(clip)

    def _fuse_clips(self) -> None:
        """The fusion stage of start(): clips from the queue, oldest first, fused and handed to the draw stage
        (which has room for FUSED_CLIPS of them; the queue fills behind, then back-pressures or drops the oldest
        as sync.overload says)."""
        while True:
            with self.lock:
                if not self._wait_until(lambda: self._clip_ready() and len(self._fused) < FUSED_CLIPS):
                    return
                clip = self._take_clip()
            if not clip:
                continue
            self.resolve()                         # complete frames that waited for room in the queue
            self._hand_on(clip, self.pipeline.prepare, self._fused)

    def _draw_clips(self) -> None:
        """The draw stage of start(): fused clips in order, their priors splatted, generated and published."""
        while True:
            with self.lock:
                if not self._wait_until(lambda: bool(self._fused)):
                    return
                prepared, started = self._fused.popleft()
                self.lock.notify_all()             # room for the fusion stage
            try:
                output = self.pipeline.run_prepared(prepared)
            except Exception as e:  # noqa: BLE001 - a failing generator must not take the node down
                self._failed(prepared.frames, e)
                continue
            self._emit(output, started)

    def _hand_on(self, clip: list[tuple[ExoFrame, list[ExoFrame]]], work, to: deque) -> None:
        """A stage's work on a clip taken from the queue: work(frames, contexts)'s result goes onto ``to`` for the
        next stage, with the time the clip was taken; if it raises, the clip's frames fail."""
        frames = [f for f, _ in clip]
        started = time.monotonic()
        try:
            result = work(frames, [c for _, c in clip])
        except Exception as e:  # noqa: BLE001 - a failing clip must not take the node down
            self._failed(frames, e)
            return
        with self.lock:
            to.append((result, started))
            self.lock.notify_all()

    def _submit(self, clip: list[tuple[ExoFrame, list[ExoFrame]]]) -> None:
        """Pool backend: render the clip's priors here (in order), send it to a free replica."""
        def render_and_submit(frames, contexts):
            rendered = self.pipeline.render(frames, contexts)
            return self.generator.submit(rendered.padded), rendered
        self._hand_on(clip, render_and_submit, self._in_flight)

    def _collect(self) -> None:
        """Pool backend: publish the replicas' results in submission (stamp) order."""
        while True:
            with self.lock:
                if not self._wait_until(lambda: bool(self._in_flight)):
                    return
                (handle, rendered), started = self._in_flight[0]
            waited_from = time.monotonic()
            try:
                result = self.generator.wait(handle)
                output = self.pipeline.finish(rendered, result, generation_time_s=time.monotonic() - waited_from)
            except Exception as e:  # noqa: BLE001 - a replica failed: its clip fails, the pool goes on
                with self.lock:
                    self._in_flight.popleft()
                    self.lock.notify_all()
                self._failed(rendered.request.frames, e)
                continue
            with self.lock:
                self._in_flight.popleft()
                self.lock.notify_all()
            self._emit(output, started)

    def generate_ready(self) -> int:
        """Without start(): generate every clip that is ready now, on the calling thread (a pool of replicas is
        used one clip at a time); returns the clips."""
        done = 0
        while True:
            with self.lock:
                clip = self._take_clip()
            if not clip:
                return done
            self.resolve()                         # complete frames that waited for room in the queue
            self._generate(clip)
            done += 1

    def _generate(self, clip: list[tuple[ExoFrame, list[ExoFrame]]]) -> None:
        frames = [f for f, _ in clip]
        started = time.monotonic()
        try:
            output = self.pipeline.run(frames, [c for _, c in clip])
        except Exception as e:  # noqa: BLE001 - a failing generator must not take the node down
            self._failed(frames, e)
            return
        self._emit(output, started)

    def _failed(self, frames: list[ExoFrame], error: Exception) -> None:
        self.events.log("error", f"generator '{self.generator.name}' failed: {type(error).__name__}: {error}")
        drops = [Drop([f.stamp_ns for f in frames], "generator_failed", f"{type(error).__name__}: {error}")]
        with self.lock:
            self._in_generator -= len(frames)
            self._count_drops(drops)
        self._report_drops(drops)

    def _emit(self, output: ClipOutput, started: float) -> None:
        frames = output.request.frames
        now = self.clock()
        try:
            self.events.clip(output, latency_s=time.monotonic() - started)
        except Exception as e:  # noqa: BLE001 - the worker must survive a failing consumer; the frames count as out
            self.events.log("error", f"publishing a clip failed: {type(e).__name__}: {e}")
        with self.lock:
            self._in_generator -= len(frames)
            self.stats.published += len(frames)
            self.stats.published_times.extend([now] * len(frames))
        self.events.progress()

    # ---------------------------------------------------------------- accounting
    def _count_drops(self, drops: list[Drop]) -> None:
        """Count drops in the same lock hold that took their frames out of waiting / queued / received (lock held):
        whoever reads the accounting under the lock (the node's ~/progress) finds received == published + dropped
        + waiting + queued at every moment."""
        for d in drops:
            self.stats.dropped[d.code] += len(d.stamps_ns)

    def _report_drops(self, drops: list[Drop]) -> None:
        """Tell the consumer about drops already counted (lock not held)."""
        for d in drops:
            self.events.dropped(d)
        if drops:
            self.events.progress()

    def note(self, code: str, detail: str, count: int = 1, log: bool = True) -> None:
        """A problem with a non-frame input: counted (``notes``) and reported."""
        with self.lock:
            self.notes[code] += count
        if log:
            self.events.note(code, detail, count)

    def waiting(self) -> int:
        return self.frames.waiting()

    def queued(self) -> int:
        """Frames queued for the generator or in it now."""
        with self.lock:
            return len(self._queue) + self._in_generator

    def close(self) -> int:
        """Stop the generator worker and the depth / person workers; returns the frames left unpublished."""
        with self.lock:
            self._running = False
            self.lock.notify_all()
            left = self.frames.waiting() + len(self._queue)
        for worker in (self._worker, self._fusion_worker):
            if worker is not None:
                worker.join(timeout=5.0)
        if hasattr(self.generator, "close"):       # a pool of replicas
            self.generator.close()
        for worker in (self.depth_estimator, self.person_detector):
            if worker is not None:
                worker.close()
        return left
