"""A reduced transfer study, end to end through configs/study, tools/train.py and
tools/test.py: pretraining must learn the source task, adapting the backbone must beat
head-only clearly, every tuned row must beat a head that was never trained, and the
table and figures must be complete and readable.

VPT-deep against head-only is *not* asserted: at this scale the two are within a few
mIoU of each other (docs/study.md has the numbers), and a test must not claim more than
the method shows here."""
import csv
import json
import os.path as osp

import numpy as np
import pytest
from PIL import Image

from vpt_seg.study import ROWS, StudySettings, format_table, run_study

ROWS_RUN = ('head', 'vpt-deep', 'full')


@pytest.fixture(scope='module')
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp('study')
    return run_study(StudySettings(out_dir=str(out), rows=ROWS_RUN, num_source=300,
                                   num_target=200, num_val=16, pretrain_iters=500,
                                   iters=400, num_show=2))


def test_pretraining_learns_the_source_task(study):
    assert study['source_miou'] > 50


def test_adapting_the_backbone_beats_head_only(study):
    """The target task needs more than a new head on frozen source features."""
    miou = {r.key: r.miou for r in study['rows']}
    assert miou['full'] > miou['head'] + 5, miou


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


def test_rejects_unknown_rows(tmp_path):
    with pytest.raises(ValueError, match='unknown rows'):
        run_study(StudySettings(out_dir=str(tmp_path), rows=('prefix-tuning', )))
