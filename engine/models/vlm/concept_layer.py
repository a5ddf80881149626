"""The MyVLM concept embedding layer: one learned token per recognised concept, appended to the visual tokens.

The layer sits on one frozen module of the VLM (docs/method.md §5) via a forward hook, so no library modeling code is
copied or patched. For each image of a batch the caller says which concepts fired (`set_active`); the hook appends
`normalize(value_c)` for each of them, in a stable order (ascending concept id). When nothing fired the hook returns
None, which leaves the module's output object untouched: outputs are bit-identical to the unwrapped model.

All images of one forward pass must carry the same number of concept tokens (the sequence must stay rectangular
without padding that would change attention). The wrappers therefore group a batch by that number.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

# A norm rule gets (layer output (B, S, D), appended unit tokens (B, k, D)) and returns the tokens to append.
NormRule = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def keep_unit_norm(out: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """BLIP-2: the token stays unit-norm here; the Q-Former's keys/values are rescaled instead."""
    return tokens


def match_first_token_norm(out: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """LLaVA: the appended token takes the norm of the first image token."""
    return tokens * out[:, :1].norm(dim=-1, keepdim=True)


def match_mean_token_norm(out: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """MiniGPT-v2 style: the mean norm of the image tokens."""
    return tokens * out.norm(dim=-1, keepdim=True).mean(dim=1, keepdim=True)


def init_values(n: int, dim: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random unit-norm values (uniform then normalised, as the reference code does)."""
    v = torch.rand(n, dim, generator=generator)
    return v / v.norm(dim=-1, keepdim=True)


class ConceptLayer(nn.Module):
    """Concept values (n, D) keyed by concept id, and the hook that appends the fired ones."""

    def __init__(self, dim: int, norm_rule: NormRule = keep_unit_norm):
        super().__init__()
        self.dim = dim
        self.norm_rule = norm_rule
        self.concept_ids: list[int] = []
        self.values = nn.Parameter(torch.empty(0, dim), requires_grad=False)  # (n_concepts, D), fp32 master copy
        self._active: list[list[int]] | None = None  # per image in the batch: rows of `values`, in order
        self._handle = None
        self.appended = 0  # tokens appended in the last forward (k), for the hooks downstream

    # -- values -------------------------------------------------------------------------------------------------
    def set_values(self, values: dict[int, torch.Tensor], trainable: bool = False) -> None:
        """Replace all concept values; ids are kept sorted so that the token order is stable."""
        ids = sorted(values)
        device = self.values.device
        rows = [values[i].detach().reshape(-1).to(device=device, dtype=torch.float32) for i in ids]
        for i, r in zip(ids, rows):
            if r.numel() != self.dim:
                raise ValueError(f"concept {i}: embedding has {r.numel()} values, this VLM needs {self.dim}")
        stacked = torch.stack(rows) if rows else torch.empty(0, self.dim, device=device)
        self.concept_ids = ids
        self.values = nn.Parameter(stacked.clone(), requires_grad=trainable)

    def value(self, concept_id: int) -> torch.Tensor:
        return self.values[self.concept_ids.index(concept_id)].detach().clone()

    def knows(self, concept_id: int) -> bool:
        return concept_id in self.concept_ids

    # -- per-batch state ----------------------------------------------------------------------------------------
    def set_active(self, per_image: Sequence[Sequence[int]] | None) -> None:
        """Which concepts fired in each image of the next forward pass (concept ids; unknown ids are ignored)."""
        if per_image is None:
            self._active = None
            return
        rows = [[self.concept_ids.index(c) for c in sorted(set(ids)) if c in self.concept_ids]
                for ids in per_image]
        if len({len(r) for r in rows}) > 1:
            raise ValueError("every image of one forward pass must have the same number of concept tokens; "
                             "group the batch by that number first")
        self._active = rows if rows and rows[0] else None

    @property
    def active_count(self) -> int:
        return len(self._active[0]) if self._active else 0

    # -- the hook -----------------------------------------------------------------------------------------------
    def attach(self, module: nn.Module) -> None:
        """Append to `module`'s output (a tensor (B, S, D), or a tuple whose first item is one)."""
        self.detach_hook()
        self._handle = module.register_forward_hook(self._hook)

    def detach_hook(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _hook(self, module: nn.Module, args, output):
        self.appended = 0
        if not self._active:
            return None  # exact no-op: the library keeps its own output object
        hidden = output[0] if isinstance(output, tuple) else output
        if hidden.shape[0] != len(self._active):
            raise RuntimeError(f"concept layer: batch of {hidden.shape[0]} images but signals for "
                               f"{len(self._active)}")
        idx = torch.tensor(self._active, device=self.values.device)              # (B, k)
        tokens = F.normalize(self.values[idx], dim=-1)                           # (B, k, D) unit norm
        tokens = self.norm_rule(hidden, tokens.to(device=hidden.device, dtype=hidden.dtype))
        extended = torch.cat([hidden, tokens], dim=1)                            # (B, S + k, D)
        self.appended = tokens.shape[1]
        if isinstance(output, tuple):
            return (extended, *output[1:])
        return extended
