"""Which task each sample of a batch belongs to, and what that task adds to a frozen ViT.

A :class:`TaskBatch` is the one per-task mechanism every prompted backbone runs with.
Training and testing are its one-task case (:meth:`TaskBatch.one`: the model's own
prompts, biases, LoRA and adapters for the whole batch); serving a batch that mixes
tasks (:class:`~vpt_seg.serving.multitask.MultiTaskViT`) gives it one task per group of
samples, so every sample computes what its task's model computes alone:

* prompts: :meth:`TaskBatch.prompt_groups`, for the one prompted layer loop
  (:func:`vpt_seg.tuners.prompt.run_prompted_layers`);
* biases: calling the batch on a module (:meth:`TaskBatch.__call__`) gives the module's
  own bias, or per sample the bias of the sample's task (``(B, ...)`` from a ``(T, ...)``
  bank) when some task tuned its biases;
* LoRA: :meth:`TaskBatch.linear` adds each sample's low-rank updates to a frozen
  linear layer's output;
* adapters: :meth:`TaskBatch.adapter` is the adapter branch beside the MLP.

MMSeg's layout calls these from its functional blocks (:mod:`vpt_seg.models.vit_ops`);
timm's blocks run as modules, so :meth:`TaskBatch.hooked` adds the same terms (and the
per-sample biases) through forward hooks. Plain torch: no MMSeg, no timm.
"""
import contextlib
from typing import List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .prompt import PromptGroup

__all__ = ['TaskBatch', 'ONE_TASK', 'Sites']

#: A linear layer's LoRA sites: ``(site, output slice or None for the whole output)``.
Sites = Sequence[Tuple[str, Optional[slice]]]

#: Modules whose output bias a forward hook can give per sample.
_HOOKABLE = (nn.Linear, nn.LayerNorm, nn.Conv2d)


class TaskBatch:
    """The tasks of a batch and, per task, the samples that belong to it.

    Args:
        tasks: One backbone per task (its ``prompt``, ``lora``, ``adapter``,
            ``out_indices``, ``final_norm`` and tuned biases are read); empty: nothing
            is added (every module's own bias, no LoRA, no adapter).
        index: Per task, the ``(B_t,)`` indices of its samples in the batch; ``(None,)``
            for a single task that owns the whole batch.
        shared: The backbone whose modules run the batch (names of per-sample biases
            are resolved against it); needed only when several tasks tune biases.
    """

    def __init__(self, tasks: Sequence[nn.Module] = (),
                 index: Sequence[Optional[torch.Tensor]] = (None,),
                 shared: Optional[nn.Module] = None):
        self.tasks = list(tasks)
        self.index = list(index)
        self.single = len(self.index) == 1 and self.index[0] is None
        self.tuners = [(getattr(t, 'lora', None), getattr(t, 'adapter', None))
                       for t in self.tasks]
        self.has_lora = any(lora is not None for lora, _ in self.tuners)
        self.has_adapter = any(adapter is not None for _, adapter in self.tuners)
        #: Whether LoRA updates or adapter branches are added.
        self.active = self.has_lora or self.has_adapter
        #: Whether biases are gathered per sample (several tasks, some tune biases).
        self.per_sample = not self.single and any(getattr(t, 'tune_bias', False)
                                                  for t in self.tasks)
        if self.per_sample:
            self.names = {id(m): n for n, m in shared.named_modules()}
            self.params = [{n: p for n, p in t.named_parameters() if p.requires_grad}
                           for t in self.tasks]  # tuned only: the frozen ones are shared
            task_index = torch.empty(sum(len(i) for i in self.index), dtype=torch.long)
            for k, idx in enumerate(self.index):
                task_index[idx.cpu()] = k
            self.task_index = task_index.to(self.index[0].device)          # (B,)

    @classmethod
    def one(cls, backbone: nn.Module) -> 'TaskBatch':
        """Training and testing: ``backbone``'s own prompts, biases, LoRA and adapters
        for every sample."""
        return cls([backbone])

    def prompt_groups(self) -> List[PromptGroup]:
        """Per task, its prompts, samples and outputs, for
        :func:`~vpt_seg.tuners.prompt.run_prompted_layers`."""
        return [PromptGroup(t.prompt, idx, t.out_indices, t.final_norm)
                for t, idx in zip(self.tasks, self.index)]

    # ------------------------------------------------------------------ biases
    def __call__(self, module: nn.Module, attr: str = 'bias') -> Optional[torch.Tensor]:
        """The bias ``attr`` of ``module``: its own ``(...)``, or per sample ``(B, ...)``,
        each sample's task's (the shared one for tasks that do not tune it)."""
        shared = getattr(module, attr, None)
        if shared is None or not self.per_sample:
            return shared
        name = f'{self.names[id(module)]}.{attr}'.lstrip('.')
        bank = torch.stack([p.get(name, shared) for p in self.params])     # (T, ...)
        return bank[self.task_index]                                       # (B, ...)

    # ----------------------------------------------------------- LoRA, adapter
    def _per_sample(self, fn, x: torch.Tensor) -> Optional[torch.Tensor]:
        """``fn(lora, adapter, x)`` for each task's samples, gathered into one batch."""
        if self.single:
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

    # ------------------------------------------------------------------ hooks
    @contextlib.contextmanager
    def hooked(self, module: nn.Module, layer: Optional[int] = None,
               linears: Mapping[nn.Module, Sites] = None,
               mlp: Optional[nn.Module] = None, mlp_out: Optional[nn.Module] = None):
        """For ViTs that run as modules (timm's): while open, what this batch adds is
        added by forward hooks under ``module``:

        * per-sample biases (several tasks, some tuned biases): every linear, LayerNorm
          and convolution whose bias some task tunes adds ``bias_t - bias_shared`` of
          each sample's task to its output (the same function as its own bias);
        * for block ``layer``: each module of ``linears`` adds its sites' LoRA updates,
          and the adapter branch, computed on ``mlp``'s input, is added to ``mlp_out``'s
          output (the module that ends the MLP branch: timm's ``drop_path2``).

        Raises:
            ValueError: a task tunes a parameter that is not an output bias of such a
                layer (EVA's ``q_bias``/``v_bias``, applied inside the attention), which
                a hook cannot reach.
        """
        handles = []
        try:
            if self.per_sample:
                handles += self._bias_hooks(module)
            if layer is not None:
                handles += self._block_hooks(layer, linears or {}, mlp, mlp_out)
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _bias_hooks(self, module: nn.Module) -> list:
        handles = []
        for sub in module.modules():
            prefix = self.names.get(id(sub))
            for attr, _ in sub.named_parameters(recurse=False):
                name = f'{prefix}.{attr}'.lstrip('.')
                if prefix is None or all(name not in p for p in self.params):
                    continue  # frozen in every task: the shared tensor
                if attr != 'bias' or not isinstance(sub, _HOOKABLE):
                    raise ValueError(
                        f'{name}: a tuned parameter inside {type(sub).__name__} cannot '
                        'be given per sample; serve such bias-tuned tasks one task per '
                        'batch')
                handles.append(sub.register_forward_hook(self._add_delta(sub)))
        return handles

    def _add_delta(self, module: nn.Module):
        delta = self(module) - module.bias                                 # (B, C)

        def hook(mod, args, out):
            if isinstance(mod, nn.Conv2d):
                return out + delta[:, :, None, None]                       # (B, C, H, W)
            return out + delta.view(delta.shape[0], *([1] * (out.dim() - 2)), -1)
        return hook

    def _block_hooks(self, layer: int, linears: Mapping[nn.Module, Sites],
                     mlp: Optional[nn.Module], mlp_out: Optional[nn.Module]) -> list:
        handles = []
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
        return handles


#: Nothing added: every module's own bias, no LoRA, no adapter (the functional blocks'
#: default, and a model tuned by prompts alone).
ONE_TASK = TaskBatch()
