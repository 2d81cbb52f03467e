"""The `model` depth source (HfDepthModel) on tiny random checkpoints of each family, loaded from folders through
the real transformers path (no download): shapes, kinds, units, batching, dtypes, and the errors of bad folders."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from egox_ros.core.depth.base import DepthMap
from egox_ros.core.depth.hf_model import DepthModelError, HfDepthModel, HfDepthModelConfig, resolve_dtype
from egox_ros.core.depth.tiny import TINY_DEPTH_FAMILIES, save_tiny_depth_model

EXPECTED_KIND = {"depth_anything_relative": "relative_inverse", "depth_anything_metric": "metric",
                 "dpt": "relative_inverse", "glpn": "metric", "zoedepth": "metric"}
MAX_DEPTH = {"depth_anything_metric": 20.0, "glpn": 10.0, "zoedepth": 10.0}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_depth")
    return {family: save_tiny_depth_model(root / family, family) for family in TINY_DEPTH_FAMILIES}


def frames(n: int, height: int, width: int, seed: int = 0) -> list[np.ndarray]:
    """n (H, W, 3) uint8 RGB frames: a shifting colour gradient with noise (structure for the models to see)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    out = []
    for i in range(n):
        base = np.stack([x / width, y / height, ((x + y + 40 * i) % 97) / 97], axis=-1) * 200
        out.append(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8))
    return out


def load(path: Path, **kwargs) -> HfDepthModel:
    return HfDepthModel(HfDepthModelConfig(model_path=str(path), **kwargs))


def copy_without(src: Path, dst: Path, *names: str) -> Path:
    shutil.copytree(src, dst)
    for name in names:
        (dst / name).unlink()
    return dst


@pytest.mark.parametrize("family", list(TINY_DEPTH_FAMILIES))
def test_each_family_gives_maps_of_the_input_size_in_its_kind(tiny, family):
    model = load(tiny[family], batch_size=4)
    assert model.name == "model" and model.kind == EXPECTED_KIND[family] and model.dtype == torch.float32
    images = frames(3, 480, 640) + frames(2, 75, 100)             # two sizes in one call, order kept
    maps = model.estimate(images)
    assert [m.values.shape for m in maps] == [(480, 640)] * 3 + [(75, 100)] * 2
    for m in maps:
        assert isinstance(m, DepthMap) and m.kind == EXPECTED_KIND[family] and m.values.dtype == np.float32
        if m.kind == "metric":                                     # metres: finite, positive, within the head
            assert np.isfinite(m.values).all()
            assert m.values.min() > 0 and m.values.max() < 1.2 * MAX_DEPTH[family]
        else:                                                      # ReLU head, bicubic upsampling may undershoot 0
            assert not np.isnan(m.values).any()
            assert (m.values > 0).mean() > 0.9 and m.values.min() > -0.5 * m.values.max()
        assert m.values.std() > 0                                  # a map, not a constant
    assert not np.allclose(maps[0].values, maps[1].values)         # it depends on the image
    assert model.estimate([]) == []


@pytest.mark.parametrize("family", list(TINY_DEPTH_FAMILIES))
def test_batching_gives_the_same_maps_as_one_by_one(tiny, family):
    images = frames(3, 120, 160, seed=1)
    batched = load(tiny[family], batch_size=2).estimate(images)   # one batch of 2, one of 1
    single = load(tiny[family], batch_size=1)
    for image, b in zip(images, batched):
        one = single.estimate([image])[0].values
        np.testing.assert_allclose(b.values, one, rtol=1e-4, atol=1e-4 * np.abs(one).max())


def test_dtype_requests_on_cpu(tiny):
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == (torch.float32, "")
    assert resolve_dtype("bfloat16", cpu) == (torch.bfloat16, "")
    dtype, note = resolve_dtype("float16", cpu)
    assert dtype == torch.float32 and "float16" in note and "float32" in note

    images = frames(2, 96, 128, seed=2)
    reference = load(tiny["depth_anything_metric"]).estimate(images)
    half = load(tiny["depth_anything_metric"], dtype="float16")       # falls back, says so
    assert half.dtype == torch.float32 and any("float16" in n for n in half.notes)
    assert next(half.model.parameters()).dtype == torch.float32
    for a, b in zip(half.estimate(images), reference):
        np.testing.assert_array_equal(a.values, b.values)


@pytest.mark.parametrize("family", list(TINY_DEPTH_FAMILIES))
def test_bfloat16_runs_every_family_and_returns_float32(tiny, family):
    images = frames(2, 96, 128, seed=3)
    reference = load(tiny[family]).estimate(images)
    model = load(tiny[family], dtype="bfloat16")
    assert model.dtype == torch.bfloat16 and next(model.model.parameters()).dtype == torch.bfloat16
    assert model.notes == [] or all("torchvision" in n for n in model.notes)
    for a, b in zip(model.estimate(images), reference):
        assert a.values.dtype == np.float32
        scale = np.nanmax(np.abs(b.values))
        assert np.nanmean(np.abs(a.values - b.values)) < 0.05 * scale


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("family", list(TINY_DEPTH_FAMILIES))
def test_cuda_auto_runs_in_half_precision(tiny, family):
    images = frames(3, 480, 640, seed=4)
    reference = load(tiny[family]).estimate(images)
    model = HfDepthModel(HfDepthModelConfig(model_path=str(tiny[family])), "cuda")
    assert model.dtype in (torch.bfloat16, torch.float16)
    for a, b in zip(model.estimate(images), reference):
        assert a.values.dtype == np.float32 and a.values.shape == (480, 640)
        assert np.nanmean(np.abs(a.values - b.values)) < 0.05 * np.nanmax(np.abs(b.values))


def test_kind_override(tiny):
    relative_as_metric = load(tiny["depth_anything_relative"], kind="metric")
    assert relative_as_metric.kind == "metric"
    assert any("relative_inverse" in n for n in relative_as_metric.notes)
    with torch.no_grad():
        relative_as_metric.model.head.conv3.bias.fill_(0.0)       # the ReLU now zeroes part of the map
    values = relative_as_metric.estimate(frames(1, 75, 100))[0].values
    assert 0 < np.isnan(values).mean() < 1 and (values[np.isfinite(values)] > 0).all()   # metric: <= 0 is NaN
    metric_as_relative = load(tiny["depth_anything_metric"], kind="relative_inverse")
    assert metric_as_relative.kind == "relative_inverse"
    assert metric_as_relative.estimate(frames(1, 75, 100))[0].kind == "relative_inverse"


def test_a_depth_model_without_a_kind_rule_needs_an_explicit_kind(tiny, tmp_path):
    folder = shutil.copytree(tiny["depth_anything_metric"], tmp_path / "unknown")
    (folder / "config.json").write_text(json.dumps({"model_type": "depth_pro",
                                                    "architectures": ["DepthProForDepthEstimation"]}))
    with pytest.raises(DepthModelError, match="set kind to 'metric' or 'relative_inverse'"):
        load(folder)


def test_missing_or_empty_folder_says_what_is_expected_and_how_to_get_it(tmp_path):
    with pytest.raises(DepthModelError, match="model_path is empty"):
        HfDepthModel(HfDepthModelConfig())
    with pytest.raises(DepthModelError) as e:
        load(tmp_path / "nowhere")
    text = str(e.value)
    for expected in ("does not exist", "config.json", "preprocessor_config.json", "model.safetensors",
                     "hf download depth-anything/Depth-Anything-V2-Metric-Indoor-Small-hf --local-dir"):
        assert expected in text
    (tmp_path / "empty").mkdir()
    with pytest.raises(DepthModelError, match="has no config.json(.|\n)*Found: an empty folder"):
        load(tmp_path / "empty")


def test_folder_without_preprocessor_or_weights(tiny, tmp_path):
    no_processor = copy_without(tiny["glpn"], tmp_path / "no_processor", "preprocessor_config.json")
    with pytest.raises(DepthModelError) as e:
        load(no_processor)
    assert "has no preprocessor_config.json" in str(e.value)
    assert "Found: config.json (" in str(e.value) and "model.safetensors (" in str(e.value)   # the listing
    no_weights = copy_without(tiny["dpt"], tmp_path / "no_weights", "model.safetensors")
    with pytest.raises(DepthModelError, match="has no weights"):
        load(no_weights)


def test_weights_of_another_model_are_refused(tiny, tmp_path):
    folder = shutil.copytree(tiny["depth_anything_metric"], tmp_path / "mixed")
    shutil.copy(tiny["dpt"] / "model.safetensors", folder / "model.safetensors")
    with pytest.raises(DepthModelError, match="weights"):
        load(folder)


def test_a_model_that_is_not_a_depth_model_is_named(tmp_path):
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel
    folder = tmp_path / "clip"
    CLIPVisionModel(CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     image_size=32, patch_size=8)).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    with pytest.raises(DepthModelError) as e:
        load(folder)
    text = str(e.value)
    assert "'clip_vision_model' model (CLIPVisionModel)" in text and "not a depth-estimation model" in text
    assert "depth_anything" in text                                # the model types that would do


def test_bad_inputs_and_settings(tiny):
    with pytest.raises(ValueError, match="kind"):
        HfDepthModelConfig(model_path="x", kind="inverse")
    with pytest.raises(ValueError, match="batch_size"):
        HfDepthModelConfig(model_path="x", batch_size=0)
    model = load(tiny["glpn"])
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        model.estimate([np.zeros((48, 64, 3), np.float32)])
    with pytest.raises(ValueError, match="cannot take 20x30"):     # GLPN rounds sizes down to multiples of 32
        model.estimate([np.zeros((20, 30, 3), np.uint8)])


def test_the_node_factory_builds_the_model_source(tiny):
    from egox_ros.core.config import DepthConfig
    from egox_ros.core.depth.estimator import make_depth_estimator
    estimator = make_depth_estimator(DepthConfig(source="model", model_path=str(tiny["depth_anything_metric"])))
    try:
        assert isinstance(estimator.metric, HfDepthModel) and estimator.metric.kind == "metric"
    finally:
        estimator.close()
