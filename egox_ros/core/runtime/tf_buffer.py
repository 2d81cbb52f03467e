"""A small TF buffer with tf2 ``BufferCore`` semantics (pure Python, no ROS).

Frames form a forest: every child frame has exactly one parent, and each edge
stores ``parent_T_child`` (maps points in the child frame into the parent
frame) either as a time series (dynamic) or as one value valid at all times
(static).  Stamps are integer nanoseconds.

Differences from tf2, kept deliberately simple:

* Re-parenting a child, or switching its edge between static and dynamic,
  replaces that edge's whole history.
* ``clear()`` forgets dynamic edges entirely, so frames only reachable through
  them become unknown until new data arrives.
* An edge that would close a loop is rejected in ``set_transform``.
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass, field

from egox_ros.core.geometry.transforms import RigidTransform, interpolate

_NS_PER_S = 1_000_000_000
_MAX_LISTED_FRAMES = 20


class TfError(ValueError):
    """Base class for all TF buffer errors (also raised for invalid input)."""


class FrameNotFoundError(TfError):
    """A requested frame has never been seen by the buffer."""


class ConnectivityError(TfError):
    """Both frames exist but lie in different trees."""


class ExtrapolationError(TfError):
    """The requested time lies outside the data held for some edge.

    Attributes: ``direction`` ("past" or "future"), ``requested_ns``,
    ``oldest_ns``, ``newest_ns``, ``parent``, ``child``.  A "future" error may
    resolve by waiting for data; so may a "past" one, when an older sample still
    arrives out of order (a delayed message) and lies within the edge's cache
    (:meth:`TfBufferCore.could_resolve`).
    """

    def __init__(self, parent: str, child: str, requested_ns: int, oldest_ns: int, newest_ns: int):
        self.parent = parent
        self.child = child
        self.requested_ns = requested_ns
        self.oldest_ns = oldest_ns
        self.newest_ns = newest_ns
        if requested_ns > newest_ns:
            self.direction = "future"
            gap, bound_name, bound = requested_ns - newest_ns, "newest", newest_ns
        else:
            self.direction = "past"
            gap, bound_name, bound = oldest_ns - requested_ns, "oldest", oldest_ns
        super().__init__(
            f"Lookup would require extrapolation {gap / _NS_PER_S:.3f} s into the {self.direction}: "
            f"requested {requested_ns / _NS_PER_S:.3f} s, but the {bound_name} data for edge "
            f"{parent} -> {child} is at {bound / _NS_PER_S:.3f} s "
            f"(available {oldest_ns / _NS_PER_S:.3f} s to {newest_ns / _NS_PER_S:.3f} s)"
        )


@dataclass
class _Edge:
    parent: str
    static: bool
    authority: str = ""
    stamps: list[int] = field(default_factory=list)  # sorted ascending, unique
    values: list[RigidTransform] = field(default_factory=list)

    def at(self, child: str, stamp_ns: int) -> RigidTransform:
        """parent_T_child at ``stamp_ns`` (static edges ignore the stamp)."""
        if self.static:
            return self.values[0]
        stamps = self.stamps
        i = bisect.bisect_left(stamps, stamp_ns)
        if i < len(stamps) and stamps[i] == stamp_ns:
            return self.values[i]
        if i == 0 or i == len(stamps):
            raise ExtrapolationError(self.parent, child, stamp_ns, stamps[0], stamps[-1])
        s0, s1 = stamps[i - 1], stamps[i]
        return interpolate(self.values[i - 1], self.values[i], (stamp_ns - s0) / (s1 - s0))


def _clean_frame(frame_id: str) -> str:
    if not isinstance(frame_id, str):
        raise TfError(f"frame id must be a str, got {type(frame_id).__name__}")
    f = frame_id[1:] if frame_id.startswith("/") else frame_id
    if not f:
        raise TfError("frame id must not be empty")
    return f


def _check_stamp(stamp_ns) -> int:
    s = int(stamp_ns)
    if s != stamp_ns or s < 0:
        raise TfError(f"stamp_ns must be a non-negative integer, got {stamp_ns!r}")
    return s


class TfBufferCore:
    """Thread-safe store of transform trees with time interpolation.

    ``cache_time_s``: dynamic samples older than (newest stamp on the same
    edge - cache_time_s) are dropped.
    """

    def __init__(self, cache_time_s: float = 10.0):
        if not (cache_time_s > 0.0) or cache_time_s == float("inf"):
            raise TfError(f"cache_time_s must be positive and finite, got {cache_time_s!r}")
        self._cache_ns = int(round(cache_time_s * _NS_PER_S))
        self._lock = threading.Lock()
        self._edges: dict[str, _Edge] = {}  # keyed by child frame

    # ------------------------------------------------------------------ input
    def set_transform(
        self,
        parent_frame: str,
        child_frame: str,
        stamp_ns: int,
        transform: RigidTransform,
        *,
        static: bool = False,
        authority: str = "",
    ) -> None:
        """Store ``parent_T_child`` at ``stamp_ns`` (ns; ignored when ``static``)."""
        parent = _clean_frame(parent_frame)
        child = _clean_frame(child_frame)
        if parent == child:
            raise TfError(f"child frame and parent frame are the same: {child!r}")
        if not isinstance(transform, RigidTransform):
            raise TfError(f"transform must be a RigidTransform, got {type(transform).__name__}")
        stamp = _check_stamp(stamp_ns)
        with self._lock:
            edge = self._edges.get(child)
            if edge is None or edge.parent != parent or edge.static != static:
                # New edge or changed topology: check for loops, then start afresh.
                f: str | None = parent
                while f is not None:
                    if f == child:
                        raise TfError(f"edge {parent} -> {child} would create a loop")
                    e = self._edges.get(f)
                    f = e.parent if e is not None else None
                edge = _Edge(parent=parent, static=static)
                self._edges[child] = edge
            edge.authority = authority
            if static:
                edge.stamps, edge.values = [stamp], [transform]
                return
            i = bisect.bisect_left(edge.stamps, stamp)
            if i < len(edge.stamps) and edge.stamps[i] == stamp:
                edge.values[i] = transform
            else:
                edge.stamps.insert(i, stamp)
                edge.values.insert(i, transform)
            keep_from = bisect.bisect_left(edge.stamps, edge.stamps[-1] - self._cache_ns)
            if keep_from:
                del edge.stamps[:keep_from]
                del edge.values[:keep_from]

    def clear(self) -> None:
        """Drop all dynamic data; static transforms stay."""
        with self._lock:
            self._clear_locked()

    def _clear_locked(self) -> None:
        self._edges = {c: e for c, e in self._edges.items() if e.static}

    # ---------------------------------------------------------------- queries
    def lookup_transform(self, target_frame: str, source_frame: str, stamp_ns: int) -> RigidTransform:
        """``target_T_source`` at ``stamp_ns`` (maps source-frame points into target).

        ``stamp_ns == 0`` means the latest common time: the smallest newest
        stamp over the dynamic edges on the path (any time if all are static).
        """
        target = _clean_frame(target_frame)
        source = _clean_frame(source_frame)
        stamp = _check_stamp(stamp_ns)
        if target == source:
            return RigidTransform.identity()
        with self._lock:
            known = self._known_frames_locked()
            missing = [f for f in (target, source) if f not in known]
            if missing:
                names = sorted(known)
                listed = ", ".join(names[:_MAX_LISTED_FRAMES])
                if len(names) > _MAX_LISTED_FRAMES:
                    listed += f", ... ({len(names) - _MAX_LISTED_FRAMES} more)"
                raise FrameNotFoundError(
                    f"frame(s) {', '.join(repr(m) for m in missing)} do not exist; "
                    f"known frames: [{listed}]"
                )
            src_chain = self._chain_locked(source)
            tgt_chain = self._chain_locked(target)
            src_index = {f: i for i, f in enumerate(src_chain)}
            ancestor = next((f for f in tgt_chain if f in src_index), None)
            if ancestor is None:
                raise ConnectivityError(
                    f"cannot transform {source!r} into {target!r}: they are in different trees "
                    f"(roots {src_chain[-1]!r} and {tgt_chain[-1]!r})"
                )
            src_path = src_chain[: src_index[ancestor]]  # children below the ancestor
            tgt_path = tgt_chain[: tgt_chain.index(ancestor)]
            edges = [(c, self._edges[c]) for c in src_path + tgt_path]
            if stamp == 0:
                newest = [e.stamps[-1] for _, e in edges if not e.static]
                stamp = min(newest) if newest else 0
            anc_T_src = RigidTransform.identity()
            for c in src_path:
                anc_T_src = self._edges[c].at(c, stamp) @ anc_T_src
            anc_T_tgt = RigidTransform.identity()
            for c in tgt_path:
                anc_T_tgt = self._edges[c].at(c, stamp) @ anc_T_tgt
        return anc_T_tgt.inverse() @ anc_T_src

    def could_resolve(self, error: ExtrapolationError) -> bool:
        """Whether a sample that arrives later could still answer the lookup that raised ``error``: always for
        "future"; for "past" only while the requested stamp lies within ``cache_time_s`` of the edge's newest sample
        (an older one is discarded on arrival, as the cache keeps no more)."""
        return error.direction == "future" or error.requested_ns >= error.newest_ns - self._cache_ns

    def can_transform(self, target_frame: str, source_frame: str, stamp_ns: int) -> bool:
        """True if ``lookup_transform`` would succeed."""
        try:
            self.lookup_transform(target_frame, source_frame, stamp_ns)
        except TfError:
            return False
        return True

    def all_frames(self) -> list[str]:
        """Sorted list of every known frame id."""
        with self._lock:
            return sorted(self._known_frames_locked())

    def parent_of(self, frame: str) -> str | None:
        """Parent of ``frame``, or None for a root or unknown frame."""
        f = _clean_frame(frame)
        with self._lock:
            e = self._edges.get(f)
            return e.parent if e is not None else None

    # --------------------------------------------------------------- internal
    def _known_frames_locked(self) -> set[str]:
        return set(self._edges) | {e.parent for e in self._edges.values()}

    def _chain_locked(self, frame: str) -> list[str]:
        """[frame, parent, grandparent, ..., root]."""
        chain = [frame]
        e = self._edges.get(frame)
        while e is not None:
            chain.append(e.parent)
            e = self._edges.get(e.parent)
        return chain
