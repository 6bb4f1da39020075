# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Per-sample Fisher stays exact (== the batch-size-1 reference) where shapes are ambiguous or batches are not plain:
channels-first norms whose channel count equals a spatial size, left padding, seq2seq batches, flattened rows, and
names of scored ``PeftModel``s (issues 10 and 11)."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch
import transformers
from torch import nn

from lntune import LNTuneConfig
from lntune.fisher import fisher_scores, fisher_scores_reference, select_by_fisher

from .helpers import assert_scores_close, tiny_bert, token_batches

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers.logging.set_verbosity_error()
pytestmark = pytest.mark.filterwarnings("ignore:fisher_scores. num_samples=1024:UserWarning")


def _randomize_norms(model: nn.Module, std: float = 0.5) -> None:
    """Move norm gains/biases off their init (1, 0) so a wrong channel axis cannot hide behind equal entries."""
    from lntune.norms import find_norms

    with torch.no_grad():
        for info in find_norms(model):
            for pname in ("weight", "bias"):
                p = getattr(info.module, pname, None)
                if isinstance(p, nn.Parameter):
                    p.add_(torch.randn_like(p) * std)


# ----------------------------------------------------------------------------------------------------------------------
# 1. The channel axis comes from the norm's definition, not from its output's sizes.


class _TimmImages(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values)


def _hf_convnext() -> nn.Module:
    # stem: 3 -> 8 channels at stride 4, 32 px -> 8 x 8: channels == height == width at every stage-0 norm
    cfg = transformers.ConvNextConfig(
        num_channels=3, patch_size=4, num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], image_size=32, num_labels=3
    )
    return transformers.ConvNextForImageClassification(cfg)


def _timm_convnext() -> nn.Module:
    import timm

    model = timm.create_model(
        "convnext_atto", pretrained=False, dims=(8, 16, 16, 16), depths=(1, 1, 1, 1), num_classes=3
    )
    return _TimmImages(model)


@pytest.mark.parametrize("builder", ["hf", "timm"])
def test_convnext_channels_equal_to_spatial_width_matches_reference(builder: str) -> None:
    if builder == "timm" and importlib.util.find_spec("timm") is None:
        pytest.skip("timm not installed")
    torch.manual_seed(0)
    model = (_hf_convnext if builder == "hf" else _timm_convnext)().eval()
    _randomize_norms(model)
    channels_first = [
        m
        for m in model.modules()
        if getattr(m, "data_format", None) == "channels_first" or type(m).__name__ == "LayerNorm2d"
    ]
    assert channels_first  # the case under test: a channels-first norm on an 8-channel, 8 x 8 map
    gen = torch.Generator().manual_seed(0)
    batches = [
        {"pixel_values": torch.randn(n, 3, 32, 32, generator=gen), "labels": torch.randint(0, 3, (n,), generator=gen)}
        for n in (3, 2)
    ]
    got = fisher_scores(model, batches, progress=False)
    assert got.task == "image_classification"
    assert_scores_close(got, fisher_scores_reference(model, batches))


def test_channel_dim_is_read_from_the_definition() -> None:
    from transformers.models.convnext.modeling_convnext import ConvNextLayerNorm

    from lntune.fisher.per_sample import norm_channel_dim

    assert norm_channel_dim(ConvNextLayerNorm(8, data_format="channels_first"), 4) == 1
    assert norm_channel_dim(ConvNextLayerNorm(8, data_format="channels_last"), 4) == 3
    assert norm_channel_dim(nn.GroupNorm(2, 8), 4) == 1
    assert norm_channel_dim(nn.LayerNorm(8), 4) == 3
    if importlib.util.find_spec("timm") is not None:
        from timm.layers import LayerNorm, LayerNorm2d

        assert norm_channel_dim(LayerNorm2d(8), 4) == 1
        assert norm_channel_dim(LayerNorm(8), 4) == 3


# ----------------------------------------------------------------------------------------------------------------------
# 2. Causal LM: left and right padding give the same scores (empirical and true).


def _left_pad(batches: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    """The same samples, each row's real tokens moved to the end."""
    out = []
    for batch in batches:
        mask = batch["attention_mask"]
        new = {k: torch.zeros_like(v) for k, v in batch.items()}
        if "labels" in new:
            new["labels"].fill_(-100)
        for i in range(mask.shape[0]):
            n = int(mask[i].sum())
            for k, v in batch.items():
                new[k][i, mask.shape[1] - n :] = v[i, :n]
        out.append(new)
    return out


def _llama() -> nn.Module:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    return transformers.LlamaForCausalLM(cfg)


def _gpt2() -> nn.Module:  # learned absolute positions: left padding must not shift them
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(
        transformers.GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=2, n_positions=32)
    )


@pytest.mark.parametrize("builder", [_llama, _gpt2], ids=["llama", "gpt2"])
@pytest.mark.parametrize("kind", ["empirical", "true"])
def test_causal_lm_left_and_right_padding_give_the_same_scores(builder, kind: str) -> None:
    model = builder().eval()
    _randomize_norms(model, 0.2)
    right = token_batches(50, [3, 4], 9, seed=1, labels="none")
    for batch in right:  # explicit labels with padding and one ignored real token
        batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        batch["labels"][:, 2] = -100
    left = _left_pad(right)
    assert bool((left[0]["attention_mask"][:, 0] == 0).any())
    got_right = fisher_scores(model, right, kind=kind, seed=3, progress=False)
    got_left = fisher_scores(model, left, kind=kind, seed=3, progress=False)
    ref = fisher_scores_reference(model, right, kind=kind, seed=3)
    assert_scores_close(got_right, ref)
    assert_scores_close(got_left, ref)
    assert_scores_close(got_left, got_right)


# ----------------------------------------------------------------------------------------------------------------------
# 3. Standard seq2seq batches (input_ids, attention_mask, labels) on T5 and BART.


def _t5() -> nn.Module:
    torch.manual_seed(0)
    cfg = transformers.T5Config(
        vocab_size=50, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=2, dropout_rate=0.0,
        decoder_start_token_id=0, pad_token_id=0,
    )  # fmt: skip
    return transformers.T5ForConditionalGeneration(cfg)


def _bart() -> nn.Module:
    torch.manual_seed(0)
    cfg = transformers.BartConfig(
        vocab_size=50, d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=32,
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
    )  # fmt: skip
    return transformers.BartForConditionalGeneration(cfg)


def _seq2seq_batches(sizes: list[int], src_len: int, tgt_len: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """Right-padded sources (attention_mask) and targets (labels padded with -100), lengths varying per sample."""
    batches = token_batches(50, sizes, src_len, seed=seed, labels="none")
    gen = torch.Generator().manual_seed(seed + 100)
    for batch in batches:
        n = batch["input_ids"].shape[0]
        lengths = torch.randint(1, tgt_len + 1, (n,), generator=gen)
        lengths[-1] = tgt_len
        labels = torch.randint(3, 50, (n, tgt_len), generator=gen)
        labels[torch.arange(tgt_len)[None] >= lengths[:, None]] = -100
        batch["labels"] = labels
    return batches


@pytest.mark.parametrize("builder", [_t5, _bart], ids=["t5", "bart"])
@pytest.mark.parametrize("kind", ["empirical", "true"])
def test_seq2seq_batch_matches_reference(builder, kind: str) -> None:
    model = builder().eval()
    _randomize_norms(model, 0.2)
    # source and target lengths equal in one case: the encoder mask must not be applied to decoder norms
    batches = _seq2seq_batches([3, 2], 7, 5, seed=4) + _seq2seq_batches([2], 6, 6, seed=5)
    got = fisher_scores(model, batches, kind=kind, progress=False)
    assert got.task == "seq2seq_lm" and got.num_samples == 7
    ref = fisher_scores_reference(model, batches, kind=kind)
    assert_scores_close(got, ref)
    encoder = [n for n in got if ".encoder." in n or n.startswith("encoder.")]
    decoder = [n for n in got if ".decoder." in n or n.startswith("decoder.")]
    assert encoder and decoder and all(float(got[n]["weight"].max()) > 0 for n in encoder + decoder)


def test_seq2seq_without_decoder_start_token_says_what_to_set() -> None:
    torch.manual_seed(0)
    cfg = transformers.T5Config(vocab_size=50, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2)
    model = transformers.T5ForConditionalGeneration(cfg)
    with pytest.raises(ValueError, match="decoder_start_token_id"):
        fisher_scores(model, _seq2seq_batches([2], 5, 4, seed=6), progress=False)


# ----------------------------------------------------------------------------------------------------------------------
# 4. Scores of a PeftModel carry base-model names.


def test_peft_model_scores_have_base_names_and_select_into_a_mask() -> None:
    from peft import get_peft_model

    batches = token_batches(40, [4, 3], 8, seed=6)
    plain = fisher_scores(tiny_bert(), batches, progress=False)
    peft_model = get_peft_model(tiny_bert(), LNTuneConfig(task_type="SEQ_CLS"))
    scores = fisher_scores(peft_model, batches, progress=False)
    assert list(scores) == list(plain) and list(scores.roles) == list(plain.roles)
    assert not any(name.startswith("base_model.") for name in scores)
    mask = select_by_fisher(scores, count=10)
    fresh = get_peft_model(tiny_bert(), LNTuneConfig(task_type="SEQ_CLS", mask=mask))  # a fresh base accepts it
    assert sum(p.numel() for n, p in fresh.named_parameters() if ".lntune_" in n) == 10
    peft_model.set_mask(mask)  # and so does the scored model itself
    assert sum(p.numel() for n, p in peft_model.named_parameters() if ".lntune_" in n) == 10
    assert peft_model.peft_config["default"].mask == fresh.peft_config["default"].mask


# ----------------------------------------------------------------------------------------------------------------------
# 5. Norms that see flattened (batch * tokens, hidden) rows.


class _FlatNormLM(nn.Module):
    """Embeds tokens, runs a LayerNorm on the flattened [batch * tokens, hidden] rows, mean-pools the real tokens."""

    def __init__(self, vocab: int = 40, hidden: int = 8, num_labels: int = 3, split: int = 1) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.split = split  # > 1: rows of hidden / split, which no input shape explains
        self.flat_norm = nn.LayerNorm(hidden // split)
        self.norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        batch, tokens = input_ids.shape
        h = self.embed(input_ids)
        h = self.flat_norm(h.reshape(batch * tokens * self.split, -1)).reshape(batch, tokens, -1)
        h = self.norm(h + torch.tanh(self.proj(h)))
        m = attention_mask.unsqueeze(-1).to(h)
        return {"logits": self.head((h * m).sum(1) / m.sum(1))}


def test_norm_on_flattened_rows_matches_reference() -> None:
    torch.manual_seed(0)
    model = _FlatNormLM().eval()
    _randomize_norms(model)
    batches = token_batches(40, [8, 5], 12, seed=7, num_labels=3)  # 8 x 12 = 96 rows at the flattened norm
    for kind in ("empirical", "true"):
        got = fisher_scores(model, batches, kind=kind, progress=False)
        assert float(got["flat_norm"]["weight"].min()) > 0
        assert_scores_close(got, fisher_scores_reference(model, batches, kind=kind))


def test_rows_that_no_input_shape_explains_raise_naming_the_norm() -> None:
    torch.manual_seed(0)
    model = _FlatNormLM(split=2).eval()
    batches = token_batches(40, [8], 12, seed=7, num_labels=3)
    with pytest.raises(ValueError, match="norm 'flat_norm' output has leading dim 192, which is neither"):
        fisher_scores(model, batches, progress=False)
    assert all(not m._forward_hooks for m in model.modules())


# ----------------------------------------------------------------------------------------------------------------------
# 6. Errors.


def test_nan_gradients_raise_naming_the_norm() -> None:
    torch.manual_seed(0)
    model = _FlatNormLM(vocab=41).eval()  # token 40 never occurs in the batches
    batches = token_batches(40, [4, 4], 6, seed=8, num_labels=3)
    with torch.no_grad():
        model.norm.weight[0] = float("nan")  # poisons this norm's output (and so the loss)
    # NaN flows back from `norm` into `flat_norm` too: the first norm in module order is named
    with pytest.raises(FloatingPointError, match=r"batch 0 .*non-finite .* at norm 'norm' \(from the norm itself\)"):
        fisher_scores(model, batches, progress=False)
    with torch.no_grad():
        model.norm.weight[0] = 1.0
        model.embed.weight[40] = float("nan")
    batches[1]["input_ids"][0, 0] = 40
    with pytest.raises(FloatingPointError, match=r"batch 1 .* at norm 'flat_norm' \(from its input\)"):
        fisher_scores(model, batches, progress=False)
    with torch.no_grad():
        model.norm.weight[0] = float("nan")
    with pytest.raises(FloatingPointError, match="scores of 'flat_norm' are not finite"):
        fisher_scores_reference(model, batches)


def test_nan_per_sample_gradient_with_a_finite_loss_names_the_norm() -> None:
    class _Blowup(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            return grad * float("nan")

    class _NaNGrad(_FlatNormLM):
        def forward(self, input_ids, attention_mask):
            h = _Blowup.apply(self.norm(self.embed(input_ids)))
            m = attention_mask.unsqueeze(-1).to(h)
            return {"logits": self.head((h * m).sum(1) / m.sum(1))}

    torch.manual_seed(0)
    model = _NaNGrad().eval()
    batches = token_batches(40, [4], 6, seed=9, num_labels=3)
    with pytest.raises(FloatingPointError, match="batch 0 .*at norm 'norm.weight'"):
        fisher_scores(model, batches, progress=False)


def test_bad_input_and_empty_loaders_raise_clearly() -> None:
    model = tiny_bert()
    with pytest.raises(ValueError, match="no samples"):
        fisher_scores(model, iter([]), progress=False)
    with pytest.raises(ValueError, match="no samples"):
        fisher_scores_reference(model, [])
    with pytest.raises(TypeError, match="cannot read a batch of type str"):
        fisher_scores(model, ["not a batch"], progress=False)
    with pytest.raises(ValueError, match="no input tensor"):
        fisher_scores(model, [{"labels": torch.zeros(2, dtype=torch.long), "note": "x"}], progress=False)


def _pair_batches(sizes: list[int], seed: int) -> list[dict[str, torch.Tensor]]:
    """Right-padded ``[CLS] a [SEP] b [SEP]`` batches with token types, as a tokenizer gives sentence pairs."""
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for size in sizes:
        rows = []
        for _ in range(size):
            a, b = (
                torch.randint(4, 40, (int(torch.randint(1, 6, (1,), generator=gen)),), generator=gen) for _ in "ab"
            )
            ids = torch.cat([torch.tensor([2]), a, torch.tensor([3]), b, torch.tensor([3])])
            rows.append((ids, torch.cat([torch.zeros(len(a) + 2), torch.ones(len(b) + 1)]).long()))
        width = max(len(ids) for ids, _ in rows)
        batch = {
            k: torch.zeros(size, width, dtype=torch.long) for k in ("input_ids", "attention_mask", "token_type_ids")
        }
        for i, (ids, types) in enumerate(rows):
            batch["input_ids"][i, : len(ids)] = ids
            batch["attention_mask"][i, : len(ids)] = 1
            batch["token_type_ids"][i, : len(ids)] = types
        batch["labels"] = torch.randint(0, 2, (size,), generator=gen)
        batches.append(batch)
    return batches


def test_pair_pooled_model_two_encoder_passes_match_reference() -> None:
    """With pair pooling every norm runs twice per forward (once per sentence, at other lengths than the joint pair):
    the per-sample gradients of both passes add up before squaring, and padding gets no gradient."""
    from lntune.pooling import use_pair_pooling

    model = use_pair_pooling(tiny_bert()).eval()
    _randomize_norms(model)
    batches = _pair_batches([6, 4], seed=3)
    for kind in ("empirical", "true"):
        got = fisher_scores(model, batches, kind=kind, progress=False)
        assert all(float(got[name]["weight"].min()) > 0 for name in got)  # every norm scored, both passes
        assert_scores_close(got, fisher_scores_reference(model, batches, kind=kind))
