"""A reduced transfer study, end to end through configs/study, tools/train.py and
tools/test.py: pretraining must learn the source tags, VPT-deep must beat head-only by a
clear margin (what the method claims), every tuned row must beat a head that was never
trained, and the table and figures must be complete and readable; tool runs get the
study's thread count; --seeds gives each row's mean and spread, and table.json names the
machine. The study runs its tools as forked children of itself
(``vpt_seg.engine.forked.ForkedPopen``: the same commands without each one's start-up).
One torch thread per tool run (tests/conftest.py)."""
import csv
import json
import os
import os.path as osp

import numpy as np
import pytest
import torch
from PIL import Image

from vpt_seg.experiments import study as study_module
from vpt_seg.experiments.clip_pretrain import ClipPretrainSettings
from vpt_seg.experiments.study import (
    ROWS,
    RowResult,
    StudySettings,
    _count,
    _load_cfg,
    _run_tool,
    aggregate_seeds,
    format_table,
    machine_info,
    machine_line,
    plot_tradeoff,
    run_study,
)

ROWS_RUN = ('head', 'vpt-deep', 'full', 'dinov2/head', 'dinov2/vpt-deep', 'clip/coop')
#: Enough CLIP pretraining for the tests (the study's is longer).
QUICK_CLIP = ClipPretrainSettings(num_pairs=3000, iters=150, batch_size=64, lr=3e-3)


@pytest.fixture(scope='module')
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp('study')
    return run_study(StudySettings(out_dir=str(out), rows=ROWS_RUN, num_source=1000,
                                   num_target=200, num_val=32, pretrain_iters=1000,
                                   iters=400, num_show=2, clip=QUICK_CLIP))


def test_pretraining_learns_the_source_tags(study):
    assert study['source_map'] > 80


def test_vpt_deep_beats_head_only_clearly(study):
    """Deep prompts steer the frozen features; a head on the frozen features cannot.

    The digits depend on the thread count, CPU and torch build (float order of
    reductions, docs/study.md); the margin must hold across them. Measured: 5.8 (1
    thread: head-only 59.8, VPT-deep 65.6) and 6.5 (2 threads: 60.9, 67.4); the full
    study's margin moved by 1.3 between thread counts."""
    miou = {r.key: r.miou for r in study['rows']}
    print('reduced study mIoU:', miou, 'untrained head:', study['reference'].miou)
    assert miou['vpt-deep'] > miou['head'] + 3, miou


def test_second_family_dinov2_with_registers(study):
    """The DINOv2-reg family (timm's class, [CLS] + 4 registers, LayerScale) is pretrained
    the same way, saved in timm's layout and loaded through checkpoint=. VPT-deep does
    NOT beat head-only on it in the full study (58.41 against 58.88; 59.30 at lr 5e-2),
    so no margin is asserted; both must beat the untrained head (the test below)."""
    assert study['source_maps']['dinov2'] > 80
    rows = {r.key: r for r in study['rows']}
    # 6 layers x 10 prompts x 64 channels, as on the first family
    assert rows['dinov2/vpt-deep'].tuned - rows['dinov2/head'].tuned == 6 * 10 * 64
    assert rows['dinov2/head'].method == 'Head only (DINOv2-reg)'
    saved = osp.join(osp.dirname(study['files']['md']), 'pretrain', 'dinov2')
    assert osp.isfile(osp.join(saved, 'model.safetensors'))
    from vpt_seg.models.timm_vit import read_timm_state_dict
    state = read_timm_state_dict(osp.join(saved, 'model.safetensors'))
    assert state['reg_token'].shape == (1, 4, 64) and 'blocks.5.ls1.gamma' in state


def test_clip_family_rows_share_the_table(study):
    """The tiny CLIP of CoOp's part (pretrained on captions, in open_clip's layout) is a
    third family: its CoOp text-head row runs on the same target task, in the same table,
    loading the CLIP file through both keys of its config; a config without a text tower
    (the linear row) gets the backbone key alone, and a config with none of a family's
    keys is refused by name."""
    rows = {r.key: r for r in study['rows']}
    assert rows['clip/coop'].method == 'CoOp text head (tiny CLIP)'
    out = osp.dirname(study['files']['md'])
    clip = osp.join(out, 'coop', 'tiny_clip', 'open_clip_model.safetensors')
    assert osp.isfile(clip)
    with open(study['files']['json']) as f:
        summary = json.load(f)
    assert summary['tiny_clip']['retrieval'] > 20   # the captions were learned
    assert 'clip' not in summary['source_maps']      # no source tags for the CLIP
    cfg_dir = StudySettings().config_dir
    options = study_module._checkpoint_options
    assert options('clip', osp.join(cfg_dir, 'clip', 'coop.py'), clip) == [
        f'model.backbone.checkpoint={clip}', f'model.decode_head.text_encoder.checkpoint={clip}']
    assert options('clip', osp.join(cfg_dir, 'clip', 'linear.py'), clip) == [
        f'model.backbone.checkpoint={clip}']
    with pytest.raises(ValueError, match=r'head\.py has none of \[.model\.backbone\.checkpoint.'
                                         r'\], where the study puts the DINOv2-reg backbone'):
        options('dinov2', osp.join(cfg_dir, 'head.py'), clip)


def test_every_tuned_row_beats_the_untrained_head(study):
    untrained = study['reference'].miou
    for r in study['rows']:
        assert r.miou > untrained + 10, (r.method, r.miou, untrained)


def test_parameters_and_task_files(study):
    rows = {r.key: r for r in study['rows']}
    head, deep = rows['head'], rows['vpt-deep']
    # VPT-deep tunes the head plus 6 layers x 10 prompts x 64 channels.
    assert deep.tuned - head.tuned == 6 * 10 * 64
    assert deep.total - head.total == 6 * 10 * 64
    assert 0 < head.tuned_pct < deep.tuned_pct < 100
    # A task file holds tuned weights only: far smaller than the frozen backbone.
    backbone_bytes = 4 * (head.total - head.tuned)
    assert head.file_bytes < backbone_bytes / 2
    assert head.file_bytes < deep.file_bytes


def test_outputs_are_complete(study):
    files = study['files']
    with open(files['csv']) as f:
        rows = list(csv.DictReader(f))
    assert [r['key'] for r in rows] == list(ROWS_RUN) + ['untrained-head']
    with open(files['json']) as f:
        summary = json.load(f)
    assert [r['method'] for r in summary['rows']] == [ROWS[k] for k in ROWS_RUN]
    assert summary['timings_s']['total'] > 0
    machine = summary['machine']
    assert machine['threads'] == 1 and machine['cpu_count'] >= 1 and machine['seeds'] == 1
    info = machine_info()  # the CPU and the torch build the digits came from
    for key in ('cpu_model', 'cpu_flags', 'cpu_capability', 'torch', 'mkl', 'onednn'):
        assert machine[key] == info[key], key
    table = open(files['md']).read()
    for key in ROWS_RUN:
        assert f'| {ROWS[key]} |' in table
    assert table == format_table(study['rows'], study['reference']) + '\n'
    for name in ('tradeoff', 'predictions'):
        img = np.asarray(Image.open(files[name]))
        assert img.ndim == 3 and min(img.shape[:2]) > 200
        assert img[..., :3].std() > 10  # not blank
    # One prediction per validation image, in the task's label range (1..8 = classes).
    for r in study['rows']:
        pred = np.asarray(Image.open(osp.join(r.pred_dir, 'ADE_val_00000001.png')))
        assert pred.shape == (64, 64) and set(np.unique(pred).tolist()) <= set(range(1, 9))


def test_lora_and_adaptformer_rows(tmp_path):
    """The LoRA and AdaptFormer rows (not in the reduced run above, to keep its time) are
    study rows: their configs build on the study's base with the documented budgets,
    beside VPT-deep, and they reach the table and the plot."""
    assert list(ROWS)[list(ROWS).index('vpt-bias') + 1:][:2] == ['lora', 'adaptformer']
    assert (ROWS['lora'], ROWS['adaptformer']) == ('LoRA', 'AdaptFormer')
    cfg_dir = StudySettings().config_dir
    counts = {k: _count(_load_cfg(osp.join(cfg_dir, f'{k}.py'), []))
              for k in ('head', 'lora', 'adaptformer')}
    head_tuned, head_total = counts['head']
    # rank 4 on q and v of 6 blocks of width 64; a width-8 bottleneck with biases
    assert counts['lora'][0] - head_tuned == 6 * 2 * (64 * 4 + 4 * 64)
    assert counts['adaptformer'][0] - head_tuned == 6 * (64 * 8 + 8 + 8 * 64 + 64)
    for key in ('lora', 'adaptformer'):
        assert counts[key][1] - head_total == counts[key][0] - head_tuned
        cfg = _load_cfg(osp.join(cfg_dir, f'{key}.py'), [])
        assert cfg.model.backbone.num_prompts == 0
        assert cfg.train_cfg.max_iters == _load_cfg(osp.join(cfg_dir, 'vpt-deep.py'),
                                                     []).train_cfg.max_iters
    rows = [RowResult(key=k, method=ROWS[k], tuned=t, total=n, file_bytes=1, miou=50.0 + i,
                      aacc=80.0, lr=0.02, train_s=1.0, test_s=1.0)
            for i, (k, (t, n)) in enumerate(counts.items())]
    table = format_table(rows)
    assert '| LoRA | 43.6K |' in table and '| AdaptFormer | 44.0K |' in table
    img = np.asarray(Image.open(plot_tradeoff(rows, None, str(tmp_path / 'plot.png'))))
    assert img[..., :3].std() > 10


def test_learning_rate_search_over_seeds_keeps_each_rows_best_mean(tmp_path):
    """Every row runs once per rate and seed; a rate's result is the mean over its seeds
    (with their spread), and the row keeps its best rate's."""
    lrs = (1e-4, 5e-2)
    result = run_study(StudySettings(out_dir=str(tmp_path), rows=('head', ), num_source=64,
                                     num_target=32, num_val=8, pretrain_iters=60, iters=60,
                                     lrs=lrs, seeds=2, num_show=1))
    searched = result['lr_search']['head']
    assert set(searched) == {f'{lr:g}' for lr in lrs}
    (row, ) = result['rows']
    assert searched[f'{row.lr:g}'] == row.miou == max(searched.values())
    assert row.lr == 5e-2  # 60 steps at 1e-4 barely move the head
    for lr in lrs:
        for seed in (0, 1):
            assert osp.isfile(tmp_path / 'rows' / 'head' / f'lr{lr:g}' / f'seed{seed}' /
                              'test.log')
    # the row's mIoU is the mean of its two seeds' runs, as each run's test logged it
    runs = [study_module._test_metrics(str(tmp_path / 'rows' / 'head' / 'lr0.05' /
                                           f'seed{seed}' / 'test'))['mIoU'] for seed in (0, 1)]
    assert row.extra['seeds'] == [0, 1] and row.extra['miou_runs'] == runs
    assert row.miou == pytest.approx(np.mean(runs))
    heads = [torch.load(study_module._last_checkpoint(
        str(tmp_path / 'rows' / 'head' / 'lr0.05' / f'seed{seed}')), weights_only=True)
        ['state_dict']['decode_head.conv_seg.weight'] for seed in (0, 1)]
    assert not torch.equal(*heads)  # the seeds train differently
    with open(result['files']['json']) as f:
        summary = json.load(f)
    assert summary['lr_search'] == result['lr_search']
    assert summary['rows'][0]['extra']['miou_std'] == row.extra['miou_std']
    assert summary['machine']['seeds'] == 2
    table = open(result['files']['md']).read()
    assert '| 0.05 |' in table and f'| {row.miou:.2f} ± ' in table and '2 seeds' in table
    with open(result['files']['csv']) as f:
        (csv_row, reference) = list(csv.DictReader(f))
    assert float(csv_row['miou_min']) == min(runs) and csv_row['seeds'] == '2'
    assert reference['seeds'] == '1' and reference['miou_std'] == ''


def test_seeds_aggregate_to_the_mean_and_the_spread():
    """:func:`aggregate_seeds` on made-up runs: means, sample std, min-max, each run's seed
    and mIoU; one run stays as it is; runs of different rows are refused."""
    def run(seed, miou, key='vpt-deep'):
        return RowResult(key=key, method=ROWS[key], tuned=41300, total=358000,
                         file_bytes=283000, miou=miou, aacc=miou + 20, lr=0.02,
                         train_s=30.0 + seed, test_s=5.0, pred_dir=f'seed{seed}',
                         extra=dict(seed=seed))
    row = aggregate_seeds([run(0, 75.5), run(1, 73.0), run(2, 77.0)])
    assert row.miou == pytest.approx(75.1666667) and row.aacc == pytest.approx(95.1666667)
    assert row.train_s == 31.0 and row.test_s == 5.0 and row.pred_dir == 'seed0'
    assert row.extra == dict(seeds=[0, 1, 2], miou_runs=[75.5, 73.0, 77.0],
                             miou_std=pytest.approx(2.0207259), miou_min=73.0, miou_max=77.0)
    table = format_table([row])
    assert 'mIoU (mean ± std (min-max), 3 seeds)' in table
    assert '| VPT-deep | 41.3K | 11.54% | 276 KiB | 75.17 ± 2.02 (73.00-77.00) | 95.17 |' in table
    single = run(0, 75.5)
    assert aggregate_seeds([single]) is single
    assert '| 75.50 |' in format_table([single]) and 'seeds' not in format_table([single])
    with pytest.raises(ValueError, match='different rows or rates'):
        aggregate_seeds([run(0, 75.5), run(1, 60.0, key='head')])


def test_machine_info_names_the_cpu_its_flags_and_the_libraries(tmp_path):
    """table.json's ``machine``: what the digits depend on besides code, seeds and threads."""
    cpuinfo = tmp_path / 'cpuinfo'
    cpuinfo.write_text('processor\t: 0\nmodel name\t: Example CPU @ 2.10GHz\n'
                       'flags\t\t: fpu sse2 sse4_2 avx avx2 fma avx512f avx512_vnni amx_tile\n'
                       '\nprocessor\t: 1\nmodel name\t: Example CPU @ 2.10GHz\n'
                       'flags\t\t: fpu sse2\n')
    info = machine_info(str(cpuinfo))
    assert info['cpu_model'] == 'Example CPU @ 2.10GHz'
    assert info['cpu_flags'] == ['amx_tile', 'avx', 'avx2', 'avx512_vnni', 'avx512f', 'fma',
                                 'sse4_2']
    assert info['torch'] == torch.__version__ and info['cpu_count'] == os.cpu_count()
    assert info['cpu_capability'] == torch.backends.cpu.get_cpu_capability()
    config = torch.__config__.show()
    for key, available in (('mkl', torch.backends.mkl.is_available()),
                           ('onednn', torch.backends.mkldnn.is_available())):
        if available:  # the version torch was built with, as its build report names it
            assert info[key] and info[key][0].isdigit() and info[key] in config, (key, info)
        else:
            assert info[key] is None
    line = machine_line(dict(info, threads=1))
    assert line.startswith('Example CPU @ 2.10GHz (') and 'flags: amx_tile avx' in line
    assert f'torch {torch.__version__}, MKL {info["mkl"]}' in line and '1 torch thread' in line
    missing = machine_info(str(tmp_path / 'no_cpuinfo'))
    assert missing['cpu_flags'] == [] and missing['torch'] == torch.__version__
    if osp.isfile('/proc/cpuinfo'):  # this machine's own
        assert machine_info()['cpu_model']


def test_rejects_unknown_rows_and_too_short_schedules(tmp_path):
    with pytest.raises(ValueError, match='unknown rows'):
        run_study(StudySettings(out_dir=str(tmp_path), rows=('prefix-tuning', )))
    with pytest.raises(ValueError, match='iters=20: the schedule warms up for 50'):
        run_study(StudySettings(out_dir=str(tmp_path), iters=20))
    with pytest.raises(ValueError, match='threads=0: give a whole number'):
        run_study(StudySettings(out_dir=str(tmp_path), threads=0))
    with pytest.raises(ValueError, match='seeds=0: give a whole number of training runs'):
        run_study(StudySettings(out_dir=str(tmp_path), seeds=0))
    assert not osp.exists(tmp_path / 'data')


FAKE_TRAIN = '''
import time
for i in (100, 200, 300):
    print(f"11/23 15:00:00 - mmengine - INFO - Iter(train) [{i:>4}/300]  lr: 1e-02  "
          f"eta: 0:00:{(300 - i) // 10:02d}  time: 0.1000  loss: 1.0", flush=True)
    time.sleep(1.2)
'''


def test_silent_runs_report_progress_with_etas(tmp_path, capsys):
    """The study's tool runs log to files; their iteration lines become progress lines
    with the run's ETA and one for the whole study (the runs still planned)."""
    from vpt_seg.experiments.study import Progress, _run_tool
    (tmp_path / 'train.py').write_text(FAKE_TRAIN)
    settings = StudySettings(tools_dir=str(tmp_path))
    progress = Progress({'pretrain': 300, 'Head only': 600})
    seconds = _run_tool(settings, 'train.py', [], str(tmp_path / 'log'), progress, 'pretrain')
    lines = [line for line in capsys.readouterr().out.splitlines() if 'pretrain: iter' in line]
    assert [line.split('iter ')[1].split(',')[0] for line in lines] == \
        ['100/300', '200/300', '300/300']
    assert 'eta 0:00:20; whole study eta ~' in lines[0]
    # the whole-study ETA counts the 600 planned iterations of the next run
    whole = [line.rsplit('~', 1)[1] for line in lines]
    h, m, s = map(int, whole[-1].split(':'))
    assert h * 3600 + m * 60 + s >= 600 * seconds / 300 * 0.5
    assert progress.done == {'pretrain'} and progress.rate() == pytest.approx(seconds / 300)


@pytest.mark.parametrize('threads', [1, 2])
def test_tool_runs_get_the_pinned_thread_count(tmp_path, monkeypatch, threads):
    """Every tool subprocess runs torch with the study's thread count, whatever the
    caller's environment says (the result depends on it, docs/study.md)."""
    (tmp_path / 'probe.py').write_text('import torch\nprint(torch.get_num_threads())\n')
    monkeypatch.setenv('OMP_NUM_THREADS', '7')
    monkeypatch.setenv('MKL_NUM_THREADS', '7')
    settings = StudySettings(out_dir=str(tmp_path), tools_dir=str(tmp_path), threads=threads)
    _run_tool(settings, 'probe.py', [], str(tmp_path / 'probe.log'))
    assert (tmp_path / 'probe.log').read_text().split() == [str(threads)]
