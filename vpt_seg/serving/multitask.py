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
* **Bias-tuned tasks.** Each layer runs through the same functional blocks as training
  (:mod:`vpt_seg.models.vit_ops`) with a per-sample :class:`~vpt_seg.models.vit_ops.Biases`
  lookup: every bias is gathered from the sample's task (the shared bias for tasks that
  do not tune biases), so a batch may mix bias-tuned and prompt-only tasks.
* **LoRA and adapter tasks.** The same blocks ask a
  :class:`~vpt_seg.tuners.terms.BlockTerms` for each sample's low-rank updates and adapter
  branch (its task's; nothing for tasks without them), so LoRA, AdaptFormer and VPT tasks
  share a batch too.
* **Per-task backbone outputs.** ``out_indices``, ``final_norm``, ``output_cls_token``,
  ``out_origin`` and ``img_size`` (position embeddings) stay per task.

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
from mmseg.models.backbones import VisionTransformer
from mmseg.models.utils import resize
from mmseg.registry import MODELS
from torch import nn

from ..formats.loading import load_task_model  # noqa: F401  (its home before; re-exported)
from ..formats.weights import load_vit_checkpoint, to_mmseg_state_dict
from ..models import vit_ops
from ..models.classifier import VPTClassifier
from ..models.options import PROMPTED_ARGS
from ..models.prompted_vit import PromptedVisionTransformer
from ..models.timm_vit import PromptedTimmViT
from ..tuners.prompt import PromptGroup, run_prompted_layers
from ..tuners.terms import BlockTerms
from ..tuners.tuning import bias_parameters

__all__ = ['MultiTaskViT', 'task_kind', 'shared_backbone_cfg', 'build_shared_backbone',
           'load_task_model']


def task_kind(model: nn.Module) -> str:
    """``'cls'`` for a :class:`~vpt_seg.models.VPTClassifier`, ``'seg'`` for an MMSeg
    encoder-decoder segmentor."""
    if isinstance(model, VPTClassifier):
        return 'cls'
    if hasattr(model, 'decode_head') and hasattr(model, 'extract_feat'):
        return 'seg'
    raise TypeError(f'{type(model).__name__} is neither a VPTClassifier nor an MMSeg '
                    'encoder-decoder segmentor')


def _structure(vit: nn.Module) -> Dict[str, object]:
    """What the shared pass relies on, beyond parameter shapes."""
    if isinstance(vit, PromptedTimmViT):  # timm builds the rest from the name
        return OrderedDict(
            backbone=type(vit).__name__, model=vit.model_name.split('.')[0],
            signature=vit.signature.tolist(), num_prefix_tokens=vit.num_prefix_tokens,
            dynamic_img_size=vit.vit.dynamic_img_size,
            norm_eps=sorted({m.eps for m in vit.modules() if isinstance(m, nn.LayerNorm)}))
    layer = vit.layers[0]
    pad = vit.patch_embed.adap_padding
    return OrderedDict(
        with_cls_token=vit.with_cls_token,
        pre_norm=vit.pre_norm,
        patch_size=vit.patch_size,
        patch_pad=None if pad is None else (pad.padding, pad.kernel_size, pad.stride,
                                            pad.dilation),
        num_layers=len(vit.layers),
        num_heads=layer.attn.attn.num_heads,
        norm_eps=sorted({m.eps for m in vit.modules() if isinstance(m, nn.LayerNorm)}),
        activation=repr(layer.ffn.layers[0][1]),
        num_fcs=layer.ffn.num_fcs, backbone=type(vit).__name__)


def _check_shareable(vit: nn.Module, what: str):
    """Raise if the shared pass cannot compute ``vit``."""
    if isinstance(vit, PromptedTimmViT):
        return  # timm's own blocks run (per-sample biases through hooks)
    vit_ops.check_supported(vit, what, _UNSHARED)


#: What serving says of a ViT the shared pass cannot compute.
_UNSHARED = 'such a ViT cannot be served on a shared backbone'


class MultiTaskViT(nn.Module):
    """A frozen ViT and the VPT tasks that share it.

    Args:
        backbone: The shared ViT (MMSeg ``VisionTransformer`` or
            ``PromptedVisionTransformer``) with its pretrained weights loaded. Build it
            with ``final_norm=True`` when a task reads the normed tokens (classifiers).

    Use :meth:`add_task` for each loaded task model, then call the module with a batch
    and one task name per image.
    """

    def __init__(self, backbone: VisionTransformer):
        super().__init__()
        _check_shareable(backbone, 'shared backbone')
        self.backbone = backbone.eval()
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.tasks = nn.ModuleDict()
        self.kinds: Dict[str, str] = {}

    # ------------------------------------------------------------------ tasks
    def add_task(self, name: str, model: nn.Module) -> nn.Module:
        """Register a loaded task model (its frozen weights get tied to the shared ones).

        Args:
            name: Task name (used in :meth:`forward`).
            model: A ``VPTClassifier`` or an MMSeg segmentor whose backbone is a frozen
                ``PromptedVisionTransformer``, with its task checkpoint loaded.

        Raises:
            ValueError: The task's ViT differs from the shared one in architecture or
                frozen weights, or it does not freeze its backbone.
        """
        if name in self.tasks:
            raise ValueError(f'task {name!r} is already registered')
        kind = task_kind(model)
        vit = model.backbone
        if not isinstance(vit, (PromptedVisionTransformer, PromptedTimmViT)) or not vit.freeze:
            raise ValueError(f'task {name!r}: only tasks on a frozen PromptedVisionTransformer '
                             'or PromptedTimmViT (freeze=True) can share a backbone; a fully '
                             'fine-tuned ViT is a model of its own')
        if type(vit) is not type(self.backbone):
            raise ValueError(f'task {name!r} runs on a {type(vit).__name__}, the shared '
                             f'backbone is a {type(self.backbone).__name__}')
        _check_shareable(vit, f'task {name!r}')
        if vit.final_norm and not self.backbone.final_norm:
            raise ValueError(f'task {name!r} reads the final norm (final_norm=True), but the '
                             'shared backbone was built without one (its pretrained file has '
                             'none); serve it on a backbone file with a final norm')
        if isinstance(vit, PromptedTimmViT) and vit.tune_bias and any(
                n.endswith(('q_bias', 'v_bias')) for n, p in vit.named_parameters()
                if p.requires_grad):
            raise ValueError(f'task {name!r} tunes the q/v biases inside EVA\'s attention, '
                             'which cannot be given per sample in a shared batch; serve it '
                             'on its own')
        ours, theirs = _structure(self.backbone), _structure(vit)
        diff = [f'{k}: {theirs[k]} (task) vs {ours[k]} (shared)' for k in ours
                if ours[k] != theirs[k]]
        shared = dict(self.backbone.named_parameters())
        for pname, param in vit.named_parameters():
            if param.requires_grad or (pname.endswith('pos_embed') and
                                       param.shape != shared[pname].shape):
                continue  # tuned, or position embeddings for another img_size (kept)
            if pname not in shared:
                diff.append(f'{pname}: in the task, not in the shared backbone (build it '
                            'with final_norm=True / the same options)')
            elif shared[pname].shape != param.shape:
                diff.append(f'{pname}: {tuple(param.shape)} (task) vs '
                            f'{tuple(shared[pname].shape)} (shared)')
        if diff:
            raise ValueError(f'task {name!r} was made for another ViT than the shared '
                             'backbone:\n  ' + '\n  '.join(diff))
        for pname, param in list(vit.named_parameters()):
            if param.requires_grad or pname not in shared or \
                    shared[pname].shape != param.shape:
                continue
            if not torch.equal(param.detach().to(shared[pname].device), shared[pname]):
                raise ValueError(
                    f'task {name!r}: frozen weight {pname} differs from the shared '
                    "backbone's; the task was trained on another pretrained file")
            owner, _, attr = pname.rpartition('.')
            vit.get_submodule(owner)._parameters[attr] = shared[pname]  # tie, free the copy
        model.eval()
        self.tasks[name] = model
        self.kinds[name] = kind
        return model

    def train(self, mode: bool = True):
        if mode:
            raise RuntimeError('MultiTaskViT serves trained tasks and runs in eval mode only; '
                               'train each task with tools/train.py')
        return super().train(False)

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
        vit = self.backbone
        groups = self._groups(tasks)
        names = list(groups)
        vits = [self.tasks[n].backbone for n in names]
        task_index = torch.empty(len(tasks), dtype=torch.long)
        for k, idx in enumerate(groups.values()):
            task_index[idx] = k
        biases = vit_ops.Biases(vit, vits, task_index.to(inputs.device))
        terms = BlockTerms([(v.lora, v.adapter) for v in vits],
                           [idx.to(inputs.device) for idx in groups.values()])
        vits[0].check_input(inputs)

        patches, hw_shape = vit.embed_patches(inputs, biases)           # (B, HW, C)
        x = None
        for v, idx in zip(vits, groups.values()):  # each task's own img_size
            tokens = v.add_prefix(patches[idx], hw_shape)               # (B_t, K + HW, C)
            x = tokens.new_empty((len(tasks),) + tokens.shape[1:]) if x is None else x
            x[idx] = tokens
        x = vit.norm_pre(x, biases)
        extra = vit.block_kwargs(hw_shape)  # e.g. EVA's RoPE table for this grid

        def block(i, x, mask):
            return vit.run_block(i, x, mask, biases, terms, **extra)
        feats = run_prompted_layers(
            x, [PromptGroup(v.prompt, idx, v.out_indices, v.final_norm)
                for v, idx in zip(vits, groups.values())],
            block, vit.prompt.num_layers,
            vit.num_prefix_tokens, lambda x: vit.norm_out(x, biases))
        outs = OrderedDict()
        for n, v, idx, f in zip(names, vits, groups.values(), feats):
            origin = [v.to_map(x[idx], hw_shape)] if getattr(v, 'out_origin', False) else []
            outs[n] = (idx, tuple(origin + [v.to_map(f[i], hw_shape) for i in sorted(f)]))
        return outs

    def forward(self, inputs: torch.Tensor, tasks: Sequence[str]) -> List[torch.Tensor]:
        """Run a mixed-task batch.

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
_TASK_ONLY = tuple(k for k in PROMPTED_ARGS if k not in ('fast_path', 'prefer_init_cfg')) + (
    'out_indices', 'output_cls_token', 'final_norm', 'out_origin', 'drop_rate',
    'attn_drop_rate', 'drop_path_rate', 'with_cp')


def _is_timm(backbone_cfg: dict) -> bool:
    return backbone_cfg.get('type') in ('PromptedTimmViT', PromptedTimmViT)


def _pretrained_of(backbone_cfg: dict) -> Optional[str]:
    if _is_timm(backbone_cfg):
        return backbone_cfg.get('checkpoint')
    init_cfg = backbone_cfg.get('init_cfg') or {}
    return init_cfg.get('checkpoint') if isinstance(init_cfg, dict) else None


def shared_backbone_cfg(backbone_cfg: dict, final_norm: bool,
                        init_cfg: Optional[dict] = None) -> dict:
    """The config of the frozen ViT that tasks of ``backbone_cfg`` share: the same
    architecture, task-only options (prompts, bias tuning, outputs, dropout) dropped."""
    cfg = {k: v for k, v in copy.deepcopy(dict(backbone_cfg)).items() if k not in _TASK_ONLY}
    if _is_timm(backbone_cfg):  # timm's weights come from checkpoint=, not init_cfg
        cfg.update(type='PromptedTimmViT', num_prompts=0, freeze=True, final_norm=final_norm,
                   checkpoint=(init_cfg or {}).get('checkpoint'))
        return cfg
    cfg.update(type='PromptedVisionTransformer', num_prompts=0, freeze=True,
               final_norm=final_norm, init_cfg=init_cfg)
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
    pretrained = pretrained or _pretrained_of(backbone_cfg)
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
