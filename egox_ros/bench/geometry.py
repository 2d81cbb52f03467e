"""`egox bench geometry`: accuracy, speed and scaling of the ego-prior geometry on real TUM RGB-D data.

Accuracy: render frame j from the cloud of frame i (and of the window of frames ending at i) with the sensor depth,
for gaps j - i of 5, 10 and 20 frames, and compare with the real frame j on the covered pixels (coverage, PSNR,
mean absolute error in 0-255 units). Baselines in the same run: frame i itself (no warp), and open3d's projection of
the same cloud (an independent renderer; pinhole without distortion, single-pixel points, so ours runs the same way).
Speed: milliseconds per 640x480 exo frame for alignment, fusion and rendering into the 448x448 ego camera.
Scaling: time against window length and number of points.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from egox_ros.bench.common import machine_info, median_ms
from egox_ros.core.config import EgoCameraConfig, PriorConfig
from egox_ros.core.geometry.cameras import PinholeCamera
from egox_ros.core.geometry.fusion import FusionConfig, make_fusion
from egox_ros.core.geometry.render import PointCloud, lift_depth, render_points
from egox_ros.core.io.evaluation import masked_mae, masked_psnr
from egox_ros.core.runtime.pipeline import ego_camera_from_config
from egox_ros.tools.tum import SEQUENCES, TumSequence

GAPS = (5, 10, 20)
WINDOW_FRAMES = 4
WINDOW_MODES = ("moving", "concat")  # 'static' needs a fixed exo camera; both TUM cameras move
POINT_RADIUS_PX = PriorConfig().point_radius_px
SECTION = "geometry"


def _tensor(a: np.ndarray, device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).to(device)


def _cloud(seq: TumSequence, index: int, device, stride: int) -> PointCloud:
    f = seq[index]
    return lift_depth(_tensor(f.rgb, device), _tensor(f.depth_m, device), seq.camera, _tensor(f.world_T_camera, device),
                      stride=stride, min_depth_m=0.1, max_depth_m=10.0)


def _fused(seq: TumSequence, indices, mode: str, stride: int, device) -> PointCloud:
    """The cloud of frames `indices` fused by the node's fusion module in `mode` (window = len(indices))."""
    fusion = make_fusion(FusionConfig(mode=mode, window_frames=len(indices), stride=stride), device)
    for k in indices:
        f = seq[k]
        fusion.add(k, f.rgb, f.depth_m, seq.camera, f.world_T_camera)
    return fusion.cloud()


def _score(rgb: np.ndarray, mask: np.ndarray, reference: np.ndarray) -> dict:
    return {"coverage": float(mask.mean()), "psnr_db": masked_psnr(rgb, reference, mask),
            "mae": masked_mae(rgb, reference, mask)}


def _open3d_render(cloud: PointCloud, camera: PinholeCamera, world_T_camera: np.ndarray):
    """open3d's z-buffered projection of the cloud: (rgb (H, W, 3) uint8, mask (H, W) bool, depth_m (H, W))."""
    from egox_ros.core.io.open3d_import import import_open3d
    o3d = import_open3d()
    pcd = o3d.t.geometry.PointCloud()
    pcd.point.positions = o3d.core.Tensor(cloud.points_world.cpu().numpy())
    pcd.point.colors = o3d.core.Tensor(cloud.colors.cpu().numpy().astype(np.float32) / 255.0)
    intrinsics = o3d.core.Tensor(camera.K, dtype=o3d.core.float64)
    extrinsics = o3d.core.Tensor(np.linalg.inv(world_T_camera), dtype=o3d.core.float64)
    rgbd = pcd.project_to_rgbd_image(camera.width, camera.height, intrinsics, extrinsics,
                                     depth_scale=1.0, depth_max=100.0)
    depth = np.asarray(rgbd.depth.as_tensor().numpy())[..., 0].astype(np.float32)
    color = np.asarray(rgbd.color.as_tensor().numpy()).astype(np.float32)
    rgb = np.clip(np.round(color * 255.0), 0, 255).astype(np.uint8)
    return rgb, depth > 0, depth


def _mean(values) -> float | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return round(float(np.mean(values)), 4) if values else None


def accuracy(sequence: str, gaps=GAPS, pairs_per_gap: int = 8, device: str = "cpu", stride: int = 1,
             progress=None) -> dict:
    """Render-and-compare on one sequence; per gap the mean over `pairs_per_gap` (i, i + gap) pairs, lifting every
    `stride`-th exo pixel."""
    seq = TumSequence(sequence)
    pinhole = PinholeCamera(seq.camera.width, seq.camera.height, seq.camera.fx, seq.camera.fy,
                            seq.camera.cx, seq.camera.cy)  # for the cross-check: open3d has no lens distortion
    out = {"frames": len(seq), "lift_stride": stride, "camera": {"fx": seq.camera.fx, "fy": seq.camera.fy,
                                           "distortion": list(seq.camera.distortion)}, "gaps": {}}
    for gap in gaps:
        first = WINDOW_FRAMES - 1
        last = len(seq) - 1 - gap
        sources = sorted(set(np.linspace(first, last, pairs_per_gap).round().astype(int).tolist()))
        rows = []
        for i in sources:
            j = i + gap
            target = seq[j]
            pose_j = _tensor(target.world_T_camera, device)
            single = _cloud(seq, i, device, stride)
            v1 = render_points(single, seq.camera, pose_j, POINT_RADIUS_PX)
            m1 = v1.mask.cpu().numpy()
            row = {"i": i, "j": j, "single": _score(v1.rgb.cpu().numpy(), m1, target.rgb)}
            for mode in WINDOW_MODES:
                vw = render_points(_fused(seq, range(i - WINDOW_FRAMES + 1, i + 1), mode, stride, device),
                                   seq.camera, pose_j, POINT_RADIUS_PX)
                row[f"window_{mode}"] = _score(vw.rgb.cpu().numpy(), vw.mask.cpu().numpy(), target.rgb)
            row.update({
                "no_warp": _score(seq[i].rgb, np.ones_like(m1), target.rgb),
                "no_warp_on_covered": _score(seq[i].rgb, m1, target.rgb)})
            # Independent renderer on the same cloud, both with single-pixel points into an undistorted pinhole.
            ours = render_points(single, pinhole, pose_j, 0)
            o_rgb, o_mask, o_depth = _open3d_render(single, pinhole, target.world_T_camera)
            our_mask, our_depth = ours.mask.cpu().numpy(), ours.depth_m.cpu().numpy()
            both = our_mask & o_mask
            union = our_mask | o_mask
            row["open3d"] = {**_score(o_rgb, o_mask, target.rgb),
                             "ours_pinhole_r0": _score(ours.rgb.cpu().numpy(), our_mask, target.rgb),
                             "mask_iou": float(both.sum() / max(union.sum(), 1)),
                             "depth_abs_diff_m": float(np.abs(our_depth[both] - o_depth[both]).mean()) if both.any() else None,
                             "same_color_fraction": float((ours.rgb.cpu().numpy()[both] == o_rgb[both]).all(-1).mean())
                             if both.any() else None}
            rows.append(row)
            if progress:
                progress(f"{sequence} gap {gap}: {i}->{j}")
        summary = {}
        for key in ("single", *(f"window_{m}" for m in WINDOW_MODES), "no_warp", "no_warp_on_covered", "open3d"):
            summary[key] = {m: _mean(r[key][m] for r in rows) for m in ("coverage", "psnr_db", "mae")}
        summary["open3d"].update({m: _mean(r["open3d"][m] for r in rows)
                                  for m in ("mask_iou", "depth_abs_diff_m", "same_color_fraction")})
        summary["open3d"]["ours_pinhole_r0_psnr_db"] = _mean(r["open3d"]["ours_pinhole_r0"]["psnr_db"] for r in rows)
        out["gaps"][str(gap)] = {"pairs": len(rows), "mean": summary, "per_pair": rows}
    return out


def _ego_camera() -> PinholeCamera:
    return ego_camera_from_config(EgoCameraConfig())


def speed(device: str = "cpu", repeats: int = 20, stride: int = 1, mode: str = "moving",
          window_frames: int = WINDOW_FRAMES) -> dict:
    """Milliseconds per new 640x480 exo frame in the node's streaming prior path: depth alignment, fusion (lifting,
    adding the frame, dropping the one that left the window, the fused cloud) and rendering into the 448x448 ego
    camera. 'static' mode gets every frame at one pose (a fixed camera), the others the real poses."""
    seq = TumSequence(SEQUENCES[0])
    ego = _ego_camera()
    sync = torch.cuda.synchronize if device.startswith("cuda") else None
    frame = seq[20]
    depth = _tensor(frame.depth_m, device)
    result = {"device": device, "exo": "640x480", "ego": f"{ego.width}x{ego.height}", "lift_stride": stride,
              "fusion": mode, "window_frames": window_frames, "point_radius_px": POINT_RADIUS_PX}
    # Alignment: the streaming aligner fed a relative inverse depth (an affine map of the real inverse depth, as a
    # video depth model gives) and the real depth as the metric source.
    from egox_ros.core.geometry.depth_alignment import DepthAlignmentConfig, StreamingDepthAligner
    aligner = StreamingDepthAligner(DepthAlignmentConfig())
    relative_inv = 3.0 / depth + 0.2
    result["alignment_fit_stride"] = aligner.config.fit_stride
    result["alignment_ms"] = median_ms(lambda: aligner.update(relative_inv, depth), repeats, sync=sync)

    fusion = make_fusion(FusionConfig(mode=mode, window_frames=window_frames, stride=stride), device)
    first = 5 if window_frames + repeats + 5 <= len(seq) else 0
    frames = [seq[k] for k in range(first, min(len(seq), first + window_frames + repeats))]
    fusion_ms, render_ms, points = [], [], []
    for n, f in enumerate(frames):
        pose = frames[0].world_T_camera if mode == "static" else f.world_T_camera
        rgb, depth_k = _tensor(f.rgb, device), _tensor(f.depth_m, device)
        if sync:
            sync()
        t0 = time.perf_counter()
        fusion.add(n, rgb, depth_k, seq.camera, pose)
        fusion.remove_older_than(n - window_frames + 1)
        cloud = fusion.cloud()
        if sync:
            sync()
        t1 = time.perf_counter()
        render_points(cloud, ego, _tensor(f.world_T_camera, device), POINT_RADIUS_PX)
        if sync:
            sync()
        t2 = time.perf_counter()
        if n >= window_frames:  # the window is full: steady state
            fusion_ms.append((t1 - t0) * 1e3)
            render_ms.append((t2 - t1) * 1e3)
            points.append(len(cloud))
    result["window_points"] = int(np.median(points))
    result["fusion_ms"] = round(float(np.median(fusion_ms)), 3)
    result["render_ms"] = round(float(np.median(render_ms)), 3)
    per_frame = result["alignment_ms"] + result["fusion_ms"] + result["render_ms"]
    result["prior_path_ms"] = round(per_frame, 3)
    result["prior_path_fps"] = round(1000.0 / per_frame, 2)
    return result


def scaling(device: str = "cpu", windows=(1, 2, 4, 8, 16, 32), repeats: int = 5) -> dict:
    """Render time against the number of window frames (points); linear growth means constant time per point."""
    seq = TumSequence(SEQUENCES[0])
    ego = _ego_camera()
    sync = torch.cuda.synchronize if device.startswith("cuda") else None
    newest = max(windows) + 5
    clouds = [_cloud(seq, k, device, 1) for k in range(newest, newest - max(windows), -1)]
    ego_pose = _tensor(seq[newest].world_T_camera, device)
    rows = []
    for n in windows:
        cloud = PointCloud.concat(clouds[:n])
        ms = median_ms(lambda: render_points(cloud, ego, ego_pose, POINT_RADIUS_PX), repeats, sync=sync)
        rows.append({"window_frames": n, "points": len(cloud), "render_ms": ms,
                     "ms_per_million_points": round(ms / len(cloud) * 1e6, 2)})
    # Growth exponent: slope of log(time) against log(points), least squares over the rows (1 = linear).
    slope = float(np.polyfit(np.log([r["points"] for r in rows]), np.log([r["render_ms"] for r in rows]), 1)[0])
    # The node's streaming path (default 'moving' fusion, stride 2) against window length.
    path = [speed(device, repeats=repeats, stride=2, mode="moving", window_frames=n) for n in windows]
    path_rows = [{k: r[k] for k in ("window_frames", "window_points", "fusion_ms", "render_ms", "prior_path_ms")}
                 for r in path]
    path_slope = float(np.polyfit(np.log([r["window_frames"] for r in path_rows]),
                                  np.log([r["fusion_ms"] + r["render_ms"] for r in path_rows]), 1)[0])
    return {"device": device, "rows": rows, "loglog_slope": round(slope, 3), "at_most_linear": slope <= 1.1,
            "prior_path_rows": path_rows, "prior_path_loglog_slope_vs_window": round(path_slope, 3)}


def run_all(quick: bool = False, device: str = "cpu", progress=None) -> dict:
    """Every geometry benchmark; `quick` runs fewer pairs and repeats (a smoke run, not for docs)."""
    pairs = 1 if quick else 8
    return {"benchmark": SECTION, "quick": quick, "machine": machine_info(),
            "accuracy": {f"{name}/stride{stride}": accuracy(name, pairs_per_gap=pairs, device=device, stride=stride,
                                                            progress=progress)
                         for name in SEQUENCES for stride in (1, 2)},
            "speed": [speed(device, repeats=5 if quick else 20, stride=stride, mode=mode)
                      for mode in ("moving", "static", "concat") for stride in (1, 2)],
            "scaling": scaling(device, windows=(1, 2, 4, 8) if quick else (1, 2, 4, 8, 16, 32),
                               repeats=3 if quick else 5)}


def markdown(result: dict) -> str:
    """The docs/benchmarks.md section of a run_all() result."""
    m = result["machine"]
    lines = [f"Run {m['date']} on {m['cpu']} ({m['cpu_cores']} cores, torch threads {m['torch_threads']}, "
             f"{m['memory_gb']} GB), GPU: {m['gpu'] or 'none'}; " +
             ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + (" (quick run)" if result["quick"] else ""),
             "", "### Accuracy on real data (TUM RGB-D, sensor depth)", "",
             "Render frame j from the cloud of frame i (single) or of frames i-3..i fused (voxel: the 'moving' fusion; "
             "concat: the clouds side by side), 3x3 splats, and compare with the real frame j on the covered pixels. "
             "PSNR in dB, MAE in 0-255 units. No-warp: frame i itself, on all pixels / on the pixels the single "
             "render covers. open3d: its projection of the single cloud against ours, both single-pixel into the "
             "undistorted pinhole.", "",
             "| sequence / lift stride | gap | coverage single / voxel / concat | PSNR single / voxel / concat "
             "| PSNR no-warp (all / covered) | MAE single / no-warp | open3d: mask IoU, same colour, PSNR ours / open3d |",
             "|---|---|---|---|---|---|---|"]
    for name, acc in result["accuracy"].items():
        for gap, g in acc["gaps"].items():
            s = g["mean"]
            o = s["open3d"]
            lines.append(f"| {name} | {gap} | {s['single']['coverage']:.3f} / {s['window_moving']['coverage']:.3f} / "
                         f"{s['window_concat']['coverage']:.3f} | {s['single']['psnr_db']:.2f} / "
                         f"{s['window_moving']['psnr_db']:.2f} / {s['window_concat']['psnr_db']:.2f} "
                         f"| {s['no_warp']['psnr_db']:.2f} / {s['no_warp_on_covered']['psnr_db']:.2f} "
                         f"| {s['single']['mae']:.1f} / {s['no_warp']['mae']:.1f} "
                         f"| {o['mask_iou']:.4f}, {o['same_color_fraction']:.4f}, "
                         f"{o['ours_pinhole_r0_psnr_db']:.2f} / {o['psnr_db']:.2f} |")
    lines += ["", "### Speed (each new 640x480 exo frame to a 448x448 ego prior, window of 4 frames)", "",
              "| device | fusion | lift stride | window points | alignment ms | fusion ms | render ms | prior path ms "
              "| frames/s |", "|---|---|---|---|---|---|---|---|---|"]
    for sp in result["speed"]:
        lines.append(f"| {sp['device']} | {sp['fusion']} | {sp['lift_stride']} | {sp['window_points']} "
                     f"| {sp['alignment_ms']} | {sp['fusion_ms']} | {sp['render_ms']} | {sp['prior_path_ms']} "
                     f"| {sp['prior_path_fps']} |")
    sc = result["scaling"]
    lines += ["", "### Scaling (render time against window length)", "",
              "| window frames | points | render ms | ms per million points |", "|---|---|---|---|"]
    for r in sc["rows"]:
        lines.append(f"| {r['window_frames']} | {r['points']} | {r['render_ms']} | {r['ms_per_million_points']} |")
    lines += ["", f"Growth exponent (slope of log time against log points): {sc['loglog_slope']} "
                  f"({'at most linear' if sc['at_most_linear'] else 'worse than linear'}).", "",
              "The node's streaming path ('moving' voxel fusion, lift stride 2) against window length:", "",
              "| window frames | fused points | fusion ms | render ms | prior path ms (with alignment) |",
              "|---|---|---|---|---|"]
    for r in sc["prior_path_rows"]:
        lines.append(f"| {r['window_frames']} | {r['window_points']} | {r['fusion_ms']} | {r['render_ms']} "
                     f"| {r['prior_path_ms']} |")
    lines += ["", f"Growth exponent of fusion + render time against window length: "
                  f"{sc['prior_path_loglog_slope_vs_window']} (the voxel grid merges what the frames share)."]
    return "\n".join(lines) + "\n"
