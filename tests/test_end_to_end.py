"""tools/train.py and tools/test.py on generated ADE20k-layout data and a tiny ViT."""
import os
import os.path as osp
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import ROOT
from helpers import run_tool as run_forked
from mmengine.config import Config
from mmseg.registry import MODELS
from PIL import Image

from vpt_seg.datasets.synthetic import make_ade20k

CONFIG = osp.join(ROOT, 'configs', 'demo', 'setr_vpt_tiny_ade20k.py')


def run_tool(tool, *args, check=True, fork=True):
    """``python tools/TOOL ARGS``: in a forked child of this process (no start-up time,
    :func:`helpers.run_tool`), or with ``fork=False`` in a new interpreter (the first
    training run, the first test run and the export, so each command is run as users run it
    too)."""
    if fork:
        proc = run_forked(tool, *args)
    else:
        proc = subprocess.run([sys.executable, osp.join(ROOT, 'tools', tool), *args],
                              capture_output=True, text=True, cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f'{tool} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}')
    return proc


def miou(text):
    found = re.findall(r'mIoU: ([\d.]+)', text)
    assert found, text[-2000:]
    return float(found[-1])


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('e2e')
    data = make_ade20k(str(tmp / 'data'), num_train=16, num_val=4, size=(64, 64), seed=0)
    cfg = Config.fromfile(CONFIG)
    backbone = dict(cfg.model.backbone, num_prompts=0, save_frozen=True, init_cfg=None)
    vit = MODELS.build(backbone)
    vit.init_weights()
    torch.save(vit.state_dict(), tmp / 'vit.pth')
    options = ['--cfg-options', f'model.backbone.init_cfg.checkpoint={tmp / "vit.pth"}'] + [
        f'{loader}.dataset.data_root={data}'
        for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader')]
    work = tmp / 'work'
    train = run_tool('train.py', CONFIG, '--work-dir', str(work), *options,
                     'train_cfg.max_iters=20', 'train_cfg.val_interval=20', fork=False)
    return dict(tmp=tmp, data=data, options=options, work=work, train_log=train.stdout,
                vit=vit)


def test_train_writes_a_task_checkpoint_of_tuned_weights_only(setup):
    ckpt = torch.load(setup['work'] / 'iter_20.pth')
    keys = set(ckpt['state_dict'])
    backbone_keys = {k for k in keys if k.startswith('backbone.')}
    assert backbone_keys == {'backbone.prompt.embeddings', 'backbone.signature'}
    assert any(k.startswith('decode_head.') for k in keys)
    assert any(k.startswith('auxiliary_head.') for k in keys)
    assert 'optimizer' in ckpt and ckpt['meta']['iter'] == 20
    assert 'mIoU' in setup['train_log']


def test_test_tool_reports_miou_single_scale_and_tta(setup):
    ckpt = str(setup['work'] / 'iter_20.pth')
    single = run_tool('test.py', CONFIG, ckpt, '--work-dir', str(setup['tmp'] / 't1'),
                      *setup['options'], fork=False).stdout
    assert 'loading the frozen backbone' in single
    assert 0 < miou(single) <= 100
    assert miou(single) == miou(setup['train_log'])  # same weights, same numbers
    tta = run_tool('test.py', CONFIG, ckpt, '--tta', '--work-dir', str(setup['tmp'] / 't2'),
                   *setup['options']).stdout
    assert 0 < miou(tta) <= 100


def test_resume_continues_an_interrupted_run(setup):
    log = run_tool('train.py', CONFIG, '--work-dir', str(setup['work']), '--resume',
                   *setup['options'], 'train_cfg.max_iters=30').stdout
    assert 'resumed epoch: 0, iter: 20' in log
    ckpt = torch.load(setup['work'] / 'iter_30.pth')
    assert ckpt['meta']['iter'] == 30
    before = torch.load(setup['work'] / 'iter_20.pth')['state_dict']['backbone.prompt.embeddings']
    assert not torch.equal(before, ckpt['state_dict']['backbone.prompt.embeddings'])


def test_missing_data_root_is_a_clear_error(setup):
    proc = run_tool('train.py', CONFIG, '--work-dir', str(setup['tmp'] / 'w2'),
                    *setup['options'], 'train_dataloader.dataset.data_root=/no/such/ade',
                    check=False)
    assert proc.returncode != 0
    assert "dataset folder '/no/such/ade/images/training'" in proc.stderr


def test_missing_pretrained_file_is_a_clear_error(setup):
    proc = run_tool('train.py', CONFIG, '--work-dir', str(setup['tmp'] / 'w3'),
                    *setup['options'], 'model.backbone.init_cfg.checkpoint=/no/vit.pth',
                    check=False)
    assert proc.returncode != 0
    assert "pretrained backbone weights not found: '/no/vit.pth'" in proc.stderr


def test_checkpoint_of_another_backbone_is_a_clear_error(setup):
    other = str(setup['tmp'] / 'other.pth')
    ckpt = torch.load(setup['work'] / 'iter_20.pth')
    ckpt['state_dict']['backbone.prompt.embeddings'] = torch.zeros(4, 4, 48)
    torch.save(ckpt, other)
    proc = run_tool('test.py', CONFIG, other, '--work-dir', str(setup['tmp'] / 't3'),
                    *setup['options'], check=False)
    assert proc.returncode != 0
    assert 'does not fit this backbone' in proc.stderr
    assert '(4, 4, 48) in the checkpoint, (4, 4, 32) here' in proc.stderr


@pytest.fixture(scope='module')
def impostor(setup):
    """The pretrained file's architecture with other values."""
    sd = torch.load(setup['tmp'] / 'vit.pth', weights_only=True)
    sd['layers.0.ln1.weight'] = sd['layers.0.ln1.weight'] + 1e-3
    torch.save(sd, setup['tmp'] / 'impostor.pth')
    return str(setup['tmp'] / 'impostor.pth')


def test_a_named_pretrained_file_with_other_weights_is_refused(setup, impostor):
    """--cfg-options model.backbone.init_cfg.checkpoint wins over the recorded file, and
    its weights are checked against the sha256 the checkpoint records: tools/test.py and
    --resume refuse it instead of reporting a wrong mIoU or training on."""
    options = setup['options'] + [f'model.backbone.init_cfg.checkpoint={impostor}']
    proc = run_tool('test.py', CONFIG, str(setup['work'] / 'iter_20.pth'), '--work-dir',
                    str(setup['tmp'] / 't_impostor'), *options, check=False)
    assert proc.returncode == 1
    assert f'{impostor} (named by init_cfg.checkpoint) holds other frozen weights than ' \
        'this checkpoint was trained on' in proc.stderr
    assert 'mIoU:' not in proc.stdout
    work = setup['tmp'] / 'w_impostor'
    work.mkdir()
    shutil.copy(setup['work'] / 'iter_20.pth', work / 'iter_20.pth')
    (work / 'last_checkpoint').write_text(str(work / 'iter_20.pth'))
    proc = run_tool('train.py', CONFIG, '--work-dir', str(work), '--resume', *options,
                    'train_cfg.max_iters=30', check=False)
    assert proc.returncode == 1
    assert 'holds other frozen weights than this checkpoint was trained on' in proc.stderr
    assert sorted(p.name for p in work.glob('iter_*')) == ['iter_20.pth']  # no step taken


# ------------------------------------------ MMSeg's APIs, task files, flags, serving
@pytest.fixture(scope='module')
def task_file(setup):
    out = str(setup['tmp'] / 'published' / 'seg.safetensors')  # the tool makes the folder
    run_tool('export_task.py', CONFIG, str(setup['work'] / 'iter_20.pth'), out,
             '--cfg-options', f'model.backbone.init_cfg.checkpoint={setup["tmp"] / "vit.pth"}',
             fork=False)
    shutil.copy(setup['tmp'] / 'vit.pth', osp.join(osp.dirname(out), 'vit.pth'))
    return out


API_SCRIPT = '''
import site, sys
site.addsitedir(sys.argv[1])          # as pip installs it: vpt_seg_mmcv_lite.pth
from mmseg.apis import MMSegInferencer, inference_model, init_model, show_result_pyplot
import glob, os.path as osp
import numpy as np
from PIL import Image
import vpt_seg
config, ckpt, task, images, preds, vis = sys.argv[2:8]
model = init_model(config, ckpt, device='cpu')
inferencer = MMSegInferencer(model=config, weights=task, device='cpu')
files = sorted(glob.glob(osp.join(images, '*.jpg')))
for f in files:
    result = inference_model(model, f)
    label = result.pred_sem_seg.data[0].numpy()
    expected = np.asarray(Image.open(osp.join(preds, osp.basename(f)[:-4] + '.png')))
    # test.py saves ADE ids (+1)
    assert np.array_equal(label + 1, expected), (f, (label + 1 == expected).mean())
    other = inferencer(f, return_datasamples=True).pred_sem_seg.data[0].numpy()
    assert np.array_equal(other, label), f
drawn = show_result_pyplot(model, files[0], result, show=False, out_file=vis)
assert drawn.shape == Image.open(files[0]).size[::-1] + (3, ) and osp.isfile(vis)
print('API OK', len(files))
'''


def test_mmseg_apis_give_what_the_test_tool_gives(setup, task_file):
    """init_model + inference_model (training checkpoint), MMSegInferencer (task file),
    show_result_pyplot; mmseg imported before vpt_seg, through the .pth start-up hook."""
    ckpt = str(setup['work'] / 'iter_20.pth')
    preds = setup['tmp'] / 'preds'
    run_tool('test.py', CONFIG, ckpt, '--work-dir', str(setup['tmp'] / 't4'), '--out',
             str(preds), *setup['options'])
    hook_dir = setup['tmp'] / 'site'
    hook_dir.mkdir(exist_ok=True)
    shutil.copy(osp.join(ROOT, 'vpt_seg', 'mmcv_lite.pth'),
                osp.join(hook_dir, 'vpt_seg_mmcv_lite.pth'))
    images = osp.join(setup['data'], 'images', 'validation')
    proc = subprocess.run([sys.executable, '-c', API_SCRIPT, str(hook_dir), CONFIG, ckpt,
                           task_file, images, str(preds), str(setup['tmp'] / 'vis.png')],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'API OK 4' in proc.stdout


def test_task_file_tests_and_loads_like_the_checkpoint(setup, task_file):
    ckpt = str(setup['work'] / 'iter_20.pth')
    log = run_tool('test.py', CONFIG, task_file, '--work-dir', str(setup['tmp'] / 't5'),
                   *setup['options']).stdout
    assert miou(log) == miou(setup['train_log'])
    # load_from a task file: with a zero learning rate the weights stay the file's.
    run_tool('train.py', CONFIG, '--work-dir', str(setup['tmp'] / 'w5'), *setup['options'],
             f'load_from={task_file}', 'train_cfg.max_iters=1', 'train_cfg.val_interval=10',
             'optim_wrapper.optimizer.lr=0', 'param_scheduler.0.eta_min=0')
    after = torch.load(setup['tmp'] / 'w5' / 'iter_1.pth', weights_only=True)['state_dict']
    before = torch.load(ckpt, weights_only=True)['state_dict']
    for key in ('backbone.prompt.embeddings', 'decode_head.conv_seg.weight'):
        assert torch.equal(after[key], before[key]), key


def test_show_dir_paints_every_image_under_the_work_dir(setup):
    work = setup['tmp'] / 't6'
    out = run_tool('test.py', CONFIG, str(setup['work'] / 'iter_20.pth'), '--work-dir',
                   str(work), '--show-dir', 'vis', *setup['options']).stdout
    painted = sorted(os.listdir(work / 'vis' / 'vis_data' / 'vis_image'))
    assert len(painted) == 4, painted  # 4 validation images, fewer than MMSeg's interval 50
    assert f'Painted images are in {work / "vis" / "vis_data" / "vis_image"}' in out


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the refusal without a GPU')
def test_amp_without_a_gpu_is_refused_with_the_reason(setup):
    proc = run_tool('train.py', CONFIG, '--amp', '--work-dir', str(setup['tmp'] / 'w7'),
                    *setup['options'], check=False)
    assert proc.returncode != 0
    assert 'mixed-precision training needs a GPU' in proc.stderr
    assert 'AssertionError' not in proc.stderr


def test_serve_runs_the_demo_task_on_a_backbone_without_final_norm(setup, task_file):
    """The demo's pretrained file has no final norm: the shared backbone must not want one."""
    assert 'ln1.weight' not in torch.load(setup['tmp'] / 'vit.pth', weights_only=True)
    out = setup['tmp'] / 'served'
    proc = run_tool('serve.py', str(setup['tmp'] / 'vit.pth'),
                    f'seg={CONFIG}:{setup["work"] / "iter_20.pth"}', f'file={task_file}',
                    '--images', osp.join(setup['data'], 'images', 'validation'),
                    '--out-dir', str(out), '--verify')
    worst = dict(re.findall(r'^(\w+): largest difference to its own model alone at \d+x\d+: '
                            r'(\S+)$', proc.stdout, re.M))
    assert sorted(worst) == ['file', 'seg'] and all(float(v) < 1e-4 for v in worst.values())
    for task in ('seg', 'file'):
        assert len([f for f in os.listdir(out / task) if not f.endswith('_overlay.png')]) == 4
    a = Image.open(out / 'seg' / 'ADE_val_00000001.jpg.png')  # the whole image name
    b = Image.open(out / 'file' / 'ADE_val_00000001.jpg.png')
    assert np.array_equal(np.asarray(a), np.asarray(b))  # the same task, two file formats
