"""What LoRA and adapters add to a frozen block, for one task or for a batch of several.

Both backbones compute their blocks with the pretrained weights only and ask a
:class:`BlockTerms` for the tuned additions: a linear layer's output gets its LoRA
updates (:meth:`BlockTerms.linear`), the MLP branch gets the adapter branch beside it
(:meth:`BlockTerms.adapter`). MMSeg's layout calls these from its functional blocks
(:mod:`vpt_seg.models.vit_ops`); timm's blocks run as modules, so
:meth:`BlockTerms.hooked` adds the same terms through forward hooks. With one task the
terms are that task's; serving a batch that mixes tasks, each sample gets its own task's
(a task without LoRA or adapters adds nothing), so every sample computes what its task's
model computes alone.
"""
import contextlib
from typing import Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .adapter import Adapter
from .lora import LoRA

__all__ = ['BlockTerms', 'NO_TERMS']

#: A linear layer's LoRA sites: ``(site, output slice or None for the whole output)``.
Sites = Sequence[Tuple[str, Optional[slice]]]


class BlockTerms:
    """The tuned additions of one or several tasks.

    Args:
        tuners: Per task, ``(lora, adapter)`` (either may be None).
        index: Per task, the ``(B_t,)`` indices of its samples in the batch; ``(None,)``
            for a single task that owns the whole batch.
    """

    def __init__(self, tuners: Sequence[Tuple[Optional[LoRA], Optional[Adapter]]] = (),
                 index: Sequence[Optional[torch.Tensor]] = (None,)):
        self.tuners = list(tuners)
        self.index = list(index)
        self.has_lora = any(lora is not None for lora, _ in self.tuners)
        self.has_adapter = any(adapter is not None for _, adapter in self.tuners)
        self.active = self.has_lora or self.has_adapter

    @classmethod
    def of(cls, backbone: nn.Module) -> 'BlockTerms':
        """The terms of one model: its backbone's ``lora`` and ``adapter``."""
        lora, adapter = getattr(backbone, 'lora', None), getattr(backbone, 'adapter', None)
        return cls([(lora, adapter)]) if lora is not None or adapter is not None else NO_TERMS

    def _per_sample(self, fn, x: torch.Tensor) -> Optional[torch.Tensor]:
        """``fn(lora, adapter, x)`` for each task's samples, gathered into one batch."""
        if len(self.tuners) == 1 and self.index[0] is None:
            return fn(*self.tuners[0], x)
        out = None
        for tuner, idx in zip(self.tuners, self.index):
            d = fn(*tuner, x[idx])
            if d is None:
                continue
            if out is None:
                out = x.new_zeros(x.shape[:-1] + d.shape[-1:])
            out[idx] = d.to(out.dtype)
        return out

    def linear(self, layer: int, sites: Sites, x: torch.Tensor, out: torch.Tensor
               ) -> torch.Tensor:
        """``out``, the frozen linear layer's output for ``x``, plus the LoRA updates of
        its ``sites`` in block ``layer``: ``(B, N, in), (B, N, out) -> (B, N, out)``."""
        if not self.has_lora:
            return out
        for site, part in sites:
            d = self._per_sample(lambda lora, _, x: None if lora is None
                                 else lora.delta(layer, site, x), x)
            if d is None:
                continue
            if part is not None:  # a slice of a packed projection (q, k or v of qkv)
                d = F.pad(d, (part.start, out.shape[-1] - part.stop))
            out = out + d
        return out

    def adapter(self, layer: int, x: torch.Tensor) -> Optional[torch.Tensor]:
        """The adapter branch of block ``layer`` on its normed MLP input ``x``,
        ``(B, N, C)``, or None where no task has adapters."""
        if not self.has_adapter:
            return None
        return self._per_sample(lambda _, adapter, x: None if adapter is None
                                else adapter.delta(layer, x), x)

    @contextlib.contextmanager
    def hooked(self, layer: int, linears: Mapping[nn.Module, Sites],
               mlp: Optional[nn.Module] = None, mlp_out: Optional[nn.Module] = None):
        """For blocks that run as modules (timm's): while open, each module of
        ``linears`` adds its sites' LoRA updates to its output, and the adapter branch,
        computed on ``mlp``'s input, is added to ``mlp_out``'s output (the module that
        ends the MLP branch: timm's ``drop_path2``, after LayerScale)."""
        handles = []
        try:
            if self.has_lora:
                for module, sites in linears.items():
                    handles.append(module.register_forward_hook(
                        lambda m, args, out, s=sites: self.linear(layer, s, args[0], out)))
            if self.has_adapter:
                seen = {}

                def keep_input(module, args):
                    seen['x'] = args[0]

                def add_branch(module, args, out):
                    d = self.adapter(layer, seen.pop('x'))
                    return out if d is None else out + d
                handles.append(mlp.register_forward_pre_hook(keep_input))
                handles.append(mlp_out.register_forward_hook(add_branch))
            yield
        finally:
            for handle in handles:
                handle.remove()


#: No tuned additions (prompt- and bias-only models).
NO_TERMS = BlockTerms()
