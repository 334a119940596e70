"""Speed, memory and FLOPs of a config's model, ours against stock MMSeg in the same run.

:func:`run_benchmark` builds the config's segmentor with random weights (no pretrained
file needed) and measures:

* ``train``: one optimizer step as MMEngine's ``train_step`` does it (data
  preprocessor, forward, losses, backward, optimizer step), on random labelled crops;
* ``whole`` / ``slide``: ``test_step`` (preprocessor, inference, post-processing) in
  the two inference modes, on images of ADE20k's shape (short side = the crop size,
  4:3; ``slide`` uses the config's crop and stride);
* ``serve``: :class:`~vpt_seg.serving.multitask.MultiTaskViT` on crops, a batch of one task
  against a batch that mixes ``serve_tasks`` tasks of the config (each with its own
  prompts, biases if tuned, and heads) in one pass.

A classification config (``VPTClassifier``, e.g. CoOp's ``configs/coop_cls_imagefolder.py``)
is measured the same way in ``train``, ``whole`` (``test_step`` on crop-sized images) and
``serve``; ``slide`` and the stock model are segmentation's.

**The text side.** For a model whose head classifies with text embeddings (CoOp's
``TextClsHead``, ``TextSegHead``: a ``class_embeddings()`` method), each row also
measures the head's class embeddings on their own (:func:`text_side`): in ``train``, one
pass of the K class prompts through the text tower with its backward pass (what every
training step pays, once, whatever the batch size); in ``whole``, the pass without
gradients that evaluation and serving pay once per class list (then cached).

For each: images per second (median of timed steps after warm-up), the bytes autograd
keeps for the backward pass (training; exact and the same on any device), peak memory (CUDA:
the allocator's peak, weights included; CPU: the process' resident set, sampled every
millisecond, above what it held before the model was built: approximate, since the C
allocator keeps some freed memory), FLOPs per image
(:class:`torch.utils.flop_counter.FlopCounterMode`) and the achieved fraction of the
device's peak.

The *stock* model is MMSeg's own: the same config with MMSeg's ``VisionTransformer``
(MMCV attention that asks for attention weights), MMEngine's default optimizer
constructor, and the same parameters frozen. For a ``PromptedTimmViT`` config it is the
same timm model run by timm itself (:class:`~vpt_seg.models.stock.StockTimmViT`:
``forward_intermediates`` to NCHW maps) through the config's MMSeg head, frozen the same
way. Stock MMSeg has no prompts, so for a prompted row it tunes the backbone's biases
instead: the closest stock setup, in which gradients also flow back through every frozen
block.
"""
import contextlib
import copy
import ctypes
import gc
import json
import logging
import os
import statistics
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.model import revert_sync_batchnorm
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope
from mmengine.structures import BaseDataElement, PixelData
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample
from torch.utils import flop_counter

from ..config_paths import resolve_config
from ..engine.logs import quiet_logger
from ..formats.pretrained_key import set_pretrained
from ..models.options import PROMPTED_ARGS
from ..models.stock import TIMM_STOCK_KEYS
from ..serving.multitask import MultiTaskViT, shared_backbone_cfg
from ..tuners.adapter import check_adapter_options
from ..tuners.class_list import text_heads
from ..tuners.lora import check_lora_options
from ..tuners.tuning import count_parameters, format_count, freeze

__all__ = ['run_benchmark', 'format_table', 'PEAK_TFLOPS', 'METHODS', 'TEXT_METHODS',
           'text_side']

#: Dense tensor-core peak TFLOP/s by device name and dtype (vendor data sheets);
#: ``--peak-tflops`` overrides. No entry: the fraction of peak is left out.
PEAK_TFLOPS = {
    'H100': {'bf16': 989.0, 'fp32': 67.0},
    'H200': {'bf16': 989.0, 'fp32': 67.0},
    'A100': {'bf16': 312.0, 'fp32': 19.5},
}

#: Methods ``methods=`` measures on the config's backbone, each replacing its tuning
#: options (the settings of configs/setr_{vpt-deep,lora,adaptformer}_ade20k.py: LoRA and
#: the adapters with their tuners' own defaults).
METHODS = OrderedDict([
    ('head', dict(num_prompts=0, tune_bias=False, lora=None, adapter=None)),
    ('bias', dict(num_prompts=0, tune_bias=True, lora=None, adapter=None)),
    ('vpt-deep', dict(num_prompts=10, deep=True, tune_bias=False, lora=None, adapter=None)),
    ('lora', dict(num_prompts=0, tune_bias=False, adapter=None, lora=check_lora_options({}))),
    ('adaptformer', dict(num_prompts=0, tune_bias=False, lora=None,
                         adapter=check_adapter_options({}))),
])


def _coop_defaults() -> dict:
    """CoOp's context options as ``CoOpTextEncoder`` defaults them (16 tokens, unified,
    at the end, random init), with no templates."""
    import inspect

    from ..models.text_encoder import CoOpTextEncoder
    params = inspect.signature(CoOpTextEncoder.__init__).parameters
    return dict({k: params[k].default for k in ('n_ctx', 'ctx_init', 'csc', 'class_position')},
                templates=None)


#: Methods that also set the head's text encoder (a text head's config): CoOp's learned
#: context with the encoder's own defaults, on the image tower of ``METHODS[key]``.
TEXT_METHODS = OrderedDict([('coop', 'head'), ('vpt-coop', 'vpt-deep')])
METHODS.update((m, METHODS[image]) for m, image in TEXT_METHODS.items())


# ------------------------------------------------------------------ the run
def run_benchmark(config: str, batch: int = 8, amp: Optional[str] = 'bf16',
                  modes=('train', 'whole', 'slide'), stock: bool = False,
                  reference: bool = False, steps: int = 10, warmup: int = 3,
                  device: str = None, infer_size=None, infer_batch: int = 1,
                  peak_tflops: Optional[float] = None, cfg_options: dict = None,
                  serve_batch: int = 32, serve_tasks: int = 4,
                  methods: Sequence[str] = (),
                  log: Callable[[str], None] = None) -> dict:
    """Measure a config (and optionally stock MMSeg) and return the figures.

    Args:
        config: Segmentation config file.
        batch: Training batch size (images per step).
        amp: ``'bf16'`` for bf16 autocast, None for fp32.
        modes: Any of ``'train'``, ``'whole'``, ``'slide'``.
        stock: Also measure stock MMSeg (see the module docstring).
        reference: Also measure ours on MMSeg's layers (``fast_path=False``).
        steps: Timed steps per measurement (their median is kept).
        warmup: Untimed steps first, at least; more until the step time settles
            (:func:`warm_up`), so the order of the rows cannot decide a ratio.
        device: ``'cuda'``, ``'cpu'``...; default CUDA when available.
        infer_size: ``(H, W)`` of inference images; default: short side = crop size, 4:3.
        infer_batch: Images per inference step.
        serve_batch, serve_tasks: ``serve`` mode: images per pass, tasks mixed in it.
        peak_tflops: Device peak for the fraction-of-peak column.
        cfg_options: Overrides merged into the config (as ``--cfg-options``).
        methods: Keys of :data:`METHODS` to measure, each a row named after it, instead
            of the config's own row ("ours"): the same backbone, head, data and mode
            with that method's tuning options, so methods compare on one device in one
            run.

    Returns:
        ``{'env': {...}, 'results': [{model, setup, mode, batch, img_per_s, ...}]}``.
    """
    log = log or (lambda msg: print_log(msg, logger='current'))
    cfg = Config.fromfile(resolve_config(config))
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    dev = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    bad = set(modes) - {'train', 'whole', 'slide', 'serve'}
    if bad:
        raise ValueError(f'unknown modes {sorted(bad)}; choose from train, whole, slide, serve')
    if amp not in (None, 'bf16'):
        raise ValueError(f"amp must be 'bf16' or None, got {amp!r}")
    seg = 'decode_head' in cfg.model
    _check_kind(cfg, seg, modes, stock, reference)
    crop = cfg.model.get('data_preprocessor', {}).get('size') or cfg.get('crop_size')
    crop = (crop, crop) if isinstance(crop, int) else tuple(crop)
    default_infer = (crop[0], int(round(crop[0] * 4 / 3))) if seg else crop
    run = _Run(cfg=cfg, dev=dev, amp=amp, batch=batch, infer_batch=infer_batch, crop=crop,
               infer_size=tuple(infer_size or default_infer),
               num_classes=config_num_classes(cfg.model), serve_batch=serve_batch,
               steps=steps, warmup=warmup, peak=_device_peak(dev, amp, peak_tflops),
               methods=tuple(methods), log=log, seg=seg)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f'unknown methods {unknown}; choose from {list(METHODS)}')
    plan = _plan(methods, stock, reference, modes, serve_tasks)
    if dev.type == 'cpu':
        _first_touch(run, modes)
    start_all = time.perf_counter()
    results = [_measure(run, k, len(plan), row, mode, start_all)
               for k, (row, mode) in enumerate(plan)]
    _add_ratios(results)
    env = dict(config=config, device=(torch.cuda.get_device_name(dev) if dev.type == 'cuda'
                                      else f'CPU, {torch.get_num_threads()} threads'),
               torch=torch.__version__, amp=amp, peak_tflops=run.peak,
               python=sys.version.split()[0], steps=steps, warmup=warmup,
               cfg_options=cfg_options or {}, methods=list(methods))
    return dict(env=env, results=results)


@dataclass
class _Run:
    """What every row of one :func:`run_benchmark` run shares."""
    cfg: Config
    dev: torch.device
    amp: Optional[str]
    batch: int
    infer_batch: int
    crop: Tuple[int, int]
    infer_size: Tuple[int, int]
    num_classes: int
    serve_batch: int
    steps: int
    warmup: int
    peak: Optional[float]
    methods: Tuple[str, ...]
    log: Callable[[str], None]
    seg: bool = True

    def batch_for(self, mode: str) -> dict:
        """Training crops, or ADE20k-shaped images for inference (crop-sized ones for a
        classifier)."""
        make = make_batch if self.seg else make_cls_batch
        if mode == 'train':
            return make(self.batch, self.crop, self.num_classes)
        return make(self.infer_batch, self.infer_size, self.num_classes)


def _check_kind(cfg: Config, seg: bool, modes, stock: bool, reference: bool):
    """Refuse what a classification config or a text head cannot be measured with."""
    if not seg and ('slide' in modes or stock or reference):
        raise ValueError(f'{cfg.filename}: a classification config ({cfg.model.get("type")}) '
                         'is measured in the modes train, whole and serve, ours only: '
                         'slide inference, --stock and --reference are segmentation\'s')
    if stock and text_encoder_cfgs(cfg.model):
        raise ValueError(f'{cfg.filename}: its head classifies with text embeddings (CoOp); '
                         'stock MMSeg has no such head to compare with: leave out --stock')


def text_encoder_cfgs(model_cfg) -> list:
    """The text encoder configs of a model config's heads (``head``, ``decode_head``,
    ``auxiliary_head``, a list of them included)."""
    found = []
    for key in ('head', 'decode_head', 'auxiliary_head'):
        heads = model_cfg.get(key)
        for head in heads if isinstance(heads, (list, tuple)) else [heads]:
            if isinstance(head, dict) and isinstance(head.get('text_encoder'), dict):
                found.append(head['text_encoder'])
    return found


def config_num_classes(model_cfg) -> int:
    """The class count K of a model config: its head's ``num_classes``, else its text
    encoder's class list (``vocabulary`` or MMSeg's ``dataset_name``)."""
    head = model_cfg.get('decode_head') or model_cfg.get('head') or {}
    if head.get('num_classes'):
        return int(head['num_classes'])
    for encoder in text_encoder_cfgs(model_cfg):
        if encoder.get('vocabulary') is not None:
            return len(encoder['vocabulary'])
        if encoder.get('dataset_name'):
            from mmseg.utils import get_classes
            return len(get_classes(encoder['dataset_name']))
    raise ValueError('cannot tell the class count: the head names no num_classes and no '
                     'class list (text_encoder vocabulary / dataset_name)')


def _plan(methods, stock: bool, reference: bool, modes, serve_tasks: int) -> list:
    """The rows in the order they are measured: ``[((name, is_stock, is_reference), mode)]``."""
    ours = [(m, False, False) for m in methods] or [('ours', False, False)]
    models = ours + ([('stock', True, False)] if stock else []) + (
        [('reference', False, True)] if reference else [])
    plan = [(m, mode) for m in models for mode in modes if mode != 'serve']
    if 'serve' in modes:  # ours only: stock MMSeg has no multi-task serving
        plan += [(('serve', False, False), 'serve:1'),
                 (('serve', False, False), f'serve:{serve_tasks}')]
    return plan


def _first_touch(run: _Run, modes):
    """On CPU, one step of each mode before any row: first-touch costs (kernels, thread
    pools) belong to no row."""
    model, optim_wrapper, _ = build(run.cfg, False, run.dev)
    for mode in modes:
        if mode != 'serve':
            _steps(model, optim_wrapper, mode, run.batch_for(mode), run.dev, run.amp)()


def _row_model(run: _Run, name: str, is_stock: bool, is_ref: bool, mode: str):
    """A row's model, optimizer wrapper, setup words, mode, images per step and data."""
    if name == 'serve':
        n, num_tasks = run.serve_batch, int(mode.split(':')[1])
        model = build_serving(run.cfg, run.dev, num_tasks)
        setup = f'{num_tasks} task' + (' (one pass)' if num_tasks == 1 else 's mixed')
        data = (torch.randn(n, 3, *run.crop, device=run.dev),
                [f'task{i % num_tasks}' for i in range(n)])
        return model, None, setup, 'serve', n, data
    model, optim_wrapper, setup = build(run.cfg, is_stock, run.dev, is_ref,
                                        name if name in run.methods else None)
    n = run.batch if mode == 'train' else run.infer_batch
    return model, optim_wrapper, setup, mode, n, run.batch_for(mode)


def _measure(run: _Run, k: int, rows: int, row, mode: str, start_all: float) -> dict:
    """Row ``k`` of ``rows``: img/s after warm-up, memory, FLOPs and parameter counts."""
    name = row[0]
    torch.manual_seed(0)
    if run.dev.type == 'cuda':
        torch.cuda.empty_cache()
    PeakMemory.release()
    baseline = PeakMemory.rss()
    model, optim_wrapper, setup, mode, n, data = _row_model(run, *row, mode)
    step = _steps(model, optim_wrapper, mode, data, run.dev, run.amp)
    label = f'[{k + 1}/{rows}] {name} ({setup}) {mode}, batch {n}'
    run.log(f'{label}: warm-up (at least {run.warmup} steps, until the step time settles)')

    def progress(i, sec):
        done = time.perf_counter() - start_all
        left = (rows - k - i / run.steps) * (done / (k + i / run.steps))
        run.log(f'{label}: step {i}/{run.steps}, {sec * 1e3:.0f} ms, ETA {left:.0f} s')

    with PeakMemory(run.dev, baseline) as mem:
        times, warmed = time_steps(step, run.steps, run.warmup, run.dev, progress)
    flops = count_flops(step)
    saved = saved_for_backward(step, model) if mode == 'train' else None
    sec = statistics.median(times)
    tflops = flops / sec / 1e12
    text = text_side(model, mode, run.dev, run.amp, run.steps, run.warmup) \
        if mode in ('train', 'whole') else None  # slide: whole's pass; serve: cached
    return dict(
        model=name, setup=setup, mode=mode, batch=n,
        size=list(run.crop if mode in ('train', 'serve') else run.infer_size),
        img_per_s=n / sec, ms_per_step=sec * 1e3, warmup_steps=warmed,
        peak_gib=None if mem.peak is None else mem.peak / 2**30,
        saved_gib=None if saved is None else saved / 2**30,
        gflop_per_img=flops / n / 1e9, tflop_per_s=tflops,
        frac_peak=tflops / run.peak if run.peak else None,
        tuned=count_parameters(model, tuned_only=True), total=count_parameters(model),
        **(text or {}))


def text_side(model: torch.nn.Module, mode: str, device: torch.device, amp: Optional[str],
              steps: int, warmup: int) -> Optional[dict]:
    """The text side of a row on its own: the class embeddings of the model's first
    text head (:func:`~vpt_seg.tuners.class_list.text_heads`; None without one).

    ``train``: one pass of the K class prompts through the text tower and its backward
    pass to the context, as each training step runs it once. Other modes: one pass
    without gradients, what evaluation and serving pay once per class list (the text
    encoder caches it after). Time (median of ``steps`` after warm-up), peak memory above
    what was held before (CPU: resident set, sampled; CUDA: allocator), bytes kept for
    backward (train) and FLOPs, per pass.

    Returns:
        ``dict(text_classes, text_ms_per_step, text_peak_gib, text_saved_gib,
        text_gflop)``, or None.
    """
    heads = text_heads(model)
    if not heads:
        return None
    head = heads[0][1]
    step = _text_step(head, mode, device, amp)
    PeakMemory.release()
    before = torch.cuda.memory_allocated(device) if device.type == 'cuda' else 0
    with PeakMemory(device, PeakMemory.rss()) as mem:
        times, _ = time_steps(step, steps, warmup, device)
    peak = None if mem.peak is None else max(mem.peak - before, 0)
    flops = count_flops(step)
    saved = saved_for_backward(step, head) if mode == 'train' else None
    head.train(mode == 'train')
    return dict(text_classes=int(head.num_classes),
                text_ms_per_step=statistics.median(times) * 1e3,
                text_peak_gib=None if peak is None else peak / 2**30,
                text_saved_gib=None if saved is None else saved / 2**30,
                text_gflop=flops / 1e9)


def _text_step(head: torch.nn.Module, mode: str, device, amp):
    """One text pass of ``head`` (see :func:`text_side`)."""
    if mode == 'train':
        head.train()  # once, as a training loop does: fixed text (nothing tuned) stays cached

        def step():
            with _autocast(device, amp):
                embeddings = head.class_embeddings()                     # (K, E)
            if embeddings.requires_grad:
                embeddings.float().sum().backward()
            for p in head.parameters():
                p.grad = None
        return step

    def step():
        head.eval()  # drops the cached embeddings: the pass a new class list costs
        with torch.no_grad(), _autocast(device, amp):
            head.class_embeddings()
    return step


def _add_ratios(results: List[dict]):
    """Each row against stock in the same mode; mixed-task serving against one task."""
    for r in results:
        ref = next((s for s in results if s['model'] == 'stock' and s['mode'] == r['mode']),
                   None)
        r['x_stock'] = r['img_per_s'] / ref['img_per_s'] if ref else None
        r['mem_vs_stock'] = (r['peak_gib'] / ref['peak_gib']
                             if ref and r['peak_gib'] and ref['peak_gib'] else None)
        if r['model'] == 'serve':  # mixed tasks against one task, same batch
            one = next(s for s in results if s['model'] == 'serve')
            r['x_one_task'] = r['img_per_s'] / one['img_per_s']


# ------------------------------------------------------------------- the models
def _tuner_words(bb) -> List[str]:
    """``['LoRA r8 q,v', 'adapter w64']``: the backbone's LoRA and adapter, as built."""
    lora, adapter = bb.get('lora'), bb.get('adapter')
    words = []
    if lora is not None:
        lora = check_lora_options(lora)
        words.append(f"LoRA r{lora['rank']} " + ','.join(lora['targets']))
    if adapter is not None:
        words.append(f"adapter w{check_adapter_options(adapter)['width']}")
    return words


def _text_words(encoders) -> List[str]:
    """``['text context 16']``: the first text encoder's learned context (CoOp), as built;
    ``['fixed text']`` for templates."""
    if not encoders:
        return []
    encoder = encoders[0]
    n_ctx = encoder.get('n_ctx', _coop_defaults()['n_ctx'])
    if encoder.get('templates') is not None or not n_ctx:
        return ['fixed text']
    return [f'text context {n_ctx}' + (' (CSC)' if encoder.get('csc') else '')]


def model_setup(cfg: Config, stock: bool, reference: bool = False,
                method: Optional[str] = None):
    """The model and optimizer configs to measure, and a few words on what is tuned.

    Args:
        cfg: A vpt-seg segmentation config.
        stock: MMSeg's own ``VisionTransformer`` and optimizer constructor instead.
        reference: Ours on MMSeg's layers (``fast_path=False``).
        method: A key of :data:`METHODS`: the config's backbone with that method's
            tuning options instead of its own.
    """
    model = copy.deepcopy(cfg.model)
    bb = model.backbone
    encoders = text_encoder_cfgs(model)
    if method is not None:
        if method not in METHODS:
            raise ValueError(f'unknown method {method!r}; choose from {list(METHODS)}')
        bb.update(copy.deepcopy(METHODS[method]))
        if method in TEXT_METHODS:
            if not encoders:
                raise ValueError(
                    f'method {method!r} learns a text context, and the config\'s head has no '
                    'text encoder (model.head.text_encoder, model.decode_head.text_encoder): '
                    'measure it on a CLIP config with a text head, e.g. '
                    'configs/coop_cls_imagefolder.py')
            for encoder in encoders:
                encoder.update(_coop_defaults())
    set_pretrained(bb, None)  # random weights: measure without a pretrained file
    bb.init_cfg = None
    for encoder in encoders:  # the text tower too
        encoder['checkpoint'] = None
    timm_family = bb.get('type') == 'PromptedTimmViT'
    freeze = bb.get('freeze', True)
    tune_bias = bb.get('tune_bias', False)
    prompts = bb.get('num_prompts', 0)
    tuners = _tuner_words(bb)
    optim = copy.deepcopy(cfg.optim_wrapper)
    optim.type = 'OptimWrapper'
    optim.pop('loss_scale', None)
    if stock:
        if timm_family:
            model.backbone = bb = type(bb)(type='StockTimmViT',
                                           **{k: bb[k] for k in TIMM_STOCK_KEYS if k in bb})
        else:
            for key in PROMPTED_ARGS:
                bb.pop(key, None)
            bb.type = 'VisionTransformer'
        optim.pop('constructor', None)
        paramwise = optim.get('paramwise_cfg') or {}
        for key in ('prompt_lr_mult', 'prompt_decay_mult', 'tuner_lr_mult', 'tuner_decay_mult'):
            paramwise.pop(key, None)
        tune_bias = tune_bias or (freeze and (prompts > 0 or bool(tuners)))
        setup = ('full fine-tuning' if not freeze else
                 'frozen, biases tuned' if tune_bias else 'frozen, head only')
    else:
        if reference:
            bb.fast_path = False
        parts = ([f'{prompts} prompts' + ('' if bb.get('deep', True) else ' (shallow)')]
                 if prompts else []) + tuners + (['biases'] if tune_bias else []) + \
            _text_words(encoders)
        setup = ('full fine-tuning' if not freeze else
                 'frozen, ' + ' + '.join(parts or ['head only']))
        if bb.get('with_cp', False):
            setup += ', with_cp'
    return model, optim, dict(freeze=freeze, tune_bias=tune_bias), setup


def build(cfg: Config, stock: bool, device: torch.device, reference: bool = False,
          method: Optional[str] = None):
    """Build the model (random weights, SyncBN reverted as MMEngine's runner does on one
    process) and its optimizer wrapper. Returns ``(model, optim_wrapper, setup)``."""
    model_cfg, optim_cfg, rule, setup = model_setup(cfg, stock, reference, method)
    model = MODELS.build(model_cfg)
    with quiet_logger():  # MMEngine's init report is long: keep it out
        model.init_weights()
    model = revert_sync_batchnorm(model).to(device)
    if stock and rule['freeze']:  # the same rule as ours, on MMSeg's modules
        freeze(model.backbone, tune_bias=rule['tune_bias'])
    # MMEngine's constructor logs a warning per frozen parameter ("... is skipped since
    # its requires_grad=False"): the stock model's frozen body is that by design.
    with quiet_logger(logging.ERROR) if stock else contextlib.nullcontext():
        optim_wrapper = build_optim_wrapper(model, optim_cfg)
    return model, optim_wrapper, setup


def build_serving(cfg: Config, device: torch.device, num_tasks: int) -> MultiTaskViT:
    """``num_tasks`` random tasks of the config's kind on one shared random ViT."""
    models = []
    for t in range(num_tasks):
        torch.manual_seed(t)  # each task its own prompts, biases and heads
        models.append(build(cfg, False, device)[0].eval())
    frozen = {n: p for n, p in models[0].backbone.named_parameters() if not p.requires_grad}
    shared = MODELS.build(shared_backbone_cfg(
        cfg.model.backbone, final_norm=models[0].backbone.final_norm)).to(device)
    with torch.no_grad():
        for n, p in shared.named_parameters():
            p.copy_(frozen[n])
        for m in models[1:]:
            for n, p in m.backbone.named_parameters():
                if n in frozen:
                    p.copy_(frozen[n])
            for (_, head), (_, first) in zip(text_heads(m), text_heads(models[0])):  # one CLIP
                frozen_text = {n: p for n, p in first.named_parameters() if not p.requires_grad}
                for n, p in head.named_parameters():
                    if n in frozen_text:
                        p.copy_(frozen_text[n])
    mt = MultiTaskViT(shared)
    for t, m in enumerate(models):
        mt.add_task(f'task{t}', m)
    return mt.eval()


def _random_batch(batch: int, size, seed: int, sample) -> dict:
    """``batch`` random uint8 ``(3, H, W)`` images, each followed by its data sample
    ``sample(generator, h, w)`` drawn from the same generator."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    inputs, samples = [], []
    for _ in range(batch):
        inputs.append(torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8))
        samples.append(sample(g, h, w))
    return dict(inputs=inputs, data_samples=samples)


def make_cls_batch(batch: int, size, num_classes: int, seed: int = 0) -> dict:
    """Random uint8 images and class labels, as ``PackClsInputs`` gives them."""
    def sample(g, h, w):
        data = BaseDataElement(metainfo=dict(img_shape=(h, w), ori_shape=(h, w)))
        data.gt_label = torch.randint(0, num_classes, (), generator=g)
        return data

    return _random_batch(batch, size, seed, sample)


def make_batch(batch: int, size, num_classes: int, seed: int = 0) -> dict:
    """Random uint8 images and label maps, as the data loader gives them."""
    def sample(g, h, w):
        data = SegDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w),
                                           pad_shape=(h, w), padding_size=[0, 0, 0, 0]))
        labels = torch.randint(0, num_classes, (1, h, w), generator=g)
        labels[:, :, : w // 10] = 255  # some ignored pixels, as in ADE20k
        data.gt_sem_seg = PixelData(data=labels)
        return data

    return _random_batch(batch, size, seed, sample)


# ------------------------------------------------------------------ measuring
class PeakMemory:
    """Peak memory during a ``with`` block, in bytes.

    CUDA: the caching allocator's peak (``max_memory_allocated``). CPU: the resident set
    size sampled every millisecond from ``/proc/self/statm``, minus ``baseline``.
    """

    def __init__(self, device: torch.device, baseline: int = 0):
        self.device, self.baseline, self.peak = device, baseline, None

    @staticmethod
    def release():
        """Hand freed heap memory back to the OS (glibc), so the next baseline is honest."""
        gc.collect()
        try:
            ctypes.CDLL('libc.so.6').malloc_trim(0)
        except (OSError, AttributeError):
            pass

    @staticmethod
    def rss() -> int:
        try:
            with open('/proc/self/statm') as f:
                return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
        except OSError:  # not Linux: no sampling
            return 0

    def __enter__(self):
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._stop = threading.Event()
            self._max = self.rss()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self._max = max(self._max, self.rss())
            time.sleep(0.001)

    def __exit__(self, *exc):
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self._max - self.baseline, 0) if self._max else None


def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


#: Warm-up ends when two consecutive step times are within this fraction of each other.
SETTLED = 0.10
#: ... or after this many warm-up steps, settled or not.
MAX_WARMUP = 30


def warm_up(step: Callable, warmup: int, device: torch.device, settled: float = SETTLED,
            cap: int = MAX_WARMUP, clock: Callable[[], float] = time.perf_counter) -> int:
    """Run ``step`` untimed until its time per call has settled; return how many calls.

    A model's first calls are slow for a varying number of steps (allocator growth, kernel
    selection, thread pools), so a fixed count lets the order of the rows decide a ratio.
    At least ``warmup`` calls (and two, to compare), then more until two consecutive calls
    are within ``settled`` of each other, at most ``max(cap, warmup)`` in all. ``warmup=0``
    runs none.
    """
    if warmup <= 0:
        return 0
    cap = max(cap, warmup)
    last = None
    for n in range(1, cap + 1):
        start = clock()
        step()
        _sync(device)
        sec = clock() - start
        if (n >= max(warmup, 2) and last is not None
                and abs(sec - last) <= settled * max(sec, last)):
            return n
        last = sec
    return cap


def time_steps(step: Callable, steps: int, warmup: int, device: torch.device,
               progress: Optional[Callable[[int, float], None]] = None,
               clock: Callable[[], float] = time.perf_counter) -> Tuple[List[float], int]:
    """Seconds per call of ``step`` for ``steps`` calls after :func:`warm_up` (at least
    ``warmup`` untimed calls, more until the step time settles).

    Returns:
        ``(times, warm-up calls made)``.
    """
    done = warm_up(step, warmup, device, clock=clock)
    times = []
    for i in range(steps):
        start = clock()
        step()
        _sync(device)
        times.append(clock() - start)
        if progress:
            progress(i + 1, times[-1])
    return times, done


def saved_for_backward(step: Callable, model: torch.nn.Module) -> int:
    """Bytes of the tensors autograd keeps for the backward pass during one ``step``
    (each storage once, the model's own weights and buffers left out): the activation
    memory of training, the same on any device."""
    own = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    storages = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in own:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(storages.values())


def count_flops(step: Callable) -> int:
    with flop_counter.FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def _device_peak(device: torch.device, amp: Optional[str], override: Optional[float]):
    if override:
        return override
    if device.type != 'cuda':
        return None
    name = torch.cuda.get_device_name(device)
    for key, peaks in PEAK_TFLOPS.items():
        if key in name:
            return peaks['bf16' if amp else 'fp32']
    return None


def _autocast(device, amp):
    return (torch.autocast(device.type, dtype=torch.bfloat16) if amp else
            torch.autocast(device.type, enabled=False))


def _steps(model, optim_wrapper, mode: str, data: dict, device, amp):
    """The callable one timed step runs."""
    autocast = lambda: _autocast(device, amp)  # noqa: E731
    if mode == 'serve':
        inputs, tasks = data

        def step():
            with torch.no_grad(), autocast():
                model(inputs, tasks)
        return step
    if mode == 'train':
        model.train()

        def step():
            with autocast():
                batch = model.data_preprocessor(data, True)
                losses = model._run_forward(batch, mode='loss')
            loss, _ = model.parse_losses(losses)
            optim_wrapper.update_params(loss)
        return step
    model.eval()
    if getattr(model, 'test_cfg', None) is not None:  # a segmentor: whole or slide
        model.test_cfg.mode = mode

    def step():
        with torch.no_grad(), autocast():
            model.test_step(data)
    return step


def _fmt(v, spec):
    return '-' if v is None else format(v, spec)


def format_table(report: dict) -> str:
    """A Markdown table of :func:`run_benchmark`'s results, with the environment above it."""
    env = report['env']
    lines = [f"{env['config']} on {env['device']}, torch {env['torch']}, "
             f"{'bf16 autocast' if env['amp'] else 'fp32'}, median of {env['steps']} "
             f"step{'s' if env['steps'] != 1 else ''}",
             '',
             'x ref: img/s against stock MMSeg, same mode (serve: against one task); '
             'mem: peak memory against stock; kept: activations autograd keeps for backward '
             '(train, device-independent).', '',
             '| model | setup | mode | batch | img/s | x ref | peak GiB | mem | '
             'kept GiB | GFLOP/img | TFLOP/s | % of peak | tuned |',
             '|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|']
    for r in report['results']:
        lines.append(
            f"| {r['model']} | {r['setup']} | {r['mode']} | {r['batch']} | "
            f"{r['img_per_s']:.3g} | {_fmt(r.get('x_one_task', r['x_stock']), '.2f')} | "
            f"{_fmt(r['peak_gib'], '.3g')} | "
            f"{_fmt(r['mem_vs_stock'], '.2f')} | {_fmt(r.get('saved_gib'), '.3g')} | "
            f"{r['gflop_per_img']:.4g} | "
            f"{r['tflop_per_s']:.3g} | "
            f"{'-' if r['frac_peak'] is None else format(100 * r['frac_peak'], '.1f')} | "
            f"{format_count(r['tuned'])} |")
    text = [r for r in report['results'] if r.get('text_ms_per_step') is not None]
    if text:
        lines += ['', 'The text side of these rows on its own (the class embeddings of K class '
                  'prompts; train: forward and backward, once per step whatever the batch; '
                  'whole: one pass without gradients, once per class list, then cached). '
                  'share: of the training step\'s time.', '',
                  '| model | setup | mode | K | text ms | share | text peak GiB | '
                  'text kept GiB | text GFLOP |',
                  '|---|---|---|--:|--:|--:|--:|--:|--:|']
        for r in text:
            share = r['text_ms_per_step'] / r['ms_per_step'] if r['mode'] == 'train' else None
            lines.append(
                f"| {r['model']} | {r['setup']} | {r['mode']} | {r['text_classes']} | "
                f"{r['text_ms_per_step']:.5g} | {_fmt(share, '.2f')} | "
                f"{_fmt(r['text_peak_gib'], '.3g')} | {_fmt(r['text_saved_gib'], '.3g')} | "
                f"{r['text_gflop']:.4g} |")
    return '\n'.join(lines)


def save_json(report: dict, path: str):
    def default(o):
        if isinstance(o, (np.generic,)):
            return o.item()
        return str(o)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'w') as f:
        json.dump(report, f, indent=1, default=default)
