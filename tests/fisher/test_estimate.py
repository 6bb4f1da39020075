# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Batched per-sample Fisher == the batch-size-1 autograd reference, on real and tiny random models."""

from __future__ import annotations

import csv
import importlib.util
import math
import os
import warnings

import pytest
import torch
import transformers
from torch import nn

from lntune import assets
from lntune.fisher import fisher_scores, fisher_scores_reference
from lntune.fisher.per_sample import affine_slope, fast_slope, norm_channel_dim

from ..models import SHARED_DATA
from .helpers import assert_scores_close, tiny_bert, token_batches

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers.logging.set_verbosity_error()
SST2 = SHARED_DATA / "glue" / "sst2" / "train.tsv"
# The tiny data sets are smaller than the default num_samples=1024, which warns (tested on its own below).
pytestmark = pytest.mark.filterwarnings("ignore:fisher_scores. num_samples=1024:UserWarning")


# ----------------------------------------------------------------------------------------------------------------------
# The affine assumption behind dy/dw = f(w=1, b=0) - f(w=0, b=0).


def _norm_classes():
    from transformers.models.gemma.modeling_gemma import GemmaRMSNorm
    from transformers.models.llama.modeling_llama import LlamaRMSNorm
    from transformers.models.t5.modeling_t5 import T5LayerNorm

    cases = [
        (nn.LayerNorm(8), (3, 5, 8)),
        (nn.LayerNorm(8, bias=False), (3, 5, 8)),
        (nn.RMSNorm(8, eps=1e-6), (3, 5, 8)),
        (nn.GroupNorm(2, 8), (3, 8, 5)),
        (LlamaRMSNorm(8), (3, 5, 8)),
        (GemmaRMSNorm(8), (3, 5, 8)),
        (T5LayerNorm(8), (3, 5, 8)),
    ]
    if importlib.util.find_spec("timm") is not None:
        from timm.layers import LayerNorm2d

        cases.append((LayerNorm2d(8), (3, 8, 4, 4)))
    return cases


@pytest.mark.parametrize(
    "module,shape", _norm_classes(), ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else ""
)
def test_norm_output_is_affine_in_its_parameters(module: nn.Module, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    x = torch.randn(shape)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_()
    has_bias = isinstance(getattr(module, "bias", None), nn.Parameter)
    w = module.weight.detach().clone()
    b = module.bias.detach().clone() if has_bias else None
    zeros = {"weight": torch.zeros_like(w)} | ({"bias": torch.zeros_like(b)} if has_bias else {})
    with torch.no_grad():
        y = module(x)
        offset = torch.func.functional_call(module, zeros, (x,))
    slope = affine_slope(module, x)
    cdim = norm_channel_dim(module, y.dim())
    view = [1] * y.dim()
    view[cdim] = -1
    expected = offset + slope * w.view(view) + (b.view(view) if has_bias else 0)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    fast = fast_slope(module, x)
    if fast is not None:
        torch.testing.assert_close(fast, slope, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------------
# Batched == reference.


@pytest.mark.slow
def test_minilm_sst2_matches_reference() -> None:
    if not SST2.exists():
        pytest.skip(f"no SST-2 data at {SST2}")
    model_dir = assets.minilm_dir()
    torch.manual_seed(0)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    with open(SST2, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[:16]
    batches = []
    for start in range(0, 16, 8):  # file order: lengths vary inside each batch, so there is padding
        chunk = rows[start : start + 8]
        batch = dict(tokenizer([r["sentence"] for r in chunk], padding=True, return_tensors="pt"))
        batch["labels"] = torch.tensor([int(r["label"]) for r in chunk])
        assert (batch["attention_mask"] == 0).any()
        batches.append(batch)
    got = fisher_scores(model, batches, num_samples=16, progress=False)
    ref = fisher_scores_reference(model, batches)
    assert got.num_samples == ref.num_samples == 16
    assert len(got) == 13 and got.task == "sequence_classification"
    assert_scores_close(got, ref)


def test_tiny_llama_causal_lm_matches_reference() -> None:
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
    model = transformers.LlamaForCausalLM(cfg)
    batches = token_batches(50, [3, 4], 9, seed=1, labels="none")
    got = fisher_scores(model, batches, progress=False)  # labels derived from input_ids, padding ignored
    assert got.task == "causal_lm" and got.num_samples == 7
    assert set(got.roles.values()) == {"attention", "output", "final"}
    assert "bias" not in next(iter(got.values()))
    assert_scores_close(got, fisher_scores_reference(model, batches))
    for batch in batches:  # explicit labels with an ignored token, sampled ("true") labels
        batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        batch["labels"][:, 2] = -100
    got = fisher_scores(model, batches, kind="true", seed=3, progress=False)
    assert_scores_close(got, fisher_scores_reference(model, batches, kind="true", seed=3))


def test_tiny_vit_image_classification_matches_reference() -> None:
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(
        image_size=8,
        patch_size=4,
        num_channels=3,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
    )
    model = transformers.ViTForImageClassification(cfg)
    gen = torch.Generator().manual_seed(0)
    batches = [
        {"pixel_values": torch.randn(n, 3, 8, 8, generator=gen), "labels": torch.randint(0, 3, (n,), generator=gen)}
        for n in (3, 2)
    ]
    got = fisher_scores(model, batches, progress=False)
    assert got.task == "image_classification"
    assert_scores_close(got, fisher_scores_reference(model, batches))


def test_tiny_gemma_one_plus_w_scale_matches_reference() -> None:
    torch.manual_seed(0)
    cfg = transformers.GemmaConfig(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=32,
        num_labels=3,
        pad_token_id=0,
    )
    model = transformers.GemmaForSequenceClassification(cfg)
    with torch.no_grad():  # Gemma norms start at w=0 (scale 1 + w); move them off it
        for module in model.modules():
            if type(module).__name__ == "GemmaRMSNorm":
                module.weight.normal_(0, 0.3)
    batches = token_batches(50, [3, 3], 8, seed=2, labels="seq", num_labels=3)
    for kind in ("empirical", "true"):
        got = fisher_scores(model, batches, kind=kind, progress=False)
        assert_scores_close(got, fisher_scores_reference(model, batches, kind=kind))


def test_tiny_t5_token_classification_matches_reference() -> None:
    torch.manual_seed(0)
    cfg = transformers.T5Config(
        vocab_size=50, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=2, num_labels=4, dropout_rate=0.0
    )
    model = transformers.T5ForTokenClassification(cfg)
    batches = token_batches(50, [3, 2], 7, seed=3, labels="token", num_labels=4)
    got = fisher_scores(model, batches, progress=False)
    assert got.task == "token_classification"
    assert_scores_close(got, fisher_scores_reference(model, batches))


@pytest.mark.parametrize("kind", ["empirical", "true"])
def test_regression_head_matches_reference(kind: str) -> None:
    model = tiny_bert(num_labels=1)
    batches = token_batches(40, [4, 3], 8, seed=4, labels="float")
    got = fisher_scores(model, batches, kind=kind, progress=False)
    assert got.task == "regression"
    assert_scores_close(got, fisher_scores_reference(model, batches, kind=kind))


def test_multi_label_matches_reference() -> None:
    model = tiny_bert(num_labels=3, problem_type="multi_label_classification")
    batches = token_batches(40, [4], 8, seed=5, labels="none")
    batches[0]["labels"] = torch.tensor([[1.0, 0, 1], [0, 0, 0], [1, 1, 1], [0, 1, 0]])
    got = fisher_scores(model, batches, progress=False)
    assert got.task == "multi_label_classification"
    assert_scores_close(got, fisher_scores_reference(model, batches))


class _TwiceNorm(nn.Module):
    """Uses one LayerNorm twice and a GroupNorm on a conv map; takes a bare tensor and returns logits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(4, 8, 3, padding=1)
        self.gn = nn.GroupNorm(2, 8)
        self.proj = nn.Linear(8, 8)
        self.ln = nn.LayerNorm(8)
        self.spare = nn.LayerNorm(8)  # runs, but its output never reaches the loss: scores 0
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.gn(self.conv(x))).transpose(1, 2)  # [B, L, 8]
        h = self.ln(h)
        h = self.ln(h + torch.tanh(self.proj(h)))
        self.spare(h)
        return self.head(h.mean(1))


def test_norm_called_twice_and_tuple_batches() -> None:
    torch.manual_seed(0)
    model = _TwiceNorm()
    with torch.no_grad():
        model.ln.weight.normal_()
        model.gn.weight.normal_()
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(n, 4, 6, generator=gen), torch.randint(0, 3, (n,), generator=gen)) for n in (4, 3)]
    got = fisher_scores(model, batches, progress=False)
    assert list(got) == ["gn", "ln", "spare"] and got.task == "sequence_classification"
    assert float(got["spare"]["weight"].abs().max()) == 0.0 and float(got["ln"]["weight"].min()) > 0
    assert_scores_close(got, fisher_scores_reference(model, batches))


# ----------------------------------------------------------------------------------------------------------------------
# Wrapped models, state, determinism, sample counting.


def test_peft_wrapped_model_scores_base_norms_and_restores_flags() -> None:
    import peft

    batches = token_batches(40, [4, 3], 8, seed=6)
    plain = fisher_scores(tiny_bert(), batches, progress=False)
    model = peft.get_peft_model(tiny_bert(), peft.LoraConfig(target_modules=["query", "value"], r=2))
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    got = fisher_scores(model, batches, progress=False)
    assert got.task == "sequence_classification"
    assert list(got) == list(plain)  # base-model names, no peft prefix
    for name, per_param in got.items():  # LoRA B starts at zero: same function, same scores
        for pname, t in per_param.items():
            torch.testing.assert_close(t, plain[name][pname], rtol=1e-5, atol=0)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags


class _Wrapper(nn.Module):
    """Stand-in for an lntune tuner layer: exposes the wrapped norm as ``base_layer``."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base_layer = base

    def get_base_layer(self) -> nn.Module:
        return self.base_layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x)


def test_tuner_wrapped_norms_are_reported_under_the_wrapper_name() -> None:
    model = tiny_bert()
    batches = token_batches(40, [4], 8, seed=7)
    plain = fisher_scores(model, batches, progress=False)
    layer = model.bert.encoder.layer[0]
    layer.output.LayerNorm = _Wrapper(layer.output.LayerNorm)
    got = fisher_scores(model, batches, progress=False)
    assert "bert.encoder.layer.0.output.LayerNorm" in got
    for name in plain:
        torch.testing.assert_close(got[name]["weight"], plain[name]["weight"])


def test_state_is_restored_and_nothing_left_behind() -> None:
    model = tiny_bert(hidden_dropout_prob=0.5)
    model.train()
    model.bert.embeddings.eval()
    model.classifier.weight.requires_grad_(False)
    modes = {n: m.training for n, m in model.named_modules()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    batches = token_batches(40, [4], 8, seed=8)
    a = fisher_scores(model, batches, progress=False)
    b = fisher_scores(model, batches, progress=False)  # dropout off while scoring: same numbers twice
    assert_scores_close(a, b, rel=1e-6)
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    assert all(not m._forward_hooks for m in model.modules())


def test_true_fisher_is_seeded_and_independent_of_batching() -> None:
    model = tiny_bert(num_labels=4)
    batches = token_batches(40, [5, 5], 8, seed=9, num_labels=4)
    a = fisher_scores(model, batches, kind="true", seed=1, progress=False)
    b = fisher_scores(model, batches, kind="true", seed=1, progress=False)
    for name in a:
        assert torch.equal(a[name]["weight"], b[name]["weight"])
    c = fisher_scores(model, batches, kind="true", seed=2, progress=False)
    assert any(not torch.equal(a[n]["weight"], c[n]["weight"]) for n in a)
    # Re-batch the same 10 samples as 2 + 8 (padding to the batch max is harmless): same draws, same scores.
    cat = {k: torch.cat([b_[k] for b_ in batches]) for k in batches[0]}
    rebatched = [{k: v[:2] for k, v in cat.items()}, {k: v[2:] for k, v in cat.items()}]
    assert_scores_close(fisher_scores(model, rebatched, kind="true", seed=1, progress=False), a, rel=1e-5)


def test_num_samples_truncates_and_warns_when_data_is_short() -> None:
    model = tiny_bert()
    batches = token_batches(40, [4, 4, 4], 8, seed=10)
    got = fisher_scores(model, batches, num_samples=6, progress=False)
    assert got.num_samples == 6
    assert_scores_close(got, fisher_scores_reference(model, batches, num_samples=6))
    with pytest.warns(UserWarning, match="only 12 samples"):
        everything = fisher_scores(model, batches, num_samples=100, progress=False)
    assert everything.num_samples == 12
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fisher_scores(model, batches, num_samples=None, progress=False).num_samples == 12

    def stream():  # the loader is not read past the cap
        yield batches[0]
        raise AssertionError("read past num_samples")

    assert fisher_scores(model, stream(), num_samples=4, progress=True).num_samples == 4


# ----------------------------------------------------------------------------------------------------------------------
# Errors.


def test_errors_are_clear() -> None:
    model = tiny_bert()
    batches = token_batches(40, [4, 4], 8, seed=11)
    with pytest.raises(ValueError, match="no samples"):
        fisher_scores(model, [], progress=False)
    with pytest.raises(ValueError, match="unknown Fisher kind 'fisher'"):
        fisher_scores(model, batches, kind="fisher", progress=False)
    with pytest.raises(ValueError, match="unknown task 'qa'"):
        fisher_scores(model, batches, task="qa", progress=False)
    with pytest.raises(ValueError, match="no normalization layers"):
        fisher_scores(nn.Sequential(nn.Linear(3, 3)), [torch.randn(2, 3)], progress=False)
    with pytest.raises(ValueError, match="needs the true labels"):
        fisher_scores(model, [{k: v for k, v in batches[0].items() if k != "labels"}], progress=False)
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        fisher_scores(model, batches, num_samples=0, progress=False)
    from accelerate.data_loader import DataLoaderShard  # what accelerator.prepare() returns; no global state

    prepared = DataLoaderShard(list(range(4)), batch_size=2)
    with pytest.raises(ValueError, match="before. accelerator.prepare"):
        fisher_scores(model, prepared, progress=False)
    broken = [dict(b) for b in batches]
    broken[1]["input_ids"] = broken[1]["input_ids"].clone()
    broken[1]["input_ids"][0, 0] = 39
    with torch.no_grad():
        model.bert.embeddings.word_embeddings.weight[39] = math.nan
    with pytest.raises(FloatingPointError, match="batch 1 "):
        fisher_scores(model, broken, progress=False)
    assert all(not m._forward_hooks for m in model.modules())
