"""The person mask kept to the person's own depth: what the mask covers in the image but lies clearly in front of
or behind the body (the counter under the hands, a pot beside them, a monitor in front of a seated person) leaves it.

The segmentation and the body outline around the skeleton (mediapipe_detector.body_region) are 2D: in the exo image
the hands lie over the table, so the mask takes the table with them, and the prior then loses it. The exo depth
tells them apart, where they lie at another depth than the person. Pure numpy + OpenCV: on the Ego-Exo4D
development clips (784x448) about 10 ms per frame with a person covering a fifth of the image, 3.5 ms with a
small one (a shared 2-core machine at a load of about 4). Used by the engine with person.depth_tolerance_m > 0.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from egox_ros.core.demonstrator.detector import PersonConfig, dilate_mask
from egox_ros.core.demonstrator.landmarks import BodyLandmarks, PersonObservation, shoulder_width_px

# The skeleton whose depth the person's pixels are compared with: arms, hands, legs, feet (pairs of BlazePose
# landmarks), the torso polygon and the head. A landmark's depth is the median over the mask within
# _LANDMARK_RADIUS_SW shoulder widths of it; along a segment it is interpolated between its two ends.
_SKELETON = ((11, 13), (13, 15), (12, 14), (14, 16), (15, 19), (16, 20), (15, 17), (16, 18),
             (23, 25), (25, 27), (24, 26), (26, 28), (27, 31), (28, 32), (11, 12), (11, 23), (12, 24), (23, 24))
_TORSO = (11, 12, 24, 23)
_LANDMARK_RADIUS_SW = 0.15
_HEAD_RADIUS_SW = 0.4
_SEEN = 0.5
# The tolerance grows with the person's distance by this share of it: a depth model's error does (on the
# Ego-Exo4D development clips the released depth at the head read 0.75-1.19 of the true distance, steady in a clip,
# so the relative error within one body is much smaller).
_RELATIVE_TOLERANCE = 0.05


def _disc_median(depth_m: np.ndarray, valid: np.ndarray, uv: np.ndarray, radius_px: float) -> float | None:
    """Median depth of the valid pixels within radius_px of uv, None without any."""
    h, w = depth_m.shape
    r = max(int(np.ceil(radius_px)), 1)
    u, v = int(round(uv[0])), int(round(uv[1]))
    x0, x1, y0, y1 = max(u - r, 0), min(u + r + 1, w), max(v - r, 0), min(v + r + 1, h)
    if x1 <= x0 or y1 <= y0:
        return None
    yy, xx = np.mgrid[y0:y1, x0:x1]
    near = ((xx - u) ** 2 + (yy - v) ** 2 <= r * r) & valid[y0:y1, x0:x1]
    return float(np.median(depth_m[y0:y1, x0:x1][near])) if near.any() else None


def skeleton_depth(mask: np.ndarray, depth_m: np.ndarray, body: BodyLandmarks) -> tuple[np.ndarray, np.ndarray]:
    """The person's own depth along their skeleton: (core (H, W) bool, core_depth_m (H, W) float32 [m], valid
    where core). Limbs are lines between seen landmarks (visibility > 0.5) with the depth interpolated between their
    ends; the torso polygon and a head disc take the median depth over the mask inside them."""
    import cv2  # opencv-python-headless (requirements.txt); imported here: the engine imports this module
    h, w = mask.shape
    valid = mask & np.isfinite(depth_m) & (depth_m > 0)
    lm, seen = body.uv_px, body.visibility > _SEEN
    sw = shoulder_width_px(lm)
    ends = [(_disc_median(depth_m, valid, lm[i], _LANDMARK_RADIUS_SW * sw) if seen[i] else None)
            for i in range(len(lm))]
    core = np.zeros((h, w), bool)
    core_depth = np.zeros((h, w), np.float32)
    for shape, centre, radius in ((_TORSO, None, None), (None, lm[:11][seen[:11]], _HEAD_RADIUS_SW * sw)):
        region = np.zeros((h, w), np.uint8)
        if shape is not None:
            if not all(seen[i] for i in (11, 12)):
                continue
            cv2.fillConvexPoly(region, np.round(lm[list(shape)] * 4).astype(np.int32), 1, shift=2)
        else:
            if len(centre) == 0:
                continue
            c = np.round(centre.mean(axis=0) * 4).astype(np.int64)
            if not np.all(np.abs(c) < 2**28):
                continue
            cv2.circle(region, (int(c[0]), int(c[1])), int(round(radius * 4)), 1, thickness=-1, shift=2)
        inside = region.astype(bool) & valid
        if inside.any():
            core |= inside
            core_depth[inside] = np.median(depth_m[inside])
    for a, b in _SKELETON:
        da, db = ends[a], ends[b]
        if da is None and db is None:
            continue
        da, db = (db if da is None else da), (da if db is None else db)
        n = min(int(np.ceil(np.linalg.norm(lm[b] - lm[a]))) + 1, 4 * (h + w))   # a landmark far off the image
        t = np.linspace(0.0, 1.0, max(n, 2))
        uv = np.round(lm[a][None] + t[:, None] * (lm[b] - lm[a])[None]).astype(np.int64)
        on = (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
        u, v, t = uv[on, 0], uv[on, 1], t[on]
        keep = mask[v, u]
        core[v[keep], u[keep]] = True
        core_depth[v[keep], u[keep]] = (da + t[keep] * (db - da)).astype(np.float32)
    return core, core_depth


def refine_mask_by_depth(mask: np.ndarray, depth_m: np.ndarray, body: BodyLandmarks | None,
                         tolerance_m: float, grow_px: int = 0) -> np.ndarray:
    """The person mask without what the depth shows is not the person.

    mask: (H, W) bool person mask (True on the person); depth_m: (H, W) float32 [m] of the same exo frame (NaN or
    <= 0: unknown); body: the person's whole-body landmarks in that image (None or not finite: the mask is
    returned as it is).
    Each mask pixel is compared with the skeleton's depth at its nearest skeleton pixel (skeleton_depth); it stays
    when it is within tolerance_m + 5 % of that depth, or its depth is unknown. What stays is grown by grow_px
    (the detector's dilation: depth edges around a person smear) and kept inside the original mask, so the
    person's own rim stays and only regions farther than grow_px from any person pixel leave. tolerance_m <= 0:
    the mask as it is. Returns a new (H, W) bool array (or `mask` itself when nothing applies)."""
    if tolerance_m <= 0 or body is None or not mask.any() or not np.isfinite(body.uv_px).all():
        return mask
    if depth_m.shape != mask.shape:
        raise ValueError(f"depth {depth_m.shape} and mask {mask.shape} differ in size")
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    core, core_depth = skeleton_depth(mask, depth_m, body)
    if not core.any():
        return mask
    import cv2
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    sub_core = core[y0:y1, x0:x1]
    # Each pixel's nearest skeleton pixel: labels of the zero pixels of the source, one per pixel in raster order.
    _, labels = cv2.distanceTransformWithLabels((~sub_core).astype(np.uint8), cv2.DIST_L2, 3,
                                                labelType=cv2.DIST_LABEL_PIXEL)
    seeds = core_depth[y0:y1, x0:x1][sub_core]                     # raster order = label order (1-based)
    reference = seeds[labels - 1]
    d = depth_m[y0:y1, x0:x1]
    known = np.isfinite(d) & (d > 0)
    person = ~known | (np.abs(d - reference) <= tolerance_m + _RELATIVE_TOLERANCE * reference)
    kept = np.zeros_like(mask)
    kept[y0:y1, x0:x1] = person & mask[y0:y1, x0:x1]
    return dilate_mask(kept, grow_px) & mask


def refine_observation(observation: PersonObservation, depth_m: np.ndarray | None,
                       config: PersonConfig) -> PersonObservation:
    """The observation with its mask refined by refine_mask_by_depth (person.depth_tolerance_m, grown by
    person.dilate_px); as it is without depth, mask or body landmarks."""
    if depth_m is None or observation.mask is None or observation.body is None or config.depth_tolerance_m <= 0:
        return observation
    mask = refine_mask_by_depth(observation.mask, depth_m, observation.body, config.depth_tolerance_m,
                                config.dilate_px)
    return replace(observation, mask=mask)
