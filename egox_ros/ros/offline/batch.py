"""`egox batch BAG... -o OUT_DIR`: `egox process` over many bags at once, one bag per Ray task or actor.

Each bag runs the node's whole pipeline in one worker process exactly as `egox process` runs it (ros/offline/process.py)
and writes OUT_DIR/<bag name>/ (bag/, contact_sheet.png, metrics.json); equal bag names get -2, -3, ... in argument
order. OUT_DIR/batch.json collects every bag's outcome (frames, published, dropped by reason, wall time, status and
the one-line reason of a failure) and the batch's totals; the same table is printed at the end.

Workers:
* the prior generator: one Ray task per bag (`runtime.torch_threads` CPUs each, at least 1);
* the egox generator: a few stateful Ray actors, each of which builds and loads the model once and reuses it for
  every bag it is given (1 GPU per actor when generator.device is cuda, else CPUs as above).
The driver keeps at most one bag in flight per worker slot, so a bag that fails (missing, broken, a worker that
dies) fails alone with its reason and the others go on. Workers report frame counts to a small progress actor; the
driver shows a bar over bags and one over frames.

Ray: with no --address a local Ray instance is started for the command (on loopback only, no dashboard, no usage
stats) and shut down at its end; --address auto / ray://host:10001 joins a running cluster, whose workers need
egox_ros installed and the bags and OUT_DIR on a file system they share with this machine (paths are made
absolute here). Ray is imported only by this module, only when a batch runs: the single-machine commands
(node, process, replay) never import it.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

from egox_ros.ros.offline.plan import ReplayError, ReplayInputError

BATCH_JSON = "batch.json"
GT_TOPIC = "/ego/ground_truth/image_raw"


@dataclass
class BagJob:
    """One bag of the batch: where it is read from and where its outputs go (both absolute)."""
    index: int
    bag: str
    name: str
    out_dir: str


@dataclass
class BatchSettings:
    """What every bag is run with (sent to each worker)."""
    params_file: str | None = None
    overrides: list[str] = field(default_factory=list)
    exo_topic: str | None = None
    gt_topic: str = GT_TOPIC
    overwrite: bool = False


@dataclass
class BatchResult:
    bags: list[dict]                  # one record per bag, in argument order (see _record)
    summary: dict
    json_path: Path

    @property
    def failed(self) -> list[dict]:
        return [b for b in self.bags if b["status"] != "ok"]


def bag_names(bags: list[Path]) -> list[str]:
    """Output folder names: the bag's name (a .mcap / .db3 file without its suffix; a file inside a bag folder that
    has the folder's name as its stem gives that name too), then -2, -3, ... for names seen before."""
    names, seen = [], set()
    for bag in bags:
        path = Path(bag)
        name = path.stem if path.suffix in (".mcap", ".db3") else path.name
        name = name or "bag"
        base, n = name, 1
        while name in seen or name == BATCH_JSON:
            n += 1
            name = f"{base}-{n}"
        seen.add(name)
        names.append(name)
    return names


def one_line(text: str, limit: int = 400) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[:limit - 3] + "..."


# --------------------------------------------------------------------------------------------------- worker side

def _throttled(report, interval_s: float = 0.25):
    """process()'s on_frames(done, total) that forwards to `report` at most every interval_s, and the last one."""
    last = [0.0]

    def on_frames(done: int, total: int) -> None:
        if time.monotonic() - last[0] >= interval_s or done >= total:
            last[0] = time.monotonic()
            report(done, total)
    return on_frames


def run_bag(job: BagJob, settings: BatchSettings, report=None, generator=None) -> dict:
    """`egox process` on one bag in this process; never raises for a bad bag: the record says what went wrong in
    one line. `report(done, total)` gets frame counts while it runs; `generator`: a generator to reuse."""
    from egox_ros.ros.offline.process import process
    started = time.monotonic()
    record = _record(job, "failed")
    try:
        result = process(Path(job.bag), Path(job.out_dir), settings.params_file, list(settings.overrides),
                         exo_topic=settings.exo_topic, gt_topic=settings.gt_topic, overwrite=settings.overwrite,
                         progress_bar=False, generator=generator,
                         on_frames=None if report is None else _throttled(report))
    except (ReplayInputError, ReplayError) as e:
        record["reason"] = one_line(e)
    except Exception as e:  # noqa: BLE001 - one bag's failure must not end the batch
        record["reason"] = one_line(f"{type(e).__name__}: {e}")
    else:
        run, summary = result.metrics.get("run", {}), result.metrics.get("summary", {})
        record.update(status="ok", frames=result.images_sent, published=run.get("frames_published"),
                      dropped=dict(run.get("dropped", {})), process_wall_time_s=run.get("wall_time_s"),
                      mean_coverage=summary.get("mean_coverage"), generator=summary.get("generator"),
                      metrics=str(result.metrics_path))
    record["wall_time_s"] = round(time.monotonic() - started, 3)
    record["worker"] = {"pid": os.getpid(), "host": os.uname().nodename}
    return record


def _record(job: BagJob, status: str, reason: str | None = None) -> dict:
    return {"bag": job.bag, "name": job.name, "out_dir": job.out_dir, "status": status, "reason": reason,
            "frames": None, "published": None, "dropped": {}, "wall_time_s": None, "process_wall_time_s": None,
            "mean_coverage": None, "generator": None, "metrics": None}


def _set_torch_threads(threads: int) -> None:
    if threads:
        import torch
        torch.set_num_threads(threads)


def _bag_task(job: BagJob, settings: BatchSettings, torch_threads: int, progress) -> dict:
    """The body of a Ray task: one bag (the prior generator)."""
    _set_torch_threads(torch_threads)
    report = None if progress is None else (lambda done, total: progress.frames.remote(job.index, done, total))
    return run_bag(job, settings, report)


class _BagWorker:
    """The body of a Ray actor that runs bags one after another with one generator, built (and its model loaded)
    for the first bag and handed to process() for every later one."""

    def __init__(self, torch_threads: int):
        _set_torch_threads(torch_threads)
        self.torch_threads = torch_threads
        self.generators: dict[str, object] = {}     # settings -> the generator built for them
        self.loads = 0

    def run(self, job: BagJob, settings: BatchSettings, progress) -> dict:
        _set_torch_threads(self.torch_threads)
        key = repr((settings.params_file, tuple(settings.overrides)))
        if key not in self.generators:
            from egox_ros.core.egox.weights import WeightsError
            from egox_ros.core.generators import make_generator
            configs = _load_settings(settings)
            try:
                self.generators[key] = make_generator(configs["generator"], configs["egox"])
                self.loads += 1
            except (WeightsError, ValueError):   # each bag's engine says why and falls back to priors
                self.generators[key] = None
        report = None if progress is None else (lambda done, total: progress.frames.remote(job.index, done, total))
        record = run_bag(job, settings, report, generator=self.generators[key])
        record["worker"]["generator_loads"] = self.loads   # 1 after any number of bags: the model was reused
        return record


class _Progress:
    """A tiny Ray actor: bag index -> (frames done, frames total), written by workers, read by the driver."""

    def __init__(self):
        self.counts: dict[int, tuple[int, int]] = {}

    def frames(self, index: int, done: int, total: int) -> None:
        self.counts[index] = (done, total)

    def snapshot(self) -> dict[int, tuple[int, int]]:
        return dict(self.counts)


# --------------------------------------------------------------------------------------------------- driver side

def _check_output_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ReplayInputError(f"output path {out_dir} exists and is not a directory")
    if out_dir.is_dir() and not overwrite:
        entries = sorted(p.name for p in out_dir.iterdir())
        if entries:
            raise ReplayInputError(f"output directory {out_dir} is not empty ({', '.join(entries[:4])}"
                                   f"{', ...' if len(entries) > 4 else ''}); pass --overwrite to replace the outputs "
                                   "of an earlier batch there (each bag's bag/, contact_sheet.png, metrics.json and "
                                   "batch.json; nothing else is touched), or choose another -o")


def _load_settings(settings: BatchSettings) -> dict[str, object]:
    """The parameters as every worker will load them, checked once here (bad ones are a bad argument, exit 2)."""
    from egox_ros.ros.config import parameter_sections
    from egox_ros.ros.params import configs_from_parameters, load_parameters
    try:
        values = load_parameters(settings.params_file, settings.overrides)
        configs, warnings = configs_from_parameters(values, parameter_sections())
    except (OSError, ValueError) as e:
        raise ReplayInputError(f"bad parameters: {one_line(e)}") from e
    for line in warnings:
        print(f"egox batch: {line}", file=sys.stderr)
    if configs["generator"].backend != "local":
        raise ReplayInputError(f"generator.backend {configs['generator'].backend!r}: egox batch already spreads the "
                               "bags over Ray (one generator per worker); use generator.backend local")
    return configs


@contextlib.contextmanager
def ray_session(address: str | None, num_cpus: int | None):
    """Ray for one batch: a local instance on loopback only (started here and shut down at the end) when address is
    empty, else a connection to the cluster at `address` ('auto', 'ray://host:port'). Yields (ray, info)."""
    started = time.monotonic()
    try:
        from egox_ros.core.generators.ray_runtime import init_ray
        ray = init_ray(address or "", num_cpus)
    except ImportError as e:
        raise ReplayInputError(f"egox batch needs Ray (scripts/setup.sh installs it from requirements-ray.txt): "
                               f"{e}") from e
    except Exception as e:  # noqa: BLE001 - ConnectionError, ValueError, RuntimeError ... from ray.init
        with contextlib.suppress(Exception):
            import ray
            ray.shutdown()
        raise ReplayError(f"cannot {'connect to Ray at ' + address if address else 'start a local Ray instance'}: "
                          f"{one_line(f'{type(e).__name__}: {e}')}") from e
    try:
        resources = ray.cluster_resources()
        info = {"address": address or "local", "ray_version": ray.__version__,
                "start_s": round(time.monotonic() - started, 3), "cpus": resources.get("CPU", 0),
                "gpus": resources.get("GPU", 0), "nodes": None, "node_ip": None}
        with contextlib.suppress(Exception):       # informative only (a Ray Client connection may not say)
            info["nodes"] = len([n for n in ray.nodes() if n.get("Alive")])
            info["node_ip"] = ray.util.get_node_ip_address()
        yield ray, info
    finally:
        ray.shutdown()


def _error_reason(error: Exception) -> str:
    """One line for a Ray error: a task's own exception, or why its worker / actor went away."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException):
        return one_line(f"{type(cause).__name__}: {cause}")
    text = str(error).strip().splitlines()
    return one_line(f"{type(error).__name__}: {text[0] if text else ''}")


def batch(bags: list[Path], out_dir: Path, params_file: str | None = None, overrides: list[str] | None = None,
          address: str | None = None, num_cpus: int | None = None, overwrite: bool = False,
          exo_topic: str | None = None, gt_topic: str = GT_TOPIC, progress_bar: bool = True) -> BatchResult:
    """Run `egox process` on every bag on Ray (module docstring). Raises ReplayInputError for bad arguments (nothing
    run) and ReplayError when Ray cannot start; a bag that fails is recorded, not raised."""
    from tqdm import tqdm
    if not bags:
        raise ReplayInputError("no input bags")
    if num_cpus is not None and num_cpus < 1:
        raise ReplayInputError(f"--num-cpus must be at least 1, not {num_cpus}")
    if address is not None and address != "auto" and not address.startswith("ray://") and ":" not in address:
        raise ReplayInputError(f"--address {address!r}: give 'auto', 'ray://host:port' or 'host:port'")
    out_dir = Path(out_dir).absolute()
    _check_output_dir(out_dir, overwrite)
    settings = BatchSettings(str(Path(params_file).absolute()) if params_file else None, list(overrides or []),
                             exo_topic, gt_topic, overwrite)
    configs = _load_settings(settings)
    generator = configs["generator"]
    torch_threads = configs["runtime"].torch_threads
    cpus_per_bag = max(1, torch_threads)
    gpus_per_bag = 1 if generator.device.startswith("cuda") else 0
    stateful = generator.name != "prior"    # a model worth keeping loaded: actors
    paths = [Path(b).absolute() for b in bags]
    jobs = [BagJob(i, str(p), name, str(out_dir / name)) for i, (p, name) in enumerate(zip(paths, bag_names(paths)))]
    records: list[dict | None] = [None] * len(jobs)
    with ray_session(address, num_cpus) as (ray, info):
        if gpus_per_bag and not info["gpus"]:
            raise ReplayInputError(f"generator.device {generator.device!r} but the Ray instance has no GPU")
        if cpus_per_bag > info["cpus"]:     # such a task would wait for ever
            raise ReplayInputError(f"each bag takes runtime.torch_threads = {cpus_per_bag} CPUs but the Ray instance "
                                   f"has {info['cpus']:g}; lower runtime.torch_threads or raise --num-cpus")
        out_dir.mkdir(parents=True, exist_ok=True)
        slots = int(info["gpus"] // gpus_per_bag) if gpus_per_bag else int(info["cpus"] // cpus_per_bag)
        if address and num_cpus:
            slots = min(slots, max(1, num_cpus // cpus_per_bag))     # a cap on the cluster's share
        slots = max(1, min(slots, len(jobs)))
        progress = ray.remote(num_cpus=0)(_Progress).remote() if progress_bar else None
        options = dict(num_cpus=cpus_per_bag, num_gpus=gpus_per_bag)
        if stateful:
            actor_class = ray.remote(max_restarts=1, **options)(_BagWorker)
            free = deque(actor_class.remote(torch_threads) for _ in range(slots))
        else:
            task = ray.remote(max_retries=1, **options)(_bag_task)
            free = deque([None] * slots)
        info.update(workers=slots, worker_kind="actors (model loaded once per actor)" if stateful else "tasks",
                    cpus_per_bag=cpus_per_bag, gpus_per_bag=gpus_per_bag)
        pending, in_flight = deque(jobs), {}
        finished: dict[int, tuple[int, int]] = {}     # bag index -> final frame counts (the workers' last report
        # may reach the progress actor after the bag's result reached us)
        bag_bar = tqdm(total=len(jobs), unit="bag", desc="egox batch", position=0, disable=not progress_bar)
        frame_bar = tqdm(total=0, unit="frame", desc="frames", position=1, disable=not progress_bar)
        started = time.monotonic()
        last_poll = 0.0
        while pending or in_flight:
            while pending and free:
                job, worker = pending.popleft(), free.popleft()
                ref = (worker.run.remote(job, settings, progress) if stateful
                       else task.remote(job, settings, torch_threads, progress))
                in_flight[ref] = (job, worker)
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=0.5)
            for ref in ready:
                job, worker = in_flight.pop(ref)
                try:
                    record = ray.get(ref)
                except Exception as e:  # noqa: BLE001 - RayTaskError, WorkerCrashedError, RayActorError, ...
                    record = _record(job, "failed", _error_reason(e))
                records[job.index] = record
                if record.get("frames"):
                    finished[job.index] = (record["frames"], record["frames"])
                free.append(worker)
                bag_bar.update(1)
                if record["status"] != "ok":
                    tqdm.write(f"egox batch: {job.name}: failed: {record['reason']}", file=sys.stderr)
            if progress is not None and (ready or time.monotonic() - last_poll > 0.5):
                last_poll = time.monotonic()
                counts = {**ray.get(progress.snapshot.remote()), **finished}
                frame_bar.total = sum(total for _, total in counts.values())
                frame_bar.n = sum(done for done, _ in counts.values())
                frame_bar.refresh()
        wall_s = time.monotonic() - started
        frame_bar.close()
        bag_bar.close()
    summary = _summary(records, wall_s)
    result = {"out_dir": str(out_dir), "generator": generator.name, "ray": info, "summary": summary,
              "settings": asdict(settings), "bags": records}
    json_path = out_dir / BATCH_JSON
    json_path.write_text(json.dumps(result, indent=2))
    return BatchResult(records, summary, json_path)


def _summary(records: list[dict], wall_s: float) -> dict:
    ok = [r for r in records if r["status"] == "ok"]
    frames = sum(r["frames"] or 0 for r in ok)
    dropped: dict[str, int] = {}
    for r in ok:
        for reason, n in r["dropped"].items():
            dropped[reason] = dropped.get(reason, 0) + n
    return {"bags": len(records), "succeeded": len(ok), "failed": len(records) - len(ok), "frames": frames,
            "published": sum(r["published"] or 0 for r in ok), "dropped": dropped, "wall_time_s": round(wall_s, 3),
            "frames_per_second": round(frames / wall_s, 3) if wall_s > 0 else None,
            "failed_bags": [r["name"] for r in records if r["status"] != "ok"]}


def format_table(records: list[dict], summary: dict) -> str:
    """The end-of-batch table: one row per bag and a total."""
    def dropped_text(d: dict) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(d.items())) or "-"

    def cell(value) -> str:
        return "-" if value is None else str(value)

    rows = [("bag", "frames", "published", "dropped", "wall s", "status")]
    for r in records:
        status = "ok" if r["status"] == "ok" else f"FAILED: {r['reason']}"
        rows.append((r["name"], cell(r["frames"]), cell(r["published"]), dropped_text(r["dropped"]),
                     cell(r["wall_time_s"]), status))
    rows.append((f"all {summary['bags']}", str(summary["frames"]), str(summary["published"]),
                 dropped_text(summary["dropped"]), str(summary["wall_time_s"]),
                 f"{summary['succeeded']} ok, {summary['failed']} failed"))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(value.ljust(width) for value, width in zip(row[:5], widths)) + "  " + row[5] for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bags", nargs="+", type=Path, metavar="BAG", help="rosbag2 bags (directories or .mcap/.db3)")
    parser.add_argument("-o", "--out", type=Path, required=True,
                        help="output directory: one folder per bag (bag/, contact_sheet.png, metrics.json) and "
                             "batch.json; new or empty unless --overwrite")
    parser.add_argument("--params-file", help="node parameter YAML for every bag (default: every parameter at its "
                                              "default)")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="NAME:=VALUE",
                        help="node parameter override, e.g. -p fusion.window_frames:=8 (repeatable)")
    parser.add_argument("--address", default=None,
                        help="Ray cluster to run on: 'auto' (a cluster started with `ray start` on this machine) or "
                             "'ray://HEAD:10001'; default: a local Ray instance for this command only")
    parser.add_argument("--num-cpus", type=int, default=None,
                        help="CPUs of the local Ray instance (default: all cores); each bag takes "
                             "max(1, runtime.torch_threads) of them. With --address: at most this many CPUs' worth "
                             "of bags at once")
    parser.add_argument("--exo-topic", help="the bags' exo image topic (as for egox process)")
    parser.add_argument("--gt-topic", default=GT_TOPIC, help="ground-truth ego images for the metrics, if any")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier batch's outputs in a non-empty output directory")


def run(args: argparse.Namespace) -> int:
    try:
        result = batch(args.bags, args.out, args.params_file, args.param, address=args.address,
                       num_cpus=args.num_cpus, overwrite=args.overwrite, exo_topic=args.exo_topic,
                       gt_topic=args.gt_topic)
    except ReplayInputError as e:
        print(f"egox batch: {e}", file=sys.stderr)
        return 2
    except ReplayError as e:
        print(f"egox batch: {e}", file=sys.stderr)
        return 1
    print(format_table(result.bags, result.summary))
    s = result.summary
    print(f"egox batch: {s['succeeded']} of {s['bags']} bags ok, {s['published']} of {s['frames']} frames published "
          f"in {s['wall_time_s']} s ({s['frames_per_second']} frames/s); {result.json_path}")
    return 0 if not result.failed else 1
