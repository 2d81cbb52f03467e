"""A pool of generator replicas on Ray (`generator.backend: ray`): each replica is a Ray actor that builds the
configured generator once (the model loads once per replica, on its own GPU with a CUDA device) and generates the
clips it is sent. The engine renders priors in order on its own thread, keeps at most one clip in flight per replica
and publishes results in stamp order as they return (core/runtime/engine.py); a full pool back-pressures into the
generator queue, so frames beyond it are dropped as generator_busy, never queued without bound.

A replica whose process dies is taken out of the pool at once: clips go only to live replicas (the pool's capacity
shrinks with them), and the clip it held is sent once more, to the least busy live replica (failing only if that
fails too, or none is left: generator_failed, with the reason). Ray restarts a dead replica once; the pool asks it
for its process id and takes it back when it answers (its model loaded again). A clip whose generate() raises fails
(generator_failed) without a retry: the same input would fail again.

Ray is optional: it is imported only here, only with backend 'ray'.
"""
from __future__ import annotations

import dataclasses
import os
import threading

from egox_ros.core.config import EgoxConfig, GeneratorConfig
from egox_ros.core.generators.base import ClipRequest, ClipResult, EgoGenerator


class _Replica:
    """The body of one Ray actor: one generator, prepared once."""

    def __init__(self, generator_config: GeneratorConfig, egox_config: EgoxConfig, torch_threads: int):
        import torch
        from egox_ros.core.generators import make_generator
        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.generator = make_generator(generator_config, egox_config)
        self.generator.prepare()          # here, so that a replica Ray restarts comes back ready

    def pid(self) -> int:
        return os.getpid()

    def generate(self, request: ClipRequest) -> tuple[ClipResult, dict[str, str]]:
        return self.generator.generate(request), self.generator.settings()


def _why(error: Exception) -> str:
    """'Type: first line of the message', for one-line failure reasons."""
    return f"{type(error).__name__}: {str(error).splitlines()[0]}"


def _lean(request: ClipRequest) -> ClipRequest:
    """The request without the frames' derived caches (lifted point clouds): only what a generator reads travels."""
    frames = [dataclasses.replace(f, cache={}) for f in request.frames]
    return ClipRequest(frames=frames, priors=request.priors, ego_camera=request.ego_camera)


class RayGeneratorPool(EgoGenerator):
    """``replicas`` Ray actors, each with the generator `local` describes (built from the same configs). Acts as the
    engine's generator: name, clip_frames and the camera check come from `local`; generate() is submit() + wait();
    settings() are the newest replica's, plus the backend. ``address``: '' for a local Ray instance (started here,
    on loopback, and shut down in close()), 'auto' or 'ray://host:port' for a cluster. submit() and wait() may be
    called from different threads."""

    def __init__(self, local: EgoGenerator, generator_config: GeneratorConfig, egox_config: EgoxConfig | None,
                 replicas: int, address: str = "", torch_threads: int = 1):
        self.local, self.replicas, self.address = local, int(replicas), address
        self.name = local.name
        self._configs = (generator_config, egox_config or EgoxConfig(), torch_threads)
        self._actors: list = []
        self._lock = threading.Lock()
        self._load: dict[int, int] = {}             # live replica index -> clips sent to it and not yet waited for
        self._revival: dict[int, object] = {}       # dead replica index -> its pid() call, answered once restarted
        self._settings: dict[str, str] = {}
        self._started_ray = False
        self.pids: list[int] = []                   # the replicas' process ids, once prepared
        self.retried = 0                            # clips sent again after their replica died

    @property
    def clip_frames(self) -> int:
        return self.local.clip_frames

    @property
    def capacity(self) -> int:
        """Clips that may be in flight at once: one per live replica (at least 1, so that with every replica gone a
        clip is still taken, and fails with the reason)."""
        self._revive()
        with self._lock:
            return max(1, len(self._load))

    def live(self) -> list[int]:
        """Indices of the replicas clips are sent to."""
        self._revive()
        with self._lock:
            return sorted(self._load)

    def check_ego_camera(self, camera) -> None:
        self.local.check_ego_camera(camera)

    def prepare(self) -> None:
        """Start (or join) Ray and the replicas, and load the model on each; raises if any cannot."""
        from egox_ros.core.generators.ray_runtime import init_ray
        try:
            import ray
        except ImportError as e:
            raise RuntimeError("generator.backend 'ray' needs Ray (scripts/setup.sh installs ray); "
                               f"import failed: {e}") from e
        if not ray.is_initialized():
            init_ray(self.address)                  # a local instance on loopback only, or the cluster
            self._started_ray = not self.address
        generator_config = self._configs[0]
        gpus = 1 if generator_config.device.startswith("cuda") else 0
        actor = ray.remote(num_cpus=1, num_gpus=gpus, max_restarts=1)(_Replica)
        self._actors = [actor.remote(*self._configs) for _ in range(self.replicas)]
        self.pids = ray.get([a.pid.remote() for a in self._actors])    # waits until every model has loaded
        with self._lock:
            self._load = {i: 0 for i in range(self.replicas)}
            self._revival = {}

    def _send(self, request: ClipRequest, avoid: int | None = None) -> tuple[object, int]:
        """The clip to the least busy live replica (not ``avoid``); (ref, replica index)."""
        self._revive()
        with self._lock:
            candidates = [i for i in sorted(self._load) if i != avoid]
            if not candidates:
                raise RuntimeError(f"no live replica of {self.replicas} to send the clip to")
            index = min(candidates, key=lambda i: self._load[i])
            self._load[index] += 1
        return self._actors[index].generate.remote(_lean(request)), index

    def submit(self, request: ClipRequest):
        """Send a clip to the least busy live replica; returns the handle for wait(). At most `capacity` clips
        should be in flight (submitted, not yet waited for)."""
        ref, index = self._send(request)
        return ref, index, request

    def wait(self, handle) -> ClipResult:
        """The result of a submitted clip (blocks). If its replica died, the clip is sent once to another live one;
        raises RuntimeError naming the replica(s) when it failed."""
        import ray
        from ray.exceptions import RayActorError   # ActorDiedError, ActorUnavailableError (restarting)
        ref, index, request = handle
        try:
            result, settings = ray.get(ref)
        except RayActorError as e:
            self._died(index)
            first = f"replica {index} died: {_why(e)}"
            try:
                ref, index = self._send(request, avoid=index)
            except RuntimeError as none_left:
                raise RuntimeError(f"{first}; {none_left}") from e
            self.retried += 1
            try:
                result, settings = ray.get(ref)
            except Exception as again:  # noqa: BLE001 - RayActorError, RayTaskError(...)
                if isinstance(again, RayActorError):
                    self._died(index)
                else:
                    self._done(index)
                raise RuntimeError(f"{first}; sent again to replica {index}, which failed: "
                                   f"{_why(again)}") from again
        except Exception as e:  # noqa: BLE001 - RayTaskError(...): generate raised; the same clip would again
            self._done(index)
            raise RuntimeError(f"replica {index} failed: {_why(e)}") from e
        self._done(index)
        self._settings = settings
        return result

    def _done(self, index: int) -> None:
        with self._lock:
            if index in self._load:                  # (a replica taken back meanwhile starts again from 0)
                self._load[index] = max(0, self._load[index] - 1)

    def _died(self, index: int) -> None:
        """Take a replica out of the pool; ask it for its pid, which it answers once Ray has restarted it."""
        with self._lock:
            if self._load.pop(index, None) is None:
                return                               # already known dead
            self._revival[index] = self._actors[index].pid.remote()

    def _revive(self) -> None:
        """Take back the dead replicas whose restart has answered (their model loaded again)."""
        with self._lock:
            waiting = dict(self._revival)
        if not waiting:
            return
        import ray
        from ray.exceptions import ActorUnavailableError
        ready, _ = ray.wait(list(waiting.values()), num_returns=len(waiting), timeout=0)
        for index, ref in waiting.items():
            if ref not in ready:
                continue
            try:
                pid = ray.get(ref)
            except ActorUnavailableError:            # still restarting: ask again
                with self._lock:
                    if index in self._revival:
                        self._revival[index] = self._actors[index].pid.remote()
                continue
            except Exception:  # noqa: BLE001 - ActorDiedError: restarted no more (max_restarts spent), out for good
                with self._lock:
                    self._revival.pop(index, None)
                continue
            with self._lock:
                if self._revival.pop(index, None) is not None:
                    self._load[index] = 0
                    self.pids[index] = pid

    def generate(self, request: ClipRequest) -> ClipResult:
        return self.wait(self.submit(request))

    def settings(self) -> dict[str, str]:
        return {**(self._settings or self.local.settings()),
                "backend": f"ray, {self.replicas} replica(s){' at ' + self.address if self.address else ''}"}

    def close(self) -> None:
        """Stop the replicas (and the local Ray instance this pool started)."""
        try:
            import ray
        except ImportError:
            return
        for actor in self._actors:
            try:
                ray.kill(actor)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self._actors = []
        if self._started_ray and ray.is_initialized():
            ray.shutdown()
