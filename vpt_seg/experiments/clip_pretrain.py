"""A tiny CLIP pretrained here: contrastive image-caption pretraining on generated pairs.

The CoOp study needs a CLIP that knows its words, and none can be downloaded, so this
module makes one as CLIP was made, in miniature: open_clip's ``CLIP`` (image and text
towers at the study's scale) trained with open_clip's ``ClipLoss`` on the source
image-caption pairs of :func:`vpt_seg.datasets.synthetic_captions.make_caption_pairs`,
tokenized with CLIP's own BPE (open_clip's ``SimpleTokenizer``). It is saved as open_clip
publishes CLIPs (:func:`vpt_seg.formats.timm_files.write_open_clip_folder`: OpenAI's key
names, ``open_clip_config.json``), with the real tokenizer's table of 49408 tokens and 77
positions, so the study's configs load it as they would ``timm/vit_base_patch16_clip_224
.openai``.

The token table is cut while training: the text tower trains on the tokens the captions
use (a few dozen ids, remapped in order, so the end token keeps the largest id and
open_clip's ``argmax`` pooling still finds it) and on the first :data:`TRAIN_CONTEXT`
positions; the file gets the full table back, the trained rows at their BPE ids and every
other row (tokens no caption uses, positions past the longest caption) at open_clip's
random initialisation (N(0, 0.02) and N(0, 0.01)). Words the captions never use therefore
mean nothing to this CLIP, as rare words mean little to a real one.
"""
import os.path as osp
import threading
import time
from dataclasses import dataclass
from typing import Dict, List

import numpy as np
import torch

from ..datasets.synthetic_captions import make_caption_pairs
from ..engine.forked import fork_call
from ..formats.timm_files import write_open_clip_folder
from ..models.tiny_clip import build_tiny_clip, tiny_clip_model_cfg
from ..tuners.coop import clip_tokenizer

__all__ = ['CLIP_SHAPE', 'TRAIN_CONTEXT', 'ClipPretrainSettings', 'tokenize_captions',
           'pretrain_tiny_clip', 'pretrain_tiny_clip_once']

#: The study CLIP's shape (:func:`vpt_seg.models.tiny_clip.tiny_clip_model_cfg` names):
#: 32 px images in 16 patches, both towers 64 wide, joint embedding 64.
CLIP_SHAPE = dict(embed_dim=64, image_size=32, patch_size=8, vision_width=64,
                  vision_layers=3, vision_heads=4, text_width=64, text_layers=2,
                  text_heads=4, context_length=77, vocab_size=49408)
#: Text positions trained (the longest caption or study prompt fits well inside).
TRAIN_CONTEXT = 16


@dataclass
class ClipPretrainSettings:
    """Contrastive pretraining of the tiny CLIP.

    Attributes:
        num_pairs: Generated image-caption pairs (drawn once, then shuffled each epoch).
        iters: Optimizer steps.
        batch_size: Pairs per step (the contrastive negatives).
        lr: AdamW's peak learning rate (linear warm-up over a tenth, then cosine).
        weight_decay: AdamW's, on matrices only (CLIP's rule: no decay on gains, biases,
            embeddings' norms or the temperature).
        seed: Data and initialisation seed.
    """
    num_pairs: int = 8000
    iters: int = 400
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.1
    seed: int = 0


def tokenize_captions(captions: List[str]):
    """``(N, TRAIN_CONTEXT)`` compact token ids of ``captions`` (``[SOS] caption [EOS]``,
    zero-padded) and the sorted BPE ids they use (compact id ``i`` is BPE id
    ``used[i]``; 0, the padding, is kept as id 0).

    Raises:
        ValueError: a caption longer than :data:`TRAIN_CONTEXT` tokens.
    """
    tok = clip_tokenizer()
    rows = [[tok.sot_token_id] + tok.encode(c) + [tok.eot_token_id] for c in captions]
    too_long = [c for c, r in zip(captions, rows) if len(r) > TRAIN_CONTEXT]
    if too_long:
        raise ValueError(f'captions longer than {TRAIN_CONTEXT} tokens: {too_long[:3]}')
    used = sorted({0} | {t for r in rows for t in r})
    index = {t: i for i, t in enumerate(used)}
    ids = torch.zeros(len(rows), TRAIN_CONTEXT, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor([index[t] for t in r])
    return ids, used


def _normalize(images: np.ndarray, model) -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` RGB -> ``(N, 3, H, W)`` as CLIP normalises (OpenAI's
    mean/std, which the study's configs' data preprocessor uses too)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor(model.visual.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(model.visual.image_std).view(1, 3, 1, 1)
    return (x - mean) / std


def _optimizer(model, settings: ClipPretrainSettings):
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and 'embedding' not in n]
    rest = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and
                                                            'embedding' not in n)]
    opt = torch.optim.AdamW([dict(params=decay, weight_decay=settings.weight_decay),
                             dict(params=rest, weight_decay=0.0)], lr=settings.lr,
                            betas=(0.9, 0.98), eps=1e-6)
    warm = max(1, settings.iters // 10)

    def factor(step):
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + np.cos(np.pi * (step - warm) / max(1, settings.iters - warm)))
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _full_size_state(model, used: List[int], seed: int) -> Dict[str, torch.Tensor]:
    """The trained state dict with the real tokenizer's token table and 77 positions:
    trained rows in place, the others at open_clip's random initialisation."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(seed + 1)
    tokens = state['token_embedding.weight']
    full = torch.randn(CLIP_SHAPE['vocab_size'], tokens.shape[1], generator=gen) * 0.02
    full[torch.tensor(used)] = tokens
    pos = state['positional_embedding']
    full_pos = torch.randn(CLIP_SHAPE['context_length'], pos.shape[1], generator=gen) * 0.01
    full_pos[:pos.shape[0]] = pos
    state.update({'token_embedding.weight': full, 'positional_embedding': full_pos})
    state.pop('attn_mask', None)
    return state


def pretrain_tiny_clip(folder: str, settings: ClipPretrainSettings = ClipPretrainSettings(),
                       log=print) -> Dict:
    """Pretrain the tiny CLIP and save it in ``folder`` (open_clip's layout).

    Returns:
        ``dict(loss=final loss (mean of the last 50 steps), retrieval=image-to-caption
        top-1 on the last batch (%), tokens=BPE ids trained, seconds=...)``.
    """
    from open_clip.loss import ClipLoss
    start = time.perf_counter()
    images, captions = make_caption_pairs(settings.num_pairs, seed=settings.seed,
                                          size=CLIP_SHAPE['image_size'])
    ids, used = tokenize_captions(captions)
    model = build_tiny_clip(tiny_clip_model_cfg(**dict(
        CLIP_SHAPE, vocab_size=len(used), context_length=TRAIN_CONTEXT)), settings.seed)
    model.train()
    pixels = _normalize(images, model)
    opt, sched = _optimizer(model, settings)
    loss_fn = ClipLoss()
    gen = torch.Generator().manual_seed(settings.seed)
    order, pos, losses = torch.randperm(len(ids), generator=gen), 0, []
    for step in range(settings.iters):
        if pos + settings.batch_size > len(order):
            order, pos = torch.randperm(len(ids), generator=gen), 0
        batch = order[pos:pos + settings.batch_size]
        pos += settings.batch_size
        img_f, txt_f, scale = model(pixels[batch], ids[batch])
        loss = loss_fn(img_f, txt_f, scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, np.log(100))
        losses.append(loss.item())
        if (step + 1) % max(1, settings.iters // 5) == 0:
            log(f'tiny CLIP: step {step + 1}/{settings.iters}, contrastive loss '
                f'{np.mean(losses[-50:]):.3f}')
    with torch.no_grad():
        hits = (img_f @ txt_f.t()).argmax(1) == torch.arange(len(batch))
        same = [captions[i] for i in batch.tolist()]
        # a duplicate caption in the batch is as right as its own
        hits = [bool(h) or same[int(j)] == same[i] for i, (h, j) in
                enumerate(zip(hits, (img_f @ txt_f.t()).argmax(1)))]
    model.eval()
    state = _full_size_state(model, used, settings.seed)
    visual = model.visual
    write_open_clip_folder(state, folder, tiny_clip_model_cfg(**CLIP_SHAPE),
                           dict(mean=list(visual.image_mean), std=list(visual.image_std),
                                interpolation='bicubic', resize_mode='shortest'))
    return dict(loss=float(np.mean(losses[-50:])), retrieval=100.0 * float(np.mean(hits)),
                tokens=len(used), seconds=time.perf_counter() - start)


#: folder -> [lock, settings, figures]: what :func:`pretrain_tiny_clip_once` made.
_MADE: Dict[str, list] = {}
_MADE_LOCK = threading.Lock()


def pretrain_tiny_clip_once(folder: str, settings: ClipPretrainSettings = ClipPretrainSettings(),
                            log=print, slots=None) -> Dict:
    """:func:`pretrain_tiny_clip` into ``folder`` once per process: the study's two parts
    (the CLIP segmentation rows of Table 3 and CoOp's part) ask for the same CLIP from two
    threads; the first pretrains it, the other waits for it and gets the same figures.

    The pretraining runs in a forked child (:func:`~vpt_seg.engine.forked.fork_call`), in
    one of ``slots`` (the study's :class:`~vpt_seg.experiments.study.Slots`) when given.

    Raises:
        ValueError: ``folder`` was already asked for with other settings.
    """
    key = osp.abspath(folder)
    with _MADE_LOCK:
        entry = _MADE.setdefault(key, [threading.Lock(), settings, None])
    if entry[1] != settings:
        raise ValueError(f'{folder}: the tiny CLIP there was asked for with {entry[1]}, now '
                         f'with {settings}; give each its own folder')
    with entry[0]:
        if entry[2] is None or not osp.isfile(osp.join(key, 'open_clip_model.safetensors')):
            if slots is None:
                entry[2] = fork_call(pretrain_tiny_clip, key, settings, log)
            else:
                with slots.hold(0):
                    entry[2] = fork_call(pretrain_tiny_clip, key, settings, log)
        return entry[2]
