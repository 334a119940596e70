"""vpt_seg.runner: finding configs and tools, the tools' common flags, data-folder checks
before the runner starts, and distributed runs without GPUs (only what is cheap here)."""
import argparse
import datetime
import logging
import os
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger

from vpt_seg import runner
from vpt_seg.datasets.synthetic import make_ade20k
from vpt_seg.runner import (
    check_loader,
    config_dirs,
    load_cfg,
    mark_named_pretrained,
    prepare_cfg,
    quiet_logger,
    resolve_config,
    setup_distributed,
    tools_dir,
)

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEMO = 'demo/setr_vpt_tiny_ade20k.py'


# ------------------------------------------------------------ configs and tools
def test_config_dirs_and_tools_dir_are_the_projects_folders():
    assert osp.isfile(osp.join(config_dirs(), DEMO))
    assert osp.isfile(osp.join(config_dirs(), 'setr_vpt_ade20k.py'))
    for tool in ('train.py', 'test.py', 'demo.py'):
        assert osp.isfile(osp.join(tools_dir(), tool)), tool


def test_an_installed_package_finds_its_shipped_folders(tmp_path, monkeypatch):
    package = tmp_path / 'site' / 'vpt_seg'
    for name in ('configs', 'tools'):
        (package / '.mim' / name).mkdir(parents=True)
    monkeypatch.setattr(runner, '_PACKAGE', str(package))
    assert config_dirs() == str(package / '.mim' / 'configs')
    assert tools_dir() == str(package / '.mim' / 'tools')


@pytest.mark.parametrize('name', [DEMO, f'configs/{DEMO}', f'vpt_seg::{DEMO}',
                                  f'vpt_seg::configs/{DEMO}'])
def test_resolve_config_finds_a_shipped_config_from_any_folder(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_config(name) == osp.join(config_dirs(), DEMO)
    assert osp.samefile(resolve_config(name), osp.join(REPO, 'configs', DEMO))


def test_resolve_config_prefers_a_file_here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'demo').mkdir()
    (tmp_path / DEMO).write_text('x = 1\n')
    assert resolve_config(DEMO) == DEMO
    mine = tmp_path / 'mine.py'
    mine.write_text('x = 1\n')
    assert resolve_config(str(mine)) == str(mine)


@pytest.mark.parametrize('name', ['demo/nope.py', 'vpt_seg::nope.py', '/no/such/config.py',
                                  'demo'])
def test_resolve_config_names_a_missing_config(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as err:
        resolve_config(name)
    assert f'config not found: {name!r}' in str(err.value)
    assert config_dirs() in str(err.value)


# ------------------------------------------------------------ the common flags
def args(config=DEMO, **kwargs):
    return argparse.Namespace(**dict(dict(config=config, launcher='none', cfg_options=None,
                                          work_dir=None), **kwargs))


@pytest.mark.parametrize('flags, work_dir', [
    (dict(), osp.join('./work_dirs', 'setr_vpt_tiny_ade20k')),
    (dict(work_dir='/tmp/elsewhere'), '/tmp/elsewhere')])
def test_load_cfg_resolves_the_config_and_sets_the_work_dir(flags, work_dir, tmp_path,
                                                             monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = args(**flags)
    cfg = load_cfg(a)
    assert a.config == osp.join(config_dirs(), DEMO)  # tools read args.config later
    assert cfg.work_dir == work_dir
    assert cfg.launcher == 'none'
    assert cfg.model.backbone.embed_dims == 32


def test_load_cfg_keeps_a_configs_own_work_dir_unless_the_flag_names_one(tmp_path):
    path = tmp_path / 'own.py'
    path.write_text("work_dir = 'runs/own'\n")
    assert load_cfg(args(str(path))).work_dir == 'runs/own'
    assert load_cfg(args(str(path), work_dir='w')).work_dir == 'w'


@pytest.mark.parametrize('options, prefer', [
    (None, False),
    ({'train_cfg.max_iters': 7}, False),
    ({'model.backbone.init_cfg.checkpoint': 'mine.pth'}, True),
    ({'model.backbone.init_cfg': dict(type='Pretrained', checkpoint='mine.pth')}, True)])
def test_load_cfg_merges_cfg_options_and_marks_a_named_pretrained_file(options, prefer):
    cfg = load_cfg(args(cfg_options=options, launcher='pytorch'))
    assert cfg.launcher == 'pytorch'
    assert cfg.model.backbone.get('prefer_init_cfg', False) is prefer
    assert cfg.train_cfg.max_iters == (7 if options and 'train_cfg.max_iters' in options else 40)
    if prefer:
        assert cfg.model.backbone.init_cfg.checkpoint == 'mine.pth'


@pytest.mark.parametrize('backbone', [dict(type='VisionTransformer'), None])
def test_mark_named_pretrained_leaves_other_backbones_alone(backbone):
    cfg = Config(dict(model=dict(backbone=backbone)))
    mark_named_pretrained(cfg, {'model.backbone.init_cfg.checkpoint': 'x.pth'})
    assert cfg.model.backbone == backbone


# ------------------------------------------------------------ data checks
def demo_cfg(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the demo's data_root (data/ade_tiny/...) is not here
    return Config.fromfile(osp.join(config_dirs(), DEMO))


@pytest.mark.parametrize('training, unset, named', [
    (True, (), 'train_dataloader'),
    (True, ('train_dataloader',), 'val_dataloader'),
    (False, (), 'test_dataloader'),
    (True, ('train_dataloader', 'val_cfg'), None),        # no val_cfg: val is not checked
    (False, ('test_dataloader',), None)])
def test_prepare_cfg_checks_the_loaders_a_run_uses(training, unset, named, tmp_path,
                                                   monkeypatch):
    cfg = demo_cfg(tmp_path, monkeypatch)
    for key in unset:
        cfg[key] = None
    if named is None:
        assert prepare_cfg(cfg, training=training) is cfg
        return
    with pytest.raises(FileNotFoundError) as err:
        prepare_cfg(cfg, training=training)
    message = str(err.value)
    assert message.startswith(f"{named}: dataset folder 'data/ade_tiny/ADEChallengeData2016/")
    assert f'--cfg-options {named}.dataset.data_root=' in message


@pytest.mark.parametrize('dataset, key, path', [
    (dict(data_root='missing'), 'data_root', 'missing'),
    (dict(data_root='missing', data_prefix=dict(img_path='img', seg_map_path='ann')),
     'img_path', osp.join('missing', 'img')),
    (dict(type='ConcatDataset', datasets=[dict(data_root='.'), dict(data_root='gone')]),
     'data_root', 'gone'),
    (dict(type='RepeatDataset', times=2, dataset=dict(data_root='gone2')), 'data_root',
     'gone2')])
def test_check_loader_names_the_missing_folder(dataset, key, path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = Config(dict(train_dataloader=dict(dataset=dataset)))
    with pytest.raises(FileNotFoundError,
                       match=f"train_dataloader: dataset folder '{path}' \\({key}\\) does not "
                             'exist'):
        check_loader(cfg, 'train_dataloader')


def test_check_loader_passes_a_dataset_that_is_there(tmp_path, monkeypatch):
    cfg = demo_cfg(tmp_path, monkeypatch)
    root = make_ade20k(str(tmp_path / 'data' / 'ade_tiny'), num_train=2, num_val=1,
                       size=(32, 32))
    assert osp.samefile(root, cfg.train_dataloader.dataset.data_root)
    for loader in ('train_dataloader', 'val_dataloader'):
        check_loader(cfg, loader)
    assert prepare_cfg(cfg, training=True) is cfg


def test_check_loader_names_an_empty_split(tmp_path, monkeypatch):
    cfg = demo_cfg(tmp_path, monkeypatch)
    make_ade20k(str(tmp_path / 'data' / 'ade_tiny'), num_train=2, num_val=0, size=(32, 32))
    os.makedirs(tmp_path / 'data/ade_tiny/ADEChallengeData2016/images/validation',
                exist_ok=True)
    os.makedirs(tmp_path / 'data/ade_tiny/ADEChallengeData2016/annotations/validation',
                exist_ok=True)
    check_loader(cfg, 'train_dataloader')
    with pytest.raises(FileNotFoundError, match='val_dataloader: .*validation'):
        check_loader(cfg, 'val_dataloader')


# ------------------------------------------------------------ logging
def test_quiet_logger_lowers_and_restores_the_level_also_on_errors():
    logger = MMLogger.get_instance('test_runner_quiet')
    logger.setLevel(logging.INFO)
    assert MMLogger.get_current_instance() is logger
    with quiet_logger():
        assert logger.level == logging.WARNING
    assert logger.level == logging.INFO
    with pytest.raises(RuntimeError), quiet_logger(logging.ERROR):
        assert logger.level == logging.ERROR
        raise RuntimeError
    assert logger.level == logging.INFO


# ------------------------------------------------------------ distributed without GPUs
@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    calls = []
    monkeypatch.setattr(torch.distributed, 'is_initialized', lambda: bool(calls))
    monkeypatch.setattr(torch.distributed, 'init_process_group',
                        lambda **kwargs: calls.append(kwargs))
    monkeypatch.setenv('RANK', '1')
    monkeypatch.setenv('WORLD_SIZE', '2')
    return calls


def dist_cfg(launcher, **dist):
    return Config(dict(launcher=launcher, env_cfg=dict(dist_cfg=dist)))


@pytest.mark.parametrize('cuda, launcher', [(False, 'none'), (True, 'pytorch')])
def test_setup_distributed_changes_nothing_without_a_launcher_or_with_cuda(
        cuda, launcher, no_cuda, monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: cuda)
    cfg = dist_cfg(launcher, backend='nccl')
    before = cfg.to_dict()
    assert setup_distributed(cfg).to_dict() == before
    assert no_cuda == []


@pytest.mark.parametrize('launcher, dist, message', [
    ('pytorch', dict(backend='mpi'), "env_cfg.dist_cfg.backend='mpi'"),  # nccl -> gloo
    ('slurm', dict(backend='gloo'), '--launcher slurm without GPUs is not supported')])
def test_setup_distributed_refuses_what_cannot_run_on_cpu(launcher, dist, message, no_cuda):
    with pytest.raises(ValueError) as err:
        setup_distributed(dist_cfg(launcher, **dist))
    assert message in str(err.value)
    assert no_cuda == []


def test_setup_distributed_starts_gloo_and_has_ddp_wrap_a_cpu_model(no_cuda):
    cfg = dist_cfg('pytorch', backend='gloo', timeout=90)
    cfg.find_unused_parameters = True
    setup_distributed(cfg)
    assert no_cuda == [dict(backend='gloo', rank=1, world_size=2,
                            timeout=datetime.timedelta(seconds=90))]
    assert cfg.model_wrapper_cfg == dict(type='MMDistributedDataParallel', device_ids=None,
                                         broadcast_buffers=False, find_unused_parameters=True)
    assert cfg.env_cfg.dist_cfg.timeout == 90  # the config itself is not edited
    setup_distributed(cfg)  # started already: not again, and the wrapper is kept
    assert len(no_cuda) == 1


def test_setup_distributed_keeps_a_configured_wrapper(no_cuda):
    cfg = dist_cfg('pytorch', backend='gloo')
    cfg.model_wrapper_cfg = dict(type='MMDistributedDataParallel', broadcast_buffers=True)
    setup_distributed(cfg)
    assert cfg.model_wrapper_cfg == dict(type='MMDistributedDataParallel', device_ids=None,
                                         broadcast_buffers=True, find_unused_parameters=False)
    assert no_cuda[0] == dict(backend='gloo', rank=1, world_size=2)
