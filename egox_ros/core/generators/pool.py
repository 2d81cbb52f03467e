"""A pool of generator replicas on Ray (`generator.backend: ray`): each replica is a Ray actor that builds the
configured generator once (the model loads once per replica, on its own GPU with a CUDA device) and generates the
clips it is sent. The engine renders priors in order on its own thread, keeps at most one clip in flight per replica
and publishes results in stamp order as they return (core/engine.py); a full pool back-pressures into the
generator queue, so frames beyond it are dropped as generator_busy, never queued without bound. A replica that
fails (its process dies, or generate raises) fails its clip (generator_failed, with the reason); Ray restarts a dead
replica once.

Ray is optional: it is imported only here, only with backend 'ray'.
"""
from __future__ import annotations

import dataclasses
import os
from collections import deque

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


def _lean(request: ClipRequest) -> ClipRequest:
    """The request without the frames' derived caches (lifted point clouds): only what a generator reads travels."""
    frames = [dataclasses.replace(f, cache={}) for f in request.frames]
    return ClipRequest(frames=frames, priors=request.priors, ego_camera=request.ego_camera)


class RayGeneratorPool(EgoGenerator):
    """``replicas`` Ray actors, each with the generator `local` describes (built from the same configs). Acts as the
    engine's generator: name, clip_frames and the camera check come from `local`; generate() is submit() + wait();
    settings() are the newest replica's, plus the backend. ``address``: '' for a local Ray instance (started here,
    on loopback, and shut down in close()), 'auto' or 'ray://host:port' for a cluster."""

    def __init__(self, local: EgoGenerator, generator_config: GeneratorConfig, egox_config: EgoxConfig | None,
                 replicas: int, address: str = "", torch_threads: int = 1):
        self.local, self.replicas, self.address = local, int(replicas), address
        self.name = local.name
        self._configs = (generator_config, egox_config or EgoxConfig(), torch_threads)
        self._actors: list = []
        self._free: deque[int] = deque()
        self._busy: dict[object, int] = {}          # in-flight object ref -> replica index
        self._settings: dict[str, str] = {}
        self._started_ray = False
        self.pids: list[int] = []                   # the replicas' process ids, once prepared

    @property
    def clip_frames(self) -> int:
        return self.local.clip_frames

    @property
    def capacity(self) -> int:
        """Clips that may be in flight at once: one per replica."""
        return self.replicas

    def check_ego_camera(self, camera) -> None:
        self.local.check_ego_camera(camera)

    def prepare(self) -> None:
        """Start (or join) Ray and the replicas, and load the model on each; raises if any cannot."""
        from egox_ros.core.ray_runtime import init_ray
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
        self._free = deque(range(self.replicas))

    def submit(self, request: ClipRequest):
        """Send a clip to a free replica; returns the handle for wait(). At most `capacity` clips may be in flight
        (submitted, not yet waited for)."""
        if not self._free:
            raise RuntimeError("no free replica: the caller must keep at most `capacity` clips in flight")
        index = self._free.popleft()
        ref = self._actors[index].generate.remote(_lean(request))
        self._busy[ref] = index
        return ref

    def wait(self, ref) -> ClipResult:
        """The result of a submitted clip (blocks); raises RuntimeError naming the replica when it failed."""
        import ray
        index = self._busy.pop(ref)
        try:
            result, settings = ray.get(ref)
        except Exception as e:  # noqa: BLE001 - RayActorError, RayTaskError(...): the replica's failure
            raise RuntimeError(f"replica {index} failed: {type(e).__name__}: {str(e).splitlines()[0]}") from e
        finally:
            self._free.append(index)
        self._settings = settings
        return result

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
