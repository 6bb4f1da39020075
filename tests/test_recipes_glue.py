# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Smoke tests of the GLUE recipe: every method family runs in-process on a tiny random BERT and the tiny fixture
data, reports the right keys and trainable-parameter counts, saves something that reloads; bad input fails clearly;
sweep.py writes its JSON and Markdown; one real 2-process (gloo) run through torchrun."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers as tf
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file

import lntune  # registers the method so PeftModel.from_pretrained can read lntune adapters
import lntune.fisher

ROOT = Path(__file__).resolve().parents[1]
RECIPE_DIR = ROOT / "recipes" / "glue"
TINY_DIR = Path(__file__).resolve().parent / "data" / "glue_tiny"
sys.path.insert(0, str(RECIPE_DIR))

import run_glue  # noqa: E402
import search  # noqa: E402
import sweep  # noqa: E402

sys.path.insert(0, str(RECIPE_DIR / "experiments"))
import cola_domains  # noqa: E402

HIDDEN, LAYERS, INTERMEDIATE = 32, 2, 37
NUM_NORMS = 1 + 2 * LAYERS  # embeddings.LayerNorm + attention/output LayerNorm per layer
RESULT_KEYS = {
    "best_epoch",
    "method",
    "task",
    "model",
    "seed",
    "trainable_params",
    "total_params",
    "train_time_s",
    "train_time_per_epoch_s",
    "num_train_samples",
    "epochs",
    "learning_rate",
}


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BertModel (no task head, like MiniLM) with a character-level WordPiece tokenizer."""
    path = tmp_path_factory.mktemp("tiny_bert")
    chars = "abcdefghijklmnopqrstuvwxyz0123456789"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *".,!?'-", *(f"##{c}" for c in chars)]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tf.BertTokenizerFast(vocab=str(path / "vocab.txt")).save_pretrained(str(path))
    torch.manual_seed(0)
    config = tf.BertConfig(
        vocab_size=len(vocab),
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=2,
        intermediate_size=INTERMEDIATE,
        max_position_embeddings=128,
    )
    tf.BertModel(config).save_pretrained(str(path))
    return path


def _argv(model: Path, task: str, method: str, out: Path | None, *extra: str, epochs: str | None = "1") -> list[str]:
    argv = ["--task", task, "--method", method, "--model", str(model), "--data_dir", str(TINY_DIR)]
    argv += ["--num_train_epochs", epochs] if epochs else []
    argv += ["--per_device_train_batch_size", "2", "--cpu", *extra]
    return argv + (["--output_dir", str(out)] if out is not None else ["--no_save_model"])


def _expected_trainable(method: str, num_labels: int) -> int:
    """Trainable parameters of the tiny BERT per method, counted by hand from its shapes."""
    head = HIDDEN * num_labels + num_labels
    norm = 2 * HIDDEN  # gain + bias
    per_layer_biases = 4 * HIDDEN + HIDDEN + INTERMEDIATE + HIDDEN + HIDDEN  # q,k,v,attn-out; attn LN; FFN in/out; LN
    return {
        "lntune": NUM_NORMS * norm + head,
        "peft-ln": NUM_NORMS * norm + head,
        "lntune-output": LAYERS * norm + head,
        "lntune-fisher": -(-NUM_NORMS * norm // 5) + head,  # ceil(20% of the norm scalars)
        "lntune-random": -(-NUM_NORMS * norm // 5) + head,
        "bitfit": HIDDEN + LAYERS * per_layer_biases + HIDDEN + head,  # embedding LN bias, layers, pooler bias
        "lora": LAYERS * 2 * (8 * HIDDEN + HIDDEN * 8) + head,  # r=8 A and B on query and value
        "lntune-lora": NUM_NORMS * norm + LAYERS * 2 * (2 * HIDDEN + HIDDEN * 2) + head,  # norms + r=2 on query, value
    }[method]


# method -> the task it is smoke-tested on (covers every metric kind: acc, acc+F1, MCC, Pearson/Spearman)
SMOKE = {
    "lntune": "rte",
    "lntune-output": "mrpc",
    "lntune-fisher": "sst2",
    "lntune-random": "cola",
    "full": "stsb",
    "bitfit": "cola",
    "lora": "rte",
    "peft-ln": "mrpc",
    "lntune-lora": "cola",
}


@pytest.mark.parametrize("method", list(SMOKE))
def test_method_smoke(tiny_bert: Path, tmp_path: Path, method: str) -> None:
    task = SMOKE[method]
    spec = run_glue.TASKS[task]
    results = run_glue.main(_argv(tiny_bert, task, method, tmp_path))
    on_disk = json.loads((tmp_path / "all_results.json").read_text())
    assert on_disk["trainable_params"] == results["trainable_params"]
    assert RESULT_KEYS <= set(on_disk)
    for name in spec.metric_names:
        assert f"eval_{name}" in on_disk and f"eval_{name}_last" in on_disk
    assert on_disk["method"] == method and on_disk["task"] == task and on_disk["epochs"] == 1
    assert on_disk["learning_rate"] == run_glue.METHODS[method].learning_rate
    base_total = sum(p.numel() for p in tf.BertModel.from_pretrained(str(tiny_bert)).parameters())
    assert on_disk["total_params"] == base_total + HIDDEN * spec.num_labels + spec.num_labels
    if method == "full":
        assert on_disk["trainable_params"] == on_disk["total_params"]
        reloaded = tf.AutoModelForSequenceClassification.from_pretrained(str(tmp_path))
        assert reloaded.config.num_labels == 1 and (tmp_path / "tokenizer.json").exists()
    else:
        assert on_disk["trainable_params"] == _expected_trainable(method, spec.num_labels)
    if run_glue.METHODS[method].is_peft:
        assert (tmp_path / "adapter_config.json").exists() and (tmp_path / "adapter_model.safetensors").exists()
    if method == "lntune-lora":  # the saved adapter holds the trained norms and the low-rank factors
        saved = load_file(tmp_path / "adapter_model.safetensors")
        assert sum("LayerNorm" in k for k in saved) == 2 * NUM_NORMS and sum("lora_" in k for k in saved) == 4 * LAYERS
    if method in ("lntune-fisher", "lntune-random"):
        assert on_disk["fisher_warmup"]["steps"] == 100  # the head trains alone before selecting (default)
        assert sum(on_disk["fisher_selected_by_role"].values()) == on_disk["fisher_selected"]


def test_random_subset_is_seeded_and_not_the_fisher_one(tiny_bert: Path, tmp_path: Path) -> None:
    """lntune-random draws its subset from --seed (same seed, same subset) and is not the Fisher selection."""
    masks = []
    for i, (method, seed) in enumerate(
        [("lntune-random", "0"), ("lntune-random", "0"), ("lntune-random", "1"), ("lntune-fisher", "0")]
    ):
        run_glue.main(_argv(tiny_bert, "sst2", method, tmp_path / str(i), "--seed", seed))
        masks.append(json.loads((tmp_path / str(i) / "adapter_config.json").read_text())["mask"])
    first, again, other_seed, fisher = masks
    assert first == again and first != other_seed and first != fisher


@pytest.mark.parametrize("extra", [["--fisher_warmup_steps", "0"], ["--fisher_normalize", "kind"]])
def test_fisher_options(tiny_bert: Path, tmp_path: Path, extra: list[str]) -> None:
    results = run_glue.main(_argv(tiny_bert, "stsb", "lntune-fisher", None, *extra))
    assert ("fisher_warmup" in results) == (extra[0] != "--fisher_warmup_steps")
    assert results["trainable_params"] == _expected_trainable("lntune-fisher", 1)


def test_negative_fisher_warmup_is_an_argparse_error(tiny_bert: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        run_glue.main(_argv(tiny_bert, "rte", "lntune-fisher", None, "--fisher_warmup_steps", "-1"))
    assert "--fisher_warmup_steps must be >= 0" in capsys.readouterr().err


def test_trainable_params_ordering(tiny_bert: Path) -> None:
    """Fisher subset < output LNs < all LNs (= peft's LN tuning) < BitFit < LoRA < full, on the tiny BERT."""
    counts = [_expected_trainable(m, 2) for m in ("lntune-fisher", "lntune-output", "lntune", "bitfit", "lora")]
    assert counts == sorted(counts) and len(set(counts)) == len(counts)
    assert _expected_trainable("lntune", 2) == _expected_trainable("peft-ln", 2)


def test_lntune_adapter_reloads(tiny_bert: Path, tmp_path: Path) -> None:
    """The saved lntune adapter loads onto a fresh base model and gives the trained model's dev predictions."""
    extra = ["--gradient_accumulation_steps", "2", "--warmup_ratio", "0"]  # a single update, at full learning rate
    results = run_glue.main(_argv(tiny_bert, "rte", "lntune", tmp_path, *extra, "--per_device_train_batch_size", "1"))
    base, _ = run_glue.load_model(str(tiny_bert), "rte", seed=0)
    model = PeftModel.from_pretrained(base, str(tmp_path)).eval()
    deltas = {n: p for n, p in model.named_parameters() if "lntune_" in n}
    assert len(deltas) == 2 * NUM_NORMS and any(p.abs().sum() > 0 for p in deltas.values())  # trained, not zeros
    tok = tf.AutoTokenizer.from_pretrained(str(tiny_bert))
    dev = run_glue.load_glue(TINY_DIR, "rte")["validation"]
    batch = tok(list(dev["sentence1"]), list(dev["sentence2"]), padding=True, return_tensors="pt")
    with torch.no_grad():
        preds = model(**batch).logits.argmax(-1).numpy()
    accuracy = float((preds == list(dev["label"])).mean())
    assert accuracy == pytest.approx(results["eval_accuracy_last"])


@pytest.mark.parametrize(
    "flag, value, message",
    [("--method", "adapterx", "invalid choice: 'adapterx'"), ("--task", "squad", "invalid choice: 'squad'")],
)
def test_unknown_method_or_task(tiny_bert: Path, capsys: pytest.CaptureFixture, flag: str, value: str, message: str):
    argv = _argv(tiny_bert, "rte", "lntune", None)
    argv[argv.index(flag) + 1] = value
    with pytest.raises(SystemExit) as err:
        run_glue.main(argv)
    assert err.value.code == 2
    stderr = capsys.readouterr().err
    assert message in stderr and "choose from" in stderr


def test_missing_data_dir_error_names_the_path(tiny_bert: Path, tmp_path: Path) -> None:
    argv = _argv(tiny_bert, "rte", "lntune", None)
    argv[argv.index("--data_dir") + 1] = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        run_glue.main(argv)
    (tmp_path / "glue" / "rte").mkdir(parents=True)  # the task folder exists but holds no TSVs
    argv[argv.index("--data_dir") + 1] = str(tmp_path / "glue")
    with pytest.raises(FileNotFoundError, match=r"rte/train\.tsv"):
        run_glue.main(argv)


def test_bad_labels_and_empty_splits_fail_with_the_file(tiny_bert: Path, tmp_path: Path) -> None:
    (tmp_path / "rte").mkdir()
    shutil.copy(TINY_DIR / "rte" / "dev.tsv", tmp_path / "rte" / "dev.tsv")
    argv = _argv(tiny_bert, "rte", "lntune", None)
    argv[argv.index("--data_dir") + 1] = str(tmp_path)
    (tmp_path / "rte" / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\tA.\tB.\tmaybe\n")
    with pytest.raises(ValueError, match=r"train\.tsv, line 2: label 'maybe' is not a rte label"):
        run_glue.main(argv)
    (tmp_path / "rte" / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n")
    with pytest.raises(ValueError, match=r"train\.tsv has no data rows"):
        run_glue.main(argv)


def test_new_or_resized_head_is_logged(tiny_bert: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A checkpoint with a 3-way head used for a 2-way task: the head is rebuilt (and said so), the body is kept."""
    model = tf.AutoModelForSequenceClassification.from_pretrained(str(tiny_bert), num_labels=3)
    model.save_pretrained(str(tmp_path / "three_way"))
    tf.AutoTokenizer.from_pretrained(str(tiny_bert)).save_pretrained(str(tmp_path / "three_way"))
    with caplog.at_level("INFO"):
        results = run_glue.main(_argv(tmp_path / "three_way", "rte", "lntune", None))
    assert results["new_head_weights"] == ["classifier.bias", "classifier.weight"]
    assert "classification head is new and randomly initialised" in caplog.text
    reloaded, new = run_glue.load_model(str(tiny_bert), "rte", seed=0)
    again, _ = run_glue.load_model(str(tiny_bert), "rte", seed=0)
    assert new == ["classifier.bias", "classifier.weight"]  # the analysis relies on a seed-determined new head
    assert torch.equal(reloaded.classifier.weight, again.classifier.weight)


def test_analysis_takes_the_lowest_seed_that_kept_its_weights(tmp_path: Path) -> None:
    for seed, files in ((0, ["all_results.json"]), (1, ["all_results.json", "model.safetensors"]), (2, [])):
        (tmp_path / f"seed{seed}").mkdir()
        for name in files:
            (tmp_path / f"seed{seed}" / name).write_text("{}")
    assert sweep.full_checkpoint(tmp_path, 3) == (1, tmp_path / "seed1")
    assert sweep.full_checkpoint(tmp_path, 1) == (0, None)  # seed 0 dropped its weights; seeds >= 1 not asked for
    (tmp_path / "seed1" / "model.safetensors").unlink()
    (tmp_path / "seed2" / "model.safetensors").write_text("{}")  # weights of an unfinished run (no results) are no use
    assert sweep.full_checkpoint(tmp_path, 3) == (0, None)


def test_sweep_writes_json_and_markdown(tiny_bert: Path, tmp_path: Path) -> None:
    argv = ["--tasks", "rte", "--methods", "lntune", "full", "--seeds", "1", "--model", str(tiny_bert)]
    argv += ["--name", "tiny", "--data_dir", str(TINY_DIR), "--num_train_epochs", "1", "--out", str(tmp_path)]
    argv += ["--cpu", "--analysis", "--lr", "lntune=3e-3", "--run_args", "--per_device_train_batch_size", "2"]
    assert sweep.main(argv) == 0
    report = json.loads((tmp_path / "glue_tiny.json").read_text())
    assert {(r["task"], r["method"]) for r in report["runs"]} == {("rte", "lntune"), ("rte", "full")}
    assert report["header"]["machine"] and not report["failures"]
    markdown = (tmp_path / "glue_tiny.md").read_text()
    assert "| 0.003 |" in markdown  # the --lr override reached the run
    assert (
        "| Method | Trainable params | LR | Pooling | RTE (acc) | Avg | Avg − full | Time/epoch vs full |" in markdown
    )
    assert (
        "| full | " in markdown
        and "| +0.0 | 1.00x |" in markdown
        and f"| lntune | {_expected_trainable('lntune', 2)} (" in markdown
    )
    # the analysis ran on the full-FT checkpoint and then deleted it
    assert (tmp_path / "analysis_tiny_rte.png").exists() and (tmp_path / "analysis_tiny.md").exists()
    assert "- RTE (full fine-tuning, seed 0), relative change:" in (tmp_path / "analysis_tiny.md").read_text()
    assert not (tmp_path / "tmp" / "glue_tiny" / "rte" / "full" / "seed0" / "model.safetensors").exists()
    # resumable: a second call skips both runs (it would fail if it re-ran: the data dir is gone)
    argv[argv.index("--data_dir") + 1] = str(tmp_path / "gone")
    assert sweep.main(argv) == 0
    # --report_only tabulates what exists and runs nothing; a cell short of the requested seeds says so
    argv[argv.index("--seeds") + 1] = "2"
    argv[argv.index("--out") + 1] = str(tmp_path / "report")
    at = argv.index("--run_args")
    argv[at:at] = ["--report_only", "--runs_dir", str(tmp_path / "tmp" / "glue_tiny")]
    assert sweep.main(argv) == 0
    report = json.loads((tmp_path / "report" / "glue_tiny.json").read_text())
    assert len(report["runs"]) == 2 and not report["failures"]
    assert "(n=1)" in (tmp_path / "report" / "glue_tiny.md").read_text()


def test_torchrun_two_processes(tiny_bert: Path, tmp_path: Path) -> None:
    """A real 2-process gloo group: training, gather_for_metrics and the Fisher all-reduce, one all_results.json."""
    data = tmp_path / "glue"
    shutil.copytree(TINY_DIR / "sst2", data / "sst2")
    shutil.copy(data / "sst2" / "train.tsv", data / "sst2" / "dev.tsv")  # 3 dev rows: one shard gets a repeat
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", str(RECIPE_DIR / "run_glue.py")]
    cmd += _argv(tiny_bert, "sst2", "lntune-fisher", tmp_path / "out", "--per_device_eval_batch_size", "1")
    cmd += ["--checkpointing_steps", "epoch", "--resume_from_checkpoint", "auto"]  # both processes save the state
    cmd[cmd.index("--data_dir") + 1] = str(data)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "all_results.json").read_text())
    assert results["num_processes"] == 2
    assert results["num_eval_predictions"] == results["num_eval_samples"] == 3  # no duplicate from uneven shards
    assert results["trainable_params"] == _expected_trainable("lntune-fisher", 2)
    assert (proc.stdout + proc.stderr).count("wrote all_results.json") == 1
    assert not (tmp_path / "out" / "checkpoint").exists() and not list((tmp_path / "out").glob(".checkpoint*"))


def test_method_defaults_apply_without_flags(tiny_bert: Path) -> None:
    """No learning-rate, epoch or warm-up flags: each method runs with its registry defaults."""
    for method in ("lntune", "full"):
        results = run_glue.main(_argv(tiny_bert, "rte", method, None, epochs=None))
        spec = run_glue.METHODS[method]
        assert results["learning_rate"] == spec.learning_rate and results["epochs"] == spec.num_train_epochs
        assert results["warmup_ratio"] == spec.warmup_ratio and results["evaluated_on"] == "dev"
        assert results["pooling"] == "cls"  # a checkpoint without a sentence-transformers pooling config


def test_mean_pooling_and_held_out_training_split(tiny_bert: Path) -> None:
    argv = _argv(tiny_bert, "mrpc", "lntune", None, "--pooling", "mean", "--validation_split_percentage", "50")
    results = run_glue.main(argv)
    train_rows = len(run_glue.load_glue(TINY_DIR, "mrpc")["train"])
    assert results["evaluated_on"] == "train_split" and results["pooling"] == "mean"
    assert results["num_train_samples"] + results["num_eval_samples"] == train_rows  # the dev set is not read
    head = HIDDEN * 2 + 2
    assert results["trainable_params"] == NUM_NORMS * 2 * HIDDEN + head  # no pooler left to train
    with pytest.raises(SystemExit):
        run_glue.main(_argv(tiny_bert, "mrpc", "lntune", None, "--validation_split_percentage", "100"))


def test_search_tabulates_resumes_and_refuses_bad_input(tiny_bert: Path, tmp_path: Path, capsys) -> None:
    argv = ["--tasks", "rte", "--methods", "lntune", "--grid", "lntune=1e-3,3e-3", "--epochs", "lntune=1"]
    argv += ["--pooling", "mean", "--model", str(tiny_bert), "--name", "tiny", "--data_dir", str(TINY_DIR)]
    argv += ["--max_train_samples", "4", "--validation_split_percentage", "50", "--out", str(tmp_path)]
    assert search.main(argv) == 0
    markdown = (tmp_path / "glue_search_tiny.md").read_text()
    assert "| lntune | mean-lr0.001-ep1 |" in markdown and "| lntune | mean-lr0.003-ep1 |" in markdown
    assert "the dev set is not used" in markdown and "- lntune: mean-lr" in markdown
    runs = json.loads((tmp_path / "glue_search_tiny.json").read_text())["runs"]
    assert len(runs) == 2 and all(r["evaluated_on"] == "train_split" for r in runs)
    # resumable: nothing re-runs (the data dir is gone)
    argv[argv.index("--data_dir") + 1] = str(tmp_path / "gone")
    assert search.main(argv) == 0
    # a report of other tasks or methods from the same runs folder leaves these runs out
    search.main([*argv, "--tasks", "sst2", "--report_only"])
    assert "| lntune |" not in (tmp_path / "glue_search_tiny.md").read_text()
    search.main([*argv, "--methods", "full", "--report_only"])
    assert "| lntune |" not in (tmp_path / "glue_search_tiny.md").read_text()
    search.main(argv)
    # a method the recipe does not know, in --grid or --methods
    with pytest.raises(SystemExit):
        search.main([*argv, "--grid", "adapterx=1e-3"])
    assert "unknown method 'adapterx'" in capsys.readouterr().err
    # a results folder of another model is refused, by the search and by the sweep
    other = tmp_path / "tmp" / "glue_search_tiny" / "rte" / "lntune" / "x" / "seed0"
    other.mkdir(parents=True)
    (other / "all_results.json").write_text(json.dumps({"model": "/elsewhere/roberta-base", "task": "rte"}))
    with pytest.raises(ValueError, match="one table holds one model"):
        search.main(argv)
    sweep_argv = ["--tasks", "rte", "--methods", "lntune", "--model", str(tiny_bert), "--name", "tiny"]
    sweep_argv += ["--data_dir", str(TINY_DIR), "--runs_dir", str(tmp_path / "tmp" / "glue_search_tiny")]
    with pytest.raises(ValueError, match="one table holds one model"):
        sweep.main([*sweep_argv, "--report_only", "--out", str(tmp_path / "sweep")])


def test_lora_rank_option(tiny_bert: Path, tmp_path: Path, capsys) -> None:
    """--lora_rank sets the rank of the LoRA part (alpha = 2r), is recorded, names the search folder, and is refused
    for a method without LoRA."""
    results = run_glue.main(_argv(tiny_bert, "rte", "lora", None, "--lora_rank", "4"))
    assert results["lora_rank"] == 4
    assert results["trainable_params"] == LAYERS * 2 * (4 * HIDDEN + HIDDEN * 4) + HIDDEN * 2 + 2
    with pytest.raises(SystemExit):
        run_glue.main(_argv(tiny_bert, "rte", "lntune", None, "--lora_rank", "4"))
    assert "has no LoRA part" in capsys.readouterr().err
    argv = ["--tasks", "rte", "--methods", "lntune-lora", "--lora_rank", "lntune-lora=1", "--epochs", "lntune-lora=1"]
    argv += ["--pooling", "mean", "--model", str(tiny_bert), "--name", "tiny", "--data_dir", str(TINY_DIR)]
    argv += ["--max_train_samples", "4", "--validation_split_percentage", "50", "--out", str(tmp_path)]
    assert search.main(argv) == 0
    run = json.loads(next((tmp_path / "tmp").rglob("all_results.json")).read_text())
    assert (
        run["lora_rank"] == 1
        and "| lntune-lora | mean-lr0.002-ep1-r1 |" in (tmp_path / "glue_search_tiny.md").read_text()
    )
    with pytest.raises(SystemExit):
        search.main([*argv, "--lora_rank", "bitfit=4"])
    assert "'bitfit' has no LoRA part" in capsys.readouterr().err


@pytest.mark.parametrize("task", ["stsb", "rte"])
def test_head_start_options(tiny_bert: Path, task: str) -> None:
    extra = ["--head_bias_init", "prior", "--head_warmup_steps", "3"]
    results = run_glue.main(_argv(tiny_bert, task, "lntune", None, *extra))
    if task == "stsb":  # regression: the bias starts at the mean training label
        rows = (TINY_DIR / task / "train.tsv").read_text().splitlines()[1:]
        labels = [float(row.split("\t")[-1]) for row in rows]
        assert results["head_bias_prior"] == pytest.approx([sum(labels) / len(labels)])
    else:  # classification: centred log class frequencies
        assert len(results["head_bias_prior"]) == 2 and sum(results["head_bias_prior"]) == pytest.approx(0.0, abs=1e-9)
    assert results["head_warmup"]["steps"] == 3 and results["head_warmup_steps"] == 3
    plain = run_glue.main(_argv(tiny_bert, task, "lntune", None))
    assert plain["head_bias_init"] == "zero" and "head_bias_prior" not in plain
    assert "head_warmup" not in plain


def test_negative_head_warmup_is_an_argparse_error(tiny_bert: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        run_glue.main(_argv(tiny_bert, "rte", "lntune", None, "--head_warmup_steps", "-1"))
    assert "--head_warmup_steps must be >= 0" in capsys.readouterr().err


def _mean_pooling_checkpoint(tiny_bert: Path, dest: Path) -> Path:
    """A copy of the tiny BERT that says, as sentence-transformers does, it was trained with mean pooling."""
    shutil.copytree(tiny_bert, dest)
    (dest / "1_Pooling").mkdir()
    (dest / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    return dest


def test_auto_pooling_pairs_norm_methods_on_pair_tasks(tiny_bert: Path, tmp_path: Path) -> None:
    """--pooling auto on a mean-pooling checkpoint: the norm-tuning methods and BitFit encode each sentence of a pair
    alone, the others keep the checkpoint's mean pooling; single-sentence tasks and other checkpoints are untouched."""
    mean_ckpt = str(_mean_pooling_checkpoint(tiny_bert, tmp_path / "mean_ckpt"))
    for method, spec in run_glue.METHODS.items():
        assert run_glue.resolve_pooling("auto", mean_ckpt, "rte", method) == ("pair" if spec.pair_pooling else "mean")
        assert run_glue.resolve_pooling("auto", mean_ckpt, "sst2", method) == "mean"
        assert run_glue.resolve_pooling("auto", str(tiny_bert), "rte", method) == "cls"
    paired = {m for m, spec in run_glue.METHODS.items() if spec.pair_pooling}
    assert paired >= {"lntune", "lntune-fisher", "peft-ln", "bitfit"}  # the methods that cannot rewrite a weight
    assert not run_glue.METHODS["full"].pair_pooling and not run_glue.METHODS["lora"].pair_pooling
    assert run_glue.resolve_pooling("mean", mean_ckpt, "rte", "lntune") == "mean"  # an explicit choice wins
    with pytest.raises(ValueError, match="needs a sentence-pair task; cola has one sentence"):
        run_glue.resolve_pooling("pair", mean_ckpt, "cola", "lntune")
    # the run records what it used, and search names its folders by it (not "auto")
    assert run_glue.main(_argv(Path(mean_ckpt), "rte", "lntune", None))["pooling"] == "pair"
    argv = ["--tasks", "rte", "sst2", "--methods", "lntune", "full", "--epochs", "lntune=1", "full=1"]
    argv += ["--model", mean_ckpt, "--name", "tiny", "--data_dir", str(TINY_DIR), "--max_train_samples", "4"]
    argv += ["--validation_split_percentage", "50", "--out", str(tmp_path)]
    assert search.main(argv) == 0
    folders = {p.relative_to(tmp_path / "tmp" / "glue_search_tiny").parts[:3] for p in tmp_path.glob("**/seed0")}
    assert {f[:2]: f[2].split("-")[0] for f in folders} == {
        ("rte", "lntune"): "pair",
        ("sst2", "lntune"): "mean",
        ("rte", "full"): "mean",
        ("sst2", "full"): "mean",
    }


def test_search_skips_pair_pooling_on_single_sentence_tasks(tiny_bert: Path, tmp_path: Path) -> None:
    argv = ["--tasks", "sst2", "rte", "--methods", "lntune", "--epochs", "lntune=1", "--pooling", "pair"]
    argv += ["--model", str(tiny_bert), "--name", "tiny", "--data_dir", str(TINY_DIR), "--max_train_samples", "4"]
    argv += ["--validation_split_percentage", "50", "--out", str(tmp_path)]
    assert search.main(argv) == 0
    assert [p.parts[-4] for p in tmp_path.glob("**/seed0")] == ["rte"]


def test_search_names_head_settings(tiny_bert: Path, tmp_path: Path) -> None:
    argv = ["--tasks", "rte", "--methods", "lntune", "--epochs", "lntune=1", "--pooling", "mean"]
    argv += ["--head_bias_init", "zero", "prior", "--head_warmup_steps", "0", "2", "--model", str(tiny_bert)]
    argv += ["--name", "tiny", "--data_dir", str(TINY_DIR), "--max_train_samples", "4"]
    argv += ["--validation_split_percentage", "50", "--out", str(tmp_path)]
    assert search.main(argv) == 0
    markdown = (tmp_path / "glue_search_tiny.md").read_text()
    base = f"mean-lr{run_glue.METHODS['lntune'].learning_rate:g}-ep1"  # the method's default rate
    for suffix in ("", "-biasprior", "-hw2", "-biasprior-hw2"):
        assert f"| lntune | {base}{suffix} |" in markdown


def test_sweep_refuses_to_average_seeds_of_different_settings(tiny_bert: Path, tmp_path: Path) -> None:
    runs_dir = tmp_path / "runs"
    base = {
        "model": str(tiny_bert),
        "task": "rte",
        "method": "lntune",
        "eval_accuracy": 0.6,
        "eval_accuracy_last": 0.6,
    }
    base |= {"learning_rate": 1e-2, "epochs": 8, "warmup_ratio": 0.06, "pooling": "mean"}
    base |= {
        "per_device_train_batch_size": 32,
        "train_time_per_epoch_s": 1.0,
        "trainable_params": 10,
        "total_params": 99,
    }
    for seed, extra in enumerate([{}, {"head_warmup_steps": 0}, {"head_warmup_steps": 100}]):
        path = runs_dir / "rte" / "lntune" / f"seed{seed}"
        path.mkdir(parents=True)
        (path / "all_results.json").write_text(json.dumps(base | {"seed": seed} | extra))
    argv = ["--tasks", "rte", "--methods", "lntune", "--seeds", "3", "--model", str(tiny_bert), "--name", "tiny"]
    argv += ["--report_only"]
    argv += ["--data_dir", str(TINY_DIR), "--runs_dir", str(runs_dir), "--out", str(tmp_path / "out")]
    with pytest.raises(ValueError, match=r"rte/lntune: the runs differ in \{'head_warmup_steps': \['0', '100'\]\}"):
        sweep.main(argv)
    # seed 0 (written before the key existed) and seed 1 (0 warm-up steps) are one setting
    shutil.rmtree(runs_dir / "rte" / "lntune" / "seed2")
    sweep.main(argv)
    assert "| lntune | 10 (10.10%) | 0.01 | mean | 60.0 ± 0.0 (n=2)" in (tmp_path / "out" / "glue_tiny.md").read_text()
    # a pair-pooled seed next to mean-pooled ones is refused too
    path = runs_dir / "rte" / "lntune" / "seed2"
    path.mkdir()
    (path / "all_results.json").write_text(json.dumps(base | {"seed": 2, "pooling": "pair"}))
    with pytest.raises(ValueError, match=r"rte/lntune: the runs differ in \{'pooling': \['mean', 'pair'\]\}"):
        sweep.main(argv)


def test_sweep_table_says_which_pooling_each_task_used() -> None:
    assert sweep.pooling_text({"sst2": "mean", "cola": "mean"}) == "mean"
    pooling = {"sst2": "mean", "cola": "mean", "mrpc": "pair", "rte": "pair", "stsb": "pair"}
    assert sweep.pooling_text(pooling) == "pair; mean on SST-2, CoLA"
    assert sweep.pooling_text({}) == "n/a"


def test_head_learning_rate_gets_its_own_optimizer_groups(tiny_bert: Path) -> None:
    model, _ = run_glue.load_model(str(tiny_bert), "rte", seed=0, pooling="mean")
    model = get_peft_model(model, lntune.LNTuneConfig(task_type="SEQ_CLS"))
    head = {id(p) for p in lntune.fisher.head_parameters(model) if p.requires_grad}
    assert len(head) == 2  # the trainable copy of classifier.weight and .bias, not the frozen original
    groups = run_glue.optimizer_groups(model, weight_decay=0.01, head_learning_rate=1e-3)
    in_groups = [id(p) for g in groups for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(in_groups) == sorted(trainable)  # every trainable tensor exactly once
    for group in groups:
        ids = {id(p) for p in group["params"]}
        if "lr" in group:
            assert ids <= head and group["lr"] == 1e-3
        else:
            assert not ids & head
    # without it: the two structural groups, head included, at the optimizer's rate
    plain = run_glue.optimizer_groups(model, weight_decay=0.01)
    assert len(plain) == 2 and all("lr" not in g for g in plain)
    # a model with no trainable head says so
    frozen = tf.BertModel(tf.BertConfig(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=2))
    with pytest.raises(ValueError, match="no trainable task-head parameters"):
        run_glue.optimizer_groups(frozen, weight_decay=0.0, head_learning_rate=1e-3)


def test_head_learning_rate_is_recorded_and_searched(tiny_bert: Path, tmp_path: Path, capsys) -> None:
    results = run_glue.main(_argv(tiny_bert, "rte", "lntune", None, "--head_learning_rate", "1e-3"))
    assert results["head_learning_rate"] == 1e-3
    assert run_glue.main(_argv(tiny_bert, "rte", "lntune", None))["head_learning_rate"] is None
    with pytest.raises(SystemExit):
        run_glue.main(_argv(tiny_bert, "rte", "lntune", None, "--head_learning_rate", "0"))
    assert "--head_learning_rate must be > 0" in capsys.readouterr().err
    argv = ["--tasks", "rte", "--methods", "lntune", "--epochs", "lntune=1", "--pooling", "mean"]
    argv += ["--head_learning_rate", "1e-3", "--model", str(tiny_bert), "--name", "tiny"]
    argv += ["--data_dir", str(TINY_DIR), "--max_train_samples", "4", "--validation_split_percentage", "50"]
    argv += ["--out", str(tmp_path)]
    assert search.main(argv) == 0
    base = f"mean-lr{run_glue.METHODS['lntune'].learning_rate:g}-ep1"
    assert f"| lntune | {base}-hlr0.001 |" in (tmp_path / "glue_search_tiny.md").read_text()


def test_pair_pooling_run_reloads(tiny_bert: Path, tmp_path: Path) -> None:
    """--pooling pair trains lntune on a pair task, and its adapter reloads onto a base with the same pooling."""
    extra = ["--pooling", "pair", "--warmup_ratio", "0", "--per_device_train_batch_size", "4"]
    results = run_glue.main(_argv(tiny_bert, "rte", "lntune", tmp_path, *extra))
    assert results["pooling"] == "pair" and results["new_head_weights"] == ["classifier.bias", "classifier.weight"]
    base, _ = run_glue.load_model(str(tiny_bert), "rte", seed=0, pooling="pair")
    model = PeftModel.from_pretrained(base, str(tmp_path)).eval()
    tok = tf.AutoTokenizer.from_pretrained(str(tiny_bert))
    dev = run_glue.load_glue(TINY_DIR, "rte")["validation"]
    batch = tok(list(dev["sentence1"]), list(dev["sentence2"]), padding=True, return_tensors="pt")
    with torch.no_grad():
        preds = model(**batch).logits.argmax(-1).numpy()
    assert float((preds == list(dev["label"])).mean()) == pytest.approx(results["eval_accuracy_last"])


def test_pair_pooling_refuses_single_sentence_tasks(tiny_bert: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        run_glue.main(_argv(tiny_bert, "sst2", "lntune", None, "--pooling", "pair"))
    assert "needs a sentence-pair task" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:fisher_scores. num_samples=1024:UserWarning")
def test_fisher_subset_with_pair_pooling(tiny_bert: Path) -> None:
    """The Fisher subset scores through both encoder passes (tests/fisher checks the scores against the reference)."""
    results = run_glue.main(_argv(tiny_bert, "mrpc", "lntune-fisher", None, "--pooling", "pair"))
    assert results["pooling"] == "pair" and results["fisher_selected"] > 0


def test_saved_predictions_split_cola_by_domain(tiny_bert: Path, tmp_path: Path) -> None:
    # a CoLA copy whose dev set has one source the training set has (gj04) and one it has not (zz99)
    data = tmp_path / "glue" / "cola"
    data.mkdir(parents=True)
    shutil.copy(TINY_DIR / "cola" / "train.tsv", data / "train.tsv")
    dev = [
        ("gj04", 1, "She read the book."),
        ("gj04", 0, "Book the read."),
        ("zz99", 1, "He ran."),
        ("zz99", 0, "Ran he the."),
    ]
    (data / "dev.tsv").write_text("".join(f"{s}\t{y}\t{'' if y else '*'}\t{t}\n" for s, y, t in dev))
    out = tmp_path / "runs" / "cola" / "lntune" / "seed0"
    argv = _argv(tiny_bert, "cola", "lntune", out, "--save_predictions", epochs="2")
    argv[argv.index("--data_dir") + 1] = str(data.parent)
    results = run_glue.main(argv)
    saved = json.loads((out / "eval_predictions.json").read_text())
    assert saved["idx"] == [0, 1, 2, 3] and saved["labels"] == [1, 0, 1, 0] and saved["evaluated_on"] == "dev"
    assert saved["best_epoch"] == results["best_epoch"] and len(saved["best"]) == len(saved["last"]) == 4
    # the predictions are what the run scored: its last-epoch MCC recomputed from them
    mcc = run_glue.glue_metric("cola", saved["last"], saved["labels"])["matthews_correlation"]
    assert mcc == pytest.approx(results["eval_matthews_correlation_last"])

    masks = cola_domains.domain_masks(data.parent)
    assert masks["in-domain"].tolist() == [True, True, False, False]
    labels = cola_domains.np.array([1, 0, 1, 0])
    # right on the in-domain pair, wrong on the out-of-domain one: +100 / -100 / 0 overall
    fake = {**saved, "best": [1, 0, 0, 1], "last": [1, 0, 0, 1]}
    scores = cola_domains.run_scores(fake, masks, labels)
    assert scores["last"] == {"all": 0.0, "in-domain": 100.0, "out-of-domain": -100.0}
    text = cola_domains.main(["--runs_dir", str(tmp_path / "runs"), "--data_dir", str(data.parent)])
    assert "| lntune | 1 | last |" in text and "2 in-domain" in text and "2 out-of-domain" in text

    # a run that scored a subset of the dev set, or another copy of it, is refused
    with pytest.raises(ValueError, match="without --max_eval_samples"):
        cola_domains.run_scores({**fake, "idx": [0, 1], "best": [1, 0], "last": [1, 0]}, masks, labels)
    with pytest.raises(ValueError, match="labels do not match"):
        cola_domains.run_scores({**fake, "labels": [0, 0, 1, 0]}, masks, labels)
    with pytest.raises(SystemExit, match="--save_predictions"):
        cola_domains.main(["--runs_dir", str(tmp_path / "empty"), "--data_dir", str(data.parent)])
    with pytest.raises(SystemExit, match="in two folders"):  # one seed counted once
        cola_domains.main(
            ["--runs_dir", str(tmp_path / "runs"), str(tmp_path / "runs"), "--data_dir", str(data.parent)]
        )
    with pytest.raises(SystemExit):  # --save_predictions needs somewhere to write
        run_glue.main(_argv(tiny_bert, "cola", "lntune", None, "--save_predictions"))


def test_sweep_table_counts_params_on_the_first_task_a_method_ran() -> None:
    """A method with no run on the first listed task still gets its parameter count (from the next task it ran)."""
    run = {"method": "bitfit", "task": "cola", "eval_matthews_correlation": 0.2, "eval_matthews_correlation_last": 0.1}
    run |= {"train_time_per_epoch_s": 1.0, "learning_rate": 3e-3, "trainable_params": 265, "total_params": 1000}
    summary = sweep.summarize([run], ["sst2", "cola"], ["bitfit"])
    assert "| bitfit | 265 (26.50%) | 0.003 |" in sweep.markdown_table(summary, ["sst2", "cola"])


def _kill_runs_in_epoch_1(monkeypatch: pytest.MonkeyPatch):
    """Make run_glue's second evaluation (epoch 1's) raise, as if the machine stopped; returns the real evaluate."""
    evaluate, calls = run_glue.evaluate, []

    def killed_in_epoch_1(*args, **kwargs):
        calls.append(None)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(run_glue, "evaluate", killed_in_epoch_1)
    return evaluate


@pytest.mark.parametrize("method, task", [("lntune", "stsb"), ("full", "rte")])
def test_interrupted_run_resumes_to_the_uninterrupted_result(
    tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str, task: str
) -> None:
    """A run killed in epoch 1 and resumed from its epoch-0 checkpoint ends where the uninterrupted run ends (same
    weights, optimizer, scheduler and shuffle), and a state saved under other settings is refused, not mixed in."""
    extra = ["--per_device_train_batch_size", "1", "--save_predictions"]
    extra += ["--checkpointing_steps", "epoch", "--resume_from_checkpoint", "auto"]
    whole = run_glue.main(_argv(tiny_bert, task, method, tmp_path / "whole", *extra, epochs="3"))
    assert not (tmp_path / "whole" / "checkpoint").exists()  # removed once the run is complete

    evaluate = _kill_runs_in_epoch_1(monkeypatch)
    with pytest.raises(RuntimeError, match="killed"):
        run_glue.main(_argv(tiny_bert, task, method, tmp_path / "cut", *extra, epochs="3"))
    monkeypatch.setattr(run_glue, "evaluate", evaluate)
    checkpoint = tmp_path / "cut" / "checkpoint"
    assert len(json.loads((checkpoint / "progress.json").read_text())["history"]) == 1
    with pytest.raises(ValueError, match=r"other settings \(warmup_ratio: 0.06 there, 0.5 now\)"):
        run_glue.main(_argv(tiny_bert, task, method, tmp_path / "cut", *extra, "--warmup_ratio", "0.5", epochs="3"))
    resumed = run_glue.main(_argv(tiny_bert, task, method, tmp_path / "cut", *extra, epochs="3"))
    assert resumed["resumed_after_epochs"] == 1 and not checkpoint.exists()
    assert [h.pop("train_loss") for h in resumed["history"]] == pytest.approx(
        [h.pop("train_loss") for h in whole["history"]]
    )
    assert resumed["history"] == whole["history"]
    predictions = [json.loads((tmp_path / run / "eval_predictions.json").read_text()) for run in ("whole", "cut")]
    assert predictions[0] == predictions[1]


def test_checkpoint_flags_refuse_bad_input(tiny_bert: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        run_glue.parse_args(_argv(tiny_bert, "rte", "lntune", None, "--checkpointing_steps", "epoch"))
    assert "use <output_dir>/checkpoint: pass --output_dir" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="no progress.json there; pass a folder written by"):
        run_glue.main(_argv(tiny_bert, "rte", "lntune", tmp_path, "--resume_from_checkpoint", str(tmp_path / "x")))


def test_sweep_continues_a_cut_run_from_its_last_epoch(
    tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = ["--tasks", "rte", "--methods", "lntune", "--seeds", "1", "--model", str(tiny_bert), "--name", "tiny"]
    argv += ["--data_dir", str(TINY_DIR), "--num_train_epochs", "2", "--out", str(tmp_path), "--cpu"]
    argv += ["--run_args", "--per_device_train_batch_size", "1"]
    evaluate = _kill_runs_in_epoch_1(monkeypatch)
    assert sweep.main(argv) == 1  # the failure is reported, the epoch-0 state stays
    monkeypatch.setattr(run_glue, "evaluate", evaluate)
    assert sweep.main(argv) == 0
    results = json.loads(
        (tmp_path / "tmp" / "glue_tiny" / "rte" / "lntune" / "seed0" / "all_results.json").read_text()
    )
    assert results["resumed_after_epochs"] == 1 and len(results["history"]) == 2


@pytest.mark.parametrize("task", ["stsb", "mrpc"])
def test_lntune_trains_like_peft_ln_tuning(tiny_bert: Path, task: str) -> None:
    """lntune (a delta on each frozen norm) and peft's LNTuningConfig (a trained copy of each norm) are the same method:
    the same training loss and dev scores, epoch by epoch, up to float rounding."""
    histories = {}
    for method in ("lntune", "peft-ln"):
        argv = _argv(tiny_bert, task, method, None, "--seed", "3", "--learning_rate", "1e-2", epochs="3")
        histories[method] = run_glue.main(argv)["history"]
    ours, peft_ln = histories["lntune"], histories["peft-ln"]
    assert len(ours) == len(peft_ln) == 3
    assert ours[0]["train_loss"] != ours[-1]["train_loss"]  # the norms (and head) did train
    for mine, theirs in zip(ours, peft_ln):
        assert mine.keys() == theirs.keys()
        for key, value in mine.items():
            assert theirs[key] == pytest.approx(value, rel=1e-4, abs=1e-6), (key, mine, theirs)
