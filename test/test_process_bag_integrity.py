"""Issue 20: `egox process` with the demonstrator on (person masks and the head from the exo image) wrote bags
that did not read back: the person detector's worker thread wrote into the MCAP writer while the main thread did,
because the worker reported itself idle before its result callback had run. Each output bag must read back
completely with both rosbags and the `mcap` reader, with the message counts the run reports."""
from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from egox_ros.ros.offline.process import process

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample" / "tum_fr1_rpy"
PARAMS = str(ROOT / "sample" / "egox_sample.yaml")
DEMONSTRATOR = ["inputs.head_source:=exo", "person.source:=mediapipe"]


def counts_with_rosbags(bag: Path) -> Counter:
    from rosbags.highlevel import AnyReader
    counts: Counter = Counter()
    with AnyReader([bag]) as reader:
        for conn, _, raw in reader.messages():
            assert len(raw) > 0
            counts[conn.topic] += 1
    return counts


def counts_with_mcap(bag: Path) -> Counter:
    from mcap.reader import make_reader
    counts: Counter = Counter()
    files = sorted(bag.glob("*.mcap"))
    assert len(files) == 1, files
    with open(files[0], "rb") as f:
        # validate_crcs: every chunk's CRC and size is checked as it is decompressed
        for _, channel, message in make_reader(f, validate_crcs=True).iter_messages():
            assert len(message.data) > 0
            counts[channel.topic] += 1
    return counts


def test_process_with_the_demonstrator_writes_bags_that_read_back(tmp_path):
    runs = 3      # the race hit 6 of 6 runs before the fix; three clean runs in a row are the check
    for run in range(runs):
        result = process(SAMPLE, tmp_path / f"run{run}", PARAMS, overrides=DEMONSTRATOR, progress_bar=False)
        written = {topic: n for topic, n in result.metrics["run"]["recorded_messages"].items() if n}
        assert written["/egox/person_mask"] > 0 and written["/egox/head_pose"] > 0, written
        assert written["/ego/clip_metadata"] > 0
        assert dict(counts_with_rosbags(result.out_bag)) == written
        assert dict(counts_with_mcap(result.out_bag)) == written


def test_bag_writer_serialises_writes_from_many_threads(tmp_path):
    """The engine reports from its worker threads (EngineEvents may be called from any thread): the bag writer
    takes concurrent writes and the bag reads back whole."""
    from egox_ros.core.config import InputsConfig, OutputsConfig
    from egox_ros.core.generators import PriorGenerator
    from egox_ros.ros.offline.bag_check import read_back_problem
    from egox_ros.ros.offline.bag_driver import BagWriter
    from egox_ros.ros.offline.plan import typestore_with_egox_msgs
    from egox_ros.ros.outputs import OutputMessages

    writer = BagWriter(tmp_path / "bag", typestore_with_egox_msgs(), "ego_camera_optical")
    writer.messages = OutputMessages(InputsConfig(), OutputsConfig(), None, PriorGenerator)
    masks_per_thread, threads = 60, 4
    start = threading.Barrier(threads)

    def write_masks(offset: int) -> None:
        rng = np.random.default_rng(offset)
        start.wait()
        for i in range(masks_per_thread):    # random masks: chunks fill unevenly, as the detector's do
            writer.person_mask(10**9 * (offset * masks_per_thread + i + 1), rng.random((120, 160)) > 0.5, "exo")

    workers = [threading.Thread(target=write_masks, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    writer.close()
    with pytest.raises(RuntimeError, match="closed"):
        writer.person_mask(1, np.zeros((2, 2), bool), "exo")
    assert writer.counts["/egox/person_mask"] == masks_per_thread * threads
    assert read_back_problem(tmp_path / "bag", {"/egox/person_mask": masks_per_thread * threads}) is None
    assert counts_with_mcap(tmp_path / "bag") == {"/egox/person_mask": masks_per_thread * threads}


def test_read_back_check_names_a_damaged_bag(tmp_path):
    """The end-of-run check fails loudly: a bag with a damaged chunk, or with other counts than written."""
    from egox_ros.ros.offline.bag_check import read_back_problem
    bag = tmp_path / "run" / "bag"
    result = process(SAMPLE, tmp_path / "run", PARAMS, progress_bar=False)
    written = {topic: n for topic, n in result.metrics["run"]["recorded_messages"].items() if n}
    assert read_back_problem(bag, written) is None
    wrong = dict(written, **{"/ego/image_raw": written["/ego/image_raw"] + 1})
    problem = read_back_problem(bag, wrong)
    assert "/ego/image_raw 50 read back, 51 written" in problem and "\n" not in problem
    # Damage it as the race did: a chunk whose index says it is 264 bytes shorter than it is ("Chunk size
    # mismatch: expected 1080226 bytes, got 1079962").
    mcap_file = next(bag.glob("*.mcap"))
    data = bytearray(mcap_file.read_bytes())
    assert shorten_first_chunk_index(data, 264)
    mcap_file.write_bytes(bytes(data))
    problem = read_back_problem(bag, written)
    assert problem is not None and "does not read back" in problem and "Chunk size mismatch" in problem, problem
    assert "\n" not in problem


def shorten_first_chunk_index(data: bytearray, by: int) -> bool:
    """Make the first ChunkIndex record of an MCAP file (its summary section) claim a compressed size `by` bytes
    short. MCAP layout: footer = opcode 0x02, length, summary_start u64, summary_offset_start u64, crc u32, then the
    8-byte magic; records = opcode u8, length u64, body."""
    u32 = lambda at: int.from_bytes(data[at:at + 4], "little")          # noqa: E731
    u64 = lambda at: int.from_bytes(data[at:at + 8], "little")          # noqa: E731
    footer = len(data) - 8 - (1 + 8 + 8 + 8 + 4)
    assert data[footer] == 0x02
    at = u64(footer + 9)
    while at < footer:
        opcode, length, body = data[at], u64(at + 1), at + 9
        if opcode == 0x08:                                  # ChunkIndex
            field = body + 8 + 8 + 8 + 8                    # start / end time, chunk start offset, chunk length
            field += 4 + u32(field) + 8                     # message index offsets map, message index length
            field += 4 + u32(field)                         # compression
            data[field:field + 8] = (u64(field) - by).to_bytes(8, "little")   # compressed_size
            return True
        at = body + length
    return False
