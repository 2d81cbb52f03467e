"""`egox bench soak` for a few seconds: a real node subprocess fed live; every frame sent is accounted for, the JSON
has every field and --write-docs keeps one row per case. No speed assertions (speed lives in docs/benchmarks.md)."""
from __future__ import annotations

import json
import os
import sys

import pytest

from conftest import run_with_progress

from egox_ros.bench.soak import (merge_cases, markdown, ping_pong, read_doc_cases, slope_mb_per_min,
                                 write_docs)


@pytest.fixture(scope="module")
def soak_result():
    # A domain of its own, away from the test process's (conftest: 1 + pid % 100).
    domain = 1 + (os.getpid() + 50) % 100
    run = run_with_progress([sys.executable, "-m", "egox_ros.cli", "bench", "soak", "--duration", "3", "--rate", "10",
                             "--warmup", "1", "--drain-timeout", "60", "--domain-id", str(domain), "--json",
                             "--label", "test"])
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout)


def test_soak_accounts_for_every_frame_sent(soak_result):
    f = soak_result["frames"]
    assert f["sent"] > 0 and f["published"] >= 1
    assert f["sent"] == f["published"] + f["dropped"] + f["lost"] + f["still_in_node"] + f["unaccounted"]
    # The node's own invariant (NodeProgress), and the drain finished: nothing left anywhere.
    assert f["received_by_node"] == f["published"] + f["dropped"] + f["waiting"] + f["queued"]
    assert f["still_in_node"] == 0 and f["unaccounted"] == 0
    # ClipMetadata agrees with ~/progress, and every published frame's ego image arrived here.
    assert f["metadata_published_frames"] == f["published"] == f["ego_images_received"]
    assert f["metadata_dropped_frames"] == f["dropped"] == sum(f["dropped_by_reason"].values())
    assert soak_result["node"]["exit_code"] == 0      # SIGINT shut the node down cleanly


def test_soak_result_has_every_field(soak_result):
    r = soak_result
    assert r["benchmark"] == "soak" and r["label"] == "test" and r["interrupted"] is False
    m = r["machine"]
    assert m["cpu"] and m["cpu_cores"] >= 1 and m["versions"]["torch"] and m["versions"]["rclpy"]
    assert len(r["load_average_before"]) == 3 and r["code"]["commit"]
    c = r["config"]
    assert (c["duration_s"], c["rate_hz"], c["warmup_s"], c["busy_processes"]) == (3.0, 10.0, 1.0, 0)
    assert c["image_size"] == [640, 480] and c["params_file"] == "sample/egox_sample.yaml"
    w = r["window"]
    assert w["sent"] > 0 and w["seconds"] > 0 and w["output_rate_hz"] >= 0 and w["send_rate_hz"] > 0
    for key in ("latency_ms", "latency_ms_whole_run"):
        lat = r[key]
        assert lat["count"] >= 1
        assert 0 <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert r["latency_ms"]["count"] == w["published"]
    rss = r["rss_mb"]
    assert len(rss["samples"]) >= 3 and all(mb > 0 for _, mb in rss["samples"])
    assert rss["slope_mb_per_min"] is not None and rss["max"] >= rss["end"] > 0
    assert r["node_cpu_percent"] is not None and r["other_processes_cpu_cores"] >= 0


def test_write_docs_keeps_one_row_per_case(soak_result, tmp_path):
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\nours\n")
    write_docs(soak_result, docs)
    other = dict(soak_result, label="busy 1")
    write_docs(other, docs)
    write_docs(soak_result, docs)            # same label again: replaced, not added
    text = docs.read_text()
    assert text.startswith("# Benchmarks\n\nours\n") and text.count("<!-- bench:soak begin -->") == 1
    cases = read_doc_cases(text)
    assert [c["label"] for c in cases] == ["test", "busy 1"]
    assert "samples" not in cases[0]["rss_mb"]
    assert "| test |" in text and "| busy 1 |" in text and soak_result["machine"]["cpu"] in text
    assert [c["label"] for c in merge_cases(cases, dict(soak_result, label="new"))] == ["test", "busy 1", "new"]
    assert "| test |" in markdown(soak_result)


def test_helpers():
    assert [ping_pong(k, 3) for k in range(7)] == [0, 1, 2, 1, 0, 1, 2]
    assert slope_mb_per_min([(0.0, 100.0), (30.0, 101.0), (60.0, 102.0)]) == pytest.approx(2.0)
    assert slope_mb_per_min([(0.0, 1.0)]) is None
