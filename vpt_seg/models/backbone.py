"""The prompted-backbone contract: what every frozen, prompted ViT provides, in one place.

A backbone family (MMSeg's layout, :class:`~vpt_seg.models.PromptedVisionTransformer`;
any timm ViT, :class:`~vpt_seg.models.PromptedTimmViT`) subclasses
:class:`PromptedBackbone` and implements only its **layout steps**; the forward over
them, ``train()``, the feature maps, the option checks and the checks that let a task
share another backbone's frozen weights (:meth:`PromptedBackbone.share_frozen`) are
written once, here. A third family implements the steps below and
nothing else:

========================  ==============================================================
layout step               what it does
========================  ==============================================================
``num_prefix_tokens``     tokens before the patches ([CLS], registers)
``check_input``           refuse inputs the backbone cannot embed
``embed_patches``         ``(B, 3, H, W) -> (B, HW, C)`` tokens and the grid
``add_prefix``            prefix tokens and the position embedding
``norm_pre``              the pre-norm (CLIP), or nothing
``block_kwargs``          the per-block context of a grid (EVA's RoPE table)
``run_block``             transformer block ``i``
``norm_out``              the final norm
``lora_sites``            what a LoRA target names in the blocks (``{site: (in, out)}``)
``lora_weight``           the frozen weight a LoRA site updates
``shared_structure``      what must agree for tasks to share one frozen copy
``check_shareable``       refuse what a shared batch cannot compute
========================  ==============================================================

The **tuners** each backbone builds: ``prompt`` (:class:`~vpt_seg.tuners.VisualPrompt`),
``tune_bias``, ``lora`` and ``adapter`` (:meth:`init_tuners`). The **frozen-weights
contract** (``signature``/``signature_fields``, :meth:`frozen_digest`,
``pretrained_option``, :meth:`configured_pretrained`, :meth:`load_pretrained`) is
:class:`~vpt_seg.models.frozen.FrozenBackboneMixin`'s, which this class extends.

Every step that depends on the task takes a :class:`~vpt_seg.tuners.terms.TaskBatch`:
training and testing run :meth:`forward` (the one-task batch), multi-task serving
(:class:`~vpt_seg.serving.multitask.MultiTaskViT`) runs :meth:`forward_tasks` with
several tasks; both are the same path.
"""
from functools import partial
from typing import Dict, List, Optional, Tuple

import torch

from ..tuners.prompt import run_prompted_layers
from ..tuners.terms import ONE_TASK, TaskBatch
from .frozen import FrozenBackboneMixin

__all__ = ['PromptedBackbone', 'check_freeze_options']


def check_freeze_options(freeze: bool, tune_bias: bool) -> None:
    """Raise ``ValueError`` for ``tune_bias`` without ``freeze``."""
    if tune_bias and not freeze:
        raise ValueError('tune_bias=True tunes biases of a frozen backbone; with '
                         'freeze=False every weight is tuned already.')


class PromptedBackbone(FrozenBackboneMixin):
    """A frozen ViT with prompts, bias tuning, LoRA and adapters (see the module
    docstring for the steps a subclass implements).

    Attributes a subclass sets: ``prompt``, ``freeze``, ``tune_bias``, ``out_indices``,
    ``final_norm``, ``output_cls_token`` (and ``out_origin`` where it has one).
    """

    output_cls_token = False
    out_origin = False

    # ------------------------------------------------------------ layout steps
    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches ([CLS], registers); prompts go right after them."""
        raise NotImplementedError

    def check_input(self, inputs: torch.Tensor) -> None:
        """Raise ``ValueError`` for inputs this backbone cannot embed."""
        raise NotImplementedError

    def embed_patches(self, inputs: torch.Tensor, batch: TaskBatch = ONE_TASK
                      ) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """``(B, 3, H, W) -> (B, HW, C)`` patch tokens and the grid ``(H / p, W / p)``."""
        raise NotImplementedError

    def add_prefix(self, x: torch.Tensor, hw_shape) -> torch.Tensor:
        """``(B, HW, C) -> (B, K + HW, C)``: prefix tokens and the position embedding."""
        raise NotImplementedError

    def norm_pre(self, x: torch.Tensor, batch: TaskBatch = ONE_TASK) -> torch.Tensor:
        """The pre-norm, or ``x`` unchanged."""
        raise NotImplementedError

    def block_kwargs(self, hw_shape) -> dict:
        """What :meth:`run_block` takes for this grid besides the tokens."""
        return {}

    def run_block(self, i: int, x: torch.Tensor, mask: Optional[torch.Tensor] = None,
                  batch: TaskBatch = ONE_TASK, **kwargs) -> torch.Tensor:
        """Block ``i``, ``(B, N, C) -> (B, N, C)``; ``mask``: a boolean ``(B, 1, 1, N)``
        key mask or None; ``batch``: what the tasks add."""
        raise NotImplementedError

    def norm_out(self, x: torch.Tensor, batch: TaskBatch = ONE_TASK) -> torch.Tensor:
        """The final norm (``final_norm=True``)."""
        raise NotImplementedError

    def shared_structure(self) -> Dict[str, object]:
        """What tasks sharing this frozen backbone must agree on, beyond parameter
        shapes (for :class:`~vpt_seg.serving.multitask.MultiTaskViT`)."""
        raise NotImplementedError

    def check_shareable(self, what: str) -> None:
        """Raise ``ValueError`` (naming ``what``) if a shared, mixed-task batch cannot
        compute this backbone."""

    # ------------------------------------------------------------- written once
    def to_map(self, x: torch.Tensor, hw_shape):
        """``(B, K + HW, C) -> (B, C, H, W)`` (with ``output_cls_token``, ``[map, (B, C)]``:
        the [CLS] token, token 0, beside it)."""
        patches = x[:, self.num_prefix_tokens:]
        B, _, C = patches.shape
        out = patches.reshape(B, hw_shape[0], hw_shape[1], C).permute(0, 3, 1, 2).contiguous()
        return [out, x[:, 0]] if self.output_cls_token else out

    def forward(self, inputs: torch.Tensor) -> tuple:
        """``(B, 3, H, W)`` in; one ``(B, C, H / p, W / p)`` map per ``out_indices`` out
        (``[map, (B, C)]`` pairs with ``output_cls_token``); prompts never reach them."""
        outs, = self.forward_tasks(inputs, TaskBatch.one(self))
        return outs

    def forward_tasks(self, inputs: torch.Tensor, batch: TaskBatch) -> List[tuple]:
        """The one forward: a batch whose samples belong to ``batch``'s tasks, run through
        this backbone's frozen weights.

        Args:
            inputs: ``(B, 3, H, W)`` images.
            batch: The tasks and their samples (:meth:`TaskBatch.one` for this model).

        Returns:
            Per task, the tuple its own backbone returns for its samples.
        """
        batch.tasks[0].check_input(inputs)
        patches, hw_shape = self.embed_patches(inputs, batch)            # (B, HW, C)
        x = self.norm_pre(self._prefixed(patches, hw_shape, batch), batch)  # (B, K + HW, C)
        block = partial(self.run_block, batch=batch, **self.block_kwargs(hw_shape))
        feats = run_prompted_layers(x, batch.prompt_groups(), block, self.prompt.num_layers,
                                    self.num_prefix_tokens, partial(self.norm_out, batch=batch))
        outs = []
        for task, idx, f in zip(batch.tasks, batch.index, feats):
            origin = [task.to_map(x if idx is None else x[idx], hw_shape)] \
                if task.out_origin else []
            outs.append(tuple(origin + [task.to_map(task.project_tokens(f[i], i), hw_shape)
                                        for i in sorted(f)]))
        return outs

    def project_tokens(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        """Layer ``layer``'s output tokens as they go out, ``(B, K + HW, C)``: unchanged
        here; a CLIP image tower maps its last layer into CLIP's joint space
        (``PromptedTimmViT(project_out=True)``)."""
        return x

    @staticmethod
    def _prefixed(patches: torch.Tensor, hw_shape, batch: TaskBatch) -> torch.Tensor:
        """Each task's prefix and position embedding (its own ``img_size``) on its
        samples' patches: ``(B, HW, C) -> (B, K + HW, C)``."""
        if batch.single:
            return batch.tasks[0].add_prefix(patches, hw_shape)
        x = None
        for task, idx in zip(batch.tasks, batch.index):
            tokens = task.add_prefix(patches[idx], hw_shape)             # (B_t, K + HW, C)
            x = tokens.new_empty((patches.shape[0],) + tokens.shape[1:]) if x is None else x
            x[idx] = tokens
        return x

    # ------------------------------------------------------------------ sharing
    def share_frozen(self, shared: 'PromptedBackbone', what: str) -> None:
        """Check that this (task) backbone can run on ``shared``'s frozen weights, then
        tie its frozen parameters to ``shared``'s (the copies are freed).

        Raises:
            ValueError: (naming ``what``) not frozen, another backbone kind, a final
                norm the shared backbone lacks, another architecture (every difference
                listed) or other frozen weights (another pretrained file).
        """
        if not self.freeze:
            raise ValueError(f'{what}: only tasks on a frozen PromptedVisionTransformer '
                             'or PromptedTimmViT (freeze=True) can share a backbone; a fully '
                             'fine-tuned ViT is a model of its own')
        if type(self) is not type(shared):
            raise ValueError(f'{what} runs on a {type(self).__name__}, the shared '
                             f'backbone is a {type(shared).__name__}')
        self.check_shareable(what)
        if self.final_norm and not shared.final_norm:
            raise ValueError(f'{what} reads the final norm (final_norm=True), but the '
                             'shared backbone was built without one (its pretrained file has '
                             'none); serve it on a backbone file with a final norm')
        diff = self._differences(shared)
        if diff:
            raise ValueError(f'{what} was made for another ViT than the shared '
                             'backbone:\n  ' + '\n  '.join(diff))
        params = dict(shared.named_parameters())
        for pname, param in list(self.named_parameters()):
            if param.requires_grad or pname not in params or \
                    params[pname].shape != param.shape:
                continue
            if not torch.equal(param.detach().to(params[pname].device), params[pname]):
                raise ValueError(
                    f'{what}: frozen weight {pname} differs from the shared '
                    "backbone's; the task was trained on another pretrained file")
            owner, _, attr = pname.rpartition('.')
            self.get_submodule(owner)._parameters[attr] = params[pname]  # tie, free the copy

    def _differences(self, shared: 'PromptedBackbone') -> List[str]:
        """What differs from ``shared`` beyond the tuned tensors: the structure and the
        frozen parameters' shapes (position embeddings for another ``img_size`` are
        the task's own)."""
        ours, theirs = shared.shared_structure(), self.shared_structure()
        diff = [f'{k}: {theirs[k]} (task) vs {ours[k]} (shared)' for k in ours
                if ours[k] != theirs[k]]
        params = dict(shared.named_parameters())
        for pname, param in self.named_parameters():
            if param.requires_grad or (pname.endswith('pos_embed') and
                                       param.shape != params[pname].shape):
                continue  # tuned, or position embeddings for another img_size (kept)
            if pname not in params:
                diff.append(f'{pname}: in the task, not in the shared backbone (build it '
                            'with final_norm=True / the same options)')
            elif params[pname].shape != param.shape:
                diff.append(f'{pname}: {tuple(param.shape)} (task) vs '
                            f'{tuple(params[pname].shape)} (shared)')
        return diff

    def train(self, mode: bool = True):
        """Frozen parts stay in eval mode (no dropout, no drop-path): only the dropout
        of the prompts (as in the paper's code), LoRA and adapters follows ``mode``."""
        super().train(mode)
        if self.freeze and mode:
            tuners = self.tuner_modules()
            for child in self.children():
                if all(child is not t for t in tuners):
                    child.train(False)
        return self
