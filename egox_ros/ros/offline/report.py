"""The report of an offline run (`egox replay`, `egox process`): metrics.json and contact_sheet.png, computed from the
input bag and the recorded output bag, and the run's result and last line."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from egox_ros.core.demonstrator.head_geometry import forward_angle_deg, position_error_m
from egox_ros.core.geometry.cameras import PinholeCamera
from egox_ros.core.geometry.transforms import RigidTransform
from egox_ros.core.io.compressed_image import decode_compressed_rgb
from egox_ros.core.io.contact_sheet import contact_sheet, tint
from egox_ros.core.io.evaluation import (compare_with_reference_prior, masked_psnr, reference_prior_mask,
                                         resample_into_camera)
from egox_ros.core.io.image_codec import decode_image
from egox_ros.core.runtime.tf_buffer import TfBufferCore, TfError
from egox_ros.ros.conversions import camera_info_to_camera as _camera
from egox_ros.ros.conversions import image_to_rgb as _rgb
from egox_ros.ros.conversions import stamp_to_ns as _ns
from egox_ros.ros.conversions import transform_msg_to_rigid as _rigid
from egox_ros.ros.offline.interrupts import interrupts_held
from egox_ros.ros.offline.plan import ReplayError

STATUS_NAMES = {0: "ok", 1: "failed", 2: "dropped"}
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
HEAD_POSE_TOPIC = "/egox/head_pose"
PERSON_MASK_TOPIC = "/egox/person_mask"
REFERENCE_PRIOR_TOPIC = "/ego/released_prior/image_raw"   # a prior to compare with: `egox tools egoexo4d` writes
                                                          # the released EgoX prior there


def _image_rgb(msg, msgtype: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a raw Image or a JPEG / PNG CompressedImage (rosbags message)."""
    if msgtype == COMPRESSED_TYPE:
        return decode_compressed_rgb(bytes(msg.data), msg.format)
    return _rgb(msg)


def write_report(in_bag: Path, out_bag: Path, out_dir: Path, exo_topic: str, gt_topic: str, typestore,
                 sheet_frames: int = 6, world_frame: str = "world", head_frame: str = "head",
                 gt_info_topic: str | None = None, torch_threads: int = 1, progress_bar: bool = True) -> dict:
    """Per-frame status, prior coverage and (with a ground-truth topic) masked PSNR of the ego output against the
    ground truth resampled into the ego camera; with head poses estimated by the node (/egox/head_pose) and a
    reference head TF (world_frame -> head_frame) in the input bag, the head position and forward-direction
    errors; writes out_dir/contact_sheet.png (person masks tinted on the exo column); returns the metrics dict.
    Exo frames are the exo_topic messages (Image or CompressedImage) by header stamp, as the node's outputs are
    (a bag's log times may differ from the header stamps); gt_info_topic defaults to camera_info beside gt_topic.
    torch_threads: torch's CPU threads meanwhile (runtime.torch_threads; 0 = every core), restored after;
    progress_bar: a bar over the images read (stderr)."""
    import torch
    previous_threads = torch.get_num_threads()
    if torch_threads:      # every core on a busy machine made this step take 30-90 s
        torch.set_num_threads(torch_threads)
    try:
        return _write_report(in_bag, out_bag, out_dir, exo_topic, gt_topic, typestore, sheet_frames, world_frame,
                             head_frame, gt_info_topic, progress_bar)
    finally:
        torch.set_num_threads(previous_threads)


def _write_report(in_bag: Path, out_bag: Path, out_dir: Path, exo_topic: str, gt_topic: str, typestore,
                  sheet_frames: int, world_frame: str, head_frame: str, gt_info_topic: str | None,
                  progress_bar: bool) -> dict:
    from rosbags.highlevel import AnyReader
    from tqdm import tqdm

    gt_info_topic = gt_info_topic or gt_topic.rsplit("/", 1)[0] + "/camera_info"
    tf = TfBufferCore(cache_time_s=1e6)
    meta_by_stamp: dict[int, object] = {}
    exo_stamps: list[int] = []
    gt_camera: PinholeCamera | None = None
    ego_camera: PinholeCamera | None = None
    head_estimates: dict[int, np.ndarray] = {}      # stamp -> world_T_head (4, 4) estimated by the node
    person_masks: dict[int, np.ndarray] = {}
    with AnyReader([in_bag, out_bag], default_typestore=typestore) as reader:
        small = [c for c in reader.connections
                 if c.topic in ("/tf", "/tf_static", "/ego/clip_metadata", gt_info_topic, "/ego/camera_info",
                                HEAD_POSE_TOPIC)]
        for conn, _, raw in reader.messages(connections=small):
            msg = reader.deserialize(raw, conn.msgtype)
            if conn.topic in ("/tf", "/tf_static"):
                for t in msg.transforms:
                    try:
                        tf.set_transform(t.header.frame_id, t.child_frame_id, _ns(t.header.stamp), _rigid(t.transform),
                                         static=conn.topic == "/tf_static")
                    except TfError:
                        pass
            elif conn.topic == "/ego/clip_metadata":
                for s in msg.source_stamps:
                    meta_by_stamp[_ns(s)] = msg
            elif conn.topic == gt_info_topic and gt_camera is None:
                gt_camera = _camera(msg)
            elif conn.topic == "/ego/camera_info" and ego_camera is None:
                ego_camera = _camera(msg)
            elif conn.topic == HEAD_POSE_TOPIC:
                p, q = msg.pose.pose.position, msg.pose.pose.orientation
                head_estimates[_ns(msg.header.stamp)] = RigidTransform(
                    np.array([p.x, p.y, p.z]), np.array([q.x, q.y, q.z, q.w])).as_matrix()
        exo_conns = [c for c in reader.connections if c.topic == exo_topic]
        for conn, _, raw in reader.messages(connections=exo_conns):   # header stamps, as the outputs carry
            exo_stamps.append(_ns(reader.deserialize(raw, conn.msgtype).header.stamp))

        published = [s for s in exo_stamps if s in meta_by_stamp and meta_by_stamp[s].status == 0]
        count = min(sheet_frames, len(published))
        sheet_stamps = {published[int(round(i * (len(published) - 1) / max(count - 1, 1)))] for i in range(count)}

        # One pass over the images of both bags (time order); a stamp is evaluated once its pieces are in.
        topics = {exo_topic: "exo", gt_topic: "gt", "/ego/image_raw": "ego", "/ego/prior/image_raw": "prior",
                  "/ego/prior/mask": "mask", PERSON_MASK_TOPIC: "person", REFERENCE_PRIOR_TOPIC: "reference"}
        image_conns = [c for c in reader.connections if c.topic in topics]
        has_gt = any(c.topic == gt_topic for c in image_conns) and gt_camera is not None
        has_reference = any(c.topic == REFERENCE_PRIOR_TOPIC for c in image_conns)
        needed = {"ego", "mask"} | ({"gt"} if has_gt else set()) | ({"prior", "reference"} if has_reference else set())
        sheet_only = {"exo", "person"} | (set() if has_reference else {"prior"})
        parts: dict[int, dict[str, np.ndarray]] = {}
        frames: dict[int, dict] = {}
        sheet_rows: dict[int, list] = {}
        with interrupts_held():     # egox replay's stop signal: not inside tqdm's constructor
            bar = tqdm(total=sum(c.msgcount for c in image_conns), unit="image", desc="report",
                       disable=not progress_bar)
        for conn, _, raw in reader.messages(connections=image_conns):
            bar.update(1)
            kind = topics[conn.topic]
            msg = reader.deserialize(raw, conn.msgtype)
            stamp = _ns(msg.header.stamp)
            if kind in sheet_only and stamp not in sheet_stamps:
                continue  # only needed for the contact sheet
            if kind == "person":
                person_masks[stamp] = decode_image(msg.data, msg.encoding, msg.height, msg.width, msg.step,
                                                   bool(msg.is_bigendian)) > 0
                continue
            if kind == "mask":
                image = decode_image(msg.data, msg.encoding, msg.height, msg.width, msg.step,
                                     bool(msg.is_bigendian)) > 0
            else:
                image = _image_rgb(msg, conn.msgtype)
            if kind == "gt":
                parts.setdefault(stamp, {})["gt_frame"] = msg.header.frame_id
            parts.setdefault(stamp, {})[kind] = image
            p = parts[stamp]
            if needed <= p.keys() and (stamp not in sheet_stamps or {"exo", "prior"} <= p.keys()):
                frames[stamp] = _evaluate(p, stamp, ego_camera, gt_camera, tf, meta_by_stamp)
                if stamp in sheet_stamps:
                    sheet_rows[stamp] = [p.get("exo"), p.get("prior"), p["ego"], p.get("gt_in_ego")]
                del parts[stamp]
        bar.close()

    per_frame = []
    for stamp in exo_stamps:
        meta = meta_by_stamp.get(stamp)
        entry = {"stamp_ns": stamp, "status": STATUS_NAMES.get(meta.status, "?") if meta else "missing",
                 "reason": meta.reason if meta else "no clip metadata recorded for this frame"}
        entry.update(frames.get(stamp, {}))
        if meta is not None and meta.status == 0 and len(meta.prior_person_fraction):
            entry["prior_person_fraction"] = round(float(meta.prior_person_fraction[
                [_ns(s) for s in meta.source_stamps].index(stamp)]), 5)
        entry.update(_head_errors(head_estimates.get(stamp), tf, world_frame, head_frame, stamp))
        per_frame.append(entry)
    ok_meta = [m for m in {id(m): m for m in meta_by_stamp.values()}.values() if m.status == 0]
    summary = {
        "frames_in": len(exo_stamps),
        "frames_published": sum(1 for f in per_frame if f["status"] == "ok"),
        "frames_dropped_by_reason": dict(Counter(f["reason"].split(":")[0] for f in per_frame if f["status"] != "ok")),
        "frames_unaccounted": sum(1 for f in per_frame if f["status"] == "missing"),
        "exo_topic": exo_topic,
        "ground_truth_topic": gt_topic if has_gt else None,
        "ground_truth_info_topic": gt_info_topic if has_gt else None,
        "reference_prior_topic": REFERENCE_PRIOR_TOPIC if has_reference else None,
        **{f"mean_{key}": _mean(per_frame, key) for key in ("coverage", "masked_psnr_db", *REFERENCE_KEYS)},
        # e.g. the ego camera is not the reference's (egox tools egoexo4d prints the -p ego_camera.* that is)
        "reference_prior_note": next((f["reference_prior_note"] for f in per_frame if "reference_prior_note" in f),
                                     None),
        # Per clip (ClipMetadata's times are the clip's), and per frame: a clip of the egox generator, or of the
        # prior generator offline (generator.prior_clip_frames 49), holds many frames.
        "mean_prior_time_ms": float(np.mean([m.prior_time_s for m in ok_meta]) * 1e3) if ok_meta else None,
        "mean_generation_time_ms": float(np.mean([m.generation_time_s for m in ok_meta]) * 1e3) if ok_meta else None,
        "prior_time_ms_per_frame": _per_frame_ms(ok_meta, "prior_time_s"),
        "generation_time_ms_per_frame": _per_frame_ms(ok_meta, "generation_time_s"),
        "generator": ok_meta[0].generator if ok_meta else None,
    }
    summary["mean_prior_person_fraction"] = _mean(per_frame, "prior_person_fraction")
    summary["head_frames_estimated"] = sum(1 for s in exo_stamps if s in head_estimates)
    position = [f["head_position_error_m"] for f in per_frame if "head_position_error_m" in f]
    forward = [f["head_forward_error_deg"] for f in per_frame if "head_forward_error_deg" in f]
    summary["head_frames_evaluated"] = len(position)
    summary["head_position_error_m_median"] = float(np.median(position)) if position else None
    summary["head_position_error_m_p90"] = float(np.percentile(position, 90)) if position else None
    summary["head_forward_error_deg_median"] = float(np.median(forward)) if forward else None
    if sheet_rows:
        ordered = sorted(sheet_rows)
        for s in ordered:
            exo, mask = sheet_rows[s][0], person_masks.get(s)
            if exo is not None and mask is not None and mask.shape == exo.shape[:2]:
                sheet_rows[s][0] = tint(exo, mask)
        titles = [f"t={(s - exo_stamps[0]) * 1e-9:.2f}s" + (f"  {frames[s]['masked_psnr_db']:.1f}dB"
                                                             if frames[s].get("masked_psnr_db") else "")
                  for s in ordered]
        contact_sheet([sheet_rows[s] for s in ordered], ["exo", "prior", "ego (output)", "ground truth"],
                      titles).save(out_dir / "contact_sheet.png")
    return {"summary": summary, "frames": per_frame}


REFERENCE_KEYS = ("reference_prior_mask_iou", "reference_prior_psnr_db", "reference_prior_masked_psnr_db")


def _mean(per_frame: list[dict], key: str) -> float | None:
    """The mean of a per-frame metric over the frames that have it (None where none has)."""
    values = [f[key] for f in per_frame if f.get(key) is not None]
    return float(np.mean(values)) if values else None


def _per_frame_ms(clips: list, field: str) -> float | None:
    """The clips' total time in ``field`` [s] over their frames, in ms per frame (None without clips)."""
    frames = sum(len(m.source_stamps) for m in clips)
    return float(sum(getattr(m, field) for m in clips) / frames * 1e3) if frames else None


def _head_errors(estimate: np.ndarray | None, tf: TfBufferCore, world_frame: str, head_frame: str,
                 stamp: int) -> dict:
    """Position [m] and forward-direction [deg] error of the node's head estimate against the bag's head TF."""
    if estimate is None:
        return {}
    try:
        reference = tf.lookup_transform(world_frame, head_frame, stamp).as_matrix()
    except TfError:
        return {}
    return {"head_position_error_m": round(position_error_m(estimate, reference), 4),
            "head_forward_error_deg": round(forward_angle_deg(estimate, reference), 2)}


def _evaluate(p: dict, stamp: int, ego_camera, gt_camera, tf: TfBufferCore, meta_by_stamp: dict) -> dict:
    """One frame's metrics: its prior's coverage; against a reference prior (REFERENCE_PRIOR_TOPIC) of the same
    size, mask IoU and PSNR on shared pixels; against the ground truth, the output's masked PSNR, and the
    reference prior's on its own mask."""
    result = {"coverage": float(p["mask"].mean())}
    reference = p.get("reference")
    if reference is not None and reference.shape != p["prior"].shape:
        result["reference_prior_note"] = (f"reference prior {reference.shape[1]}x{reference.shape[0]} is not the "
                                          f"prior's size {p['prior'].shape[1]}x{p['prior'].shape[0]}; not compared")
        reference = None
    if reference is not None:
        result.update(compare_with_reference_prior(p["prior"], p["mask"], reference))
    if "gt" not in p or ego_camera is None:
        return result
    meta = meta_by_stamp.get(stamp)
    gt_R_ego = None
    if meta is not None:
        try:
            gt_R_ego = tf.lookup_transform(p["gt_frame"], meta.ego_frame_id, stamp).rotation_matrix()
        except TfError:
            result["ground_truth_note"] = "no TF between the ground-truth and ego frames; orientation assumed equal"
    gt_in_ego, gt_valid = resample_into_camera(p["gt"], gt_camera, ego_camera, gt_R_ego)
    p["gt_in_ego"] = gt_in_ego
    psnr = masked_psnr(p["ego"], gt_in_ego, p["mask"] & gt_valid)
    result["masked_psnr_db"] = None if psnr is None else round(psnr, 3)
    result["evaluated_pixels"] = int((p["mask"] & gt_valid).sum())
    if reference is not None:
        psnr = masked_psnr(reference, gt_in_ego, reference_prior_mask(reference) & gt_valid)
        result["reference_prior_masked_psnr_db"] = None if psnr is None else round(psnr, 3)
    return result


@dataclass
class ReplayResult:
    """What `egox replay` and `egox process` return: exo images played, the output paths, the metrics."""
    images_sent: int
    out_bag: Path
    metrics_path: Path
    contact_sheet_path: Path
    metrics: dict = field(default_factory=dict)


def report(in_bag: Path, out_bag: Path, out_dir: Path, **kwargs) -> dict:
    """write_report; an input bag that cannot be read again (a damaged chunk after the frames played) is a
    ReplayError naming it, the outputs written so far stay."""
    try:
        return write_report(in_bag, out_bag, out_dir, **kwargs)
    except Exception as e:  # noqa: BLE001 - rosbags and its decompressors raise many types for damaged bags
        raise ReplayError(f"the report could not read {in_bag} again ({type(e).__name__}: {e}); the outputs "
                          f"written so far are in {out_bag}".replace("\n", " ")) from e


def check_report(metrics: dict, exo_topic: str, metrics_path: Path) -> None:
    """Never a silent zero: raise ReplayError (one line) when the report matched fewer exo frames to outputs than
    the node says it published."""
    published, matched = metrics["run"]["frames_published"], metrics["summary"]["frames_published"]
    if matched < published:
        raise ReplayError(f"the node published {published} frames but the report found outputs for only {matched} "
                          f"of the exo images on {exo_topic} (matched by header stamp); see {metrics_path}")


def outcome_line(metrics: dict) -> str:
    """The last line of a replay: every frame published, or how many were not and why (never only a count in the
    middle of the output)."""
    run, summary = metrics["run"], metrics.get("summary", {})
    images = run["images_sent"]
    missing = images - run["frames_published"]
    if not missing and not run.get("input_truncated"):
        return f"done: all {images} exo frames published"
    reasons = dict(summary.get("frames_dropped_by_reason") or {})
    if run.get("frames_lost_before_node"):
        reasons["lost_before_node"] = run["frames_lost_before_node"]
    text = f"WARNING: {missing} of {images} exo frames not published"
    text += f" ({', '.join(f'{k} {v}' for k, v in sorted(reasons.items(), key=lambda kv: -kv[1]))})" if reasons else ""
    if run.get("input_truncated"):
        text += f"; the input bag ended early ({run['input_truncated']})"
    return text + "; see metrics.json"
