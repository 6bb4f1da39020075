"""lntune.heads: the output layer of common task heads, and its bias started at the label prior."""

from __future__ import annotations

import math

import pytest
import torch
import transformers as tf

from lntune.heads import init_head_bias, output_layer

from .models import TINY_SIZES


def _bert(num_labels: int) -> tf.PreTrainedModel:
    torch.manual_seed(0)
    config = tf.BertConfig(hidden_size=32, vocab_size=100, num_labels=num_labels, **TINY_SIZES)
    return tf.BertForSequenceClassification(config).eval()


def _roberta(num_labels: int) -> tf.PreTrainedModel:
    torch.manual_seed(0)
    config = tf.RobertaConfig(
        hidden_size=32, vocab_size=100, max_position_embeddings=40, num_labels=num_labels, **TINY_SIZES
    )
    return tf.RobertaForSequenceClassification(config).eval()


def _gpt2(num_labels: int) -> tf.PreTrainedModel:
    torch.manual_seed(0)
    config = tf.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=100, num_labels=num_labels, pad_token_id=0)
    return tf.GPT2ForSequenceClassification(config).eval()


@pytest.mark.parametrize(
    "build, expected",
    [(_bert, "classifier"), (_roberta, "classifier.out_proj"), (_gpt2, "score")],
)
def test_output_layer_is_the_heads_last_linear(build, expected: str) -> None:
    model = build(3)
    names = {id(m): n for n, m in model.named_modules()}
    assert names[id(output_layer(model, 3))] == expected


def test_regression_bias_is_the_label_mean_and_shifts_every_output() -> None:
    model = _bert(1)
    ids = torch.randint(0, 100, (4, 7))
    before = model(input_ids=ids).logits
    labels = [0.0, 1.5, 5.0, 4.5]
    prior = init_head_bias(model, labels, num_labels=1)
    assert prior == pytest.approx([2.75])
    after = model(input_ids=ids).logits
    # only the bias moved: every output shifts by the same amount, the weights are untouched
    torch.testing.assert_close(after - before, torch.full_like(before, 2.75), atol=1e-5, rtol=0)


def test_classification_bias_is_the_centred_log_prior() -> None:
    model = _roberta(3)
    prior = init_head_bias(model, [0, 0, 0, 1, 2, 2], num_labels=3)
    raw = [math.log(3), math.log(1), math.log(2)]
    mean = sum(raw) / 3
    assert prior == pytest.approx([r - mean for r in raw])
    torch.testing.assert_close(model.classifier.out_proj.bias, torch.tensor(prior, dtype=torch.float32))
    # the softmax of the bias alone is the class frequency
    assert torch.softmax(torch.tensor(prior), 0).tolist() == pytest.approx([3 / 6, 1 / 6, 2 / 6])


def test_absent_class_gets_a_finite_bias() -> None:
    prior = init_head_bias(_bert(3), [0, 0, 0, 1, 1], num_labels=3)  # class 2 absent: counted once
    assert all(math.isfinite(p) for p in prior) and prior[2] < prior[1] < prior[0]


@pytest.mark.parametrize(
    "labels, num_labels, match",
    [
        ([], 2, "no labels"),
        ([0, 2], 2, r"class labels must be in 0\.\.1"),
        ([0.5, float("nan")], 1, "NaN"),
    ],
)
def test_bad_labels_are_refused(labels, num_labels: int, match: str) -> None:
    model = _bert(num_labels)
    bias = output_layer(model, num_labels).bias.clone()
    with pytest.raises(ValueError, match=match):
        init_head_bias(model, labels, num_labels=num_labels)
    torch.testing.assert_close(output_layer(model, num_labels).bias, bias)


def test_model_without_a_task_head_is_refused() -> None:
    with pytest.raises(ValueError, match="no nn.Linear with 4 outputs"):
        output_layer(_bert(3), 4)
