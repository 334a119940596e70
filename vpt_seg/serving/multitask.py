"""One frozen ViT serving many VPT tasks (segmentation and classification) at once.

A VPT task is a few tuned tensors on top of a frozen ViT: prompts, a head, and with
bias tuning the backbone's biases. :class:`MultiTaskViT` holds the frozen weights once
and any number of task models, and runs a batch whose images belong to *different*
tasks in one pass through the shared weights:

* **Prompts of other lengths / depths.** The batch runs through the same layer loop as
  training, :func:`vpt_seg.tuners.prompt.run_prompted_layers`, with one group of samples per
  task: every sample gets ``P = max P_t`` prompt slots after the prefix, and a task with
  fewer prompts (or none yet at a layer) has its unused slots masked out as attention
  *keys*, so no real token sees them; they are dropped with the other prompt tokens at
  the outputs. Per token the computation is therefore the task's own (LayerNorm and the
  MLP act token-wise). The backbone's own public steps (``embed_patches``,
  ``add_prefix``, ``norm_pre``, ``run_block``, ``norm_out``, ``to_map``) do the rest.
* **Bias-tuned, LoRA and adapter tasks.** The batch runs through the backbone's one
  forward, :meth:`~vpt_seg.models.backbone.PromptedBackbone.forward_tasks` (the path
  training and testing take with one task), with a
  :class:`~vpt_seg.tuners.terms.TaskBatch` that says which task each sample belongs to:
  every bias is gathered from the sample's task (the shared bias for tasks that do not
  tune biases), and each sample gets its task's low-rank updates and adapter branch
  (nothing for tasks without them), so bias-tuned, LoRA, AdaptFormer and VPT tasks
  share a batch. MMSeg's layout computes them in its functional blocks
  (:mod:`vpt_seg.models.vit_ops`), timm's blocks through forward hooks.
* **Per-task backbone outputs.** ``out_indices``, ``final_norm``, ``output_cls_token``,
  ``out_origin`` and ``img_size`` (position embeddings) stay per task.
* **Text classifiers (CoOp).** A head whose classifier is text embeddings (it has
  ``class_embeddings()``: ``TextClsHead``, ``TextSegHead``) runs per task on its
  samples, like any head, after the shared pass; CLIP's visual projection is applied on
  the task's side of the pass. Each task's class embeddings are computed once, when the
  task is added (the text encoder caches them until its context, class list or weights
  change), not per batch: :meth:`MultiTaskViT.forward` runs without gradients, so the
  cache holds. Frozen text towers and visual projections that are equal across tasks
  (one CLIP file) are tied, as the image tower's frozen weights are.

Outputs equal those of running each task model alone (up to float rounding, see
``tests/test_multitask.py``). Serving is inference only: the frozen ViT runs in eval
mode (no dropout / drop-path) and :meth:`MultiTaskViT.forward` refuses training mode.

What a task must share with the frozen backbone (checked in :meth:`add_task`, with
clear errors): the architecture (width, depth, heads, MLP, patch embedding, norms and
their eps, activation, [CLS] token, pre-norm) and the frozen weights themselves
(element-wise equal, i.e. trained from the same pretrained file). Fully fine-tuned
tasks (``freeze=False``) own a whole ViT and cannot share it.
"""
import copy
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from mmseg.models.utils import resize
from mmseg.registry import MODELS
from torch import nn

from ..formats.pretrained_key import FLAG_NAMES, pretrained_in, set_pretrained
from ..formats.weights import load_vit_checkpoint, to_mmseg_state_dict
from ..models.classifier import VPTClassifier
from ..models.options import PROMPTED_ARGS
from ..tuners.class_list import text_heads
from ..tuners.terms import TaskBatch
from ..tuners.tuning import bias_parameters

__all__ = ['MultiTaskViT', 'task_kind', 'shared_backbone_cfg',
           'build_shared_backbone']


def task_kind(model: nn.Module) -> str:
    """``'cls'`` for a :class:`~vpt_seg.models.VPTClassifier`, ``'seg'`` for an MMSeg
    encoder-decoder segmentor."""
    if isinstance(model, VPTClassifier):
        return 'cls'
    if hasattr(model, 'decode_head') and hasattr(model, 'extract_feat'):
        return 'seg'
    raise TypeError(f'{type(model).__name__} is neither a VPTClassifier nor an MMSeg '
                    'encoder-decoder segmentor')


def _tie_equal(module: nn.Module, pool: List[nn.Module]) -> bool:
    """Tie ``module``'s frozen parameters to those of the first module in ``pool`` whose
    frozen parameters have the same names, shapes and values (its copies are freed);
    else add ``module`` to ``pool``. Returns whether it was tied."""
    mine = [(n, p) for n, p in module.named_parameters() if not p.requires_grad]
    for other in pool:
        theirs = {n: p for n, p in other.named_parameters() if not p.requires_grad}
        if set(theirs) != {n for n, _ in mine} or any(
                theirs[n].shape != p.shape or not torch.equal(theirs[n], p.detach().to(
                    theirs[n].device)) for n, p in mine):
            continue
        for n, _ in mine:
            owner, _, attr = n.rpartition('.')
            module.get_submodule(owner)._parameters[attr] = theirs[n]
        return True
    if mine:
        pool.append(module)
    return False


class MultiTaskViT(nn.Module):
    """A frozen ViT and the VPT tasks that share it.

    Args:
        backbone: The shared frozen ViT, a
            :class:`~vpt_seg.models.backbone.PromptedBackbone` (MMSeg's layout or timm's)
            with its pretrained weights loaded (:func:`build_shared_backbone`). Build it
            with ``final_norm=True`` when a task reads the normed tokens (classifiers).

    Use :meth:`add_task` for each loaded task model, then call the module with a batch
    and one task name per image.
    """

    def __init__(self, backbone: nn.Module):
        super().__init__()
        backbone.check_shareable('shared backbone')
        self.backbone = backbone.eval()
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.tasks = nn.ModuleDict()
        self.kinds: Dict[str, str] = {}
        # frozen text towers and visual projections seen so far (ties equal ones)
        self._frozen_pool: Dict[str, List[nn.Module]] = dict(text=[], projection=[])

    # ------------------------------------------------------------------ tasks
    def add_task(self, name: str, model: nn.Module) -> nn.Module:
        """Register a loaded task model (its frozen weights get tied to the shared ones).

        Args:
            name: Task name (used in :meth:`forward`).
            model: A ``VPTClassifier`` or an MMSeg segmentor whose backbone is a frozen
                :class:`~vpt_seg.models.backbone.PromptedBackbone` of the shared
                backbone's kind, with its task checkpoint loaded. Its heads may classify
                with text embeddings (CoOp): their class embeddings are computed here,
                once (:func:`~vpt_seg.tuners.class_list.text_heads`).

        Raises:
            ValueError: The task's ViT differs from the shared one in architecture or
                frozen weights, or it does not freeze its backbone.
        """
        if name in self.tasks:
            raise ValueError(f'task {name!r} is already registered')
        kind = task_kind(model)
        if not callable(getattr(model.backbone, 'share_frozen', None)):
            raise ValueError(f'task {name!r}: only tasks on a frozen PromptedVisionTransformer '
                             'or PromptedTimmViT (freeze=True) can share a backbone; a fully '
                             'fine-tuned ViT is a model of its own')
        model.backbone.share_frozen(self.backbone, f'task {name!r}')
        model.eval()
        self._share_text_side(model)
        self.tasks[name] = model
        self.kinds[name] = kind
        return model

    def _share_text_side(self, model: nn.Module):
        """Tie the task's frozen visual projection and text towers to equal ones of
        tasks added before, then compute its class embeddings once (cached by the text
        encoder until its context, class list or weights change)."""
        projection = getattr(model.backbone, 'visual_projection', None)
        if projection is not None:
            _tie_equal(projection, self._frozen_pool['projection'])
        heads = [head for _, head in text_heads(model)]
        for head in heads:
            encoder = getattr(head, 'text_encoder', None)
            if isinstance(encoder, nn.Module):  # (an auxiliary head may use the main one's)
                _tie_equal(encoder, self._frozen_pool['text'])
        with torch.no_grad():
            for head in heads:
                head.class_embeddings()

    def train(self, mode: bool = True):
        """Eval mode only. Tasks already in eval mode (as :meth:`add_task` leaves them)
        are left as they are: a text encoder's ``train()`` drops its cached class
        embeddings, which would then be computed again."""
        if mode:
            raise RuntimeError('MultiTaskViT serves trained tasks and runs in eval mode only; '
                               'train each task with tools/train.py')
        self.training = self.tasks.training = False
        self.backbone.train(False)
        for model in self.tasks.values():
            if any(m.training for m in model.modules()):
                model.train(False)
        return self

    # ---------------------------------------------------------------- helpers
    def preprocess(self, images: Sequence[torch.Tensor], tasks: Sequence[str]) -> torch.Tensor:
        """Normalise each image with its task's data preprocessor.

        Args:
            images: ``B`` images ``(3, H, W)`` (uint8 or float, as the task pipelines give
                them: BGR from ``LoadImageFromFile``), all the same size.
            tasks: Task name per image.

        Returns:
            ``(B, 3, H, W)`` float inputs for :meth:`forward`.
        """
        self._check_tasks(tasks)
        out = [None] * len(images)
        for name, idx in self._groups(tasks).items():
            pre = self.tasks[name].data_preprocessor
            batch = pre(dict(inputs=[images[i] for i in idx.tolist()]), False)['inputs']
            for j, i in enumerate(idx.tolist()):
                out[i] = batch[j]
        return torch.stack(out)

    def _check_tasks(self, tasks: Sequence[str]):
        unknown = sorted(set(tasks) - set(self.tasks))
        if unknown:
            raise KeyError(f'unknown tasks {unknown}; registered: {list(self.tasks)}')

    @staticmethod
    def _groups(tasks: Sequence[str]) -> 'OrderedDict[str, torch.Tensor]':
        names = list(OrderedDict.fromkeys(tasks))
        return OrderedDict((n, torch.tensor([i for i, t in enumerate(tasks) if t == n]))
                           for n in names)

    # ---------------------------------------------------------------- forward
    def extract_feats(self, inputs: torch.Tensor, tasks: Sequence[str]
                      ) -> 'OrderedDict[str, Tuple[torch.Tensor, tuple]]':
        """The backbone outputs of every sample, as each task's own backbone gives them.

        Args:
            inputs: ``(B, 3, H, W)`` normalised images (see :meth:`preprocess`).
            tasks: Task name per image.

        Returns:
            ``{task: (indices (B_t,), outputs)}`` where ``outputs`` is the tuple the task's
            backbone returns for ``inputs[indices]``.
        """
        if self.training:
            raise RuntimeError('MultiTaskViT runs in eval mode only')
        if len(tasks) != inputs.shape[0]:
            raise ValueError(f'{inputs.shape[0]} images but {len(tasks)} task names')
        self._check_tasks(tasks)
        groups = self._groups(tasks)
        index = [idx.to(inputs.device) for idx in groups.values()]
        batch = TaskBatch([self.tasks[n].backbone for n in groups], index,
                          shared=self.backbone)
        feats = self.backbone.forward_tasks(inputs, batch)
        return OrderedDict((n, (idx, f)) for n, idx, f in zip(groups, groups.values(), feats))

    @torch.no_grad()
    def forward(self, inputs: torch.Tensor, tasks: Sequence[str]) -> List[torch.Tensor]:
        """Run a mixed-task batch (without gradients: serving is inference, and text
        heads then reuse their cached class embeddings).

        Args:
            inputs: ``(B, 3, H, W)`` normalised images.
            tasks: Task name per image.

        Returns:
            One tensor per image: ``(K_t, H, W)`` segmentation logits at the input size
            (as the segmentor's ``encode_decode``) or ``(K_t,)`` class logits.
        """
        results: List[Optional[torch.Tensor]] = [None] * inputs.shape[0]
        for name, (idx, feats) in self.extract_feats(inputs, tasks).items():
            model = self.tasks[name]
            if self.kinds[name] == 'cls':
                logits = model.head(model.embed_cls(feats[-1][1]))             # (B_t, K)
            else:
                if model.with_neck:
                    feats = model.neck(feats)
                logits = resize(model.decode_head.forward(feats), size=inputs.shape[2:],
                                mode='bilinear', align_corners=model.decode_head.align_corners)
            for j, i in enumerate(idx.tolist()):
                results[i] = logits[j]
        return results

    @torch.no_grad()
    def run_alone(self, inputs: torch.Tensor, tasks: Sequence[str]) -> List[torch.Tensor]:
        """The reference: each task's own model on its images, one task at a time.
        Same inputs and outputs as :meth:`forward`."""
        self._check_tasks(tasks)
        results: List[Optional[torch.Tensor]] = [None] * inputs.shape[0]
        for name, idx in self._groups(tasks).items():
            model, x = self.tasks[name], inputs[idx]
            if self.kinds[name] == 'cls':
                logits = model(x, mode='tensor')
            else:
                shape = tuple(x.shape[2:])
                metas = [dict(img_shape=shape, pad_shape=shape, ori_shape=shape)] * len(idx)
                logits = model.encode_decode(x, metas)
            for j, i in enumerate(idx.tolist()):
                results[i] = logits[j]
        return results

    def bias_names(self) -> List[str]:
        """Names of the shared backbone's biases (what a bias-tuned task carries)."""
        return [n for n, _ in bias_parameters(self.backbone)]


# --------------------------------------------------------------------- loading
# What each task sets for itself: the backbone's own arguments but the forward path and
# weight source the shared backbone keeps (freeze is set again below), and its outputs
# and dropout.
_TASK_ONLY = tuple(k for k in PROMPTED_ARGS if k not in ('fast_path', ) + FLAG_NAMES) + (
    'out_indices', 'output_cls_token', 'final_norm', 'out_origin', 'drop_rate',
    'attn_drop_rate', 'drop_path_rate', 'with_cp')


def _is_timm(backbone_cfg: dict) -> bool:
    kind = backbone_cfg.get('type')
    return getattr(kind, '__name__', kind) == 'PromptedTimmViT'


def shared_backbone_cfg(backbone_cfg: dict, final_norm: bool,
                        init_cfg: Optional[dict] = None) -> dict:
    """The config of the frozen ViT that tasks of ``backbone_cfg`` share: the same
    architecture, task-only options (prompts, bias tuning, outputs, dropout, CLIP's visual
    projection) dropped."""
    cfg = {k: v for k, v in copy.deepcopy(dict(backbone_cfg)).items() if k not in _TASK_ONLY}
    kind = 'PromptedTimmViT' if _is_timm(backbone_cfg) else 'PromptedVisionTransformer'
    if _is_timm(backbone_cfg):
        # CLIP's visual projection is applied on each task's side of the pass (a text
        # head's, project_out's); the shared tower has none (nor its width, num_classes)
        cfg.pop('keep_projection', None)
        cfg.pop('project_out', None)
        if isinstance(cfg.get('model_kwargs'), dict):
            cfg['model_kwargs'] = {k: v for k, v in cfg['model_kwargs'].items()
                                   if k != 'num_classes'}
    cfg.update(type=kind, num_prompts=0, freeze=True, final_norm=final_norm)
    set_pretrained(cfg, (init_cfg or {}).get('checkpoint'))
    return cfg


def build_shared_backbone(backbone_cfg: dict, pretrained: Optional[str] = None,
                          final_norm: Optional[bool] = None) -> nn.Module:
    """The frozen ViT of a backbone config, loaded from its pretrained file.

    Task-only options (prompts, bias tuning, outputs, dropout) are dropped.

    Args:
        backbone_cfg: A ``model.backbone`` config (``PromptedVisionTransformer``,
            ``VisionTransformer`` or ``PromptedTimmViT``).
        pretrained: Weights file (a hub folder for timm); default: the config's
            ``init_cfg.checkpoint`` (``checkpoint`` for timm).
        final_norm: Build the final norm (classifiers read it; segmentation tasks
            usually do not). None: exactly when the pretrained file has one, so every
            backbone the configs produce can be shared.
    """
    pretrained = pretrained or pretrained_in(backbone_cfg)
    if not pretrained:
        raise ValueError('the shared backbone needs pretrained weights: give a file, or a '
                         "config whose backbone has init_cfg=dict(type='Pretrained', ...)")
    init_cfg = dict(type='Pretrained', checkpoint=pretrained)
    if _is_timm(backbone_cfg):
        try:  # the last norm whenever the family has one (timm's files hold it)
            vit = MODELS.build(shared_backbone_cfg(
                backbone_cfg, True if final_norm is None else final_norm, init_cfg))
        except ValueError as err:
            if final_norm or 'no last LayerNorm' not in str(err):
                raise
            vit = MODELS.build(shared_backbone_cfg(backbone_cfg, False, init_cfg))
        vit.init_weights()
        return vit.eval()
    if final_norm is None:
        final_norm = _has_final_norm(pretrained, (backbone_cfg.get('init_cfg') or {}).get(
            'prefix') if isinstance(backbone_cfg.get('init_cfg'), dict) else None)
    vit = MODELS.build(shared_backbone_cfg(backbone_cfg, final_norm, init_cfg))
    vit.init_weights()
    return vit.eval()


def _has_final_norm(pretrained: str, prefix: Optional[str] = None) -> bool:
    """Whether a pretrained ViT file holds a final norm (MMSeg's ``ln1``)."""
    if '://' in pretrained:  # downloaded once into the cache, read safely
        from mmengine.runner.checkpoint import CheckpointLoader
        source = to_mmseg_state_dict(
            CheckpointLoader.load_checkpoint(pretrained, map_location='cpu', logger=None),
            prefix=prefix)
        return 'ln1.weight' in source.state_dict
    return 'ln1.weight' in load_vit_checkpoint(pretrained, prefix=prefix).state_dict
