# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Local GLUE metric for ``evaluate``: ``evaluate.load("path/to/glue_metric", config_name=task)``.

Same config names, inputs and outputs as the Hub ``glue`` metric, computed by ``lntune.glue.metric.glue_metric``
(scikit-learn / scipy), so it loads and runs with ``HF_HUB_OFFLINE=1``. Prefer ``lntune.glue.load_glue_metric``.
"""

import datasets
import evaluate

from lntune.glue.metric import METRIC_CONFIGS, glue_metric

_CITATION = """\
@inproceedings{wang2019glue,
  title={{GLUE}: A Multi-Task Benchmark and Analysis Platform for Natural Language Understanding},
  author={Wang, Alex and Singh, Amanpreet and Michael, Julian and Hill, Felix and Levy, Omer and Bowman, Samuel R.},
  booktitle={International Conference on Learning Representations},
  year={2019}
}
"""

_DESCRIPTION = """\
GLUE metrics (accuracy, F1, Matthews correlation, Pearson / Spearman correlation) for the GLUE tasks, with the
same config names and result keys as the Hugging Face Hub `glue` metric, computed locally.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: class ids (int) per example; float scores for `stsb`.
    references: gold class ids (int) per example; float scores for `stsb`.
Returns, depending on the config:
    sst2, mnli, mnli_matched, mnli_mismatched, qnli, rte, wnli, hans: {"accuracy"}
    mrpc, qqp: {"accuracy", "f1"}
    cola: {"matthews_correlation"}
    stsb: {"pearson", "spearmanr"}
Example:
    >>> metric = evaluate.load("lntune/glue/glue_metric", config_name="mrpc")
    >>> metric.compute(predictions=[0, 1], references=[0, 1])
    {'accuracy': 1.0, 'f1': 1.0}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class GlueMetric(evaluate.Metric):
    """GLUE metric computed with scikit-learn / scipy; config name = GLUE task."""

    def _info(self) -> evaluate.MetricInfo:
        if self.config_name not in METRIC_CONFIGS:
            raise ValueError(
                f"Unknown GLUE metric config {self.config_name!r}; pass config_name= one of {list(METRIC_CONFIGS)}."
            )
        # Same feature types as the Hub metric (float32 scores for stsb, int64 class ids otherwise).
        dtype = "float32" if self.config_name == "stsb" else "int64"
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value(dtype), "references": datasets.Value(dtype)}),
            codebase_urls=[],
            reference_urls=["https://gluebenchmark.com/"],
            format="numpy",
        )

    def _compute(self, predictions, references) -> dict:
        return glue_metric(self.config_name, predictions, references)
