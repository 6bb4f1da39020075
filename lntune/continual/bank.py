# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Task-keyed LayerNorm banks for class-incremental learning (De Min et al. 2023, arXiv:2308.09610).

A bank holds, on one frozen backbone, one lntune adapter per task (gain and bias deltas of every norm, named
``task_0``, ``task_1`` ...), keys that say which task a sample belongs to, and a classifier over all classes.

- :class:`LNBank` (the paper's two-stage method): the *query* of a sample is the frozen backbone's pooled feature
  (adapters off). Keys live in that space: one per task (``key_mode="task"``, the paper) or one per class, mapped to
  its task (``key_mode="class"``). Inference is two batched passes whatever the number of tasks: a frozen query pass,
  then one routed pass where row ``i`` runs with the adapter of its selected task (``adapter_names=[...]``).
- :class:`~lntune.continual.single_pass.SinglePassLNBank` (the official code's ``single_stage``, in its own module):
  one key per norm layer and task, matched against the first ([CLS]) token of that layer's own input: one pass.

A new task's adapter starts from the previous task's deltas; its keys start orthogonal to all earlier keys. The
training stages are in :mod:`lntune.continual.stages`, saving and loading in :mod:`lntune.continual.checkpoint`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from peft import PeftModel, get_peft_model
from torch import nn

from ..tuner import BASE_ADAPTER, LNTuneConfig, LNTuneLayer
from .backbone import Encoder, as_encoder, find_blocks, pool_tokens
from .bank_state import BankState
from .keys import orthogonal_init
from .router import ClassStatistics
from .splits import as_int_list

__all__ = ["KEY_MODES", "ROUTERS", "BankOutput", "LNBank"]

KEY_MODES = ("task", "class")
ROUTERS = ("keys", "lda")


@dataclass
class BankOutput:
    """Inference result: logits over the seen classes, logits over the selected task's classes only (all others
    ``-inf`` in both), the features and the selected task of each sample."""

    logits: torch.Tensor
    task_logits: torch.Tensor
    features: torch.Tensor
    task_ids: torch.Tensor


class LNBank(BankState, nn.Module):
    """
    A bank of per-task LN adapters on one frozen backbone, selected per sample by keys on the frozen query.

    Args:
        encoder (`nn.Module`):
            An [`Encoder`] or a model [`as_encoder`] understands (transformers ViT/BERT, timm ViT). It is frozen; the
            first `add_task` wraps it with peft (its norm layers become `LNTuneLayer`s).
        num_classes (`int`):
            Width of the classifier: all classes of all tasks, in incremental labels (task 0's classes first).
        key_mode (`str`):
            `"task"`: one key per task (the paper). `"class"`: one key per class, pointing at the class's task.
        lntune_config (`Optional[LNTuneConfig]`):
            Template for every task's adapter (default: every norm, gain and bias). Must start from zero deltas.
        prefix (`str`):
            Adapter names are `f"{prefix}{t}"`.
        seed (`int`):
            Seeds the classifier and the key initialisation (task `t` draws from `seed` and `t`).
        router (`str`):
            `"keys"` (nearest key) or `"lda"` (the task of the class shrunk LDA predicts on the query).
        shrinkage (`Optional[float]`):
            LDA covariance shrinkage (`None`: OAS), see [`~router.ClassStatistics`].
        query_layers (`int`):
            How many layers the frozen query reads: `1` (default) is the encoder's pooled feature; `k > 1`
            concatenates, in depth order, the pooled token entering each of the last `k - 1` blocks and then that
            feature (`k * dim` numbers: on CLINC150 / MiniLM, LDA on the last three layers' mean-pooled tokens gains
            2.2 points over the last layer alone; `results/continual/router_probe.md`). Keys and LDA statistics live
            in the query space; the classifier keeps reading the adapted pooled feature.

    Example:

        ```py
        >>> from lntune.continual import LNBank
        >>> bank = LNBank(vit, num_classes=10)
        >>> t = bank.add_task([0, 1])  # adapter "task_0" and its key
        >>> out = bank(pixel_values=x)  # two passes: query -> task -> routed features -> logits
        >>> out.task_ids, out.logits.argmax(-1)
        ```

    **Attributes**:
        - **model** (`PeftModel` or `Encoder`) -- the backbone (a `PeftModel` once a task exists).
        - **keys** (`nn.ParameterList`) -- `keys[t]` is a `(k_t, dim)` tensor: `k_t = 1` (task mode) or the number
          of classes of task `t` (class mode).
        - **classifier** / **aux_classifier** (`nn.Linear`) -- the inference head, and the head trained with the LNs
          in stage 1 when stage 2 (classifier rectification) retrains `classifier` (the official code's `fake_head`).
        - **task_classes** (`list[list[int]]`) -- the classes of each task.
    """

    one_pass = False  # True for banks that choose the task inside the forward pass (no query pass)

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        key_mode: str = "task",
        lntune_config: Optional[LNTuneConfig] = None,
        prefix: str = "task_",
        seed: int = 0,
        router: str = "keys",
        shrinkage: Optional[float] = None,
        query_layers: int = 1,
    ) -> None:
        super().__init__()
        if key_mode not in KEY_MODES:
            raise ValueError(f"key_mode must be one of {KEY_MODES}, got {key_mode!r}.")
        if router not in ROUTERS:
            raise ValueError(f"router must be one of {ROUTERS}, got {router!r}.")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}.")
        lntune_config = lntune_config if lntune_config is not None else LNTuneConfig()
        if not lntune_config.init_weights:
            raise ValueError("The bank's lntune_config must have init_weights=True: task 0 starts from the backbone.")
        encoder = as_encoder(encoder)
        encoder.requires_grad_(False)
        if isinstance(query_layers, bool) or not isinstance(query_layers, int) or query_layers < 1:
            raise ValueError(f"query_layers must be a positive int, got {query_layers!r}.")
        blocks = list(find_blocks(encoder)[1]) if query_layers > 1 else []
        if query_layers > 1 and query_layers > len(blocks):
            raise ValueError(
                f"query_layers={query_layers} reads the inputs of the last {query_layers - 1} blocks, but the backbone "
                f"has {len(blocks)} blocks: use at most {len(blocks)}."
            )
        # a plain list, so the blocks are not registered twice as submodules
        self._query_blocks = blocks[len(blocks) - query_layers + 1 :]
        self.query_layers = query_layers
        self.model: nn.Module = encoder
        self.num_classes = num_classes
        self.key_mode = key_mode
        self.lntune_config = lntune_config
        self.prefix = prefix
        self.seed = int(seed)
        self.dim = encoder.dim
        self.query_dim = encoder.dim * query_layers
        self.keys = nn.ParameterList()
        self.task_classes: list[list[int]] = []
        g = torch.Generator().manual_seed(self.seed)
        self.classifier = nn.Linear(self.dim, num_classes)
        nn.init.trunc_normal_(self.classifier.weight, std=0.02, generator=g)
        nn.init.zeros_(self.classifier.bias)
        self.aux_classifier = copy.deepcopy(self.classifier)
        self.classifier.requires_grad_(False)
        self.aux_classifier.requires_grad_(False)
        self.router = router
        self.statistics = ClassStatistics(num_classes, self.query_dim, shrinkage) if router == "lda" else None

    # ------------------------------------------------------------------ structure
    @property
    def encoder(self) -> Encoder:
        """The wrapped backbone (inside the peft model once a task exists)."""
        return self.model.get_base_model() if isinstance(self.model, PeftModel) else self.model

    @property
    def num_tasks(self) -> int:
        return len(self.task_classes)

    @property
    def device(self) -> torch.device:
        return self.classifier.weight.device

    def adapter_name(self, t: int) -> str:
        return f"{self.prefix}{self.check_task(t)}"

    def check_task(self, t: Any) -> int:
        """`t` as an int, or a ValueError if it is not the id of an existing task."""
        if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, np.integer)) or not 0 <= t < self.num_tasks:
            raise ValueError(
                f"Task id {t!r} is out of range: this bank has {self.num_tasks} task(s)"
                f"{f' (0..{self.num_tasks - 1})' if self.num_tasks else ''}."
            )
        return int(t)

    def lntune_layers(self) -> list[tuple[str, LNTuneLayer]]:
        """(name, layer) of every adapted norm, in module (execution) order; empty before the first task."""
        if not isinstance(self.model, PeftModel):
            return []
        return self.model.base_model.lntune_layers()

    def adapter_parameters(self, t: int) -> list[nn.Parameter]:
        """The gain/bias deltas of task `t` (all norms)."""
        return list(self.model.base_model.adapter_params(self.adapter_name(t)).values())

    def key_parameters(self, t: int) -> list[nn.Parameter]:
        """The keys of task `t` (what stage 1 learns before the LNs)."""
        return [self.keys[self.check_task(t)]]

    def seen_classes(self, upto: Optional[int] = None) -> list[int]:
        """Classes of tasks `0..upto` (default: all tasks), in task order."""
        upto = self.num_tasks - 1 if upto is None else self.check_task(upto)
        return [c for classes in self.task_classes[: upto + 1] for c in classes]

    def validate(self) -> None:
        """Raise a ValueError if the keys and the adapters disagree in number (or with the tasks)."""
        adapters = 0
        if isinstance(self.model, PeftModel):
            adapters = sum(1 for n in self.model.peft_config if n.startswith(self.prefix))
        keys = self._num_key_sets()
        if not adapters == keys == self.num_tasks:
            raise ValueError(
                f"Inconsistent LN bank: {adapters} adapter(s), {keys} key set(s) and {self.num_tasks} task(s); each "
                "task needs exactly one adapter and one set of keys (was it saved or edited partially?)."
            )

    def _num_key_sets(self) -> int:
        return len(self.keys)

    # ------------------------------------------------------------------ growing
    def _check_new_classes(self, classes: Sequence[Any]) -> list[int]:
        classes = as_int_list(list(classes), "classes")
        if not classes:
            raise ValueError(f"Task {self.num_tasks} is empty: a task needs at least one class.")
        bad = sorted({c for c in classes if not 0 <= c < self.num_classes})
        if bad:
            raise ValueError(f"Classes {bad} are outside [0, {self.num_classes}) (num_classes={self.num_classes}).")
        if len(set(classes)) != len(classes):
            raise ValueError(f"Task {self.num_tasks} lists a class twice: {classes}.")
        owner = {c: t for t, cs in enumerate(self.task_classes) for c in cs}
        repeated = sorted(c for c in classes if c in owner)
        if repeated:
            raise ValueError(
                f"Classes {repeated} already belong to task {owner[repeated[0]]}; in class-incremental learning each "
                "class belongs to exactly one task."
            )
        return classes

    def add_task(self, classes: Sequence[int]) -> int:
        """Add a task learning `classes` (incremental labels): a new adapter (copying the previous task's deltas)
        and fresh keys orthogonal to the earlier ones. Returns the new task id. Everything stays frozen."""
        classes = self._check_new_classes(classes)
        t = self.num_tasks
        name = f"{self.prefix}{t}"
        config = copy.deepcopy(self.lntune_config)
        if not isinstance(self.model, PeftModel):
            self.model = get_peft_model(self.model, config, adapter_name=name)
        else:
            self.model.add_adapter(name, config)
            self.model.base_model.copy_adapter_values(f"{self.prefix}{t - 1}", name)
        self.task_classes.append(classes)
        self._add_keys(t, classes)
        self.freeze()
        return t

    def _key_generator(self, t: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + 7919 * (t + 1))

    def _add_keys(self, t: int, classes: list[int]) -> None:
        count = 1 if self.key_mode == "task" else len(classes)
        existing = torch.cat(list(self.keys)) if len(self.keys) else None
        init = orthogonal_init(count, self.query_dim, existing, self._key_generator(t))
        self.keys.append(nn.Parameter(init.to(self.device), requires_grad=False))

    def freeze(self) -> None:
        """Make everything non-trainable (the trainer enables exactly what each stage trains)."""
        for p in self.parameters():
            p.requires_grad_(False)

    # ------------------------------------------------------------------ keys and selection
    def key_matrix(self, upto: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """All keys of tasks `0..upto` as one `(M, dim)` matrix, and the task each row points to."""
        upto = self.num_tasks - 1 if upto is None else self.check_task(upto)
        keys = list(self.keys)[: upto + 1]
        owner = torch.cat([torch.full((len(k),), t, dtype=torch.long) for t, k in enumerate(keys)])
        return torch.cat(keys), owner.to(keys[0].device)

    def select(self, queries: torch.Tensor, upto: Optional[int] = None) -> torch.Tensor:
        """Task of each query among tasks `0..upto`: the owner of the key with the highest cosine similarity
        (`router="keys"`), or the task of the class the LDA statistics predict (`router="lda"`)."""
        if self.num_tasks == 0:
            raise ValueError("The bank has no task yet: add_task() first.")
        self.validate()
        if self.router == "lda":
            return self.task_scores(queries, upto).argmax(dim=-1)
        keys, owner = self.key_matrix(upto)
        sim = F.normalize(queries.float(), dim=-1) @ F.normalize(keys.float(), dim=-1).T
        return owner[sim.argmax(dim=-1).to(owner.device)]

    def task_scores(self, queries: torch.Tensor, upto: Optional[int] = None) -> torch.Tensor:
        """`(n, upto + 1)`: how well each query matches each task, the router's best score among the task's keys
        (cosine) or classes (LDA discriminant)."""
        upto = self.num_tasks - 1 if upto is None else self.check_task(upto)
        if self.statistics is not None:
            return self.statistics.task_scores(queries, self.class_task(), upto + 1).to(queries.device)
        keys, owner = self.key_matrix(upto)
        sim = F.normalize(queries.float(), dim=-1) @ F.normalize(keys.float(), dim=-1).T
        out = torch.full((sim.shape[0], upto + 1), float("-inf"), device=sim.device)
        index = owner.to(sim.device).unsqueeze(0).expand_as(sim)
        return out.scatter_reduce(1, index, sim, reduce="amax", include_self=True)

    def fit_router(self, queries: torch.Tensor, labels: torch.Tensor) -> None:
        """Add frozen queries and their (incremental) labels to the LDA statistics (nothing with key routing)."""
        if self.statistics is not None:
            self.statistics.update(queries, labels)

    def key_loss(self, queries: torch.Tensor, t: int, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Negative mean cosine similarity between task `t`'s queries and their key (class mode: their class's key;
        `labels` are incremental labels, all in task `t`)."""
        keys = self.keys[self.check_task(t)]
        if self.key_mode == "task":
            target = keys[0].expand(queries.shape[0], -1)
        else:
            if labels is None:
                raise ValueError("key_mode='class' needs the labels of the queries to learn the class keys.")
            position = {c: i for i, c in enumerate(self.task_classes[t])}
            try:
                rows = [position[int(y)] for y in labels.tolist()]
            except KeyError as e:
                raise ValueError(f"Label {e.args[0]} is not a class of task {t} ({self.task_classes[t]}).") from None
            target = keys[torch.tensor(rows, device=keys.device)]
        return -F.cosine_similarity(queries.float().to(keys.device), target, dim=-1).mean()

    # ------------------------------------------------------------------ forward passes
    def _forward(self, inputs: dict[str, torch.Tensor], adapter_names: Optional[list[str]]) -> torch.Tensor:
        if not isinstance(self.model, PeftModel):
            return self.model(**inputs)  # no task yet: the backbone is the frozen model
        if adapter_names is None:
            return self.model(**inputs)
        return self.model(**inputs, adapter_names=adapter_names)

    def query(self, adapter_names: Optional[list[str]] = None, **inputs: torch.Tensor) -> torch.Tensor:
        """The frozen backbone's pooled feature (every row routed to the base model, i.e. adapters disabled); with
        `query_layers = k > 1`, the pooled inputs of the last `k - 1` blocks and that feature, concatenated.
        `adapter_names` (one per row) computes the same query with those adapters instead (for analyses)."""
        names = adapter_names or [BASE_ADAPTER] * self.encoder.batch_size(inputs)
        if self.query_layers == 1:
            with torch.no_grad():
                return self._forward(inputs, names).float()
        mask, pooled = inputs.get("attention_mask"), []

        def capture(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            pooled.append(pool_tokens(self.encoder, args[0] if args else kwargs["hidden_states"], mask))

        handles = [block.register_forward_pre_hook(capture, with_kwargs=True) for block in self._query_blocks]
        try:
            with torch.no_grad():
                final = self._forward(inputs, names).float()
        finally:
            for handle in handles:
                handle.remove()
        return torch.cat([*pooled, final], dim=-1)

    def task_features(self, t: int, **inputs: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Features of a batch that all runs with task `t`'s adapter (training). The second value is an extra loss
        term of the method (None here; the single-pass bank returns its key loss)."""
        name = self.adapter_name(t)
        return self._forward(inputs, [name] * self.encoder.batch_size(inputs)), None

    def routed_features(self, task_ids: torch.Tensor, **inputs: torch.Tensor) -> torch.Tensor:
        """One batched pass where row `i` runs with the adapter of task `task_ids[i]`."""
        names = [self.adapter_name(int(t)) for t in task_ids.tolist()]
        return self._forward(inputs, names)

    def infer(
        self,
        queries: Optional[torch.Tensor] = None,
        upto: Optional[int] = None,
        topk: int = 1,
        **inputs: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, selected task) with the LN values inference picks: a query pass (skipped when cached
        `queries` are given), then one routed pass.

        `topk > 1`: the router proposes its `topk` best tasks, every candidate runs in one routed pass (`topk` rows
        per sample), and each sample keeps the candidate whose own classes get the highest logit of the inference
        head (the adapted model's confidence decides among the router's candidates)."""
        if queries is None:
            queries = self.query(**inputs)
        upto = self.num_tasks - 1 if upto is None else self.check_task(upto)
        k = min(int(topk), upto + 1)
        if k <= 1:
            task_ids = self.select(queries, upto)
            return self.routed_features(task_ids, **inputs), task_ids
        candidates = self.task_scores(queries, upto).topk(k, dim=-1).indices.cpu()  # (n, k)
        repeated = {name: v.repeat_interleave(k, dim=0) for name, v in inputs.items()}
        features = self.routed_features(candidates.flatten(), **repeated)
        logits = self.logits(features.float(), upto=upto, task_ids=candidates.flatten())
        best = logits.max(dim=-1).values.view(-1, k).argmax(dim=-1).cpu()
        rows = torch.arange(len(best))
        return features.view(len(best), k, -1)[rows, best], candidates[rows, best]

    def class_log_posterior(self, queries: torch.Tensor, upto: Optional[int] = None) -> torch.Tensor:
        """`(n, num_classes)`: the LDA router's class log-posterior (equal priors) over the classes of tasks
        `0..upto`, `-inf` for every other class. Needs `router="lda"` (the statistics)."""
        if self.statistics is None:
            raise ValueError("class_log_posterior needs the LDA statistics: build the bank with router='lda'.")
        upto = self.num_tasks - 1 if upto is None else self.check_task(upto)
        scores, classes = self.statistics.scores(queries)
        keep = self.class_task().to(classes.device)[classes] <= upto
        out = torch.full((queries.shape[0], self.num_classes), float("-inf"), device=queries.device)
        out[:, classes[keep].to(out.device)] = scores[:, keep].float().to(out.device)
        return out.log_softmax(dim=-1)

    def class_task(self) -> torch.Tensor:
        """`class_task()[c]` is the task of class `c` (-1 for classes of no task yet)."""
        out = torch.full((self.num_classes,), -1, dtype=torch.long)
        for t, classes in enumerate(self.task_classes):
            out[classes] = t
        return out.to(self.device)

    def logits(
        self,
        features: torch.Tensor,
        upto: Optional[int] = None,
        aux: bool = False,
        task_ids: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Classifier logits with the classes of tasks after `upto` masked to `-inf`; with `task_ids`, row `i` keeps
        only the classes of task `task_ids[i]` (the keys pick the task, the head the class within it)."""
        head = self.aux_classifier if aux else self.classifier
        logits = head(features.to(head.weight.dtype))
        upto = self.num_tasks - 1 if upto is None else self.check_task(upto)
        owner = self.class_task().to(logits.device)
        if task_ids is None:
            keep = ((owner >= 0) & (owner <= upto)).unsqueeze(0)
        else:
            keep = owner.unsqueeze(0) == task_ids.to(logits.device).unsqueeze(1)
        return logits.masked_fill(~keep, float("-inf"))

    def forward(self, queries: Optional[torch.Tensor] = None, **inputs: torch.Tensor) -> BankOutput:
        """Full inference on a batch of model inputs (`pixel_values=` / `input_ids=` ...)."""
        features, task_ids = self.infer(queries=queries, **inputs)
        return BankOutput(
            logits=self.logits(features),
            task_logits=self.logits(features, task_ids=task_ids),
            features=features,
            task_ids=task_ids,
        )
