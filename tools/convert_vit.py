"""Convert a pretrained ViT (timm, JAX ``.npz`` or MMSeg) to an MMSeg-format checkpoint.

The backbone loads timm and JAX files directly (docs/pretrained.md); this tool writes the
converted file once, checks a file before a long run, or makes a ViT with timm offline:

    # a published file -> MMSeg format (pos_embed resampled to 512x512 if asked)
    python tools/convert_vit.py pretrain/ViT-L_16.npz --out pretrain/vit_large_p16.pth
    python tools/convert_vit.py model.safetensors --out pretrain/vit.pth --img-size 512
    # a model built with timm here: random init, or loaded by timm from a file
    python tools/convert_vit.py --timm-model vit_tiny_patch16_224 --out pretrain/x.pth
    python tools/convert_vit.py --timm-model vit_large_patch16_224 \\
        --checkpoint pretrain/ViT-L_16.npz --out pretrain/vit_large_p16.pth
    python tools/convert_vit.py --timm-model vit_tiny_patch16_224 \\
        --model-args depth=2 embed_dim=64 num_heads=2 img_size=64 --out pretrain/tiny.pth

It prints the backbone arguments the weights fit (``embed_dims``, ``num_layers``, ...).
A file saved by vpt-seg's own ``PromptedVisionTransformer`` (``pretrain/tiny_vit.pth`` from
tools/demo.py) carries a ``signature``, the architecture as integers: it is checked
against the weights, gives ``num_heads`` (which torch weights do not record) and is left
out of the converted file, which is MMSeg's plain layout.

For a ``PromptedTimmViT`` config (DINOv2, EVA02, ... by timm name) the backbone reads
timm's files as they are; ``--config`` checks one before a long run, writing nothing:

    # the file (or hub folder) of the config's checkpoint=, or another one
    python tools/convert_vit.py --config configs/setr_vpt_dinov2_ade20k.py
    python tools/convert_vit.py pretrain/vit_large_patch14_reg4_dinov2 \
        --config configs/setr_vpt_dinov2_ade20k.py

It builds the config's backbone, loads the file as training would (the family's own
conversion, the patch-14 -> 16 and position-grid resampling), prints one line (tensors,
what was resampled, what was ignored) and exits 0; exit 1 with the reason otherwise (a
missing file, another model name or size, a file that is not weights).
"""
import argparse
import ast
import os
import os.path as osp

import torch

from vpt_seg.formats.fitting import infer_backbone_kwargs, is_ignorable, resample_pos_embed
from vpt_seg.formats.weights import convert_timm_to_mmseg, load_vit_checkpoint

_KNOWN = ('patch_embed.', 'cls_token', 'pos_embed', 'layers.', 'ln1.', 'ln_pre.')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('src', nargs='?', help='timm (.safetensors/.pth/.bin), JAX (.npz) '
                        'or MMSeg ViT weights')
    parser.add_argument('--out', help='where to write the MMSeg .pth')
    parser.add_argument('--config', help="check src (default: the config's checkpoint=) "
                        "against this PromptedTimmViT config's backbone; writes nothing")
    parser.add_argument('--cfg-options', nargs='+', default=[], metavar='KEY=VALUE',
                        help='with --config: overrides, as the tools take them')
    parser.add_argument('--timm-model', help='build this timm model and convert its '
                        'weights (random init unless --checkpoint/src is given)')
    parser.add_argument('--checkpoint', help='with --timm-model: weights timm loads into '
                        'the model (any format timm reads, .npz included)')
    parser.add_argument('--model-args', nargs='*', default=[], metavar='KEY=VALUE',
                        help='with --timm-model: timm.create_model keyword arguments')
    parser.add_argument('--img-size', type=int, nargs='+', metavar='SIZE',
                        help='resample pos_embed to this input size (H [W])')
    parser.add_argument('--seed', type=int, default=0, help='seed for a random init')
    args = parser.parse_args(argv)
    if args.config:
        if args.out or args.timm_model or args.checkpoint:
            parser.error('--config checks a file for a config; it takes src only (no '
                         '--out, --timm-model, --checkpoint)')
        return args
    if not args.out:
        parser.error('the following arguments are required: --out')
    if not args.src and not args.timm_model:
        parser.error('give a weights file (src) or --timm-model')
    if args.src and args.timm_model and args.checkpoint:
        parser.error('give the file once: src or --checkpoint')
    if args.checkpoint and not args.timm_model:
        parser.error('--checkpoint goes with --timm-model; without it, pass the file as src')
    return args


def _value(text):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def check_signature(signature, kwargs: dict, source: str) -> dict:
    """``kwargs`` (from :func:`infer_backbone_kwargs`) with ``num_heads`` taken from the
    ``signature`` a vpt-seg backbone saves, after checking that it records the ViT the
    weights are (:data:`~vpt_seg.models.prompted_vit.SIGNATURE_FIELDS`).

    Raises:
        SystemExit: the signature is not an MMSeg-layout ViT's, or records another ViT
            than the weights (naming the fields and what to do).
    """
    from vpt_seg.models.prompted_vit import SIGNATURE_FIELDS
    fields = ', '.join(SIGNATURE_FIELDS)
    if not (torch.is_tensor(signature) and signature.numel() == len(SIGNATURE_FIELDS)
            and not signature.is_floating_point()):
        shape = tuple(signature.shape) if torch.is_tensor(signature) else type(signature)
        raise SystemExit(f'{source}: its "signature" ({shape}) is not the one vpt-seg\'s '
                         f'MMSeg-layout ViT saves ({len(SIGNATURE_FIELDS)} integers: '
                         f'{fields}); a file of another backbone kind (a PromptedTimmViT '
                         'reads timm files as they are: check one with --config)')
    recorded = dict(zip(SIGNATURE_FIELDS, map(int, signature.flatten().tolist())))
    seen = {k: kwargs[k] for k in ('embed_dims', 'num_layers', 'patch_size', 'in_channels')}
    if 'mlp_ratio' in kwargs:
        seen['feedforward_channels'] = int(kwargs['mlp_ratio'] * kwargs['embed_dims'])
    if kwargs.get('num_heads'):
        seen['num_heads'] = kwargs['num_heads']
    differ = [f'{k} {recorded[k]} recorded, {v} in the weights' for k, v in seen.items()
              if recorded[k] != v]
    if differ:
        raise SystemExit(f'{source}: its signature records another ViT than its weights '
                         f'({"; ".join(differ)}): the file was edited or put together from '
                         'two models. Save the backbone again from the model that made it.')
    return dict(kwargs, num_heads=recorded['num_heads'])


def timm_state_dict(name, checkpoint=None, seed=0, **kwargs):
    """The MMSeg-named weights of a timm model built here, and its head count."""
    import timm
    torch.manual_seed(seed)
    kwargs.setdefault('num_classes', 0)  # no classifier: timm then skips the file's head
    if checkpoint:
        if not osp.isfile(checkpoint):
            raise FileNotFoundError(f'weights not found: {checkpoint!r}')
        kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=checkpoint))
    model = timm.create_model(name, **kwargs)
    heads = getattr(getattr(model, 'blocks', [None])[0], 'attn', None)
    return convert_timm_to_mmseg(model.state_dict()), getattr(heads, 'num_heads', None)


def check_timm_file(config: str, path=None, cfg_options=()) -> str:
    """Load ``path`` (default: the config's ``checkpoint=``) into the config's
    ``PromptedTimmViT`` backbone as training would; returns the one-line summary.

    Raises:
        SystemExit: The config's backbone is not a PromptedTimmViT, or the file does not
            fit it (missing, another model name or size, unreadable): the reason.
    """
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    import vpt_seg  # noqa: F401  (registration)
    from vpt_seg.engine.logs import quiet_logger
    from vpt_seg.formats.weight_files import reading_once
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict({k: _value(v) for k, v in (kv.split('=', 1) for kv in cfg_options)})
    backbone = dict(cfg.model.backbone)
    if backbone.get('type') != 'PromptedTimmViT':
        raise SystemExit(f'{config}: the backbone is {backbone.get("type")}, not '
                         'PromptedTimmViT; for MMSeg-layout ViTs, convert with --out')
    path = path or backbone.get('checkpoint')
    if not path:
        raise SystemExit(f'{config}: no file to check (the backbone has no checkpoint=; '
                         'give the file as src)')
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    try:
        with quiet_logger(), reading_once():  # loaded, then fitted again for the summary
            model = MODELS.build(dict(backbone, checkpoint=None))
            file, _ = vpt_seg.models.timm_vit.find_weights_file(path)
            from vpt_seg.models.timm_vit import fit_timm_state_dict, read_timm_state_dict
            model.load_pretrained(path)
            _, summary = fit_timm_state_dict(read_timm_state_dict(file), model.vit,
                                             ignored=model._ignored, where=file)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f'{path} does not fit {config} ({backbone["model_name"]}): '
                         f'{err}') from None
    line = (f'{path} fits {config}: {backbone["model_name"]} ({model.vit.embed_dim} wide, '
            f'{len(model.vit.blocks)} layers, patch {model.patch_size}): {summary}')
    print(line)
    return line


def main(argv=None):
    args = parse_args(argv)
    if args.config:
        return check_timm_file(args.config, args.src, args.cfg_options)
    if args.timm_model:
        model_args = dict(kv.split('=', 1) for kv in args.model_args)
        model_args = {k: _value(v) for k, v in model_args.items()}
        state_dict, heads = timm_state_dict(args.timm_model, args.checkpoint or args.src,
                                            args.seed, **model_args)
        source = f'timm model {args.timm_model}'
    else:
        ckpt = load_vit_checkpoint(args.src)
        state_dict, heads = ckpt.state_dict, ckpt.num_heads
        source = f'{args.src} ({ckpt.format} format)'

    signature = state_dict.get('signature')
    state_dict = {k: v for k, v in state_dict.items() if k != 'signature'}
    unknown = [k for k in state_dict if not k.startswith(_KNOWN) and not is_ignorable(k)]
    if unknown:
        raise SystemExit(f'{source}: {len(unknown)} keys have no place in MMSeg\'s '
                         f'VisionTransformer: {", ".join(unknown[:12])}')
    ignored = sorted(k for k in state_dict if is_ignorable(k))
    state_dict = {k: v.contiguous() for k, v in state_dict.items() if k not in ignored}

    kwargs = infer_backbone_kwargs(state_dict, heads)
    if signature is not None:
        kwargs = check_signature(signature, kwargs, source)
    if args.img_size:
        size = tuple(args.img_size) * (2 if len(args.img_size) == 1 else 1)
        patch = kwargs['patch_size']
        if size[0] % patch or size[1] % patch:
            raise SystemExit(f'--img-size {size} is not a multiple of the patch size {patch}')
        state_dict['pos_embed'] = resample_pos_embed(state_dict['pos_embed'],
                                                     (size[0] // patch, size[1] // patch))
        kwargs['img_size'] = size[0] if size[0] == size[1] else size

    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    torch.save(state_dict, args.out)
    print(f'{source} -> {args.out}: {len(state_dict)} tensors'
          + (f', dropped {", ".join(ignored)}' if ignored else '')
          + ('; its signature (vpt-seg\'s record of the architecture) fits the weights '
             'and gave num_heads, left out' if signature is not None else ''))
    print('backbone arguments these weights fit (norm_cfg eps=1e-6 for timm/JAX ViTs):')
    print('  ' + ', '.join(f'{k}={v!r}' for k, v in kwargs.items()))
    return state_dict


if __name__ == '__main__':
    main()
