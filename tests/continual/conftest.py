# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Shared fixtures of the continual-learning tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers as tf


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory) -> Path:
    """A tiny random ViT classifier (32 x 32 inputs, 2 blocks) saved in transformers format."""
    torch.manual_seed(0)
    config = tf.ViTConfig(
        hidden_size=32, image_size=32, patch_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37
    )
    path = tmp_path_factory.mktemp("tiny_vit")
    tf.ViTForImageClassification(config).save_pretrained(path)
    return path
