"""`egox bench prior`: the soft-disc prior renderer (the released EgoX one) against the hard z-buffer squares.

Accuracy on real TUM RGB-D data (sensor depth): the window of frames i-3..i (lift stride 2, 'moving' voxel fusion,
as the node) is rendered at the pose of frame j = i + gap into the sequence camera scaled to 448 px wide (the
released prior's width, so the 5 px radius means the same), and compared with the real frame j (area-resized):
holes (uncovered fraction), PSNR on each renderer's own covered pixels and on the pixels both cover, mask IoU
between the two. The hard splat is run with radius 1 (the 'hard' default) and 2.
Independent check: a per-pixel numpy float64 loop (every point within the radius, sorted by depth, the K nearest
composited front to back) on a 40x32 crop of the same render; reports the nearest-point agreement and the largest
colour difference in 0-255 units.
Speed: the node's streaming prior path (fusion + render) per new 640x480 frame into the 448x448 ego camera.
With --egoexo4d DIR instead (run_egoexo4d): real demonstrations, every clip of a released EgoX example/egoexo4D
folder through `egox process` against the released prior and the real head camera's video (issues 17 and 18).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from egox_ros.bench.common import fixed_or_dash as _f, machine_info, missed_targets
from egox_ros.core.config import EgoCameraConfig, PriorConfig
from egox_ros.core.geometry.fusion import FusionConfig, make_fusion
from egox_ros.core.geometry.render import PointCloud, pose_float64, render_points, render_points_soft, transform_points
from egox_ros.core.io.evaluation import masked_psnr
from egox_ros.core.runtime.pipeline import ego_camera_from_config
from egox_ros.tools.egoexo4d import RELEASED_EXO_FOCAL_SCALE
from egox_ros.tools.tum import SEQUENCES, TumSequence

SECTION = "prior"
WINDOW_FRAMES = 4
STRIDE = 2
GAPS = (0, 5, 10)
CROP = (40, 32)
PRIOR = PriorConfig()


def _tensor(a: np.ndarray, device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).to(device)


def _window_cloud(seq: TumSequence, i: int, device) -> PointCloud:
    fusion = make_fusion(FusionConfig(mode="moving", window_frames=WINDOW_FRAMES, stride=STRIDE), device)
    for k in range(i - WINDOW_FRAMES + 1, i + 1):
        f = seq[k]
        fusion.add(k, _tensor(f.rgb, device), _tensor(f.depth_m, device), seq.camera, f.world_T_camera)
    return fusion.cloud()


def _resize(rgb: np.ndarray, w: int, h: int) -> np.ndarray:
    import cv2
    return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)


def _soft(cloud, camera, pose, **kw):
    return render_points_soft(cloud, camera, pose, radius_px=PRIOR.splat_radius_px,
                              points_per_pixel=PRIOR.points_per_pixel, **kw)


def reference_soft(cloud: PointCloud, camera, world_T_camera, radius: float, k_max: int, offset: float = 0.5):
    """Independent slow renderer: per pixel, numpy float64, every point within `radius`, nearest K composited."""
    pts = transform_points(cloud.points_world.cpu(), torch.linalg.inv(pose_float64(world_T_camera)))
    uv, valid = camera.project(pts)
    uv, z = uv.double().numpy() - offset, pts[:, 2].double().numpy()
    valid = valid.numpy() & (z >= 0)
    colors = cloud.colors.cpu().numpy().astype(np.float64)
    out = np.zeros((camera.height, camera.width, 3))
    index = np.full((camera.height, camera.width), len(cloud))
    near = valid & (uv[:, 0] > -radius) & (uv[:, 0] < camera.width - 1 + radius) \
        & (uv[:, 1] > -radius) & (uv[:, 1] < camera.height - 1 + radius)
    cand_all = np.nonzero(near)[0]
    for y in range(camera.height):
        for x in range(camera.width):
            d2 = (uv[cand_all, 0] - x) ** 2 + (uv[cand_all, 1] - y) ** 2
            inside = d2 < radius * radius
            cand, d2 = cand_all[inside], d2[inside]
            order = np.lexsort((cand, z[cand]))[:k_max]
            t = 1.0
            for o in order:
                a = 1.0 - d2[o] / (radius * radius)
                out[y, x] += t * a * colors[cand[o]]
                t *= 1.0 - a
            if len(order):
                index[y, x] = cand[order[0]]
    rgb = np.clip(np.floor(out + 1e-3), 0, 255)
    rgb[(rgb < 2.55).all(-1)] = 0
    return rgb.astype(np.uint8), index


def accuracy(sequence: str, pairs_per_gap: int = 4, device: str = "cpu", progress=None) -> dict:
    seq = TumSequence(sequence)
    camera = seq.camera.with_size(448, round(448 * seq.camera.height / seq.camera.width))
    rows = []
    for gap in GAPS:
        sources = np.linspace(WINDOW_FRAMES - 1, len(seq) - 1 - gap, pairs_per_gap).round().astype(int)
        for i in sorted(set(sources.tolist())):
            j = int(i) + gap
            cloud = _window_cloud(seq, int(i), device)
            target = _resize(seq[j].rgb, camera.width, camera.height)
            pose = _tensor(seq[j].world_T_camera, device)
            views = {"soft": _soft(cloud, camera, pose),
                     "soft_offset0": _soft(cloud, camera, pose, center_offset_px=0.0),
                     "hard_r1": render_points(cloud, camera, pose, 1), "hard_r2": render_points(cloud, camera, pose, 2)}
            masks = {k: v.mask.cpu().numpy() for k, v in views.items()}
            rgbs = {k: v.rgb.cpu().numpy() for k, v in views.items()}
            both = masks["soft"] & masks["hard_r1"]
            row = {"gap": gap, "i": int(i), "j": j, "points": len(cloud)}
            for k in views:
                row[k] = {"holes": float(1.0 - masks[k].mean()), "psnr_db": masked_psnr(rgbs[k], target, masks[k]),
                          "psnr_db_on_common": masked_psnr(rgbs[k], target, both)}
            row["mask_iou_soft_hard_r1"] = float(both.sum() / max((masks["soft"] | masks["hard_r1"]).sum(), 1))
            rows.append(row)
            if progress:
                progress(f"{sequence} {i}->{j}")
    keys = ("soft", "soft_offset0", "hard_r1", "hard_r2")
    mean = {k: {m: round(float(np.mean([r[k][m] for r in rows if r[k][m] is not None])), 4)
                for m in ("holes", "psnr_db", "psnr_db_on_common")} for k in keys}
    mean["mask_iou_soft_hard_r1"] = round(float(np.mean([r["mask_iou_soft_hard_r1"] for r in rows])), 4)
    # Independent check on a crop around the image centre of the first gap-5 pair.
    r0 = next(r for r in rows if r["gap"] == GAPS[1])
    cloud = _window_cloud(seq, r0["i"], device)
    x0, y0 = (camera.width - CROP[0]) // 2, (camera.height - CROP[1]) // 2
    crop = camera.cropped(x0, y0, *CROP)
    pose = seq[r0["j"]].world_T_camera
    ours = _soft(cloud, crop, _tensor(pose, device), min_transmittance=0.0)
    ref_rgb, ref_index = reference_soft(cloud, crop, pose, PRIOR.splat_radius_px, PRIOR.points_per_pixel)
    check = {"pair": [r0["i"], r0["j"]], "crop": list(CROP),
             "same_nearest_point_fraction": float((ours.point_index.cpu().numpy() == ref_index).mean()),
             "max_abs_color_diff": int(np.abs(ours.rgb.cpu().numpy().astype(int) - ref_rgb.astype(int)).max())}
    return {"frames": len(seq), "camera": f"{camera.width}x{camera.height}", "pairs": rows, "mean": mean,
            "reference_check": check}


def speed(device: str = "cpu", repeats: int = 10) -> dict:
    """Fusion + render per new frame in the node's streaming path (window 4, stride 2, 448x448 ego camera), on one
    torch thread (the kernels are single-threaded): wall-clock and CPU (thread) time medians. Soft: the compiled
    kernel on the CPU ('auto'), and the torch reference it replaces."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _speed(device, repeats)
    finally:
        torch.set_num_threads(threads)


def _timed(fn, sync) -> tuple[object, float, float]:
    """fn()'s result, and its wall and thread CPU time [ms] (device work synchronised before and after)."""
    sync()
    t, c = time.perf_counter(), time.thread_time()
    result = fn()
    sync()
    return result, (time.perf_counter() - t) * 1e3, (time.thread_time() - c) * 1e3


def _fuse(fusion, n: int, frame, camera, world_T_exo, device: str):
    """Frame ``n`` into the fusion at the exo pose world_T_exo, the window kept to WINDOW_FRAMES: the cloud to draw."""
    fusion.add(n, _tensor(frame.rgb, device), _tensor(frame.depth_m, device), camera, world_T_exo)
    fusion.remove_older_than(n - WINDOW_FRAMES + 1)
    return fusion.cloud()


def _speed(device: str, repeats: int) -> dict:
    seq = TumSequence(SEQUENCES[0])
    ego = ego_camera_from_config(EgoCameraConfig())
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    fusion = make_fusion(FusionConfig(mode="moving", window_frames=WINDOW_FRAMES, stride=STRIDE), device)
    names = ("soft", "soft_2threads", "soft_torch", "hard_r1", "hard_r2")
    wall = {k: [] for k in ("fusion",) + names}
    cpu = {k: [] for k in ("fusion",) + names}
    points = []
    load = [os.getloadavg()[0]]
    for n in range(5, 5 + WINDOW_FRAMES + repeats):
        f = seq[n]
        cloud, fuse_ms, fuse_cpu_ms = _timed(lambda: _fuse(fusion, n, f, seq.camera, f.world_T_camera, device), sync)
        measured = n >= 5 + WINDOW_FRAMES
        if measured:
            wall["fusion"].append(fuse_ms)
            cpu["fusion"].append(fuse_cpu_ms)
            points.append(len(cloud))
        pose = _tensor(f.world_T_camera, device)
        for name, fn in (("soft", lambda: _soft(cloud, ego, pose)),
                         ("soft_2threads", lambda: _soft(cloud, ego, pose, threads=2)),
                         ("soft_torch", lambda: _soft(cloud, ego, pose, backend="torch")),
                         ("hard_r1", lambda: render_points(cloud, ego, pose, 1)),
                         ("hard_r2", lambda: render_points(cloud, ego, pose, 2))):
            _, ms, cpu_ms = _timed(fn, sync)
            if measured:
                wall[name].append(ms)
                cpu[name].append(cpu_ms)
    out = {"device": device, "ego": f"{ego.width}x{ego.height}", "window_frames": WINDOW_FRAMES,
           "lift_stride": STRIDE, "window_points": int(np.median(points)), "torch_threads": 1,
           "fusion_ms": round(float(np.median(wall["fusion"])), 2),
           "fusion_cpu_ms": round(float(np.median(cpu["fusion"])), 2)}
    for name in names:
        out[f"{name}_render_ms"] = round(float(np.median(wall[name])), 2)
        out[f"{name}_render_cpu_ms"] = round(float(np.median(cpu[name])), 2)
        out[f"{name}_path_fps"] = round(1000.0 / (out["fusion_ms"] + out[f"{name}_render_ms"]), 2)
        out[f"{name}_path_fps_cpu"] = round(1000.0 / (out["fusion_cpu_ms"] + out[f"{name}_render_cpu_ms"]), 2)
    out["soft_render_ms_min"] = round(float(np.min(wall["soft"])), 2)
    out["still"] = _speed_still(seq, ego, device, repeats, sync)
    load.append(os.getloadavg()[0])
    out["load_average_1min"] = [round(x, 2) for x in load]   # before / after: other work on the machine slows it
    return out


def _speed_still(seq, ego, device: str, repeats: int, sync) -> dict:
    """The same frames through the default fusion ('auto') as a still camera sees them (every frame at the first
    one's pose: its static running average), each drawn with the soft splat: wall and CPU medians."""
    fusion = make_fusion(FusionConfig(window_frames=WINDOW_FRAMES, stride=STRIDE), device)
    exo_pose = seq[5].world_T_camera
    times = {k: [] for k in ("fusion", "fusion_cpu", "soft", "soft_cpu")}
    points = []
    for n in range(5, 5 + WINDOW_FRAMES + repeats):
        f = seq[n]
        cloud, fuse_ms, fuse_cpu_ms = _timed(lambda: _fuse(fusion, n, f, seq.camera, exo_pose, device), sync)
        _, soft_ms, soft_cpu_ms = _timed(lambda: _soft(cloud, ego, _tensor(f.world_T_camera, device)), sync)
        if n >= 5 + WINDOW_FRAMES:
            for key, value in (("fusion", fuse_ms), ("fusion_cpu", fuse_cpu_ms), ("soft", soft_ms),
                               ("soft_cpu", soft_cpu_ms)):
                times[key].append(value)
            points.append(len(cloud))
    if not getattr(fusion, "still", False):
        raise RuntimeError("the still camera's fusion did not run the static average")
    out = {"window_points": int(np.median(points))}
    for k, v in times.items():
        out[f"{k}_ms"] = round(float(np.median(v)), 2)
    out["soft_path_fps"] = round(1000.0 / (out["fusion_ms"] + out["soft_ms"]), 2)
    out["soft_path_fps_cpu"] = round(1000.0 / (out["fusion_cpu_ms"] + out["soft_cpu_ms"]), 2)
    return out


def run_all(quick: bool = False, device: str = "cpu", progress=None) -> dict:
    return {"benchmark": SECTION, "quick": quick, "machine": machine_info(),
            "config": {"splat_radius_px": PRIOR.splat_radius_px, "points_per_pixel": PRIOR.points_per_pixel},
            "accuracy": {name: accuracy(name, pairs_per_gap=2 if quick else 4, device=device, progress=progress)
                         for name in SEQUENCES},
            "speed": speed(device, repeats=3 if quick else 10), "speed_repeats": 3 if quick else 10}


def markdown(result: dict) -> str:
    m = result["machine"]
    c = result["config"]
    lines = [f"Run {m['date']} on {m['cpu']} ({m['cpu_cores']} cores, torch threads {m['torch_threads']}, "
             f"{m['memory_gb']} GB), GPU: {m['gpu'] or 'none'}; " +
             ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + (" (quick run)" if result["quick"] else ""),
             "", f"Soft: discs of {c['splat_radius_px']} px, alpha 1 - d^2/r^2, the {c['points_per_pixel']} nearest "
             "alpha-composited (the released EgoX prior renderer; `prior.splat: soft`, the default for every "
             "generator, composited by the compiled kernel on the CPU). Hard: z-buffered squares of radius 1 "
             "(`prior.splat: hard`) and 2. Window of frames i-3..i (lift stride 2, voxel fusion) "
             "rendered at frame j = i + gap into the TUM camera scaled to 448 px wide, against the real frame j. "
             "Holes: uncovered fraction. PSNR in dB on each renderer's own covered pixels / on the pixels soft and "
             "hard r1 both cover. Soft (offset 0): the discs centred on the projection itself instead of half a pixel "
             "up-left (the released renderer's pixel-centre convention, the default).", "",
             "| sequence | holes soft / hard r1 / hard r2 | PSNR own soft / soft (offset 0) / hard r1 / hard r2 "
             "| PSNR common soft / hard r1 | mask IoU soft-hard r1 | reference check: same nearest, max diff |",
             "|---|---|---|---|---|---|"]
    for name, acc in result["accuracy"].items():
        s, rc = acc["mean"], acc["reference_check"]
        lines.append(f"| {name} | {s['soft']['holes']:.3f} / {s['hard_r1']['holes']:.3f} / "
                     f"{s['hard_r2']['holes']:.3f} | {s['soft']['psnr_db']:.2f} / {s['soft_offset0']['psnr_db']:.2f} / "
                     f"{s['hard_r1']['psnr_db']:.2f} / "
                     f"{s['hard_r2']['psnr_db']:.2f} | {s['soft']['psnr_db_on_common']:.2f} / "
                     f"{s['hard_r1']['psnr_db_on_common']:.2f} | {s['mask_iou_soft_hard_r1']:.3f} "
                     f"| {rc['same_nearest_point_fraction']:.4f}, {rc['max_abs_color_diff']} |")
    sp = result["speed"]
    crop = "x".join(map(str, result["accuracy"][SEQUENCES[0]]["reference_check"]["crop"]))
    lines += ["", "Reference check: a per-pixel numpy float64 loop (every point in the radius, K nearest by depth, "
                  f"front to back, no transmittance cut-off) on a {crop} crop; max diff in 0-255 units.", "",
              f"### Speed (each new 640x480 exo frame to a {sp['ego']} ego prior, window of {sp['window_frames']}, "
              f"lift stride {sp['lift_stride']}, device {sp['device']}, torch threads {sp.get('torch_threads', 'all')})",
              "", "| window points | fusion ms | render ms soft (kernel) / soft (torch reference) / hard r1 / hard r2 "
              "| prior path frames/s soft / hard r1 |", "|---|---|---|---|"]
    for label, suffix in (("wall", ""), ("CPU", "_cpu")):
        if f"fusion{suffix}_ms" not in sp:
            continue
        fps = "_fps_cpu" if suffix else "_fps"
        torch_ms = sp.get(f"soft_torch_render{suffix}_ms", "-")
        lines.append(f"| {sp['window_points']} ({label}) | {sp[f'fusion{suffix}_ms']} | {sp[f'soft_render{suffix}_ms']} / "
                     f"{torch_ms} / {sp[f'hard_r1_render{suffix}_ms']} / {sp[f'hard_r2_render{suffix}_ms']} | "
                     f"{sp[f'soft_path{fps}']} / {sp[f'hard_r1_path{fps}']} |")
    st = sp.get("still")
    if st:
        for label, suffix in (("wall", ""), ("CPU", "_cpu")):
            lines.append(f"| {st['window_points']} (still camera, {label}) | {st[f'fusion{suffix}_ms']} | "
                         f"{st[f'soft{suffix}_ms']} / - / - / - | {st['soft_path_fps' + suffix]} / - |")
    if "load_average_1min" in sp:
        lo, hi = sp["load_average_1min"]
        lines += ["", f"Medians of {result.get('speed_repeats', 'the')} frames; wall: elapsed time, CPU: the thread's "
                      f"own CPU time (what one free core would take; less sensitive to other work on the machine). "
                      + ("Still camera: the same frames through the default fusion ('auto') with every frame at the "
                         "first one's pose, so it runs the static running average (a camera on a tripod), drawn "
                         "with the soft splat. " if st else "")
                      + f"Fastest soft render {sp['soft_render_ms_min']} ms wall. "
                      + (f"The kernel on 2 threads (`runtime.splat_threads` 2; the wall time counts, the CPU "
                         f"time is more than one thread's): {sp['soft_2threads_render_ms']} ms per render, prior path "
                         f"{sp['soft_2threads_path_fps']} frames/s. " if "soft_2threads_render_ms" in sp else "")
                      + f"1-minute load average before / after the speed run: {lo} / {hi} on {m['cpu_cores']} cores"
                      + (" (above the core count: other work was competing and wall times are inflated)."
                         if max(lo, hi) > m["cpu_cores"] else ".")]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------- released demonstrations (Ego-Exo4D, licensed)

EGOEXO4D_SECTION = "prior-egoexo4d"
EGOEXO4D_TARGETS = {"mask_iou": 0.85, "shared_psnr_db": 21.0}      # per clip (issues 17 and 18)
EGOEXO4D_CASES_PER_CLIP = 1


def run_egoexo4d(root, exo_focal_scale: float = RELEASED_EXO_FOCAL_SCALE, progress=None,
                 overrides: list[str] | tuple[str, ...] = (),
                 clips: list[str] | None = None) -> dict:
    """Every clip of a released example/egoexo4D folder (or those named in ``clips``) through `egox process`
    (default parameters, the released priors' ego camera, then ``overrides`` NAME:=VALUE), as the acceptance check
    of issues 17 and 18 runs it: per clip, our prior against the released prior (mask IoU, PSNR on the pixels both
    cover), our coverage, and both priors' masked PSNR against the real head camera's video. Each clip is converted
    to a bag in a temporary folder, deleted afterwards: nothing is written next to the data (licensed: never
    publish a bag made from it).
    ``progress(what)``: called after each clip."""
    from egox_ros.ros.offline.process import process
    from egox_ros.tools.egoexo4d import ego_camera_parameters, load_clip, selected_clips, write_bag
    machine = machine_info()
    machine["load_average_1min_at_start"] = round(os.getloadavg()[0], 2)
    rows = []
    with tempfile.TemporaryDirectory(prefix="egox-bench-prior-") as tmp:
        for name in selected_clips(Path(root), clips):
            clip = load_clip(Path(root), name, exo_focal_scale)
            work = Path(tmp) / name
            work.mkdir()
            write_bag(clip, work / "bag")
            params = [*ego_camera_parameters(clip.ego_camera), *overrides]
            del clip
            started = time.perf_counter()
            summary = process(work / "bag", work / "out", overrides=params, progress_bar=False).metrics["summary"]
            rows.append({"clip": name, "frames": summary["frames_in"], "published": summary["frames_published"],
                         "mask_iou": summary["mean_reference_prior_mask_iou"],
                         "shared_psnr_db": summary["mean_reference_prior_psnr_db"],
                         "coverage": summary["mean_coverage"],
                         "masked_psnr_db": summary["mean_masked_psnr_db"],
                         "released_masked_psnr_db": summary["mean_reference_prior_masked_psnr_db"],
                         "note": summary.get("reference_prior_note"),
                         "process_s": round(time.perf_counter() - started, 1)})
            shutil.rmtree(work)                     # a clip's bags at a time on disk (a few hundred MB)
            if progress:
                progress(name)
    machine["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    keys = ("mask_iou", "shared_psnr_db", "coverage", "masked_psnr_db", "released_masked_psnr_db")
    mean = {k: (round(float(np.mean([r[k] for r in rows])), 4) if rows and all(r[k] is not None for r in rows)
                else None) for k in keys}
    return {"benchmark": EGOEXO4D_SECTION, "machine": machine, "exo_focal_scale": exo_focal_scale,
            "overrides": list(overrides), "targets": EGOEXO4D_TARGETS, "clips": rows, "mean": mean}


def _unmet(row: dict, targets: dict) -> list[str]:
    """The per-clip targets a run_egoexo4d() row misses (see bench.common.missed_targets)."""
    return missed_targets(row["clip"], (
        ("mask IoU", row["mask_iou"], ">=", targets["mask_iou"], 3),
        ("PSNR on shared pixels [dB]", row["shared_psnr_db"], ">=", targets["shared_psnr_db"], 2),
        ("PSNR against the real video [dB] (the released prior's)", row["masked_psnr_db"], ">=",
         row["released_masked_psnr_db"], 2)))


def markdown_egoexo4d(result: dict) -> str:
    """The docs/benchmarks.md section of a run_egoexo4d() result."""
    m = result["machine"]
    settings = ", ".join(f"`{o}`" for o in result["overrides"]) or "none"
    lines = [f"Run {m['date']} on {m['cpu']} ({m['cpu_cores']} cores); "
             + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if k in ("python", "torch", "numpy"))
             + f"; exo focal length: the released one times {result['exo_focal_scale']:g}; parameters: the defaults, "
               f"the released priors' ego camera, overrides: {settings}. Targets per clip: mask IoU >= "
               f"{result['targets']['mask_iou']}, >= {result['targets']['shared_psnr_db']} dB on shared pixels, and "
               "our masked PSNR against the real video at least the released prior's.", "",
             "| clip | published | mask IoU with the released prior | PSNR on shared pixels [dB] | coverage | masked "
             "PSNR against the real video, ours / released [dB] | process s |", "|---|---|---|---|---|---|---|"]
    for r in result["clips"]:
        lines.append(f"| {r['clip']} | {r['published']} of {r['frames']} | {_f(r['mask_iou'], 3)} | "
                     f"{_f(r['shared_psnr_db'], 2)} | {_f(r['coverage'], 3)} | {_f(r['masked_psnr_db'], 2)} / "
                     f"{_f(r['released_masked_psnr_db'], 2)} | {r['process_s']} |")
    a = result["mean"]
    lines.append(f"| mean | | {_f(a['mask_iou'], 3)} | {_f(a['shared_psnr_db'], 2)} | {_f(a['coverage'], 3)} | "
                 f"{_f(a['masked_psnr_db'], 2)} / {_f(a['released_masked_psnr_db'], 2)} | |")
    unmet = [item for r in result["clips"] for item in _unmet(r, result["targets"])]
    lines += ["", "Targets: " + ("met on every clip." if not unmet else "not met: " + "; ".join(unmet) + ".")]
    notes = [f"{r['clip']}: {r['note']}" for r in result["clips"] if r["note"]]
    if notes:
        lines += ["", "Not compared: " + "; ".join(notes)]
    return "\n".join(lines) + "\n"
