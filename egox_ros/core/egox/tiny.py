"""A tiny, randomly initialised Wan 2.1 image-to-video checkpoint built from configs (no download).

Same component classes, folder layout and scheduler as Wan-AI/Wan2.1-I2V-14B-480P-Diffusers, a few thousand
parameters each: for tests, for trying the node without the real weights (`egox tiny-model DIR`), and for
benchmarks of the code around the model. Its outputs are noise-like images, not ego views.
"""
from __future__ import annotations

from pathlib import Path

import torch

TEXT_DIM = 32
IMAGE_DIM = 32
_WORDS = ("exo view ego a person the hands table picks up puts down cup bottle box opens closes drawer walks "
          "kitchen first-person of at with on in and to").split()


def tiny_tokenizer():
    """A word-level tokenizer (transformers' fast tokenizer) over a small vocabulary; unknown words map to <unk>."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    vocab = {w: i for i, w in enumerate(["<pad>", "</s>", "<unk>", *_WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=512)


def tiny_transformer_config(num_layers: int = 2) -> dict:
    """WanTransformer3DModel config: 2 heads x 16, width 32; the I2V layout (36 input channels, CLIP tokens)."""
    return dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=36, out_channels=16,
                text_dim=TEXT_DIM, freq_dim=32, ffn_dim=64, num_layers=num_layers, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=IMAGE_DIM, added_kv_proj_dim=IMAGE_DIM,
                rope_max_seq_len=64)


def tiny_pipeline(seed: int = 0, num_layers: int = 2):
    """A WanImageToVideoPipeline with tiny random components (float32, CPU)."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanImageToVideoPipeline, WanTransformer3DModel
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, UMT5Config,
                              UMT5EncoderModel)
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), d_model=TEXT_DIM, d_kv=8, d_ff=64,
                                               num_layers=1, num_heads=4, relative_attention_num_buckets=8,
                                               pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
    image_encoder = CLIPVisionModel(CLIPVisionConfig(
        hidden_size=IMAGE_DIM, projection_dim=IMAGE_DIM, num_hidden_layers=2, num_attention_heads=2, image_size=32,
        patch_size=8, intermediate_size=37, num_channels=3))
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    vae = AutoencoderKLWan(base_dim=4, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    transformer = WanTransformer3DModel(**tiny_transformer_config(num_layers))
    # The scheduler class and settings of the 480P checkpoint.
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        num_train_timesteps=1000, flow_shift=3.0)
    return WanImageToVideoPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                                   image_processor=image_processor, image_encoder=image_encoder,
                                   transformer=transformer)


def save_tiny_model(path: str | Path, seed: int = 0, num_layers: int = 2) -> Path:
    """Write the tiny checkpoint as a diffusers folder (what `model_path` points at); returns the path."""
    path = Path(path)
    tiny_pipeline(seed, num_layers).save_pretrained(path)
    return path


def save_tiny_lora(path: str | Path, rank: int = 256, num_layers: int = 2, seed: int = 0, std: float = 0.02) -> Path:
    """A random LoRA for the tiny transformer with the released file's naming (diffusers keys, rank 256 by default,
    A and B both non-zero so it changes the output), saved as pytorch_lora_weights.safetensors in `path`."""
    from safetensors.torch import save_file

    from egox_ros.core.egox.weights import LORA_FILE
    cfg = tiny_transformer_config(num_layers)
    width = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for block in range(num_layers):
        for attn in ("attn1", "attn2"):
            for proj in ("to_q", "to_k", "to_v", "to_out.0"):
                key = f"transformer.blocks.{block}.{attn}.{proj}"
                tensors[f"{key}.lora_A.weight"] = torch.randn(rank, width, generator=g) * std
                tensors[f"{key}.lora_B.weight"] = torch.randn(width, rank, generator=g) * std
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / LORA_FILE))
    return path / LORA_FILE
