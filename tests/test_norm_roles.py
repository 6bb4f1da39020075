# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Norm roles per model family: the role of every norm of a tiny model, and what `preset=` picks from them.

Each family is one tiny random-weight model built from its config in code (no downloads) and a table of the role of
every norm it has. Families whose class the installed transformers lacks are skipped with a reason.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import transformers as tf
from peft import get_peft_model
from torch import nn

from lntune import LNTuneConfig, LNTuneLayer, find_norms, norm_role
from lntune.norms import _BLOCK_RULES, _FINAL_NAMES, _ROLE_RULES, ROLES

_LAYER = dict(num_hidden_layers=1, num_attention_heads=2, intermediate_size=37)
_IDS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)  # inside the tiny vocabularies
_PEFT_PREFIX = "base_model.model."


def _hf(model_cls: str, config_cls: str, **config: object) -> Callable[[], nn.Module]:
    """Builder of ``transformers.<model_cls>(<config_cls>(**config))``; skips the test if either class is missing."""

    def build() -> nn.Module:
        if not hasattr(tf, model_cls) or not hasattr(tf, config_cls):
            pytest.skip(f"transformers {tf.__version__} has no {model_cls}/{config_cls}")
        return getattr(tf, model_cls)(getattr(tf, config_cls)(**config))

    return build


def _clip_like(prefix: str) -> Callable[[], nn.Module]:
    tower = dict(hidden_size=16, **_LAYER)
    return _hf(
        f"{prefix}Model",
        f"{prefix}Config",
        text_config=dict(vocab_size=100, **_IDS, **tower),
        vision_config=dict(image_size=32, patch_size=8, **tower),
    )


def _seq2seq(model_cls: str, config_cls: str, **config: object) -> Callable[[], nn.Module]:
    sizes = dict(encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2)
    ffn = dict(encoder_ffn_dim=37, decoder_ffn_dim=37, decoder_start_token_id=1)
    return _hf(model_cls, config_cls, d_model=16, vocab_size=100, **sizes, **ffn, **_IDS, **config)


def _decoder(prefix: str, config_cls: str | None = None, **config: object) -> Callable[[], nn.Module]:
    """A Llama-like causal LM (``<prefix>ForCausalLM``) with one layer of width 16."""
    sizes = dict(hidden_size=16, num_key_value_heads=1, vocab_size=100, **_LAYER, **_IDS)
    return _hf(f"{prefix}ForCausalLM", config_cls or f"{prefix}Config", **sizes, **config)


def _timm_vit(**kwargs: object) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        timm = pytest.importorskip("timm")
        return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=1, **kwargs)

    return build


def _torch_transformer() -> nn.Module:
    return nn.Transformer(d_model=16, nhead=2, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=32)


@dataclass
class Family:
    """One tiny model of a family and the role of each of its norms."""

    build: Callable[[], nn.Module]
    roles: dict[str, str]


def _llama_like() -> dict[str, str]:
    return {
        "model.layers.0.input_layernorm": "attention",
        "model.layers.0.post_attention_layernorm": "output",  # normalises the MLP input
        "model.norm": "final",
    }


def _clip_tower(tower: str) -> dict[str, str]:
    return {
        f"{tower}.encoder.layers.0.layer_norm1": "attention",
        f"{tower}.encoder.layers.0.layer_norm2": "output",
    }


def _bart_like(embedding_norms: bool) -> dict[str, str]:
    roles = {
        "model.encoder.layers.0.self_attn_layer_norm": "attention",
        "model.encoder.layers.0.final_layer_norm": "output",
        "model.decoder.layers.0.self_attn_layer_norm": "attention",
        "model.decoder.layers.0.encoder_attn_layer_norm": "attention",  # cross-attention, like T5's layer.1
        "model.decoder.layers.0.final_layer_norm": "output",  # inside a block: the feed-forward's norm
    }
    if embedding_norms:  # BART
        roles |= {"model.encoder.layernorm_embedding": "embedding", "model.decoder.layernorm_embedding": "embedding"}
    else:  # Whisper: a final norm after each stack instead
        roles |= {"model.encoder.layer_norm": "final", "model.decoder.layer_norm": "final"}
    return roles


def _gemma_sandwich(qk: bool) -> dict[str, str]:
    roles = {
        "model.layers.0.input_layernorm": "attention",
        "model.layers.0.post_attention_layernorm": "attention",  # on the attention output (Llama: the MLP input)
        "model.layers.0.pre_feedforward_layernorm": "output",
        "model.layers.0.post_feedforward_layernorm": "output",
        "model.norm": "final",
    }
    if qk:
        roles |= {"model.layers.0.self_attn.q_norm": "qk", "model.layers.0.self_attn.k_norm": "qk"}
    return roles


FAMILIES: dict[str, Family] = {
    # ---- roles that were right before issue 10 (kept unchanged)
    "bert": Family(
        _hf("BertModel", "BertConfig", hidden_size=16, vocab_size=100, **_LAYER),
        {
            "embeddings.LayerNorm": "embedding",
            "encoder.layer.0.attention.output.LayerNorm": "attention",
            "encoder.layer.0.output.LayerNorm": "output",
        },
    ),
    "roberta": Family(
        _hf("RobertaModel", "RobertaConfig", hidden_size=16, vocab_size=100, max_position_embeddings=40, **_LAYER),
        {
            "embeddings.LayerNorm": "embedding",
            "encoder.layer.0.attention.output.LayerNorm": "attention",
            "encoder.layer.0.output.LayerNorm": "output",
        },
    ),
    "gpt2": Family(
        _hf(
            "GPT2LMHeadModel",
            "GPT2Config",
            n_embd=16,
            n_layer=1,
            n_head=2,
            vocab_size=100,
            bos_token_id=1,
            eos_token_id=2,
        ),
        {"transformer.h.0.ln_1": "attention", "transformer.h.0.ln_2": "output", "transformer.ln_f": "final"},
    ),
    "llama": Family(_decoder("Llama"), _llama_like()),
    "gemma": Family(_decoder("Gemma", head_dim=8), _llama_like()),  # Gemma 1: no sandwich norms
    "t5": Family(
        _hf("T5Model", "T5Config", d_model=16, num_layers=1, num_heads=2, d_ff=37, d_kv=8, vocab_size=100),
        {
            "encoder.block.0.layer.0.layer_norm": "attention",
            "encoder.block.0.layer.1.layer_norm": "output",
            "encoder.final_layer_norm": "final",
            "decoder.block.0.layer.0.layer_norm": "attention",
            "decoder.block.0.layer.1.layer_norm": "attention",
            "decoder.block.0.layer.2.layer_norm": "output",
            "decoder.final_layer_norm": "final",
        },
    ),
    "vit": Family(
        _hf("ViTModel", "ViTConfig", hidden_size=16, image_size=32, patch_size=8, **_LAYER),
        {"layers.0.layernorm_before": "attention", "layers.0.layernorm_after": "output", "layernorm": "final"},
    ),
    "timm_vit": Family(_timm_vit(), {"blocks.0.norm1": "attention", "blocks.0.norm2": "output", "norm": "final"}),
    # ---- families added by issue 10
    "timm_vit_clip_style": Family(  # pre-norm on the embeddings and a pooled fc_norm instead of `norm`
        _timm_vit(pre_norm=True, global_pool="avg"),
        {"norm_pre": "embedding", "blocks.0.norm1": "attention", "blocks.0.norm2": "output", "fc_norm": "final"},
    ),
    "clip": Family(
        _clip_like("CLIP"),
        _clip_tower("text_model")
        | _clip_tower("vision_model")
        | {
            "text_model.final_layer_norm": "final",
            "vision_model.pre_layrnorm": "embedding",  # normalises patch + position embeddings, before block 0
            "vision_model.post_layernorm": "final",
        },
    ),
    "siglip": Family(
        _clip_like("Siglip"),
        _clip_tower("text_model")
        | _clip_tower("vision_model")
        | {
            "text_model.final_layer_norm": "final",
            "vision_model.post_layernorm": "final",
            "vision_model.head.layernorm": "final",  # the attention-pooling head's norm, after the trunk
        },
    ),
    "distilbert": Family(
        _hf("DistilBertModel", "DistilBertConfig", dim=16, n_layers=1, n_heads=2, hidden_dim=37, vocab_size=100),
        {
            "embeddings.LayerNorm": "embedding",
            "transformer.layer.0.sa_layer_norm": "attention",
            "transformer.layer.0.output_layer_norm": "output",
        },
    ),
    "falcon_new_decoder": Family(  # Falcon-40B/180B: separate norms for the parallel attention and MLP
        _hf(
            "FalconForCausalLM",
            "FalconConfig",
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_kv_heads=2,
            new_decoder_architecture=True,
            vocab_size=100,
            **_IDS,
        ),
        {"transformer.h.0.ln_attn": "attention", "transformer.h.0.ln_mlp": "output", "transformer.ln_f": "final"},
    ),
    "falcon_parallel": Family(  # Falcon-7B: one norm feeds both the attention and the MLP; it keeps its name's role
        _hf(
            "FalconForCausalLM",
            "FalconConfig",
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            parallel_attn=True,
            vocab_size=100,
            **_IDS,
        ),
        {"transformer.h.0.input_layernorm": "attention", "transformer.ln_f": "final"},
    ),
    "falcon_sequential": Family(
        _hf(
            "FalconForCausalLM",
            "FalconConfig",
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            parallel_attn=False,
            vocab_size=100,
            **_IDS,
        ),
        {
            "transformer.h.0.input_layernorm": "attention",
            "transformer.h.0.post_attention_layernorm": "output",
            "transformer.ln_f": "final",
        },
    ),
    "mpt": Family(
        _hf("MptForCausalLM", "MptConfig", d_model=16, n_layers=1, n_heads=2, vocab_size=100),
        {
            "transformer.blocks.0.norm_1": "attention",
            "transformer.blocks.0.norm_2": "output",
            "transformer.norm_f": "final",
        },
    ),
    "bart": Family(_seq2seq("BartForConditionalGeneration", "BartConfig"), _bart_like(embedding_norms=True)),
    "whisper": Family(
        _seq2seq(
            "WhisperForConditionalGeneration",
            "WhisperConfig",
            num_mel_bins=8,
            max_source_positions=8,
            max_target_positions=16,
        ),
        _bart_like(embedding_norms=False),
    ),
    "bloom": Family(
        _hf("BloomForCausalLM", "BloomConfig", hidden_size=16, n_layer=1, n_head=2, vocab_size=100, **_IDS),
        {
            "transformer.word_embeddings_layernorm": "embedding",
            "transformer.h.0.input_layernorm": "attention",
            "transformer.h.0.post_attention_layernorm": "output",
            "transformer.ln_f": "final",
        },
    ),
    "gemma2": Family(_decoder("Gemma2", head_dim=8), _gemma_sandwich(qk=False)),
    "gemma3": Family(_decoder("Gemma3", "Gemma3TextConfig", head_dim=8), _gemma_sandwich(qk=True)),
    "qwen2": Family(_decoder("Qwen2"), _llama_like()),
    "mistral": Family(_decoder("Mistral"), _llama_like()),
    "olmo2": Family(  # post-norms only: post_attention_layernorm is the attention's, as in Gemma 2
        _decoder("Olmo2"),
        {
            "model.layers.0.self_attn.q_norm": "qk",
            "model.layers.0.self_attn.k_norm": "qk",
            "model.layers.0.post_attention_layernorm": "attention",
            "model.layers.0.post_feedforward_layernorm": "output",
            "model.norm": "final",
        },
    ),
    "glm4": Family(  # sandwich norms under other names: here post_attention_layernorm is the MLP input's, as in Llama
        _decoder("Glm4"),
        {
            "model.layers.0.input_layernorm": "attention",
            "model.layers.0.post_self_attn_layernorm": "attention",
            "model.layers.0.post_attention_layernorm": "output",
            "model.layers.0.post_mlp_layernorm": "output",
            "model.norm": "final",
        },
    ),
    "torch_transformer": Family(  # nn.TransformerDecoderLayer: norm1 self-attention, norm2 cross-attention, norm3 FFN
        _torch_transformer,
        {
            "encoder.layers.0.norm1": "attention",
            "encoder.layers.0.norm2": "output",
            "encoder.norm": "final",
            "decoder.layers.0.norm1": "attention",
            "decoder.layers.0.norm2": "attention",
            "decoder.layers.0.norm3": "output",
            "decoder.norm": "final",
        },
    ),
}


def _build(family: str) -> nn.Module:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return FAMILIES[family].build().eval()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_role_of_every_norm(family: str) -> None:
    model = _build(family)
    assert {info.name: info.role for info in find_norms(model)} == FAMILIES[family].roles


@pytest.mark.parametrize("preset", ["output", "attention"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_preset_picks_the_role_table(family: str, preset: str) -> None:
    """`preset=` adapts exactly the norms of its roles, and the wrapped model still reports the same roles."""
    expected = sorted(name for name, role in FAMILIES[family].roles.items() if role == preset)
    model = _build(family)
    if not expected:
        with pytest.raises(ValueError, match="matched no normalization layer"):
            get_peft_model(model, LNTuneConfig(preset=preset))
        return
    peft_model = get_peft_model(model, LNTuneConfig(preset=preset))
    adapted = sorted(n.removeprefix(_PEFT_PREFIX) for n, m in peft_model.named_modules() if isinstance(m, LNTuneLayer))
    assert adapted == expected
    wrapped_roles = {info.name.removeprefix(_PEFT_PREFIX): info.role for info in find_norms(peft_model)}
    assert wrapped_roles == FAMILIES[family].roles


def test_falcon_parallel_has_no_output_norm() -> None:
    """Falcon-7B's single norm feeds attention and MLP alike: `preset="output"` says so instead of picking it."""
    model = _build("falcon_parallel")
    with pytest.raises(ValueError, match=r"matched no normalization layer.*input_layernorm.*role=attention"):
        get_peft_model(model, LNTuneConfig(preset="output"))


# ---- the name rules themselves: every pattern has a name that hits it first, with the expected role

# (module name, role from the name alone)
NAME_EXAMPLES: list[tuple[str, str]] = [
    ("model.layers.0.self_attn.q_norm", "qk"),
    ("blocks.3.attn.k_norm", "qk"),
    ("bert.embeddings.LayerNorm", "embedding"),
    ("patch_embed.norm", "embedding"),
    ("model.encoder.layernorm_embedding", "embedding"),
    ("transformer.word_embeddings_layernorm", "embedding"),
    ("vision_model.pre_layrnorm", "embedding"),
    ("norm_pre", "embedding"),
    ("decoder.block.0.layer.1.layer_norm", "attention"),
    ("encoder.block.2.layer.0.layer_norm", "attention"),
    ("encoder.block.2.layer.1.layer_norm", "output"),
    ("decoder.block.0.layer.2.layer_norm", "output"),
    ("encoder.layer.0.attention.output.LayerNorm", "attention"),
    ("blocks.0.attn.norm", "attention"),
    ("transformer.h.0.ln_1", "attention"),
    ("blocks.0.norm1", "attention"),
    ("vit.encoder.layer.0.layernorm_before", "attention"),
    ("model.layers.0.input_layernorm", "attention"),
    ("model.encoder.layers.0.self_attn_layer_norm", "attention"),
    ("layers.0.attn_norm", "attention"),
    ("vision_model.encoder.layers.0.layer_norm1", "attention"),
    ("transformer.blocks.0.norm_1", "attention"),
    ("transformer.h.0.ln_attn", "attention"),
    ("transformer.layer.0.sa_layer_norm", "attention"),
    ("model.decoder.layers.0.encoder_attn_layer_norm", "attention"),
    ("model.layers.0.post_self_attn_layernorm", "attention"),
    ("decoder.layers.0.pre_cross_attn_layernorm", "attention"),
    ("encoder.layer.0.output.LayerNorm", "output"),
    ("blocks.0.mlp.norm", "output"),
    ("transformer.h.0.ln_2", "output"),
    ("blocks.0.norm2", "output"),
    ("vit.encoder.layer.0.layernorm_after", "output"),
    ("model.layers.0.post_attention_layernorm", "output"),  # Llama's meaning; Gemma 2/3 need the model
    ("model.layers.0.pre_feedforward_layernorm", "output"),
    ("layers.0.ffn_norm", "output"),
    ("model.encoder.layers.0.final_layer_norm", "output"),
    ("vision_model.encoder.layers.0.layer_norm2", "output"),
    ("transformer.blocks.0.norm_2", "output"),
    ("transformer.h.0.ln_mlp", "output"),
    ("transformer.layer.0.output_layer_norm", "output"),
    ("model.layers.0.post_mlp_layernorm", "output"),
    # final: a final-norm name outside any numbered block
    ("transformer.ln_f", "final"),
    ("model.norm", "final"),
    ("transformer.norm_f", "final"),
    ("vit.layernorm", "final"),
    ("encoder.final_layer_norm", "final"),
    ("vision_model.post_layernorm", "final"),
    ("fc_norm", "final"),
    ("model.encoder.layer_norm", "final"),
    # other: nothing says what it is
    ("blocks.0.norm", "other"),
    ("model.layers.0.layer_norm", "other"),
    ("transformer.h.0.mystery_norm", "other"),
]


def _first_rule(name: str) -> int | None:
    return next((i for i, (_, pattern) in enumerate(_ROLE_RULES) if pattern.search(name)), None)


@pytest.mark.parametrize("name,role", NAME_EXAMPLES, ids=[n for n, _ in NAME_EXAMPLES])
def test_role_from_name(name: str, role: str) -> None:
    assert norm_role(name) == role


def test_every_role_rule_is_hit_first_by_an_example() -> None:
    """No dead pattern: each row of `_ROLE_RULES` (so every role behind every preset) decides some example."""
    decided = {_first_rule(name) for name, _ in NAME_EXAMPLES}
    dead = [f"{role}: {pattern.pattern}" for i, (role, pattern) in enumerate(_ROLE_RULES) if i not in decided]
    assert not dead, dead
    for name, role in NAME_EXAMPLES:
        rule = _first_rule(name)
        if rule is not None:
            assert _ROLE_RULES[rule][0] == role, name


def test_role_rules_cover_every_preset_role() -> None:
    from lntune import PRESETS

    covered = {role for role, _ in _ROLE_RULES} | {"final", "other"}
    for preset, roles in PRESETS.items():
        assert set(roles) <= covered, preset
    assert covered == set(ROLES)
    assert _FINAL_NAMES.search("transformer.norm_f") and not _FINAL_NAMES.search("vision_model.pre_layrnorm")


# ---- the block rules: the same norm name, a different role depending on its siblings


class _Block(nn.Module):
    def __init__(self, *names: str) -> None:
        super().__init__()
        for name in names:
            self.add_module(name, nn.LayerNorm(4) if "norm" in name else nn.Linear(4, 4))


class _Stack(nn.Module):
    def __init__(self, *names: str) -> None:
        super().__init__()
        self.layers = nn.ModuleList([_Block(*names)])


# (role, sibling names of the block, norm looked up), one row per block rule at least
BLOCK_EXAMPLES: list[tuple[str, tuple[str, ...], str]] = [
    (
        "attention",
        ("self_attn", "mlp", "post_attention_layernorm", "post_feedforward_layernorm"),
        "post_attention_layernorm",
    ),
    ("attention", ("post_attention_layernorm", "pre_feedforward_layernorm"), "post_attention_layernorm"),
    ("output", ("self_attn", "mlp", "input_layernorm", "post_attention_layernorm"), "post_attention_layernorm"),
    ("attention", ("self_attn", "multihead_attn", "norm1", "norm2", "norm3"), "norm2"),
    ("output", ("self_attn", "multihead_attn", "norm1", "norm2", "norm3"), "norm3"),
    (
        "attention",
        ("self_attn", "layer_norm1", "cross_attn_token_to_image", "layer_norm2", "layer_norm3"),
        "layer_norm2",
    ),
    ("output", ("self_attn", "layer_norm1", "cross_attn_token_to_image", "layer_norm2", "layer_norm3"), "layer_norm3"),
    ("output", ("self_attn", "norm1", "norm2", "mlp"), "norm2"),  # no cross-attention: the name's role
]


@pytest.mark.parametrize("role,siblings,norm", BLOCK_EXAMPLES)
def test_role_from_block(role: str, siblings: tuple[str, ...], norm: str) -> None:
    model = _Stack(*siblings)
    name = f"layers.0.{norm}"
    assert norm_role(name, model) == role
    assert {info.name: info.role for info in find_norms(model)}[name] == role


def test_every_block_rule_is_hit() -> None:
    hit = set()
    for _, siblings, norm in BLOCK_EXAMPLES:
        for i, (_, leaf, sibling) in enumerate(_BLOCK_RULES):
            if leaf.fullmatch(norm) and any(sibling.fullmatch(s) for s in siblings if s != norm):
                hit.add(i)
                break
    assert hit == set(range(len(_BLOCK_RULES)))


def test_name_only_callers_keep_working() -> None:
    """Without the model, Gemma 2's post_attention_layernorm reads as Llama's (what the name alone can say)."""
    model = _build("gemma2")
    name = "model.layers.0.post_attention_layernorm"
    assert norm_role(name) == "output"
    assert norm_role(name, model) == "attention"
    assert norm_role("not.a.module.norm2", model) == "output"  # a name the model lacks falls back to the name
