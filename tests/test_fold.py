"""Folding a task (tools/export_task.py --fold, vpt_seg/formats/fold.py) on tiny models of both
families: the standalone checkpoint gives the unfolded task's outputs, holds no LoRA
tensors, has the update merged into its frozen weights, and loads through MMSeg's
``init_model`` and ``inference_model`` with no pretrained file anywhere."""
import os
import os.path as osp
import re
import shutil

import numpy as np
import pytest
import torch

import vpt_seg  # noqa: F401  (before mmseg: compat fixes, registration)

# isort: split
from helpers import ROOT, run_tool, trained_like
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmseg.apis import inference_model, init_model
from mmseg.registry import MODELS

from vpt_seg import export_task
from vpt_seg.formats import fold
from vpt_seg.formats.config_data import literal_config_text
from vpt_seg.formats.fold import fold_task, folded_config_path, standalone_config

init_default_scope('mmseg')
DEMO = osp.join(ROOT, 'configs', 'demo')
LORA = dict(rank=2, alpha=4, targets=('q', 'v', 'proj', 'fc1', 'fc2'))
CLASSES = [f'c{i}' for i in range(150)]

# case -> (family, backbone options, what fold_task reports as folded)
CASES = {
    'mmseg_lora_vpt_bias_adapter': ('mmseg', dict(lora=LORA, tune_bias=True,
                                                  adapter=dict(width=4)),
                                    ['LoRA', 'tuned biases']),
    'mmseg_lora': ('mmseg', dict(num_prompts=0, lora=LORA), ['LoRA']),
    'mmseg_vpt': ('mmseg', dict(), []),  # nothing to fold: written all the same
    'dinov2_lora_vpt_bias': ('dinov2', dict(lora=LORA, tune_bias=True),
                             ['LoRA', 'tuned biases']),
    'dinov2_lora_adapter': ('dinov2', dict(num_prompts=0, lora=dict(rank=3, targets=('k',)),
                                           adapter=dict(width=4, scale=0.5)), ['LoRA']),
}
FROZEN_KEY = {'mmseg': 'backbone.layers.0.attn.attn.in_proj_weight',
              'dinov2': 'backbone.vit.blocks.0.attn.qkv.weight'}


@pytest.fixture(scope='module')
def families(tmp_path_factory):
    """Each family's demo config with a tiny pretrained file (MMSeg layout) or hub folder
    (DINOv2 with registers, timm's own class), and that file's path."""
    import timm

    from vpt_seg.models.timm_vit import write_hub_folder
    tmp = tmp_path_factory.mktemp('fold')
    cfg = Config.fromfile(osp.join(DEMO, 'setr_vpt_tiny_ade20k.py'))
    torch.manual_seed(0)
    vit = MODELS.build(dict(cfg.model.backbone, num_prompts=0, save_frozen=True,
                            init_cfg=None))
    vit.init_weights()
    with torch.no_grad():  # non-trivial biases
        for p in vit.parameters():
            p.add_(0.05 * torch.randn_like(p))
    mmseg_file = str(tmp / 'tiny_vit.pth')
    torch.save(vit.state_dict(), mmseg_file)
    cfg.model.backbone.init_cfg.checkpoint = mmseg_file

    dino = Config.fromfile(osp.join(DEMO, 'setr_vpt_tiny_dinov2_ade20k.py'))
    b = dino.model.backbone
    ref = timm.create_model(b.model_name, pretrained=False, num_classes=0, img_size=56,
                            **b.model_kwargs)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    hub = write_hub_folder(ref, str(tmp / 'tiny_dinov2_reg4'), b.model_name)
    dino.model.backbone.checkpoint = hub
    return dict(tmp=tmp, mmseg=(cfg, mmseg_file), dinov2=(dino, hub))


def _outputs(model, x):
    shape = tuple(x.shape[2:])
    metas = [dict(img_shape=shape, pad_shape=shape, ori_shape=shape)] * len(x)
    with torch.no_grad():
        return model.encode_decode(x, metas)


def _task(families, name):
    """A trained-like task of ``CASES[name]``: random tuned weights and BN statistics,
    saved as a training checkpoint with its classes."""
    family, options, _ = CASES[name]
    base, pretrained = families[family]
    cfg = Config(base.to_dict())
    cfg.model.backbone.update(options)
    model = trained_like(cfg.model, seed=1, batchnorm=True)
    model.eval()
    ckpt = str(families['tmp'] / f'{name}.pth')
    torch.save({'state_dict': model.state_dict(), 'meta': {'dataset_meta': {
        'classes': CLASSES}}}, ckpt)
    return cfg, ckpt, model, pretrained


class _Away:
    """Move a pretrained file (or hub folder) away for the block, back after it."""

    def __init__(self, path):
        self.path, self.moved = path, path + '.away'

    def __enter__(self):
        os.rename(self.path, self.moved)

    def __exit__(self, *exc):
        os.rename(self.moved, self.path)


@pytest.mark.parametrize('name', list(CASES))
def test_a_folded_task_equals_the_task_and_needs_no_pretrained_file(families, name,
                                                                     monkeypatch):
    family, options, folded = CASES[name]
    cfg, ckpt, model, pretrained = _task(families, name)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    expected = _outputs(model, x)
    img = np.random.default_rng(3).integers(0, 256, (40, 52, 3), np.uint8)
    model.cfg = cfg
    with torch.no_grad():
        expected_logits = inference_model(model, img).seg_logits.data

    out = str(families['tmp'] / name / 'folded.pth')
    os.makedirs(osp.dirname(out))
    logged = []
    monkeypatch.setattr(fold, 'print_log', lambda msg, **kw: logged.append(msg))
    done = fold_task(cfg, ckpt, out)
    assert [f.split(' ')[0] for f in done['folded']] == [f.split(' ')[0] for f in folded]
    assert done['config'] == folded_config_path(out) == out[:-4] + '.py'
    assert any('nothing to fold' in m for m in logged) == (not folded)

    saved = torch.load(out, weights_only=True)  # the safe reader takes it
    state = saved['state_dict']
    assert not any('lora' in k for k in state)
    whole = set(model.state_dict()) | {k for k, p in model.named_parameters()
                                       if not p.requires_grad}
    assert set(state) == {k for k in whole if '.lora.' not in k}  # frozen weights included
    assert saved['meta']['dataset_meta']['classes'] == CLASSES
    # the frozen weights are in, with the update merged in where LoRA targets them
    frozen = dict(model.named_parameters())[FROZEN_KEY[family]]
    assert torch.equal(state[FROZEN_KEY[family]], frozen) == ('LoRA' not in str(folded))
    if options.get('adapter'):
        assert any(k.startswith('backbone.adapter.') for k in state)  # stays a module
    if options.get('num_prompts', 4):  # the demo configs' 4 prompts
        assert any(k.startswith('backbone.prompt.') for k in state)  # stays tokens

    stored = Config.fromfile(done['config'])
    backbone = stored.model.backbone
    assert backbone.get('lora') is None and backbone.save_frozen is True
    assert not backbone.get('tune_bias')
    assert (backbone.init_cfg if family == 'mmseg' else backbone.checkpoint) is None
    # Written as literals only, which read back as the same config.
    assert saved['meta']['cfg'] == literal_config_text(stored)
    assert stored.to_dict() == standalone_config(cfg).to_dict()

    with _Away(pretrained):  # no pretrained file anywhere
        api = init_model(done['config'], out, device='cpu')
        torch.testing.assert_close(_outputs(api, x), expected, rtol=1e-5, atol=1e-5)
        assert api.dataset_meta['classes'] == CLASSES
        with torch.no_grad():
            logits = inference_model(api, img).seg_logits.data
        torch.testing.assert_close(logits, expected_logits, rtol=1e-5, atol=1e-5)


def test_a_task_file_folds_with_its_stored_config(families):
    cfg, ckpt, model, pretrained = _task(families, 'dinov2_lora_vpt_bias')
    task_file = str(families['tmp'] / 'lora.safetensors')
    export_task(cfg, ckpt, task_file)
    out = str(families['tmp'] / 'from_task_file.pth')
    done = fold_task(None, task_file, out)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with _Away(pretrained):
        api = init_model(done['config'], out, device='cpu')
        torch.testing.assert_close(_outputs(api, x), _outputs(model, x), rtol=1e-5, atol=1e-5)


def _miou(text):
    found = re.findall(r'mIoU: ([\d.]+)', text)
    assert found, text[-2000:]
    return float(found[-1])


def test_the_tool_folds_and_tools_test_gives_the_tasks_miou(families):
    """tools/export_task.py --fold, then tools/test.py on the pair with no pretrained file:
    the mIoU of the task itself; a wrong suffix is an argparse error."""
    from vpt_seg.datasets.synthetic import make_ade20k
    cfg, ckpt, model, pretrained = _task(families, 'mmseg_lora_vpt_bias_adapter')
    data = make_ade20k(str(families['tmp'] / 'data'), num_train=1, num_val=3, size=(48, 40))
    cfg.test_dataloader.dataset.data_root = data
    cfg_file = str(families['tmp'] / 'lora_task.py')
    cfg.dump(cfg_file)
    out = str(families['tmp'] / 'tool' / 'seg.pth')
    run = run_tool  # the commands, in forked children (tests/helpers.py)
    proc = run('export_task.py', cfg_file, ckpt, out, '--fold')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'folded LoRA (rank 2, alpha 4' in proc.stdout and 'tuned biases' in proc.stdout
    assert f'tools/test.py {out[:-4]}.py {out}' in proc.stdout
    maps = {k: families['tmp'] / f'maps_{k}' for k in ('task', 'folded')}
    task = run('test.py', cfg_file, ckpt, '--work-dir', str(families['tmp'] / 'w1'),
               '--out', str(maps['task']))
    assert task.returncode == 0, task.stderr[-3000:]
    with _Away(pretrained):
        folded = run('test.py', out[:-4] + '.py', out, '--work-dir',
                     str(families['tmp'] / 'w2'), '--out', str(maps['folded']))
    assert folded.returncode == 0, folded.stderr[-3000:]
    assert 'loading the frozen backbone' in task.stdout
    assert 'loading the frozen backbone' not in folded.stdout
    assert _miou(folded.stdout) == _miou(task.stdout)
    names = sorted(os.listdir(maps['task']))  # the predicted label maps, byte for byte
    assert len(names) == 3 and names == sorted(os.listdir(maps['folded']))
    for n in names:
        assert (maps['task'] / n).read_bytes() == (maps['folded'] / n).read_bytes(), n
    import cv2
    assert any(len(np.unique(cv2.imread(str(maps['task'] / n), cv2.IMREAD_UNCHANGED))) > 1
               for n in names)  # not a constant map
    bad = run('export_task.py', cfg_file, ckpt, out[:-4] + '.safetensors', '--fold')
    assert bad.returncode == 2 and '--fold writes an MMSeg checkpoint' in bad.stderr
    shutil.rmtree(families['tmp'] / 'tool')


# ------------------------------------------------- outputs never overwrite inputs
def _bytes(*paths):
    return {p: open(p, 'rb').read() for p in paths}


def test_a_fold_never_replaces_its_inputs_or_a_config_it_did_not_write(families, tmp_path):
    from vpt_seg.formats.outputs import OutputError
    cfg, ckpt, _, pretrained = _task(families, 'mmseg_lora')
    config = str(tmp_path / 'my_task.py')
    cfg.dump(config)
    cfg = Config.fromfile(config)
    before = _bytes(config, ckpt, pretrained)
    # OUT named after the config: OUT.py would be the config (the finding)
    with pytest.raises(OutputError, match=r"OUT\.py .*my_task\.py' is the config"):
        fold_task(cfg, ckpt, str(tmp_path / 'my_task.pth'), force=True)
    with pytest.raises(OutputError, match=r"is the checkpoint"):
        fold_task(cfg, ckpt, ckpt, force=True)
    with pytest.raises(OutputError, match=r"is the pretrained file"):
        fold_task(cfg, ckpt, pretrained, force=True)
    assert _bytes(config, ckpt, pretrained) == before
    # an OUT.py that a fold did not write: only with force
    mine = tmp_path / 'deploy.py'
    mine.write_text('# my own config\n')
    out = str(tmp_path / 'deploy.pth')
    with pytest.raises(OutputError, match=r'deploy\.py exists and was not written by '
                       r'export_task\.py --fold.*--force'):
        fold_task(cfg, ckpt, out)
    assert mine.read_text() == '# my own config\n' and not osp.exists(out)
    fold_task(cfg, ckpt, out, force=True)
    fold_task(cfg, ckpt, out)  # an earlier fold's pair: replaced freely
    old = 0o666 & ~os.umask(0)
    os.umask(0o666 & ~old)
    assert {oct(os.stat(p).st_mode & 0o777) for p in (out, str(mine))} == {oct(old)}
    # an OUT.pth without its OUT.py (another checkpoint, not a fold)
    lone = tmp_path / 'lone.pth'
    shutil.copy(ckpt, lone)
    with pytest.raises(OutputError, match=r'lone\.pth exists and is not an earlier fold'):
        fold_task(cfg, ckpt, str(lone))


def test_a_fold_that_dies_midway_leaves_the_previous_pair(families, tmp_path, monkeypatch):
    cfg, ckpt, _, _ = _task(families, 'mmseg_lora')
    out = str(tmp_path / 'seg.pth')
    fold_task(cfg, ckpt, out)
    before = _bytes(out, folded_config_path(out))
    real = torch.save

    def dies(obj, path):
        real(obj, path)
        with open(path, 'r+b') as f:
            f.truncate(os.path.getsize(path) // 2)
        raise KeyboardInterrupt  # killed mid-write
    monkeypatch.setattr(fold.torch, 'save', dies)
    with pytest.raises(KeyboardInterrupt):
        fold_task(cfg, ckpt, out)
    monkeypatch.undo()
    assert _bytes(out, folded_config_path(out)) == before
    assert sorted(os.listdir(tmp_path)) == ['seg.pth', 'seg.py']
    torch.load(out, weights_only=True)


@pytest.mark.parametrize('where', ['folder', 'under_file'])
def test_a_fold_into_a_folder_or_under_a_file_is_refused_by_name(families, tmp_path, where):
    from vpt_seg.formats.outputs import OutputError
    cfg, ckpt, _, _ = _task(families, 'mmseg_vpt')
    (tmp_path / 'plain').write_text('x')
    out = tmp_path / ('deploy.pth' if where == 'folder' else 'plain/deploy.pth')
    if where == 'folder':
        out.mkdir()
    match = 'is a folder; name the file' if where == 'folder' else 'which is a file, not a folder'
    with pytest.raises(OutputError, match=match):
        fold_task(cfg, ckpt, str(out))
