"""`egox bench demonstrator`: the demonstrator's cost and steadiness on real TUM RGB-D frames (fr1_rpy, 640x480).

Frames 48-59 show a seated person about 2 m away (he sits still while the camera rotates by about 30 degrees);
frames 9-47 show no one (0-8 show part of another person at the top edge). Measured on this machine:

1. the MediaPipe detector's time per frame, on person frames (streamed in order, so it tracks) and empty ones;
2. the head pose's time per frame: ``measure_person_head`` (the node's: from the whole body) with and without
   depth, ``HeadTracker.update``;
3. detection rate on the person frames and false positives on the empty ones;
4. how still the head stays in the world (std per axis of the world positions, raw and filtered; with depth and
   from the body's size only): the person does not move, so this is the jitter;
5. frames/s of the whole prior path (detect, head pose, tracker, prior of a 4-frame window rendered from the
   estimated head at 448x448), sequential and pipelined (detector on a worker thread as the node runs it), also
   with one competing busy process on the machine.

With --write-docs also docs/demonstrator.png: masks, keypoints and head directions on person frames, and the
prior seen from the demonstrator's own (pitched-down) head without and with the person masks.

Long on purpose (about 580 lines): the TUM and the Ego-Exo4D benchmarks of the demonstrator share its
timers, statistics and table helpers.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

import numpy as np

from egox_ros.bench.common import fixed_or_dash as _f, machine_info, missed_targets
from egox_ros.tools.egoexo4d import DEFAULT_EXO_FOCAL_SCALE, load_clip, selected_clips, shrunk_exo

SECTION = "demonstrator"
PERSON_FRAMES = tuple(range(48, 60))
EMPTY_FRAMES = tuple(range(9, 48))       # frames 0-8 show part of another person at the top edge
EMPTY_TIMED_FROM = 20                    # detector times of empty frames: 20-47
TARGET_FPS = 15.0
BUSY_LIMIT_S = 300                       # the competing process ends itself after this, whatever happens
FIGURE = Path(__file__).resolve().parents[2] / "docs" / "demonstrator.png"
FIGURE_FRAMES = (48, 53, 58)
PRIOR_FRAME = 55
REFINED_TOLERANCE_M = 0.25               # the Ego-Exo4D table's mask area with person.depth_tolerance_m at this


def _stats(values_ms: list[float]) -> dict:
    v = np.asarray(values_ms, np.float64)
    if v.size == 0:
        return {"n": 0, "median_ms": None, "p90_ms": None}
    return {"n": int(v.size), "median_ms": round(float(np.median(v)), 3),
            "p90_ms": round(float(np.percentile(v, 90)), 3)}


def _timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, (time.perf_counter() - t0) * 1e3


def _detector():
    from egox_ros.core.demonstrator.detector import PersonConfig
    from egox_ros.core.demonstrator.mediapipe_detector import MediapipePersonDetector
    return MediapipePersonDetector(PersonConfig())


def _warm(detector, rgb: np.ndarray) -> None:
    """First calls build MediaPipe's graphs; done before timing, then tracking is forgotten."""
    detector.detect(rgb)
    detector.reset()


def _std(points: list[np.ndarray]) -> list[float] | None:
    return [round(float(s), 4) for s in np.std(np.asarray(points), axis=0)] if len(points) >= 2 else None


def _tum_head_config():
    """head.* for TUM's depth, a sensor's (a Kinect): no depth-model scale error (depth_sigma_relative 0)."""
    from egox_ros.core.demonstrator.head_geometry import HeadPoseConfig
    return HeadPoseConfig(depth_sigma_relative=0.0)


def _sample_size_stream(detector, seq, empty_frames: tuple[int, ...]) -> dict:
    """The empty frames, then the person frames, at the bundled sample's size (320x240, 2x2 area averaging),
    streamed through the detector: false positives there (desk objects) and the person found."""
    import cv2
    detector.reset()
    found = {k: detector.detect(cv2.resize(seq[k].rgb, (320, 240), interpolation=cv2.INTER_AREA)).found
             for k in tuple(empty_frames) + PERSON_FRAMES}
    return {"false_positive_frames": [k for k in empty_frames if found[k]],
            "person_found": sum(found[k] for k in PERSON_FRAMES)}


def _detect_and_head(seq, empty_frames: tuple[int, ...], repeats: int) -> tuple[dict, dict]:
    """Sections 1-4. Returns (result, person observations by frame)."""
    from egox_ros.core.demonstrator.estimate import measure_person_head
    from egox_ros.core.demonstrator.head_tracker import HeadTracker
    config = _tum_head_config()
    detector = _detector()
    try:
        _warm(detector, seq[PERSON_FRAMES[0]].rgb)
        person_ms, observations = [], {}
        for k in PERSON_FRAMES:
            observations[k], ms = _timed(detector.detect, seq[k].rgb)
            person_ms.append(ms)
        detector.reset()
        empty_ms, false_positives = [], []
        for k in empty_frames:
            obs, ms = _timed(detector.detect, seq[k].rgb)
            if k >= EMPTY_TIMED_FROM:
                empty_ms.append(ms)
            if obs.found:
                false_positives.append(k)
        small = _sample_size_stream(detector, seq, empty_frames)
    finally:
        detector.close()
    found = [k for k in PERSON_FRAMES if observations[k].head is not None]

    depth_ms, pnp_ms, tracker_ms = [], [], []
    raw = {"depth": [], "pnp": []}
    filtered = {"depth": [], "pnp": []}
    trackers = {"depth": HeadTracker(config), "pnp": HeadTracker(config)}
    sources = {"depth": [], "pnp": []}
    for k in PERSON_FRAMES:
        obs, frame = observations[k], seq[k]
        stamp_ns = int(round(frame.stamp_s * 1e9))
        measured = {"depth": None, "pnp": None}
        if obs.head is not None:
            for _ in range(repeats):
                measured["depth"], ms = _timed(measure_person_head, obs, seq.camera, frame.depth_m, config,
                                               frame.world_T_camera)
                depth_ms.append(ms)
                measured["pnp"], ms = _timed(measure_person_head, obs, seq.camera, None, config,
                                             frame.world_T_camera)
                pnp_ms.append(ms)
        for kind in ("depth", "pnp"):
            m = measured[kind]
            if m is not None:
                raw[kind].append((frame.world_T_camera @ m.exo_T_head)[:3, 3])
                sources[kind].append(m.position_source)
            est, ms = _timed(trackers[kind].update, stamp_ns, m, frame.world_T_camera)
            if kind == "depth":
                tracker_ms.append(ms)
            if est is not None and est.state == "measured":
                filtered[kind].append(est.world_T_head[:3, 3])
    result = {
        "detector": {"person_frames": _stats(person_ms), "empty_frames": _stats(empty_ms),
                     "person_frame_range": [PERSON_FRAMES[0], PERSON_FRAMES[-1]],
                     "empty_timed_frames": [EMPTY_TIMED_FROM, empty_frames[-1]]},
        "head_pose_ms": {"measure_head_depth": _stats(depth_ms)["median_ms"],
                         "measure_head_pnp": _stats(pnp_ms)["median_ms"],
                         "tracker_update": _stats(tracker_ms)["median_ms"]},
        "detection": {"person_frames": len(PERSON_FRAMES), "head_found": len(found),
                      "rate": round(len(found) / len(PERSON_FRAMES), 3),
                      "face_mesh_frames": sum(observations[k].head.source == "face_mesh" for k in found),
                      "empty_frames_checked": len(empty_frames), "false_positive_frames": false_positives,
                      "sample_size": small},
        "stability": {
            "note": "std per axis (world x, y, z) [m] of the head position over the person frames; he sits still "
                    "while the camera rotates, so this is jitter",
            "depth_raw_std_m": _std(raw["depth"]), "depth_filtered_std_m": _std(filtered["depth"]),
            "pnp_raw_std_m": _std(raw["pnp"]), "pnp_filtered_std_m": _std(filtered["pnp"]),
            "depth_position_source": sorted(set(sources["depth"])), "measurements": len(raw["depth"]),
            "mean_world_position_m": [round(float(v), 3) for v in np.mean(raw["depth"], axis=0)]
            if raw["depth"] else None},
    }
    return result, observations


class _Stream:
    """Frames 48-59 repeated to `count`, with increasing stamps at the sequence's frame rate."""

    def __init__(self, seq, count: int):
        frames = [seq[k] for k in PERSON_FRAMES]
        dt_s = (frames[-1].stamp_s - frames[0].stamp_s) / (len(frames) - 1)
        self.items = [(int(round((frames[0].stamp_s + i * dt_s) * 1e9)), frames[i % len(frames)])
                      for i in range(count)]


def _prior_path(seq, stream: _Stream, pipelined: bool) -> dict:
    """Frames/s of detect + measure_person_head + tracker + PriorRenderer.render (4-frame window, 448x448 ego)."""
    from egox_ros.core.config import EgoCameraConfig, PriorConfig
    from egox_ros.core.demonstrator.detector import AsyncPersonDetector
    from egox_ros.core.demonstrator.estimate import measure_person_head
    from egox_ros.core.demonstrator.head_tracker import HeadTracker
    from egox_ros.core.geometry.frames import ExoFrame
    from egox_ros.core.geometry.fusion import FusionConfig
    from egox_ros.core.runtime.pipeline import PriorRenderer, ego_camera_from_config
    fusion_config, head_config = FusionConfig(), _tum_head_config()
    ego = ego_camera_from_config(EgoCameraConfig())

    def fresh():
        return (PriorRenderer(PriorConfig(), fusion_config, ego), HeadTracker(head_config),
                deque(maxlen=fusion_config.window_frames))

    def after_detect(stamp_ns, frame, obs, tracker, window, renderer, times):
        t0 = time.perf_counter()
        m = measure_person_head(obs, seq.camera, frame.depth_m, head_config, frame.world_T_camera)
        est = tracker.update(stamp_ns, m, frame.world_T_camera)
        t1 = time.perf_counter()
        exo = ExoFrame(stamp_ns=stamp_ns, rgb=frame.rgb, depth_m=frame.depth_m, camera=seq.camera,
                       world_T_exo=frame.world_T_camera,
                       world_T_ego=est.world_T_head if est is not None else frame.world_T_camera,
                       exo_frame_id="exo", person_mask=obs.mask)
        window.append(exo)
        prior = renderer.render(exo, list(window))
        t2 = time.perf_counter()
        times["head"].append((t1 - t0) * 1e3)
        times["render"].append((t2 - t1) * 1e3)
        return est is not None and prior.coverage > 0

    detector = _detector()
    warm_frame = stream.items[0][1]
    _warm(detector, warm_frame.rgb)
    renderer, tracker, window = fresh()                  # warm the renderer too, then start over
    after_detect(1, warm_frame, detector.detect(warm_frame.rgb), tracker, window, renderer,
                 {"head": [], "render": []})
    detector.reset()
    renderer, tracker, window = fresh()
    times = {"detect": [], "head": [], "render": []}
    rendered = 0
    if not pipelined:
        try:
            t_start = time.perf_counter()
            for stamp_ns, frame in stream.items:
                obs, ms = _timed(detector.detect, frame.rgb)
                times["detect"].append(ms)
                rendered += after_detect(stamp_ns, frame, obs, tracker, window, renderer, times)
            wall_s = time.perf_counter() - t_start
        finally:
            detector.close()
    else:
        done = threading.Condition()
        results: dict[int, object] = {}

        def on_result(stamp_ns, obs, error):
            with done:
                results[stamp_ns] = obs
                done.notify_all()
        worker = AsyncPersonDetector(detector, capacity=len(stream.items) + 1, on_result=on_result)
        try:
            t_start = time.perf_counter()
            worker.submit(*_submission(stream.items[0]))
            for i, (stamp_ns, frame) in enumerate(stream.items):
                with done:
                    if not done.wait_for(lambda: stamp_ns in results, timeout=60.0):
                        raise RuntimeError("the person detector did not answer within 60 s")
                    obs = results.pop(stamp_ns)
                if i + 1 < len(stream.items):     # the worker detects the next frame while this one renders
                    worker.submit(*_submission(stream.items[i + 1]))
                rendered += after_detect(stamp_ns, frame, obs, tracker, window, renderer, times)
            wall_s = time.perf_counter() - t_start
            times["detect"].append(float(worker.stats()["detector_ms"]))
        finally:
            worker.close()
    n = len(stream.items)
    return {"mode": "pipelined" if pipelined else "sequential", "frames": n, "rendered_with_head": rendered,
            "fps": round(n / wall_s, 2), "ms_per_frame": round(wall_s / n * 1e3, 2),
            "detect_median_ms": round(statistics.median(times["detect"]), 2),
            "head_median_ms": round(statistics.median(times["head"]), 2),
            "render_median_ms": round(statistics.median(times["render"]), 2),
            "meets_target": n / wall_s >= TARGET_FPS}


def _submission(item):
    stamp_ns, frame = item
    return stamp_ns, frame.rgb


def _busy_process() -> subprocess.Popen:
    """One competing process: a pure-Python loop on one core, ending itself after BUSY_LIMIT_S."""
    code = f"import time\nend = time.monotonic() + {BUSY_LIMIT_S}\nx = 0\nwhile time.monotonic() < end:\n    x += 1\n"
    return subprocess.Popen([sys.executable, "-c", code])


def run_all(quick: bool = False, device: str = "cpu", progress=None, frames: int | None = None) -> dict:
    """frames: frames of the prior-path runs (default 48; quick 12). device is ignored: MediaPipe runs on CPU."""
    from egox_ros.tools.tum import TumSequence
    seq = TumSequence("fr1_rpy_60")
    count = frames or (12 if quick else 48)
    empty = EMPTY_FRAMES[::3] if quick else EMPTY_FRAMES
    machine = machine_info()
    import mediapipe
    machine["versions"]["mediapipe"] = mediapipe.__version__
    machine["load_average_1min_at_start"] = round(os.getloadavg()[0], 2)   # other work on the machine
    result = {"benchmark": SECTION, "quick": quick, "machine": machine, "device": "cpu",
              "frames": "TUM RGB-D fr1_rpy (640x480); person: frames 48-59; empty: frames 9-47",
              "target_fps": TARGET_FPS}
    measured, _ = _detect_and_head(seq, empty, repeats=2 if quick else 5)
    result.update(measured)
    if progress:
        progress("detector and head pose")
    stream = _Stream(seq, count)
    rows = []
    for busy in (False, True):
        proc = _busy_process() if busy else None
        try:
            if proc is not None:
                time.sleep(0.2)
            for pipelined in (False, True):
                row = _prior_path(seq, stream, pipelined)
                row["competing_busy_process"] = busy
                rows.append(row)
                if progress:
                    progress(f"{row['mode']}{' + busy' if busy else ''}")
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=10)
    result["prior_path"] = {"ego": "448x448 pinhole (EgoCameraConfig defaults)", "window_frames": 4,
                            "frames_streamed": f"48-59 repeated to {count}", "rows": rows}
    return result


def _fmt(v) -> str:
    return "-" if v is None else (f"{v:.1f}" if isinstance(v, float) else str(v))


def _mm(std_m) -> str:
    return "-" if std_m is None else " / ".join(f"{1e3 * s:.1f}" for s in std_m)


def markdown(result: dict) -> str:
    m, d, h = result["machine"], result["detector"], result["head_pose_ms"]
    det, st, rows = result["detection"], result["stability"], result["prior_path"]["rows"]
    row = {(r["mode"], r["competing_busy_process"]): r for r in rows}
    lines = [f"Run {m['date']} on {m['cpu']} ({m['cpu_cores']} cores), GPU: {m['gpu'] or 'none'}; "
             + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if k in
                         ("python", "mediapipe", "torch", "numpy", "open3d"))
             + (" (quick run)" if result["quick"] else "")
             + f"; 1-minute load average at the start: {m.get('load_average_1min_at_start', '-')}", "",
             f"Frames: {result['frames']}.", "",
             "| detector (MediapipePersonDetector.detect) | frames | median ms | p90 ms |", "|---|---|---|---|",
             f"| with a person (48-59, streamed: tracked) | {d['person_frames']['n']} | "
             f"{_fmt(d['person_frames']['median_ms'])} | {_fmt(d['person_frames']['p90_ms'])} |",
             f"| without a person ({'-'.join(map(str, d['empty_timed_frames']))}) | {d['empty_frames']['n']} | "
             f"{_fmt(d['empty_frames']['median_ms'])} | {_fmt(d['empty_frames']['p90_ms'])} |", "",
             "| head pose step | median ms |", "|---|---|",
             f"| measure_person_head with depth | {_fmt(h['measure_head_depth'])} |",
             f"| measure_person_head without depth (the body's size) | {_fmt(h['measure_head_pnp'])} |",
             f"| HeadTracker.update | {_fmt(h['tracker_update'])} |", "",
             f"Detection: head found in {det['head_found']} of {det['person_frames']} person frames "
             f"({det['face_mesh_frames']} with the face mesh); false positives in "
             f"{len(det['false_positive_frames'])} of {det['empty_frames_checked']} empty frames"
             + (f" (frames {det['false_positive_frames']})" if det["false_positive_frames"] else "") + ". At the "
             f"sample's size (320x240), streamed: a person in {det['sample_size']['person_found']} of "
             f"{det['person_frames']} person frames, false positives in "
             f"{len(det['sample_size']['false_positive_frames'])} of {det['empty_frames_checked']} empty frames"
             + (f" (frames {det['sample_size']['false_positive_frames']})"
                if det["sample_size"]["false_positive_frames"] else "") + ".", "",
             "| head position in the world, std x / y / z [mm] | raw measurements | tracker output |",
             "|---|---|---|",
             f"| with depth | {_mm(st['depth_raw_std_m'])} | {_mm(st['depth_filtered_std_m'])} |",
             f"| the body's size only (no depth) | {_mm(st['pnp_raw_std_m'])} | {_mm(st['pnp_filtered_std_m'])} |",
             "",
             f"Prior path per frame (detect + measure_person_head + tracker + render of a "
             f"{result['prior_path']['window_frames']}"
             f"-frame window at {result['prior_path']['ego']}), frames {result['prior_path']['frames_streamed']}; "
             f"target {result['target_fps']:g} frames/s:", "",
             "| mode | competing busy process | frames/s | ms per frame | detect ms | head ms | render ms | "
             "meets target |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['mode']} | {'yes' if r['competing_busy_process'] else 'no'} | {r['fps']} | "
                     f"{r['ms_per_frame']} | {r['detect_median_ms']} | {r['head_median_ms']} | "
                     f"{r['render_median_ms']} | {'yes' if r['meets_target'] else 'no'} |")
    seq_r, pipe_r = row[("sequential", False)], row[("pipelined", False)]
    busy_r = row[("pipelined", True)]
    stages = {"the detector": d["person_frames"]["median_ms"] or 0.0,
              "the head measurement with depth": h["measure_head_depth"] or 0.0,
              "the render": seq_r["render_median_ms"]}
    slowest = max(stages, key=stages.get)
    lines += ["", f"Reading it: per frame with a person the detector takes {_fmt(d['person_frames']['median_ms'])} ms "
                  f"median ({_fmt(d['empty_frames']['median_ms'])} ms without one), the head measurement with depth "
                  f"{_fmt(h['measure_head_depth'])} ms (without {_fmt(h['measure_head_pnp'])} ms), the tracker "
                  f"{_fmt(h['tracker_update'])} ms and the render {seq_r['render_median_ms']} ms: {slowest} is the "
                  f"largest step. Sequentially the path runs at {seq_r['fps']} frames/s; with the detector on its "
                  f"worker thread (as the node runs it) at {pipe_r['fps']} frames/s (the head pose and the render "
                  f"stay on the main thread), and at {busy_r['fps']} frames/s with one busy process competing for "
                  f"the {m['cpu_cores']} cores. The target of {result['target_fps']:g} frames/s is "
                  + ("met" if pipe_r["meets_target"] else "not met") + " pipelined on an idle machine and "
                  + ("met" if busy_r["meets_target"] else "not met") + " with the competing process. The head "
                  f"stays within {_mm(st['depth_raw_std_m'])} mm (std x / y / z) in the world with depth, "
                  f"{_mm(st['pnp_raw_std_m'])} mm from the body's size alone, while the camera turns. Timings on this "
                  "shared "
                  "machine vary by tens of percent between runs (see the load average above).",
              "", "![masks, head keypoints and directions; the prior from the demonstrator's head](demonstrator.png)"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------- figure

def _label(image, text: str):
    from PIL import ImageDraw
    draw = ImageDraw.Draw(image)
    w = int(draw.textlength(text)) + 10
    draw.rectangle((0, 0, w, 18), fill=(0, 0, 0))
    draw.text((5, 3), text, fill=(255, 255, 255))
    return image


def _exo_panel(seq, k: int, obs, measurement):
    import torch
    from PIL import Image, ImageDraw
    from egox_ros.core.io.contact_sheet import tint
    rgb = seq[k].rgb if obs.mask is None else tint(seq[k].rgb, obs.mask)
    image = Image.fromarray(rgb)
    draw = ImageDraw.Draw(image)
    if obs.head is not None:
        for name, colour in (("left_eye", (255, 60, 60)), ("right_eye", (60, 140, 255)), ("nose", (255, 220, 0))):
            (u, v), _ = obs.head.get(name)
            draw.ellipse((u - 3, v - 3, u + 3, v + 3), fill=colour, outline=(0, 0, 0))
    if measurement is not None:
        t = measurement.exo_T_head
        points = torch.from_numpy(np.stack([t[:3, 3], t[:3, 3] + 0.3 * t[:3, 2]]))
        uv, valid = seq.camera.project(points)
        if bool(valid.all()):
            (u0, v0), (u1, v1) = uv.tolist()
            draw.line((u0, v0, u1, v1), fill=(255, 0, 255), width=3)
            a = np.arctan2(v1 - v0, u1 - u0)
            for da in (2.6, -2.6):
                draw.line((u1, v1, u1 + 10 * np.cos(a + da), v1 + 10 * np.sin(a + da)), fill=(255, 0, 255), width=3)
    return image


def write_figure(path: Path = FIGURE) -> Path:
    """docs/demonstrator.png: exo frames with mask, keypoints and head direction; the prior from the head."""
    from PIL import Image

    from egox_ros.core.config import EgoCameraConfig, PriorConfig
    from egox_ros.core.demonstrator.estimate import measure_person_head
    from egox_ros.core.geometry.frames import ExoFrame
    from egox_ros.core.geometry.fusion import FusionConfig
    from egox_ros.core.runtime.pipeline import PriorRenderer, ego_camera_from_config
    from egox_ros.tools.tum import TumSequence
    seq = TumSequence("fr1_rpy_60")
    detector = _detector()
    try:
        observations = {k: detector.detect(seq[k].rgb) for k in PERSON_FRAMES}
    finally:
        detector.close()
    config = _tum_head_config()
    measured = {k: measure_person_head(o, seq.camera, seq[k].depth_m, config, seq[k].world_T_camera)
                for k, o in observations.items()}
    panels = [_exo_panel(seq, k, observations[k], measured[k]) for k in FIGURE_FRAMES]

    k = PRIOR_FRAME if measured[PRIOR_FRAME] is not None else next(j for j in PERSON_FRAMES if measured[j])
    frame, obs = seq[k], observations[k]
    world_T_head = frame.world_T_camera @ measured[k].exo_T_head     # looking down (head.min_pitch_down_deg)
    ego = ego_camera_from_config(EgoCameraConfig())

    def prior(prior_config, mask):
        exo = ExoFrame(stamp_ns=1, rgb=frame.rgb, depth_m=frame.depth_m, camera=seq.camera,
                       world_T_exo=frame.world_T_camera, world_T_ego=world_T_head, exo_frame_id="exo",
                       person_mask=mask)
        p = PriorRenderer(prior_config, FusionConfig(), ego).render(exo, [exo])
        return np.where(p.mask[..., None], p.rgb, np.uint8(40))
    priors = [Image.fromarray(prior(PriorConfig(min_distance_m=0.0), None)),
              Image.fromarray(prior(PriorConfig(), obs.mask))]
    prior_labels = [f"prior from his estimated head, frame {k}: no masks",
                    "same view, defaults: person masked (body outline)"]
    (u, v), _ = obs.head.get("nose")
    zoom = _exo_panel(seq, k, obs, measured[k]).crop((int(u) - 60, int(v) - 60, int(u) + 60, int(v) + 60))

    scale, pad = 0.6, 6
    tiles = [_label(p.resize((int(p.width * scale), int(p.height * scale)), Image.BILINEAR),
                    f"frame {k}: mask, eyes, nose, head forward 0.3 m") for p, k in zip(panels, FIGURE_FRAMES)]
    ptiles = [_label(p.resize((int(p.width * 0.75), int(p.height * 0.75)), Image.BILINEAR), text)
              for p, text in zip(priors, prior_labels)]
    ptiles.append(_label(zoom.resize((ptiles[0].height, ptiles[0].height), Image.LANCZOS),
                         f"frame {k} head, 2.8x: eyes, nose, forward"))
    width = max(sum(t.width for t in tiles), sum(t.width for t in ptiles)) + pad * 4
    height = tiles[0].height + ptiles[0].height + pad * 3
    sheet = Image.new("RGB", (width, height), (32, 32, 32))
    x = pad
    for t in tiles:
        sheet.paste(t, (x, pad))
        x += t.width + pad
    x = pad
    for t in ptiles:
        sheet.paste(t, (x, tiles[0].height + 2 * pad))
        x += t.width + pad
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)   # < 400 KB
    return path


# ---------------------------------------------------------------------------------------------------- Ego-Exo4D

EGOEXO4D_SECTION = "demonstrator-egoexo4d"
EGOEXO4D_DEPTH_CASES = (True, False)        # per clip: with the released depth, and without (the body's size alone)
EGOEXO4D_PAIR_CASES = (None, "left", "right")   # and twice side by side: the recorded head as no hint / on either copy
EGOEXO4D_CASES_PER_CLIP = len(EGOEXO4D_DEPTH_CASES) + len(EGOEXO4D_PAIR_CASES)


def _angle_stats(values) -> dict:
    v = np.asarray([x for x in values if x is not None], np.float64)
    if v.size == 0:
        return {"median": None, "p90": None}
    return {"median": round(float(np.median(v)), 3), "p90": round(float(np.percentile(v, 90)), 3)}


def _head_pixel(clip, i: int) -> tuple[float, float, float]:
    """The recorded head camera of frame i in the exo image: (u_px, v_px, depth_m along the exo z axis)."""
    p = (np.linalg.inv(clip.world_T_exo) @ clip.world_T_head[i])[:3, 3]
    uv = clip.exo_camera.K @ p
    return float(uv[0] / uv[2]), float(uv[1] / uv[2]), float(p[2])


def _mask_on(mask: np.ndarray, u: float, v: float) -> bool:
    """The mask covers the head's pixel, in a 9 px window (the head camera sits at the temple, off the face)."""
    u, v = int(round(u)), int(round(v))
    h, w = mask.shape
    return bool(0 <= u < w and 0 <= v < h and mask[max(v - 4, 0):v + 5, max(u - 4, 0):u + 5].any())


def _egoexo4d_clip(clip, use_depth: bool = True) -> dict:
    """One released clip through the node's demonstrator path, frame by frame as the engine runs it (detector,
    head measurement with the clip's depth, tracker), against the recorded head camera."""
    from egox_ros.core.demonstrator.estimate import measure_person_head
    from egox_ros.core.demonstrator.head_geometry import HeadPoseConfig, forward_angle_deg, position_error_m
    from egox_ros.core.demonstrator.detector import PersonConfig
    from egox_ros.core.demonstrator.head_tracker import HeadTracker
    from egox_ros.core.demonstrator.mask_depth import refine_mask_by_depth
    config = HeadPoseConfig()
    dilate_px = PersonConfig().dilate_px
    tracker = HeadTracker(config)
    detector = _detector()
    pos_err, fwd_err, ms, detect_ms = [], [], [], []
    states = {"measured": 0, "held": 0, "none": 0}
    mask_frames = mask_on_head = 0
    mask_area, refined_area = [], []
    try:
        _warm(detector, clip.exo_rgb[0])
        for i in range(clip.frames):
            stamp_ns = int(round((1.0 + i / 30.0) * 1e9))
            t0 = time.perf_counter()
            obs = detector.detect(clip.exo_rgb[i])
            t1 = time.perf_counter()
            measurement = measure_person_head(obs, clip.exo_camera, clip.depth_m[i] if use_depth else None, config,
                                              clip.world_T_exo)
            estimate = tracker.update(stamp_ns, measurement, clip.world_T_exo)
            t2 = time.perf_counter()
            ms.append((t2 - t0) * 1e3)
            detect_ms.append((t1 - t0) * 1e3)
            truth = clip.world_T_head[i]
            if estimate is None:
                states["none"] += 1
            else:
                states[estimate.state] += 1
                pos_err.append(position_error_m(estimate.world_T_head, truth))
                fwd_err.append(forward_angle_deg(estimate.world_T_head, truth))
            if obs.mask is not None and obs.mask.any():
                mask_frames += 1
                mask_area.append(float(obs.mask.mean()))
                if use_depth:       # what person.depth_tolerance_m would leave of it (off by default)
                    refined_area.append(float(refine_mask_by_depth(obs.mask, clip.depth_m[i], obs.body,
                                                                   REFINED_TOLERANCE_M, dilate_px).mean()))
                mask_on_head += _mask_on(obs.mask, *_head_pixel(clip, i)[:2])
    finally:
        detector.close()
    n = clip.frames
    with_head = n - states["none"]
    return {"clip": clip.name, "depth": use_depth, "frames": n, "with_head": with_head,
            "head_rate": round(with_head / n, 3),
            "measured": states["measured"], "held": states["held"],
            "position_error_m": _angle_stats(pos_err), "forward_error_deg": _angle_stats(fwd_err),
            "person_mask_frames": mask_frames, "mask_on_real_head_frames": mask_on_head,
            "mask_area_fraction_median": round(float(np.median(mask_area)), 4) if mask_area else None,
            "depth_refined_mask_area_fraction_median": (round(float(np.median(refined_area)), 4)
                                                        if refined_area else None),
            "ms_per_frame": _stats(ms), "detect_ms": _stats(detect_ms)}


def _egoexo4d_pair(clip, hinted: str | None) -> dict:
    """The clip's exo frames twice side by side (a second person beside the demonstrator), the detector given the
    recorded head on the ``hinted`` copy ('left', 'right') as its head hint, the way the engine gives it with a
    head TF, or no hint (None): per frame, whose head the mask covers."""
    from egox_ros.core.demonstrator.landmarks import HeadHint
    width = clip.exo_rgb[0].shape[1]
    detector = _detector()
    on_left = on_right = 0
    detect_ms = []
    try:
        _warm(detector, np.concatenate([clip.exo_rgb[0]] * 2, axis=1))
        for i in range(clip.frames):
            u, v, depth_m = _head_pixel(clip, i)
            hint = None if hinted is None else HeadHint((u + (width if hinted == "right" else 0), v),
                                                        clip.exo_camera.fx / depth_m)
            pair = np.concatenate([clip.exo_rgb[i]] * 2, axis=1)
            t0 = time.perf_counter()
            mask = detector.detect(pair, hint).mask
            detect_ms.append((time.perf_counter() - t0) * 1e3)
            on_left += _mask_on(mask, u, v)
            on_right += _mask_on(mask, u + width, v)
    finally:
        detector.close()
    return {"clip": clip.name, "hint": hinted, "frames": clip.frames, "mask_on_left_head_frames": on_left,
            "mask_on_right_head_frames": on_right, "detect_ms": _stats(detect_ms)}


def run_egoexo4d(root, exo_focal_scale: float = DEFAULT_EXO_FOCAL_SCALE, progress=None,
                 exo_shrink: float = 1.0,
                 clips: list[str] | None = None) -> dict:
    """Every clip of a released example/egoexo4D folder, or those named in ``clips`` (develop on the development
    clips only; see issue 17), with the released depth and without depth (the position from the body's size alone).
    ``exo_shrink`` < 1: the exo image shrunk about its principal point (tools.egoexo4d.shrunk_exo), the people in it
    as if 1 / exo_shrink times as far."""
    machine = machine_info()
    import mediapipe
    machine["versions"]["mediapipe"] = mediapipe.__version__
    machine["load_average_1min_at_start"] = round(os.getloadavg()[0], 2)
    rows, pairs = [], []
    for name in selected_clips(Path(root), clips):
        clip = load_clip(Path(root), name, exo_focal_scale)
        if exo_shrink != 1.0:
            clip = shrunk_exo(clip, exo_shrink)
        for use_depth in EGOEXO4D_DEPTH_CASES:
            rows.append(_egoexo4d_clip(clip, use_depth))
            if progress:
                progress(f"{name}{'' if use_depth else ' without depth'}")
        for hinted in EGOEXO4D_PAIR_CASES:
            pairs.append(_egoexo4d_pair(clip, hinted))
            if progress:
                progress(f"{name} twice, hint {hinted or 'none'}")
    machine["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    return {"benchmark": EGOEXO4D_SECTION, "machine": machine, "exo_focal_scale": exo_focal_scale,
            "exo_shrink": exo_shrink,
            "targets": {"head_rate": 0.9, "position_median_m": 0.15, "position_p90_m": 0.25,
                        "forward_median_deg": 20.0, "ms_per_frame": 40.0}, "clips": rows, "pairs": pairs}


def markdown_egoexo4d(result: dict) -> str:
    m = result["machine"]
    lines = [f"Run {m['date']} on {m['cpu']} ({m['cpu_cores']} cores); "
             + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if k in ("python", "mediapipe", "numpy"))
             + f"; 1-minute load average {m['load_average_1min_at_start']} at the start, "
               f"{m['load_average_1min_at_end']} at the end (a shared machine: times are upper bounds). Exo focal "
               f"length: the released one times {result['exo_focal_scale']:g}."
               + (f" Exo image shrunk by {result['exo_shrink']:g} about its principal point (people as if "
                  f"{1 / result['exo_shrink']:.2g} times as far)." if result.get("exo_shrink", 1.0) != 1.0 else ""),
             "",
             "| clip | depth | frames with a head (measured + held) | position median / p90 [m] | forward median / p90 "
             f"[deg] | person mask frames (on the real head) | mask area (depth-refined at "
             f"{REFINED_TOLERANCE_M:g} m) | detect + head ms median / p90 |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["clips"]:
        p, f, t = r["position_error_m"], r["forward_error_deg"], r["ms_per_frame"]
        lines.append(f"| {r['clip']} | {'released' if r['depth'] else 'none'} | "
                     f"{r['with_head']} of {r['frames']} ({r['measured']} + {r['held']}) | "
                     f"{_f(p['median'], 3)} / {_f(p['p90'], 3)} | {_f(f['median'], 1)} / {_f(f['p90'], 1)} | "
                     f"{r['person_mask_frames']} ({r['mask_on_real_head_frames']}) | "
                     f"{_f(r['mask_area_fraction_median'], 3)} "
                     f"({_f(r['depth_refined_mask_area_fraction_median'], 3)}) | "
                     f"{_f(t['median_ms'], 1)} / {_f(t['p90_ms'], 1)} |")
    unmet = [item for r in result["clips"] if r["depth"] for item in _unmet(r, result["targets"])]
    lines += ["", "Targets (rows with the released depth): " + ("met on every clip." if not unmet else
                                                             "not met: " + "; ".join(unmet) + ".")]
    if result.get("pairs"):
        lines += ["", "Two people: each clip's exo frames twice side by side, the recorded head given to the detector "
                      "as the engine gives it with a head TF (its head hint) on the left or the right copy, or no "
                      "hint; frames whose person mask covers each copy's head:", "",
                  "| clip | head hint | mask on the left copy's head | on the right copy's head | detect ms median / "
                  "p90 |", "|---|---|---|---|---|"]
        for r in result["pairs"]:
            t = r["detect_ms"]
            lines.append(f"| {r['clip']} | {r['hint'] or 'none'} | {r['mask_on_left_head_frames']} of {r['frames']} "
                         f"| {r['mask_on_right_head_frames']} of {r['frames']} | {_f(t['median_ms'], 1)} / "
                         f"{_f(t['p90_ms'], 1)} |")
    return "\n".join(lines) + "\n"


def _unmet(row: dict, targets: dict) -> list[str]:
    """The targets a run_egoexo4d() row misses (see bench.common.missed_targets)."""
    p, f, t = row["position_error_m"], row["forward_error_deg"], row["ms_per_frame"]
    return missed_targets(row["clip"], (
        ("frames with a head", row["head_rate"], ">=", targets["head_rate"], 2),
        ("position median [m]", p["median"], "<=", targets["position_median_m"], 3),
        ("position p90 [m]", p["p90"], "<=", targets["position_p90_m"], 3),
        ("forward median [deg]", f["median"], "<=", targets["forward_median_deg"], 1),
        ("detect + head median [ms]", t["median_ms"], "<=", targets["ms_per_frame"], 1)))
