"""Tests for RigidTransform helpers and TfBufferCore, checked against hand-built matrices."""

import threading

import numpy as np
import pytest

from egox_ros.core.geometry.transforms import RigidTransform, interpolate, matrix_to_quat, quat_slerp, quat_to_matrix
from egox_ros.core.runtime.tf_buffer import (ConnectivityError, ExtrapolationError, FrameNotFoundError, TfBufferCore,
                                             TfError)

S = 1_000_000_000  # ns per second


def rot_z(deg):
    a = np.deg2rad(deg)
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rot_x(deg):
    a = np.deg2rad(deg)
    c, s = np.cos(a), np.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def hom(r, t):
    m = np.eye(4)
    m[:3, :3] = r
    m[:3, 3] = t
    return m


def tf(r, t):
    return RigidTransform.from_matrix(hom(r, t))


def random_rotation(rng):
    q = rng.normal(size=4)
    return quat_to_matrix(q / np.linalg.norm(q))


# ----------------------------------------------------------------- transforms
def test_rigid_transform_matches_matrices():
    rng = np.random.default_rng(0)
    for _ in range(20):
        ma = hom(random_rotation(rng), rng.normal(size=3))
        mb = hom(random_rotation(rng), rng.normal(size=3))
        a, b = RigidTransform.from_matrix(ma), RigidTransform.from_matrix(mb)
        np.testing.assert_allclose(a.as_matrix(), ma, atol=1e-12)
        np.testing.assert_allclose(a.compose(b).as_matrix(), ma @ mb, atol=1e-12)
        np.testing.assert_allclose((a @ b).as_matrix(), ma @ mb, atol=1e-12)
        np.testing.assert_allclose(a.inverse().as_matrix(), np.linalg.inv(ma), atol=1e-12)
        pts = rng.normal(size=(5, 2, 3))
        expect = (ma[:3, :3] @ pts.reshape(-1, 3).T).T.reshape(5, 2, 3) + ma[:3, 3]
        np.testing.assert_allclose(a.apply(pts), expect, atol=1e-12)
        np.testing.assert_allclose(a.rotation_matrix(), ma[:3, :3], atol=1e-12)


def test_rigid_transform_validation():
    with pytest.raises(ValueError):
        RigidTransform(np.zeros(2), np.array([0, 0, 0, 1.0]))
    with pytest.raises(ValueError):
        RigidTransform(np.array([0, np.nan, 0]), np.array([0, 0, 0, 1.0]))
    with pytest.raises(ValueError):
        RigidTransform(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError):
        RigidTransform.from_matrix(np.diag([2.0, 1.0, 1.0, 1.0]))  # scaling
    with pytest.raises(ValueError):
        RigidTransform.from_matrix(np.diag([-1.0, 1.0, 1.0, 1.0]))  # reflection
    t = RigidTransform(np.zeros(3), np.array([0, 0, 0, 2.0]))
    np.testing.assert_allclose(t.rotation_xyzw, [0, 0, 0, 1])
    np.testing.assert_allclose(RigidTransform.identity().as_matrix(), np.eye(4))


def test_quat_matrix_round_trip_including_180_degrees():
    rng = np.random.default_rng(1)
    rots = [random_rotation(rng) for _ in range(50)]
    rots += [rot_z(180), rot_x(180), np.diag([-1.0, -1.0, 1.0]), np.diag([1.0, -1.0, -1.0])]
    axis = np.array([1.0, 1.0, 0.0]) / np.sqrt(2.0)
    rots.append(2.0 * np.outer(axis, axis) - np.eye(3))  # 180 deg about (1,1,0)
    for r in rots:
        q = matrix_to_quat(r)
        assert abs(np.linalg.norm(q) - 1.0) < 1e-12
        np.testing.assert_allclose(quat_to_matrix(q), r, atol=1e-12)
    # 90 deg about z in (x, y, z, w) order
    np.testing.assert_allclose(matrix_to_quat(rot_z(90)), [0, 0, np.sqrt(0.5), np.sqrt(0.5)], atol=1e-12)


def test_slerp_and_interpolate():
    q0 = matrix_to_quat(np.eye(3))
    q1 = matrix_to_quat(rot_z(90))
    np.testing.assert_allclose(quat_slerp(q0, q1, 0.0), q0, atol=1e-12)
    np.testing.assert_allclose(quat_slerp(q0, q1, 1.0), q1, atol=1e-12)
    np.testing.assert_allclose(quat_to_matrix(quat_slerp(q0, q1, 0.5)), rot_z(45), atol=1e-12)
    # shortest path: -q1 is the same rotation, the result must still be 45 deg, not -135 deg
    np.testing.assert_allclose(quat_to_matrix(quat_slerp(q0, -q1, 0.5)), rot_z(45), atol=1e-12)
    # 350 deg about z expressed as a quaternion on the far side: halfway to identity is -5 deg
    q350 = matrix_to_quat(rot_z(350))
    np.testing.assert_allclose(quat_to_matrix(quat_slerp(q0, q350, 0.5)), rot_z(-5), atol=1e-12)
    # nearly parallel inputs
    qa = matrix_to_quat(rot_z(1e-6))
    np.testing.assert_allclose(quat_to_matrix(quat_slerp(q0, qa, 0.5)), rot_z(0.5e-6), atol=1e-12)
    mid = interpolate(tf(np.eye(3), [0, 0, 0]), tf(rot_z(90), [2, 4, -6]), 0.25)
    np.testing.assert_allclose(mid.as_matrix(), hom(rot_z(22.5), [0.5, 1, -1.5]), atol=1e-12)


# --------------------------------------------------------------------- buffer
def test_common_ancestor_and_three_level_chain():
    buf = TfBufferCore()
    m_w_exo = hom(rot_z(30), [1.0, 2.0, 0.5])
    m_w_head = hom(rot_x(-20) @ rot_z(90), [0.2, -1.0, 1.7])
    m_head_cam = hom(rot_x(90), [0.0, 0.1, 0.05])
    buf.set_transform("world", "exo", 5 * S, RigidTransform.from_matrix(m_w_exo))
    buf.set_transform("/world", "head", 5 * S, RigidTransform.from_matrix(m_w_head))
    buf.set_transform("head", "cam", 5 * S, RigidTransform.from_matrix(m_head_cam))
    got = buf.lookup_transform("head", "exo", 5 * S)
    np.testing.assert_allclose(got.as_matrix(), np.linalg.inv(m_w_head) @ m_w_exo, atol=1e-12)
    got = buf.lookup_transform("cam", "exo", 5 * S)
    expect = np.linalg.inv(m_head_cam) @ np.linalg.inv(m_w_head) @ m_w_exo
    np.testing.assert_allclose(got.as_matrix(), expect, atol=1e-12)
    got = buf.lookup_transform("world", "cam", 5 * S)
    np.testing.assert_allclose(got.as_matrix(), m_w_head @ m_head_cam, atol=1e-12)
    got = buf.lookup_transform("/cam", "world", 5 * S)
    np.testing.assert_allclose(got.as_matrix(), np.linalg.inv(m_w_head @ m_head_cam), atol=1e-12)
    np.testing.assert_allclose(buf.lookup_transform("exo", "exo", 123).as_matrix(), np.eye(4))
    np.testing.assert_allclose(buf.lookup_transform("nowhere", "nowhere", 0).as_matrix(), np.eye(4))
    assert buf.all_frames() == ["cam", "exo", "head", "world"]
    assert buf.parent_of("cam") == "head" and buf.parent_of("world") is None
    assert buf.can_transform("cam", "exo", 5 * S) and not buf.can_transform("cam", "exo", 6 * S)


def test_interpolation_and_exact_stamps():
    buf = TfBufferCore()
    buf.set_transform("world", "head", 10 * S, tf(np.eye(3), [0, 0, 0]))
    buf.set_transform("world", "head", 12 * S, tf(rot_z(90), [2, 0, 4]))
    got = buf.lookup_transform("world", "head", 11 * S)
    np.testing.assert_allclose(got.as_matrix(), hom(rot_z(45), [1, 0, 2]), atol=1e-12)
    got = buf.lookup_transform("world", "head", 12 * S)
    np.testing.assert_allclose(got.as_matrix(), hom(rot_z(90), [2, 0, 4]), atol=1e-12)
    got = buf.lookup_transform("head", "world", 10 * S)
    np.testing.assert_allclose(got.as_matrix(), np.eye(4), atol=1e-12)
    # a single-sample edge only answers at its own stamp
    buf.set_transform("world", "exo", 11 * S, tf(np.eye(3), [1, 1, 1]))
    np.testing.assert_allclose(buf.lookup_transform("world", "exo", 11 * S).translation_m, [1, 1, 1])
    with pytest.raises(ExtrapolationError):
        buf.lookup_transform("world", "exo", 11 * S + 1)


def test_extrapolation_errors_carry_fields():
    buf = TfBufferCore()
    buf.set_transform("world", "head", 12_000_000_000, tf(np.eye(3), [0, 0, 0]))
    buf.set_transform("world", "head", 12_225_000_000, tf(np.eye(3), [1, 0, 0]))
    with pytest.raises(ExtrapolationError) as ei:
        buf.lookup_transform("world", "head", 12_345_000_000)
    e = ei.value
    assert isinstance(e, TfError)
    assert (e.direction, e.requested_ns, e.oldest_ns, e.newest_ns) == (
        "future", 12_345_000_000, 12_000_000_000, 12_225_000_000)
    assert (e.parent, e.child) == ("world", "head")
    msg = str(e)
    assert "0.120 s into the future" in msg and "requested 12.345 s" in msg
    assert "world -> head is at 12.225 s" in msg
    with pytest.raises(ExtrapolationError) as ei:
        buf.lookup_transform("head", "world", 11_500_000_000)
    e = ei.value
    assert e.direction == "past" and e.requested_ns == 11_500_000_000
    assert "0.500 s into the past" in str(e) and "12.000 s" in str(e)


def test_a_past_lookup_resolves_when_a_delayed_sample_arrives_within_the_cache():
    """TF from other processes arrives out of order: a lookup before the oldest sample is answered once the older
    sample comes, if it lies within cache_time_s of the newest (older ones are discarded on arrival)."""
    def at(x: float) -> RigidTransform:
        return RigidTransform(np.array([x, 0.0, 0.0]), np.array([0.0, 0.0, 0.0, 1.0]))

    buf = TfBufferCore(cache_time_s=3.0)
    for s in (10, 11, 12):
        buf.set_transform("world", "head", s * S, at(float(s)))
    with pytest.raises(ExtrapolationError) as near:
        buf.lookup_transform("world", "head", int(9.5 * S))
    with pytest.raises(ExtrapolationError) as far:
        buf.lookup_transform("world", "head", int(8.5 * S))
    assert near.value.direction == far.value.direction == "past"
    assert buf.could_resolve(near.value) and not buf.could_resolve(far.value)
    buf.set_transform("world", "head", 9 * S, at(9.0))
    assert buf.lookup_transform("world", "head", int(9.5 * S)).translation_m[0] == pytest.approx(9.5)
    buf.set_transform("world", "head", 8 * S, at(8.0))
    with pytest.raises(ExtrapolationError):
        buf.lookup_transform("world", "head", int(8.5 * S))


def test_unknown_frame_and_connectivity():
    buf = TfBufferCore()
    buf.set_transform("world", "head", S, RigidTransform.identity())
    buf.set_transform("map", "robot", S, RigidTransform.identity())
    with pytest.raises(FrameNotFoundError) as ei:
        buf.lookup_transform("world", "ghost", S)
    assert "ghost" in str(ei.value) and "head" in str(ei.value)
    with pytest.raises(ConnectivityError):
        buf.lookup_transform("head", "robot", S)
    for i in range(50):
        buf.set_transform("world", f"f{i:02d}", S, RigidTransform.identity())
    with pytest.raises(FrameNotFoundError) as ei:
        buf.lookup_transform("world", "ghost", S)
    assert "more)" in str(ei.value) and len(str(ei.value)) < 600


def test_invalid_input():
    buf = TfBufferCore()
    with pytest.raises(TfError):
        buf.set_transform("", "a", 0, RigidTransform.identity())
    with pytest.raises(TfError):
        buf.set_transform("a", "/a", 0, RigidTransform.identity())
    buf.set_transform("a", "b", 0, RigidTransform.identity())
    with pytest.raises(TfError):  # loop b -> a -> b
        buf.set_transform("b", "a", 0, RigidTransform.identity())


def test_static_and_mixed_chains():
    buf = TfBufferCore(cache_time_s=1.0)
    m_head_cam = hom(rot_x(90), [0, 0.1, 0])
    buf.set_transform("head", "cam", 0, RigidTransform.from_matrix(m_head_cam), static=True)
    for stamp in (0, 10**18):
        got = buf.lookup_transform("head", "cam", stamp)
        np.testing.assert_allclose(got.as_matrix(), m_head_cam, atol=1e-12)
    buf.set_transform("world", "head", 100 * S, tf(np.eye(3), [0, 0, 0]))
    buf.set_transform("world", "head", 101 * S, tf(np.eye(3), [2, 0, 0]))
    got = buf.lookup_transform("world", "cam", 100 * S + S // 2)
    np.testing.assert_allclose(got.as_matrix(), hom(np.eye(3), [1, 0, 0]) @ m_head_cam, atol=1e-12)
    with pytest.raises(ExtrapolationError):
        buf.lookup_transform("world", "cam", 102 * S)


def test_latest_common_time():
    buf = TfBufferCore()
    buf.set_transform("world", "exo", 10 * S, tf(np.eye(3), [0, 0, 0]))
    buf.set_transform("world", "exo", 20 * S, tf(np.eye(3), [10, 0, 0]))
    buf.set_transform("world", "head", 10 * S, tf(np.eye(3), [0, 0, 0]))
    buf.set_transform("world", "head", 14 * S, tf(np.eye(3), [0, 4, 0]))
    buf.set_transform("head", "cam", 0, tf(np.eye(3), [0, 0, 1]), static=True)
    # latest common time is 14 s: exo is at x=4, head at y=4
    got = buf.lookup_transform("world", "exo", 0)
    np.testing.assert_allclose(got.translation_m, [10, 0, 0])  # own newest: 20 s
    got = buf.lookup_transform("cam", "exo", 0)
    np.testing.assert_allclose(got.translation_m, [4, -4, -1], atol=1e-12)
    got = buf.lookup_transform("head", "cam", 0)  # static only
    np.testing.assert_allclose(got.translation_m, [0, 0, 1])


def test_pruning_and_out_of_order_insertion():
    buf = TfBufferCore(cache_time_s=2.0)
    for sec in (5, 1, 3, 2, 4):  # out of order; cache keeps [3, 5]
        buf.set_transform("world", "head", sec * S, tf(np.eye(3), [sec, 0, 0]))
    np.testing.assert_allclose(buf.lookup_transform("world", "head", 3 * S + S // 2).translation_m, [3.5, 0, 0])
    with pytest.raises(ExtrapolationError) as ei:
        buf.lookup_transform("world", "head", 2 * S + S // 2)
    assert ei.value.direction == "past" and ei.value.oldest_ns == 3 * S
    buf.set_transform("world", "head", 4 * S, tf(np.eye(3), [40, 0, 0]))  # duplicate replaces
    np.testing.assert_allclose(buf.lookup_transform("world", "head", 4 * S).translation_m, [40, 0, 0])
    # re-parenting replaces the history
    buf.set_transform("map", "head", 9 * S, tf(np.eye(3), [9, 0, 0]))
    assert buf.parent_of("head") == "map"
    with pytest.raises(ExtrapolationError):
        buf.lookup_transform("map", "head", 4 * S)


def test_clear_keeps_static_transforms():
    buf = TfBufferCore()
    buf.set_transform("head", "cam", 0, RigidTransform.identity(), static=True)
    buf.set_transform("world", "head", 50 * S, RigidTransform.identity())
    assert buf.can_transform("world", "cam", 50 * S)
    buf.clear()   # a time jump back (core/runtime/synchroniser.py decides when)
    assert not buf.can_transform("world", "cam", 50 * S)
    assert buf.can_transform("head", "cam", 0)
    assert buf.all_frames() == ["cam", "head"]


def test_thread_safety_smoke():
    buf = TfBufferCore(cache_time_s=1.0)
    buf.set_transform("head", "cam", 0, RigidTransform.identity(), static=True)
    errors = []

    def writer(k):
        try:
            for i in range(300):
                buf.set_transform("world", "head", i * 10_000_000, tf(rot_z(i), [i, k, 0]))
                buf.set_transform("world", f"exo{k}", i * 10_000_000, RigidTransform.identity())
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def reader():
        try:
            for _ in range(300):
                if buf.can_transform("cam", "exo0", 0):
                    buf.lookup_transform("cam", "exo0", 0)
                buf.all_frames()
        except Exception as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(3)]
    threads += [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
