# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Mean-pooled classification (`lntune.pooling`): exact masked mean, padding-invariant, peft-compatible."""

from __future__ import annotations

import pytest
import torch
import transformers as tf
from peft import get_peft_model

from lntune import LNTuneConfig
from lntune.pooling import MeanPooler, checkpoint_pooling, split_pair, use_mean_pooling, use_pair_pooling

from .models import minilm_dir


def _tiny_bert_classifier() -> tf.BertForSequenceClassification:
    torch.manual_seed(0)
    config = tf.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24, num_labels=3
    )
    return tf.BertForSequenceClassification(config).eval()


def test_mean_pooling_is_the_masked_mean_of_the_token_states() -> None:
    model = use_mean_pooling(_tiny_bert_classifier())
    assert isinstance(model.bert.pooler, MeanPooler) and model.config.lntune_pooling == "mean"
    ids = torch.randint(5, 50, (2, 7))
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    with torch.no_grad():
        states = model.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        logits = model(input_ids=ids, attention_mask=mask).logits
    expected = torch.stack([states[0].mean(0), states[1, :4].mean(0)])
    torch.testing.assert_close(logits, model.classifier(expected))
    assert model.bert.pooler.attention_mask is None  # cleared after the forward


def test_padding_does_not_change_a_row() -> None:
    model = use_mean_pooling(_tiny_bert_classifier())
    ids = torch.randint(5, 50, (1, 4))
    padded = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    with torch.no_grad():
        alone = model(input_ids=ids, attention_mask=torch.ones(1, 4, dtype=torch.long)).logits
        with_pad = model(input_ids=padded, attention_mask=torch.tensor([[1, 1, 1, 1, 0, 0, 0]])).logits
    torch.testing.assert_close(alone, with_pad, atol=1e-5, rtol=0)


def test_lntune_on_a_mean_pooled_model_trains_norms_and_head_only() -> None:
    model = use_mean_pooling(_tiny_bert_classifier())
    peft_model = get_peft_model(model, LNTuneConfig(task_type="SEQ_CLS"))
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all(".lntune_" in n or "classifier" in n for n in trainable)
    assert not any("pooler" in n for n, _ in peft_model.named_parameters())  # the [CLS] pooler is gone
    out = peft_model(input_ids=torch.randint(5, 50, (2, 5)), labels=torch.tensor([0, 2]))
    out.loss.backward()


def test_models_without_a_pooler_get_a_clear_error() -> None:
    config = tf.GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50, num_labels=2, pad_token_id=0)
    with pytest.raises(ValueError, match="no `pooler` sub-module"):
        use_mean_pooling(tf.GPT2ForSequenceClassification(config))


def test_checkpoint_pooling_reads_the_sentence_transformers_config(tmp_path) -> None:
    assert checkpoint_pooling(str(minilm_dir())) == "mean"  # all-MiniLM-L6-v2 was trained with mean pooling
    assert checkpoint_pooling(str(tmp_path)) is None
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text('{"pooling_mode_cls_token": true}')
    assert checkpoint_pooling(str(tmp_path)) == "cls"


def _pair(a: list[int], b: list[int], width: int) -> tuple[list[int], list[int], list[int]]:
    ids = [2, *a, 3, *b, 3]
    types = [0] * (len(a) + 2) + [1] * (len(b) + 1)
    pad = width - len(ids)
    return ids + [0] * pad, [1] * len(ids) + [0] * pad, types + [0] * pad


def test_pair_pooling_encodes_each_sentence_alone() -> None:
    model = _tiny_bert_classifier()
    reference = _tiny_bert_classifier()  # the same weights: the encoder alone, run on each sentence
    use_pair_pooling(model)
    assert model.config.lntune_pooling == "pair" and model.classifier.in_features == 4 * 16
    rows = [_pair([7, 8, 9], [10, 11], 10), _pair([12], [13, 14, 15, 16], 10)]
    ids, mask, types = (torch.tensor([row[k] for row in rows]) for k in range(3))
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        expected = []
        for a, b in (([7, 8, 9], [10, 11]), ([12], [13, 14, 15, 16])):
            u = reference.bert(input_ids=torch.tensor([[2, *a, 3]])).last_hidden_state[0].mean(0)
            v = reference.bert(input_ids=torch.tensor([[2, *b, 3]])).last_hidden_state[0].mean(0)
            expected.append(torch.cat([u, v, (u - v).abs(), u * v]))
    torch.testing.assert_close(logits, model.classifier(torch.stack(expected)))


def test_pair_pooling_trains_under_lntune_and_refuses_single_sentences() -> None:
    model = get_peft_model(use_pair_pooling(_tiny_bert_classifier()), LNTuneConfig(task_type="SEQ_CLS"))
    ids, mask, types = (torch.tensor([row]) for row in _pair([7, 8], [9], 8))
    out = model(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=torch.tensor([1]))
    out.loss.backward()
    grads = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is not None]
    assert any("classifier" in n for n in grads) and any("LayerNorm" in n for n in grads)
    with pytest.raises(ValueError, match="pair pooling needs sentence pairs"):
        model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids))
    with pytest.raises(ValueError, match="token_type_ids"):
        model(input_ids=ids, attention_mask=mask)


def test_split_pair_restores_each_segment_with_its_cls() -> None:
    rows = [_pair([7, 8, 9], [10, 11], 10), _pair([12], [13], 10)]
    ids, mask, types = (torch.tensor([row[k] for row in rows]) for k in range(3))
    ids_a, mask_a, ids_b, mask_b = split_pair(ids, mask, types)
    assert ids_a.tolist() == [[2, 7, 8, 9, 3], [2, 12, 3, 0, 0]] and mask_a.tolist() == [[1] * 5, [1, 1, 1, 0, 0]]
    assert ids_b.tolist() == [[2, 10, 11, 3], [2, 13, 3, 0]] and mask_b.tolist() == [[1] * 4, [1, 1, 1, 0]]
