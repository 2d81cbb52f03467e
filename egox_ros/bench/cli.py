"""`egox bench <name>`: run a benchmark, print its JSON, optionally refresh its section of docs/benchmarks.md."""
from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
from pathlib import Path

from egox_ros.tools.egoexo4d import DEFAULT_EXO_FOCAL_SCALE, RELEASED_EXO_FOCAL_SCALE

DOCS = Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md"


# name -> help; each is the module egox_ros.bench.<name> with run_all(quick, device, progress) and markdown().
BENCHMARKS = {
    "geometry": "ego-prior geometry on real TUM RGB-D data: accuracy against the real frames and open3d, speed, "
                "scaling",
    "gga": "geometry-guided attention: exactness and time against plain attention and the dense-bias method "
           "(small sizes on CPU; the released size with --device cuda)",
    "depth": "per-frame time of each depth source (topic decode, tiny models per family, the video stabiliser, "
             "video + alignment) at 640x480 on real TUM frames; real checkpoints from EGOX_BENCH_DEPTH_MODELS",
    "generator": "the whole EgoX sampling loop: tiny checkpoint on CPU; with --device cuda a full-size random "
                 "transformer at the released canvas, seconds per step and peak GPU memory per offload mode",
    "prior": "soft-disc prior renderer (the released EgoX one) against the hard z-buffer squares on real TUM "
             "frames: holes, PSNR against the real frame, an independent per-pixel reference, speed",
    "demonstrator": "person detector and head pose on real TUM frames (640x480): time per frame, detection rate, "
                    "head jitter in the world, frames/s of the whole prior path (sequential, pipelined, with a "
                    "competing process); --write-docs also draws docs/demonstrator.png",
    "offline": "the bundled sample through `egox process` (one process, no DDS) and `egox replay` (a live node over "
               "DDS): wall time, frames/s, agreement",
    "soak": "the egox node as a subprocess fed live at camera rate (real sample frames, 640x480) for minutes, "
            "optionally with competing busy processes: frame accounting, output rate, latency percentiles, node RSS "
            "slope; --write-docs keeps one table row per case",
}
# Benchmarks with their own options: egox_ros.bench.<name> also has add_arguments(parser) and run_cli(args).
OWN_CLI = {"soak"}
# Benchmarks that also run on real demonstrations (--egoexo4d DIR; egox_ros.bench.<name> has run_egoexo4d,
# markdown_egoexo4d, EGOEXO4D_SECTION and EGOEXO4D_CASES_PER_CLIP): what they measure there, the default exo focal
# length scale and what it means, whether -p reaches egox process, whether --exo-shrink reaches run_egoexo4d.
EGOEXO4D = {
    "demonstrator": ("per clip frames with a head, head position and forward-direction error against the recorded "
                     "head camera, person masks, time; and each clip's frames twice side by side with the recorded "
                     "head as the detector's hint on either copy: whose head the mask covers", DEFAULT_EXO_FOCAL_SCALE,
                     "fits the videos, as egox tools egoexo4d writes it; 1: the released camera", False, True),
    "prior": ("every clip through egox process (temporary bags, deleted after) with the released priors' ego "
              "camera; per clip the prior against the released prior (mask IoU, PSNR on shared pixels), coverage, "
              "and both priors' masked PSNR against the real head camera's video", RELEASED_EXO_FOCAL_SCALE,
              "the camera the released priors were lifted with", True, False),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench", required=True)
    for name, help_text in BENCHMARKS.items():
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--json", action="store_true", help="print only the JSON document (no progress)")
        p.add_argument("--quick", action="store_true", help="fewer cases and repeats: a smoke run")
        p.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
        p.add_argument("--write-docs", action="store_true", help=f"replace this benchmark's section of {DOCS}")
        if name == "demonstrator":
            p.add_argument("--frames", type=int, default=None,
                           help="frames of each prior-path run (frames 48-59 repeated; default 48, --quick 12)")
        if name in EGOEXO4D:
            _add_egoexo4d_arguments(p, *EGOEXO4D[name])
        if name in OWN_CLI:
            importlib.import_module(f"egox_ros.bench.{name}").add_arguments(p)


def _add_egoexo4d_arguments(p: argparse.ArgumentParser, measures: str, focal_scale: float, focal_meaning: str,
                            params: bool, shrink: bool) -> None:
    p.add_argument("--egoexo4d", type=Path, default=None, metavar="DIR",
                   help=f"instead: the released EgoX example/egoexo4D folder (meta.json, videos/, depth_maps/): "
                        f"{measures}")
    p.add_argument("--clip", action="append", default=None, metavar="NAME",
                   help="with --egoexo4d: only this clip of meta.json (repeatable; default: every clip it lists)")
    p.add_argument("--exo-focal-scale", type=float, default=focal_scale,
                   help=f"with --egoexo4d: the released exo focal length times this (default {focal_scale:g}: "
                        f"{focal_meaning})")
    if params:
        p.add_argument("-p", "--param", action="append", default=[], metavar="NAME:=VALUE",
                       help="with --egoexo4d: a node parameter for egox process (repeatable)")
    if shrink:
        p.add_argument("--exo-shrink", type=float, default=1.0, metavar="S",
                       help="with --egoexo4d: the exo image shrunk by S in (0, 1] about its principal point, as a "
                            "wider lens would see it: the people as if 1 / S times as far away")


def _progress(bar):
    """progress(what) for a benchmark: the bar's postfix and one step (None without a bar)."""
    return (lambda what: (bar.set_postfix_str(what), bar.update(1))) if bar is not None else None


def update_docs_section(name: str, body: str, path: Path = DOCS) -> None:
    """Replace (or append) the section between `<!-- bench:NAME begin -->` and `<!-- bench:NAME end -->`."""
    begin, end = f"<!-- bench:{name} begin -->", f"<!-- bench:{name} end -->"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{begin}\n{body}{end}"
    if begin in text and end in text:
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _m: block, text, flags=re.S)
    else:
        text = text.rstrip("\n") + f"\n\n## `egox bench {name}`\n\n{block}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm
    bench = importlib.import_module(f"egox_ros.bench.{args.bench}")
    if args.bench in OWN_CLI:
        return bench.run_cli(args)
    if getattr(args, "egoexo4d", None) is not None:          # egox bench demonstrator|prior --egoexo4d DIR
        return _run_egoexo4d(bench, args)
    bar = None if args.json else tqdm(desc=f"bench {args.bench}", unit="case", file=sys.stderr)
    progress = _progress(bar)
    extra = {"frames": args.frames} if getattr(args, "frames", None) else {}
    result = bench.run_all(quick=args.quick, device=args.device, progress=progress, **extra)
    if bar is not None:
        bar.close()
    print(json.dumps(result, indent=None if args.json else 1))
    if args.write_docs:
        update_docs_section(args.bench, bench.markdown(result))
        if hasattr(bench, "write_figure"):
            print(f"wrote {bench.write_figure()}", file=sys.stderr)
        print(f"updated {DOCS}", file=sys.stderr)
    return 0


def _run_egoexo4d(bench, args: argparse.Namespace) -> int:
    """`egox bench demonstrator|prior --egoexo4d DIR`: every clip of a released folder; a folder that is not one, a
    clip it does not list, a bad --exo-focal-scale, --exo-shrink or -p value is one line and exit 2."""
    from tqdm import tqdm
    from egox_ros.ros.offline.plan import ReplayError
    from egox_ros.tools.egoexo4d import ClipError, selected_clips
    extra = {"overrides": args.param} if hasattr(args, "param") else {}
    if hasattr(args, "exo_shrink"):
        extra["exo_shrink"] = args.exo_shrink
    bar = None
    try:
        if not args.exo_focal_scale > 0:
            raise ClipError(f"--exo-focal-scale must be positive, got {args.exo_focal_scale}")
        if not 0 < getattr(args, "exo_shrink", 1.0) <= 1:
            raise ClipError(f"--exo-shrink must be in (0, 1], got {args.exo_shrink}")
        clips = selected_clips(args.egoexo4d, args.clip)        # checks the folder before any work
        if not args.json:
            bar = tqdm(desc=f"bench {args.bench}", total=len(clips) * bench.EGOEXO4D_CASES_PER_CLIP, unit="case",
                       file=sys.stderr)
        result = bench.run_egoexo4d(args.egoexo4d, args.exo_focal_scale, progress=_progress(bar), clips=clips,
                                    **extra)
    except (ClipError, ReplayError) as e:
        print(f"egox bench {args.bench}: error: {e}", file=sys.stderr)
        return 2
    finally:
        if bar is not None:
            bar.close()
    print(json.dumps(result, indent=None if args.json else 1))
    if args.write_docs:
        update_docs_section(bench.EGOEXO4D_SECTION, bench.markdown_egoexo4d(result))
        print(f"updated {DOCS}", file=sys.stderr)
    return 0
