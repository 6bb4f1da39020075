# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Which modules are normalization layers, and what role each one plays in its block.

Norms are found by type, never by name: ``torch.nn.LayerNorm`` / ``GroupNorm`` / ``RMSNorm`` and their subclasses
(timm's ``LayerNorm``, ``LayerNorm2d``, ...), plus the many norm classes that transformers and timm write as plain
``nn.Module`` subclasses (``LlamaRMSNorm``, ``GemmaRMSNorm``, ``T5LayerNorm``, timm ``RmsNorm`` ...). Those are
recognised structurally: a leaf module whose class name ends in ``Norm`` and whose only parameters are a 1-D
``weight`` and an optional 1-D ``bias`` of the same length. Names are used only for the *role* of a norm
(attention-side, output/feed-forward-side, ...), which is what the LayerNorm-tuning papers compare: the norm's own
name (:data:`_ROLE_RULES`) and, where that is ambiguous, the names of its siblings in the block (:data:`_BLOCK_RULES`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

# Torch classes accepted as norms (and their subclasses). BatchNorm is deliberately absent: its running statistics
# make "tune only the affine parameters" a different method.
_TORCH_NORM_TYPES: tuple[type[nn.Module], ...] = (nn.LayerNorm, nn.GroupNorm) + (
    (nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()
)
_NORM_NAME = re.compile(r"(norm|layernorm|rmsnorm)$", re.IGNORECASE)
_EXCLUDED_NAME = re.compile(r"batchnorm|instancenorm|weightnorm|spectralnorm", re.IGNORECASE)

ROLES = ("embedding", "attention", "output", "final", "qk", "other")

# Role of a norm from its (fully qualified) module name; first match wins. "attention" is the norm that belongs to the
# attention sub-layer (BERT's attention.output.LayerNorm, pre-LN ln_1/norm1/input_layernorm), "output" the one that
# belongs to the feed-forward sub-layer (BERT's output.LayerNorm, pre-LN ln_2/norm2/post_attention_layernorm in Llama).
# A norm shared by a parallel attention + MLP block (Falcon-7B's, GPT-J's single norm) keeps its name's role.
_ROLE_RULES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (role, re.compile(pattern))
    for role, pattern in (
        # query/key norms inside attention: Qwen3, Gemma 3, OLMo 2, timm q_norm/k_norm
        ("qk", r"(^|\.)(q_norm|k_norm|query_norm|key_norm|q_layernorm|k_layernorm)$"),
        # norms of the token/patch embeddings, by path: BERT embeddings.LayerNorm, wte, timm patch_embed.norm
        ("embedding", r"(^|\.)(embeddings?|embed\w*|emb_ln|wte|patch_embed)(\.|$)"),
        # ... and by name: BART/mBART layernorm_embedding, BLOOM word_embeddings_layernorm, CLIP's pre_layrnorm and
        # timm's norm_pre / open_clip's ln_pre (applied to the embeddings, before the first block)
        ("embedding", r"(^|\.)(layernorm_embedding|word_embeddings_layernorm|pre_layrnorm|norm_pre|ln_pre)$"),
        ("attention", r"decoder\.block\.\d+\.layer\.1\.layer_norm$"),  # T5 decoder cross-attention
        ("attention", r"(^|\.)block\.\d+\.layer\.0\.layer_norm$"),  # T5 self-attention
        ("output", r"(^|\.)block\.\d+\.layer\.[12]\.layer_norm$"),  # T5 feed-forward
        # attention, by path: BERT attention.output.LayerNorm, any norm under an attention module
        ("attention", r"attention\.output\.LayerNorm$|(^|\.)(attention|attn|self_attn)[\w.]*norm\w*$"),
        # attention, by name: GPT-2, timm, ViT, Llama/Mistral/Qwen2/BLOOM/Falcon, BART/Whisper self-attention
        ("attention", r"(^|\.)(ln_1|norm1|layernorm_before|input_layernorm|self_attn_layer_norm|attn_norm)$"),
        # CLIP/SigLIP layer_norm1, MPT/DBRX norm_1, Falcon (new decoder architecture) ln_attn, DistilBERT sa_layer_norm
        ("attention", r"(^|\.)(layer_norm1|norm_1|ln_attn|sa_layer_norm)$"),
        # cross-attention and sandwich norms: BART/Whisper/Marian encoder_attn_layer_norm, T5Gemma, GLM-4
        ("attention", r"(^|\.)(encoder_attn_layer_norm|(pre|post)_(self|cross)_attn_layernorm)$"),
        # feed-forward, by path: BERT output.LayerNorm, any norm under an MLP module
        ("output", r"(^|\.)output\.LayerNorm$|(^|\.)(mlp|ffn|feed_forward)[\w.]*norm\w*$"),
        # feed-forward, by name: GPT-2, timm, ViT, Llama (post_attention_layernorm: see _BLOCK_RULES for Gemma 2/3),
        # Gemma 2/3 sandwich norms, Mistral-style ffn_norm, BART/Whisper final_layer_norm inside a block
        (
            "output",
            r"(^|\.)(ln_2|norm2|layernorm_after|post_attention_layernorm|pre_feedforward_layernorm|"
            r"post_feedforward_layernorm|ffn_norm|ffn_layer_norm)$|\.\d+\.([\w.]+\.)?final_layer_norm$",
        ),
        # CLIP/SigLIP layer_norm2, MPT/DBRX norm_2, Falcon ln_mlp, DistilBERT output_layer_norm, GLM-4 post_mlp_layernorm
        ("output", r"(^|\.)(layer_norm2|norm_2|ln_mlp|output_layer_norm|post_mlp_layernorm)$"),
    )
)

# Where the name alone is ambiguous, the block says it: (role, norm name, pattern one of its siblings must match).
# Checked before _ROLE_RULES when the model is known (find_norms, norm_role(name, model)).
_BLOCK_RULES: tuple[tuple[str, re.Pattern[str], re.Pattern[str]], ...] = tuple(
    (role, re.compile(leaf), re.compile(sibling))
    for role, leaf, sibling in (
        # Gemma 2/3, OLMo 2, EXAONE 4, T5Gemma, VaultGemma: a block with feed-forward norms of its own ("sandwich"
        # norms) applies post_attention_layernorm to the attention output; in Llama it normalises the MLP input.
        ("attention", r"post_attention_layernorm", r"(pre|post)_feedforward_layernorm"),
        # torch nn.TransformerDecoderLayer, OneFormer, OmDet-Turbo, SAM: a block with a cross-attention child numbers
        # its norms self-attention, cross-attention, feed-forward.
        ("attention", r"(layer_)?norm_?2", r"multihead_attn|cross_attn\w*|encoder_attn"),
        ("output", r"(layer_)?norm_?3", r"multihead_attn|cross_attn\w*|encoder_attn"),
    )
)
_FINAL_NAMES = re.compile(
    r"(^|\.)(ln_f|norm|norm_f|layernorm|final_layer_norm|final_layernorm|final_norm|ln_final|ln_post|fc_norm|"
    r"post_layernorm|LayerNorm|layer_norm)$"
)
_BLOCK_INDEX = re.compile(r"\.\d+\.")


def _is_structural_norm(module: nn.Module) -> bool:
    cls_name = type(module).__name__
    if not _NORM_NAME.search(cls_name) or _EXCLUDED_NAME.search(cls_name):
        return False
    if any(True for _ in module.children()):
        return False
    params = dict(module.named_parameters(recurse=False))
    weight = params.get("weight")
    if weight is None or weight.dim() != 1 or set(params) - {"weight", "bias"}:
        return False
    bias = params.get("bias")
    return bias is None or bias.shape == weight.shape


def is_norm(module: nn.Module) -> bool:
    """True if ``module`` is a normalization layer with a trainable 1-D gain (and optional bias) lntune can tune."""
    if isinstance(module, _TORCH_NORM_TYPES):
        return getattr(module, "weight", None) is not None or getattr(module, "bias", None) is not None
    return _is_structural_norm(module)


def _block_role(name: str, model: nn.Module) -> str | None:
    """Role of the norm ``name`` from its siblings in ``model`` (see :data:`_BLOCK_RULES`), or None."""
    parent_name, _, leaf = name.rpartition(".")
    try:
        parent = model.get_submodule(parent_name)
    except AttributeError:
        return None
    siblings = [child for child, _ in parent.named_children() if child != leaf]
    for role, leaf_pattern, sibling_pattern in _BLOCK_RULES:
        if leaf_pattern.fullmatch(leaf) and any(sibling_pattern.fullmatch(s) for s in siblings):
            return role
    return None


def norm_role(name: str, model: nn.Module | None = None) -> str:
    """Role of the norm called ``name`` in its block: one of :data:`ROLES`.

    From the name alone by default. With ``model`` (what :func:`find_norms` passes), names that mean different things
    in different blocks are resolved from the norm's siblings first: Gemma 2/3's ``post_attention_layernorm`` is the
    attention output's norm, Llama's the MLP input's.
    """
    if model is not None:
        role = _block_role(name, model)
        if role is not None:
            return role
    for role, pattern in _ROLE_RULES:
        if pattern.search(name):
            return role
    # A norm outside any numbered block (``ln_f``, ``vit.layernorm``, ``model.norm``) is the final norm.
    if _FINAL_NAMES.search(name) and not _BLOCK_INDEX.search("." + name + "."):
        return "final"
    return "other"


@dataclass(frozen=True)
class NormInfo:
    """One normalization layer of a model: where it is, what it is and what it holds."""

    name: str
    module: nn.Module  # the norm itself (for a wrapped norm: the wrapped base module)
    role: str
    outer: nn.Module | None = None  # the module the model actually calls: an lntune wrapper, or the norm itself

    @property
    def called(self) -> nn.Module:
        """Hook this one to see the norm's real input and output (a wrapper's forward bypasses the base module's)."""
        return self.outer if self.outer is not None else self.module

    @property
    def type_name(self) -> str:
        return type(self.module).__name__

    @property
    def shapes(self) -> dict[str, list[int]]:
        out = {}
        for pname in ("weight", "bias"):
            p = getattr(self.module, pname, None)
            if isinstance(p, nn.Parameter):
                out[pname] = list(p.shape)
        return out


def find_norms(model: nn.Module) -> list[NormInfo]:
    """All tunable normalization layers of ``model`` in module order (wrapped lntune layers are unwrapped)."""
    found = []
    for name, module in model.named_modules():
        # lntune's own wrapper exposes the wrapped norm as ``base_layer``: report it under the wrapper's name.
        if name.endswith(".base_layer") or name == "base_layer":
            continue
        base = module.get_base_layer() if hasattr(module, "get_base_layer") else module
        if is_norm(base):
            found.append(NormInfo(name=name, module=base, role=norm_role(name, model), outer=module))
    return found


def norm_type_summary(model: nn.Module) -> str:
    """Human-readable ``{type: count}`` of the norm layers in ``model`` (for error messages)."""
    counts: dict[str, int] = {}
    for info in find_norms(model):
        counts[info.type_name] = counts.get(info.type_name, 0) + 1
    if not counts:
        return "no normalization layers"
    return ", ".join(f"{k} x{v}" for k, v in sorted(counts.items()))
