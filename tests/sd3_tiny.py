"""Tiny, randomly initialised SD3 parts built from configs (no hub, no weights), for the adapter's
tests and the SD3 benchmark script. The transformer config is the smallest that diffusers' own SD3 tests build."""

from __future__ import annotations

import torch

TINY_TRANSFORMER = dict(
    sample_size=32, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8,
    num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=32,
    pooled_projection_dim=64, out_channels=4,
)


def tiny_transformer(seed: int = 0, **overrides):
    """The tiny SD3Transformer2DModel (``overrides``: e.g. ``patch_size=2``,
    ``dual_attention_layers=(0,)``, ``qk_norm="rms_norm"`` for SD3.5-style configs)."""
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    return SD3Transformer2DModel(**{**TINY_TRANSFORMER, **overrides}).eval()


def tiny_vae(seed: int = 0):
    """A tiny AutoencoderKL with 4 latent channels and SD3's scaling and shift factors."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
        latent_channels=4, norm_num_groups=8, sample_size=32, scaling_factor=1.5305, shift_factor=0.0609,
    ).eval()


def tiny_scheduler(shift: float = 3.0, dynamic: bool = False):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(shift=shift, use_dynamic_shifting=dynamic)


def tiny_pipeline(shift: float = 3.0, dynamic: bool = False, seed: int = 0, **transformer_overrides):
    """A StableDiffusion3Pipeline with no text encoders or tokenizers (pass all four embeddings)."""
    from diffusers import StableDiffusion3Pipeline

    return StableDiffusion3Pipeline(
        transformer=tiny_transformer(seed, **transformer_overrides), scheduler=tiny_scheduler(shift, dynamic),
        vae=tiny_vae(seed), text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
        text_encoder_3=None, tokenizer_3=None,
    )


def tiny_embeddings(batch: int = 1, tokens: int = 12, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random prompt, pooled and negative embeddings shaped for the tiny transformer."""
    g = torch.Generator().manual_seed(seed)
    joint, pooled = TINY_TRANSFORMER["joint_attention_dim"], TINY_TRANSFORMER["pooled_projection_dim"]
    return {
        "prompt_embeds": torch.randn(batch, tokens, joint, generator=g),
        "pooled_prompt_embeds": torch.randn(batch, pooled, generator=g),
        "negative_prompt_embeds": torch.randn(batch, tokens, joint, generator=g),
        "negative_pooled_prompt_embeds": torch.randn(batch, pooled, generator=g),
    }


def tiny_clip_tokenizer():
    """A CLIPTokenizer built in memory: one token per printable ASCII character (no merges)."""
    from transformers import CLIPTokenizer

    chars = [chr(i) for i in range(33, 127)]
    vocab = {token: i for i, token in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def tiny_clip_encoder(seed: int = 0):
    """A CLIPTextModelWithProjection of hidden size 16 and projection 32: two of them give the
    tiny transformer's joint (16 + 16 = 32) and pooled (32 + 32 = 64) sizes."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    vocab = tiny_clip_tokenizer().get_vocab()
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        projection_dim=32, max_position_embeddings=77, bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"],
    )
    return CLIPTextModelWithProjection(config).eval()


def tiny_text_pipeline(shift: float = 3.0, dynamic: bool = False, seed: int = 0, **transformer_overrides):
    """:func:`tiny_pipeline` with two tiny CLIP encoders and tokenizers (no T5: the pipeline uses
    zeros for T5's tokens), so prompts can be given as text."""
    from diffusers import StableDiffusion3Pipeline

    return StableDiffusion3Pipeline(
        transformer=tiny_transformer(seed, **transformer_overrides), scheduler=tiny_scheduler(shift, dynamic),
        vae=tiny_vae(seed), text_encoder=tiny_clip_encoder(seed), tokenizer=tiny_clip_tokenizer(),
        text_encoder_2=tiny_clip_encoder(seed + 1), tokenizer_2=tiny_clip_tokenizer(),
        text_encoder_3=None, tokenizer_3=None,
    )
