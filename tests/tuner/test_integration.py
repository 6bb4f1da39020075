# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""lntune through the ecosystem: peft registration and loaders, transformers.Trainer, accelerate loops."""

from __future__ import annotations

import pytest
import torch
import transformers as tf
from accelerate import Accelerator
from datasets import Dataset
from peft import AutoPeftModelForSequenceClassification, PeftConfig, PeftModel, get_peft_model
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
from peft.utils import PeftType

import lntune
from lntune import LNTuneConfig, LNTuneModel

from ..models import build


def test_registration_with_peft():
    assert PeftType("LNTUNE") is lntune.PEFT_TYPE
    assert PEFT_TYPE_TO_CONFIG_MAPPING["LNTUNE"] is LNTuneConfig
    assert PEFT_TYPE_TO_TUNER_MAPPING["LNTUNE"] is LNTuneModel
    assert PEFT_TYPE_TO_PREFIX_MAPPING["LNTUNE"] == "lntune_"
    lntune.tuner.register()  # idempotent
    assert LNTuneConfig().peft_type == "LNTUNE"


def test_peft_config_and_auto_model_from_pretrained(tmp_path):
    base, batch_fn, _ = build("bert")
    base.save_pretrained(tmp_path / "base")
    model = get_peft_model(base, LNTuneConfig(task_type="SEQ_CLS", init_weights=False)).eval()
    batch = batch_fn(3)
    expected = model(**batch).logits
    model.peft_config["default"].base_model_name_or_path = str(tmp_path / "base")
    model.save_pretrained(tmp_path / "adapter")
    config = PeftConfig.from_pretrained(tmp_path / "adapter")
    assert isinstance(config, LNTuneConfig) and config.base_norms
    auto = AutoPeftModelForSequenceClassification.from_pretrained(tmp_path / "adapter").eval()
    assert isinstance(auto, PeftModel)
    torch.testing.assert_close(auto(**batch).logits, expected, atol=1e-6, rtol=0)


def _toy_classification_data(n: int = 32) -> Dataset:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 100, (n, 8), generator=g)
    labels = (ids[:, 0] > 50).long()  # learnable from the first token
    return Dataset.from_dict({"input_ids": ids.tolist(), "labels": labels.tolist()})


@pytest.mark.parametrize("gradient_checkpointing", [False, True])
def test_trainer(tmp_path, gradient_checkpointing):
    base, _, _ = build("bert")
    model = get_peft_model(base, LNTuneConfig(task_type="SEQ_CLS"))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = tf.TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        num_train_epochs=2,
        learning_rate=1e-2,
        report_to=[],
        save_strategy="no",
        gradient_checkpointing=gradient_checkpointing,
        use_cpu=True,
        logging_steps=1,
    )
    result = tf.Trainer(model=model, args=args, train_dataset=_toy_classification_data()).train()
    assert result.training_loss > 0
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert changed and all(".lntune_" in n or "modules_to_save" in n for n in changed)
    assert any(".lntune_" in n for n in changed)
    model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").stat().st_size < 20_000


def test_accelerate_loop_with_masked_adapter():
    base, batch_fn, _ = build("bert")
    mask = {"bert.encoder.layer.1.output.LayerNorm": {"weight": [0, 5], "bias": [7]}}
    model = get_peft_model(base, LNTuneConfig(task_type="SEQ_CLS", mask=mask))
    norm = model.base_model.model.bert.encoder.layer[1].output.LayerNorm
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    accelerator = Accelerator(cpu=True)
    model, opt = accelerator.prepare(model, opt)
    model.train()
    for _ in range(3):
        batch = batch_fn(4)
        loss = model(**batch, labels=torch.tensor([0, 1, 0, 1])).loss
        accelerator.backward(loss)
        opt.step()
        opt.zero_grad()
    delta_w = norm.dense_delta("weight", "default").detach()
    delta_b = norm.dense_delta("bias", "default").detach()
    assert delta_w.nonzero().flatten().tolist() == [0, 5]  # only the selected scalars moved
    assert delta_b.nonzero().flatten().tolist() == [7]
    assert norm.lntune_weight["default"].numel() == 2  # the trainable tensor holds only the selected values


def test_print_trainable_parameters_counts_norms_and_head(capsys):
    base, _, _ = build("bert")
    n_norm = sum(p.numel() for info in lntune.find_norms(base) for p in info.module.parameters())
    n_head = sum(p.numel() for p in base.classifier.parameters())
    model = get_peft_model(base, LNTuneConfig(task_type="SEQ_CLS"))
    trainable, _ = model.get_nb_trainable_parameters()
    assert trainable == n_norm + n_head
