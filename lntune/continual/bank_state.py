# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""What a bank's checkpoint holds: its manifest (the shape to rebuild) and its trained tensors, as a mixin of
:class:`~lntune.continual.bank.LNBank` (kept apart so that the bank's module reads as the method itself)."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["BankState"]


class BankState:
    """Manifest and state tensors of an LN bank (every task's deltas, the keys, both heads, the LDA statistics).
    Mixed into `LNBank`, whose attributes it reads; a subclass with other keys overrides
    `_named_state_parameters`."""

    def manifest(self) -> dict[str, Any]:
        """JSON-ready description: enough to rebuild an empty bank of the same shape before loading tensors."""
        return {
            "class": type(self).__name__,
            "num_classes": self.num_classes,
            "key_mode": self.key_mode,
            "prefix": self.prefix,
            "seed": self.seed,
            "dim": self.dim,
            "task_classes": [list(c) for c in self.task_classes],
            "lntune_config": self.lntune_config.to_dict(),
            "router": self.router,
            "shrinkage": None if self.statistics is None else self.statistics.shrinkage,
            "query_layers": self.query_layers,
        }

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """What a checkpoint holds: every task's deltas, the keys and both heads (not the frozen backbone)."""
        # a snapshot on the CPU, not views of the live parameters
        return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in self._named_state_parameters().items()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Copy a checkpoint's tensors into this bank (built with the same tasks); every tensor must match."""
        expected = self.state_tensors()
        key_sets = {k.split(".")[1] for k in tensors if k.startswith(("keys.", "layer_keys."))}
        adapter_sets = {k.split(".")[1] for k in tensors if k.startswith("adapters.")}
        keyed = any(k.startswith(("keys.", "layer_keys.")) for k in expected)  # a late-selection bank has no keys
        if (keyed or key_sets) and len(key_sets) != len(adapter_sets):
            raise ValueError(
                f"Inconsistent LN bank checkpoint: {len(adapter_sets)} adapter(s) but {len(key_sets)} key set(s); "
                "each task needs exactly one adapter and one set of keys."
            )
        missing = sorted(set(expected) - set(tensors))
        extra = sorted(set(tensors) - set(expected))
        if missing or extra:
            raise ValueError(
                f"Checkpoint does not match the bank ({self.num_tasks} task(s)): missing {missing[:3]}"
                f"{' ...' if len(missing) > 3 else ''}, unexpected {extra[:3]}{' ...' if len(extra) > 3 else ''}."
            )
        params = self._named_state_parameters()
        with torch.no_grad():
            for k, v in tensors.items():
                if params[k].shape != v.shape:
                    raise ValueError(
                        f"Checkpoint tensor {k} has shape {list(v.shape)}, the bank {list(params[k].shape)}."
                    )
                params[k].copy_(v.to(params[k].device, params[k].dtype))

    def _named_state_parameters(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for t in range(self.num_tasks):
            name = self.adapter_name(t)
            params = self.model.base_model.adapter_params(name)
            out.update({f"adapters.{name}.{key}": p for key, p in params.items()})
        out.update({f"keys.{t}": k for t, k in enumerate(self.keys)})
        if self.statistics is not None:
            out.update({f"statistics.{name}": b for name, b in self.statistics.named_buffers()})
        for head in ("classifier", "aux_classifier"):
            for pname, p in getattr(self, head).named_parameters():
                out[f"{head}.{pname}"] = p
        return out
