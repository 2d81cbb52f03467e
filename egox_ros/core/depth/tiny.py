"""Tiny, randomly initialised depth-estimation checkpoints built from configs (no download).

Each builder writes a folder with the layout of the real Hugging Face checkpoint of its family (config.json,
model.safetensors, preprocessor_config.json with the family's image processor), so tests and benchmarks load it
through the real path of egox_ros.core.depth.hf_model. Weights are random (N(0, 0.2), so the maps vary over the
image): the depth values are noise-like, but their units and ranges follow the family's head (a metric head gives
metres in (0, max_depth), a relative head relative inverse depth > 0 around 1).

Families and the real checkpoints they mimic (20-40 thousand parameters each; the image processors resize to
56-64 px, except GLPN, whose processor has no target size and runs at the image's own resolution rounded down to
multiples of 32 - as the real GLPN checkpoints do):
- 'depth_anything_relative': Depth Anything V2 relative (depth-anything/Depth-Anything-V2-Small-hf), Dinov2 backbone;
- 'depth_anything_metric':   Depth Anything V2 metric (depth-anything/Depth-Anything-V2-Metric-Indoor-Small-hf),
  max_depth 20 m;
- 'dpt':                     DPT (Intel/dpt-large), ViT backbone, relative inverse depth;
- 'glpn':                    GLPN (vinvino02/glpn-nyu), max_depth 10 m;
- 'zoedepth':                ZoeDepth (Intel/zoedepth-nyu), BEiT backbone, metric bins 0.001-10 m.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def _dinov2(image_size: int = 56):
    from transformers import Dinov2Config
    return Dinov2Config(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, mlp_ratio=2, patch_size=14,
                        image_size=image_size, out_indices=[1, 2, 3, 4], reshape_hidden_states=False,
                        apply_layernorm=True)


def _depth_anything(kind: str):
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, DPTImageProcessor
    config = DepthAnythingConfig(backbone_config=_dinov2(), patch_size=14, reassemble_hidden_size=16,
                                 neck_hidden_sizes=[4, 8, 16, 16], fusion_hidden_size=8, head_hidden_size=4,
                                 depth_estimation_type=kind, max_depth=20 if kind == "metric" else 1)
    # The settings of the real Depth Anything V2 processors, at 56 px instead of 518.
    processor = DPTImageProcessor(do_resize=True, size={"height": 56, "width": 56}, keep_aspect_ratio=True,
                                  ensure_multiple_of=14, resample=3, do_rescale=True, do_normalize=True,
                                  image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD, do_pad=False)
    return DepthAnythingForDepthEstimation(config), processor


def _dpt():
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor
    config = DPTConfig(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32,
                       image_size=64, patch_size=8, backbone_out_indices=[0, 1, 2, 3], readout_type="project",
                       reassemble_factors=[4, 2, 1, 0.5], neck_hidden_sizes=[4, 8, 16, 16], fusion_hidden_size=8,
                       head_in_index=-1)
    # Intel/dpt-large: a fixed square input (384 there), mean/std 0.5.
    processor = DPTImageProcessor(do_resize=True, size={"height": 64, "width": 64}, keep_aspect_ratio=False,
                                  ensure_multiple_of=1, resample=2, do_rescale=True, do_normalize=True,
                                  image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    return DPTForDepthEstimation(config), processor


def _glpn():
    from transformers import GLPNConfig, GLPNForDepthEstimation, GLPNImageProcessor
    config = GLPNConfig(num_encoder_blocks=4, depths=[1, 1, 1, 1], sr_ratios=[8, 4, 2, 1], hidden_sizes=[4, 8, 16, 16],
                        patch_sizes=[7, 3, 3, 3], strides=[4, 2, 2, 2], num_attention_heads=[1, 1, 2, 2],
                        mlp_ratios=[2, 2, 2, 2], decoder_hidden_size=8, max_depth=10, head_in_index=-1)
    return GLPNForDepthEstimation(config), GLPNImageProcessor(do_resize=True, size_divisor=32, do_rescale=True)


def _zoedepth():
    from transformers import BeitConfig, ZoeDepthConfig, ZoeDepthForDepthEstimation, ZoeDepthImageProcessor
    backbone = BeitConfig(image_size=64, patch_size=8, num_hidden_layers=4, hidden_size=16, intermediate_size=32,
                          num_attention_heads=2, use_relative_position_bias=True, reshape_hidden_states=False,
                          out_features=["stage1", "stage2", "stage3", "stage4"])
    config = ZoeDepthConfig(backbone_config=backbone, neck_hidden_sizes=[4, 8, 16, 16], fusion_hidden_size=8,
                            bottleneck_features=8, num_relative_features=4, num_attractors=[4, 2, 2, 1],
                            bin_embedding_dim=8, bin_configurations=[{"n_bins": 8, "min_depth": 0.001,
                                                                      "max_depth": 10.0}],
                            readout_type="project")
    # Intel/zoedepth-nyu: reflect padding, keep aspect ratio, multiples of 32 (here 8, the tiny patch size).
    processor = ZoeDepthImageProcessor(do_resize=True, size={"height": 64, "width": 64}, keep_aspect_ratio=True,
                                       ensure_multiple_of=8, do_pad=True, resample=2, image_mean=[0.5, 0.5, 0.5],
                                       image_std=[0.5, 0.5, 0.5])
    return ZoeDepthForDepthEstimation(config), processor


def _spread(model: torch.nn.Module, std: float = 0.2) -> None:
    """Re-draw linear and conv weights and biases N(0, std): with the families' default init (0.02) a model this
    small outputs a near-constant map (a relative head ~1e-3, a metric head its midpoint everywhere)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                module.weight.normal_(0.0, std)
                if module.bias is not None:
                    module.bias.normal_(0.0, std)


TINY_DEPTH_FAMILIES: dict[str, Callable] = {
    "depth_anything_relative": lambda: _depth_anything("relative"),
    "depth_anything_metric": lambda: _depth_anything("metric"),
    "dpt": _dpt,
    "glpn": _glpn,
    "zoedepth": _zoedepth,
}


RELATIVE_FAMILIES = ("depth_anything_relative", "dpt")


def save_tiny_depth_model(path: str | Path, family: str = "depth_anything_metric", seed: int = 0) -> Path:
    """Write a tiny random checkpoint of `family` (a key of TINY_DEPTH_FAMILIES) into folder `path`; returns it."""
    if family not in TINY_DEPTH_FAMILIES:
        raise ValueError(f"unknown tiny depth family {family!r}; expected one of {sorted(TINY_DEPTH_FAMILIES)}")
    torch.manual_seed(seed)
    model, processor = TINY_DEPTH_FAMILIES[family]()
    _spread(model)
    if family in RELATIVE_FAMILIES:
        # The last conv feeds the ReLU: with N(0, 0.2) most pixels would be 0 (invalid). Smaller weights around a
        # bias of 1 keep the map positive and varying, as a trained model's is (except on sky).
        last = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.out_channels == 1][-1]
        with torch.no_grad():
            last.weight.normal_(0.0, 0.02)
            last.bias.fill_(1.0)
    path = Path(path)
    model.eval().save_pretrained(path)
    processor.save_pretrained(path)
    return path
