"""Loading and exporting a task (vpt_seg/formats/loading.py, export.py and
frozen_weights.py) on the demo's tiny ViT: an export never replaces what it reads, and a
write that fails leaves the earlier output; the tuner options a task was made with are
compared when it is loaded or resumed; a ``load_from`` of a full checkpoint says that it
replaces the frozen weights."""
import copy
import os
import os.path as osp
import sys

import pytest
import torch

import vpt_seg  # noqa: F401  (before mmseg: compat fixes, registration)

# isort: split
from helpers import ROOT, tool, trained_like
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS

from vpt_seg import export_task, load_task_model
from vpt_seg.formats import export, frozen_weights, loading
from vpt_seg.formats.outputs import OutputError, atomic_write, file_mode
from vpt_seg.formats.task_file import read_task_metadata

init_default_scope('mmseg')
DEMO = osp.join(ROOT, 'configs', 'demo', 'setr_vpt_tiny_ade20k.py')
LORA = dict(rank=2, alpha=4, targets=('q', 'v'))


_tool = tool  # tools/NAME.py as a module (tests/helpers.py)


def _run_tool(name, monkeypatch, *argv):
    """Run tools/NAME.py's main in this process; its SystemExit message, or None."""
    monkeypatch.setattr(sys, 'argv', [name + '.py', *map(str, argv)])
    try:
        _tool(name).main()
    except SystemExit as err:
        return str(err.code)
    return None


@pytest.fixture(scope='module')
def task(tmp_path_factory):
    """The demo config (a copy in the temp folder) with LoRA and an adapter, a tiny
    pretrained file as .safetensors, and a task checkpoint with random tuned weights."""
    from safetensors.torch import save_file
    tmp = tmp_path_factory.mktemp('loading')
    cfg = Config.fromfile(DEMO)
    torch.manual_seed(0)
    vit = MODELS.build(dict(cfg.model.backbone, num_prompts=0, save_frozen=True,
                            init_cfg=None))
    vit.init_weights()
    pretrained = tmp / 'vit.safetensors'
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()
               if k != 'signature'}, str(pretrained))
    cfg.model.backbone.init_cfg.checkpoint = str(pretrained)
    cfg.model.backbone.update(lora=LORA, adapter=dict(width=4, scale=0.5))
    config = tmp / 'task_cfg.py'
    cfg.dump(str(config))
    cfg = Config.fromfile(str(config))
    model = trained_like(cfg.model)
    ckpt = tmp / 'iter_1.pth'
    torch.save({'state_dict': model.state_dict()}, ckpt)
    return dict(tmp=tmp, cfg=cfg, config=str(config), ckpt=str(ckpt),
                pretrained=str(pretrained), model=model.eval())


def _snapshot(*paths):
    out = {}
    for p in paths:
        with open(p, 'rb') as f:
            out[p] = f.read()
    return out


# ------------------------------------------------- outputs never overwrite inputs
def test_an_export_onto_an_input_is_refused_and_the_input_kept(task, tmp_path, monkeypatch):
    before = _snapshot(task['pretrained'], task['ckpt'], task['config'])
    # the pretrained file it loads (the finding: overwritten, then named as the backbone)
    with pytest.raises(OutputError, match=r'is the pretrained file .*vit\.safetensors.*'
                       r'Choose another output path'):
        export_task(task['cfg'], task['ckpt'], task['pretrained'])
    # through a symbolic link and a hard link to it
    os.symlink(task['pretrained'], tmp_path / 'link.safetensors')
    os.link(task['pretrained'], tmp_path / 'hard.safetensors')
    for name in ('link.safetensors', 'hard.safetensors'):
        with pytest.raises(OutputError, match='is the pretrained file'):
            export_task(task['cfg'], task['ckpt'], str(tmp_path / name), force=True)
    # a task file re-exported onto itself
    first = str(tmp_path / 'task.safetensors')
    export_task(task['cfg'], task['ckpt'], first)
    kept = _snapshot(first)
    with pytest.raises(OutputError, match='is the checkpoint'):
        export_task(task['cfg'], first, first, force=True)
    # the tool: one line naming the file, exit status 1, no traceback
    message = _run_tool('export_task', monkeypatch, task['config'], task['ckpt'],
                        task['pretrained'])
    assert message.startswith('export_task.py: OUT') and 'pretrained file' in message
    assert _snapshot(task['pretrained'], task['ckpt'], task['config']) == before
    assert _snapshot(first) == kept


def test_an_existing_file_that_is_not_a_task_file_needs_force(task, tmp_path, monkeypatch):
    other = tmp_path / 'weights.safetensors'
    other.write_bytes(b'not a task file')
    with pytest.raises(OutputError, match=r'not a vpt-seg task file.*--force'):
        export_task(task['cfg'], task['ckpt'], str(other))
    assert other.read_bytes() == b'not a task file'
    assert _run_tool('export_task', monkeypatch, task['config'], task['ckpt'], other,
                     '--force') is None
    assert read_task_metadata(str(other))['format'] == 'vpt-seg-task'
    export_task(task['cfg'], task['ckpt'], str(other))  # its own file: replaced freely


@pytest.mark.parametrize('where,match', [
    ('folder', r"is a folder; name the file to write in it"),
    ('under_file', r"would go under .*plain, which is a file, not a folder"),
])
def test_an_output_that_is_a_folder_or_under_a_file_is_refused(task, tmp_path, monkeypatch,
                                                               where, match):
    (tmp_path / 'plain').write_text('x')
    out = {'folder': tmp_path / 'x.safetensors', 'under_file':
           tmp_path / 'plain' / 'sub' / 'x.safetensors'}[where]
    if where == 'folder':
        out.mkdir()
    with pytest.raises(OutputError, match=match):
        export_task(task['cfg'], task['ckpt'], str(out))
    message = _run_tool('export_task', monkeypatch, task['config'], task['ckpt'], out)
    assert message.startswith('export_task.py: ') and 'OUT' in message


def test_a_write_that_fails_midway_leaves_the_previous_output(task, tmp_path, monkeypatch):
    out = str(tmp_path / 'task.safetensors')
    export_task(task['cfg'], task['ckpt'], out)
    before = _snapshot(out)
    real = export.write_task_file

    def dies(path, *args, **kwargs):
        real(path, *args, **kwargs)
        with open(path, 'r+b') as f:  # half the bytes on disk, then the process "dies"
            f.truncate(os.path.getsize(path) // 2)
        raise KeyboardInterrupt
    monkeypatch.setattr(export, 'write_task_file', dies)
    with pytest.raises(KeyboardInterrupt):
        export_task(task['cfg'], task['ckpt'], out)
    assert _snapshot(out) == before
    assert os.listdir(tmp_path) == ['task.safetensors']  # no temporary file left


def test_task_files_get_the_usual_file_mode(task, tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / 'task.safetensors'
        export_task(task['cfg'], task['ckpt'], str(out))
        assert oct(out.stat().st_mode & 0o777) == oct(0o644)
        os.umask(0o027)
        assert file_mode() == 0o640
        with atomic_write(str(tmp_path / 'x.txt')) as tmp, open(tmp, 'w') as f:
            f.write('x')
        assert oct((tmp_path / 'x.txt').stat().st_mode & 0o777) == oct(0o640)
    finally:
        os.umask(old)


# ------------------------------------------------- tuner options are compared
@pytest.fixture(scope='module')
def task_file(task):
    out = str(task['tmp'] / 'tuned.safetensors')
    export_task(task['cfg'], task['ckpt'], out)
    return out


@pytest.mark.parametrize('change,said,fix', [
    (dict(lora=dict(LORA, alpha=8)), 'lora.alpha 4.0 in the checkpoint, 8.0 here',
     'model.backbone.lora.alpha=4.0'),
    (dict(lora=dict(LORA, dropout=0.1)), 'lora.dropout 0.0 in the checkpoint, 0.1 here',
     'model.backbone.lora.dropout=0.0'),
    (dict(adapter=dict(width=4, scale=0.1)), 'adapter.scale 0.5 in the checkpoint, 0.1 here',
     'model.backbone.adapter.scale=0.5'),
])
@pytest.mark.parametrize('source', ['task_file', 'checkpoint'])
def test_other_tuner_options_are_refused_naming_both_values_and_the_override(
        task, task_file, change, said, fix, source):
    """A task file (its stored config) and a training checkpoint (its metadata, read
    as --resume and load_from read it) record the options; each loader refuses."""
    from mmengine.runner.checkpoint import load_checkpoint
    from mmseg.apis import init_model
    cfg = copy.deepcopy(task['cfg'])
    cfg.model.backbone.update(change)
    path = task_file if source == 'task_file' else task['ckpt']
    match = f'other tuner options .*{said}.*--cfg-options {fix}'
    with pytest.raises(ValueError, match=match):
        load_task_model(copy.deepcopy(cfg), path)
    with pytest.raises(ValueError, match=match):
        init_model(copy.deepcopy(cfg), path, device='cpu')
    model = MODELS.build(copy.deepcopy(cfg).model)
    with pytest.raises(ValueError, match=match):
        load_checkpoint(model, path, map_location='cpu')  # what Runner.resume calls
    cfg.merge_from_dict({fix.split('=')[0]: float(fix.split('=')[1])})  # the override
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(load_task_model(cfg, path).backbone(x),
                                   task['model'].backbone(x))


def test_lora_targets_are_compared_in_any_order_and_old_files_still_load(task, tmp_path):
    cfg = copy.deepcopy(task['cfg'])
    cfg.model.backbone.lora = dict(LORA, targets=('v', 'q'))
    load_task_model(cfg, task['ckpt'])
    # a checkpoint saved before the options were recorded: nothing to compare
    state = torch.load(task['ckpt'], weights_only=True)['state_dict']
    assert state._metadata['backbone']['tuners'] == {
        'lora': dict(rank=2, alpha=4.0, targets=['q', 'v'], dropout=0.0),
        'adapter': dict(width=4, scale=0.5, dropout=0.0)}
    del state._metadata['backbone']['tuners']
    old = str(tmp_path / 'old.pth')
    torch.save({'state_dict': state}, old)
    cfg.model.backbone.lora = dict(LORA, alpha=8)
    load_task_model(cfg, old)


# ------------------------------------------------- load_from a full checkpoint
def test_load_from_a_folded_checkpoint_says_so_and_the_runs_checkpoints_load(
        task, tmp_path, monkeypatch):
    """The finding: load_from a folded checkpoint (LoRA merged) into a frozen config
    replaced the frozen backbone silently, and the run's checkpoints then recorded the
    config's pretrained file with a sha256 no file has: tools/test.py refused them."""
    from mmengine.runner.checkpoint import load_checkpoint

    from vpt_seg.formats.fold import fold_task
    cfg = copy.deepcopy(task['cfg'])
    cfg.model.backbone.adapter = None
    lora_task = trained_like(copy.deepcopy(cfg.model), seed=2)
    torch.save({'state_dict': lora_task.state_dict()}, tmp_path / 'lora.pth')
    folded = str(tmp_path / 'folded.pth')
    fold_task(cfg, str(tmp_path / 'lora.pth'), folded)

    cfg.model.backbone.lora = None  # a prompt run on top of the folded model
    model = MODELS.build(copy.deepcopy(cfg.model))
    model.init_weights()  # the frozen weights from the config's pretrained file
    notes = []
    monkeypatch.setattr(frozen_weights, 'print_log', lambda m, **k: notes.append(m))
    state = torch.load(folded, weights_only=True)['state_dict']
    frozen_weights.check_task_checkpoint(model, state, folded)  # the runner's hook, as load_from
    load_checkpoint(model, folded, map_location='cpu')
    (said, ) = [n for n in notes if 'full checkpoint' in n]
    assert said == (f'{folded} is a full checkpoint whose frozen backbone weights differ '
                    f'from {task["pretrained"]} (init_cfg.checkpoint): they replace them; '
                    f"this run's checkpoints record {folded} as where their frozen weights "
                    'come from')
    ckpt = str(tmp_path / 'iter_2.pth')
    torch.save({'state_dict': model.state_dict()}, ckpt)
    saved = torch.load(ckpt, weights_only=True)['state_dict']
    assert saved._metadata['backbone']['pretrained'][0] == folded
    assert not any(k in saved for k, p in model.named_parameters() if not p.requires_grad)
    again = load_task_model(cfg, ckpt)  # as tools/test.py loads it
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(again.eval().backbone(x), model.eval().backbone(x))


def test_a_dinov2_runs_checkpoints_after_load_from_a_folded_one_load(tmp_path):
    """The same for timm's backbone: its reader takes the ViT of a full checkpoint."""
    import timm
    from mmengine.runner.checkpoint import load_checkpoint

    from vpt_seg.formats.fold import fold_task
    from vpt_seg.models.timm_vit import write_hub_folder
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'demo', 'setr_vpt_tiny_dinov2_ade20k.py'))
    b = cfg.model.backbone
    torch.manual_seed(0)
    ref = timm.create_model(b.model_name, pretrained=False, num_classes=0, img_size=56,
                            **b.model_kwargs)
    cfg.model.backbone.checkpoint = write_hub_folder(ref, str(tmp_path / 'hub'), b.model_name)
    for name in ('model.safetensors', 'config.json'):  # the umask's mode, not 0600
        assert (tmp_path / 'hub' / name).stat().st_mode & 0o777 == file_mode()
    cfg.model.backbone.lora = dict(rank=2, targets=('q', 'v'))
    lora_task = trained_like(copy.deepcopy(cfg.model))
    torch.save({'state_dict': lora_task.state_dict()}, tmp_path / 'lora.pth')
    folded = str(tmp_path / 'folded.pth')
    fold_task(cfg, str(tmp_path / 'lora.pth'), folded)
    cfg.model.backbone.lora = None
    model = MODELS.build(copy.deepcopy(cfg.model))
    model.init_weights()
    frozen_weights.check_task_checkpoint(
        model, torch.load(folded, weights_only=True)['state_dict'], folded)
    load_checkpoint(model, folded, map_location='cpu')
    ckpt = str(tmp_path / 'iter_2.pth')
    torch.save({'state_dict': model.state_dict()}, ckpt)
    again = load_task_model(cfg, ckpt)
    x = torch.randn(1, 3, 56, 56, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        for a, b in zip(again.eval().backbone(x), model.eval().backbone(x)):
            torch.testing.assert_close(a, b)


# ------------------------------------------------- refusals that name what to do
def test_init_model_refuses_a_task_without_the_prompts_as_tools_test_does(task, tmp_path):
    """The finding: MMSeg's init_model (a non-strict load) left random prompts behind
    MMEngine's generic missing-keys warning, where tools/test.py refuses the pair."""
    from mmseg.apis import init_model
    cfg = copy.deepcopy(task['cfg'])
    cfg.model.backbone.num_prompts = 0
    model = MODELS.build(copy.deepcopy(cfg.model))
    model.init_weights()
    ckpt = str(tmp_path / 'no_prompts.pth')
    torch.save({'state_dict': model.state_dict()}, ckpt)
    out = str(tmp_path / 'no_prompts.safetensors')
    export_task(cfg, ckpt, out)
    for path in (ckpt, out):
        with pytest.raises(ValueError, match=r'lacks tuned weights this model needs: '
                           r'backbone\.prompt \(1 tensors\).*Give the task checkpoint this '
                           'config wrote'):
            init_model(copy.deepcopy(task['cfg']), path, device='cpu')
        with pytest.raises(ValueError, match=rf'{path} lacks tuned weights this model needs: '
                           r'backbone\.prompt'):  # tools/test.py's words (its hook)
            frozen_weights.check_task_checkpoint(MODELS.build(copy.deepcopy(task['cfg'].model)),
                                          loading.load_checkpoint_file(path)[1], path)


@pytest.mark.parametrize('direction', ['dinov2_file_for_mmseg', 'mmseg_file_for_dinov2'])
def test_a_pretrained_file_of_the_other_family_is_named_as_such(task, tmp_path, direction):
    """The finding: a DINOv2 hub folder named for an MMSeg-layout task was refused as
    'same architecture, other values'."""
    import timm

    from vpt_seg.models.timm_vit import write_hub_folder
    dino = Config.fromfile(osp.join(ROOT, 'configs', 'demo', 'setr_vpt_tiny_dinov2_ade20k.py'))
    b = dino.model.backbone
    ref = timm.create_model(b.model_name, pretrained=False, num_classes=0, img_size=56,
                            **b.model_kwargs)
    hub = write_hub_folder(ref, str(tmp_path / 'hub'), b.model_name)
    if direction == 'dinov2_file_for_mmseg':
        cfg, ckpt, named = copy.deepcopy(task['cfg']), task['ckpt'], hub
        match = (r"hub \(cannot be used: a timm hub folder \(vit_small_patch14_reg4_dinov2\), "
                 r'weights for PromptedTimmViT.*this backbone is PromptedVisionTransformer, '
                 'the MMSeg ViT layout: another family')
    else:
        dino.model.backbone.checkpoint = hub
        model = MODELS.build(copy.deepcopy(dino.model))
        model.init_weights()
        ckpt = str(tmp_path / 'dino.pth')
        torch.save({'state_dict': model.state_dict()}, ckpt)
        cfg, named = dino, task['pretrained']
        match = (r'vit\.safetensors \(cannot be used: an MMSeg-layout ViT file, weights for '
                 r'PromptedVisionTransformer; this backbone is PromptedTimmViT '
                 r'\(vit_small_patch14_reg4_dinov2, timm\): another family')
    with pytest.raises(ValueError, match=match) as err:
        load_task_model(cfg, ckpt, pretrained=named)
    assert 'same architecture' not in str(err.value)


def test_count_params_gives_the_size_of_the_file_export_task_writes(task, tmp_path,
                                                                     monkeypatch):
    """The finding: count_params.py's "task file" size was a torch.save of the state
    dict, not the exported file's."""
    tool = _tool('count_params')
    cfg = Config.fromfile(task['config'])
    model = MODELS.build(copy.deepcopy(cfg.model))
    size = tool.task_file_bytes(model, cfg)
    meta = tool.dataset_meta_of(cfg)
    assert len(meta['classes']) == 150 and len(meta['palette']) == 150
    state = torch.load(task['ckpt'], weights_only=True)['state_dict']
    ckpt = str(tmp_path / 'trained.pth')
    torch.save({'state_dict': state, 'meta': {'dataset_meta': meta}}, ckpt)  # as a run does
    out = tmp_path / 'task.safetensors'
    export_task(cfg, ckpt, str(out))
    assert out.stat().st_size == size
    monkeypatch.setattr(sys, 'argv', ['count_params.py', task['config']])
    tool.main()
