"""The README and docs/ say what is true: links resolve, Table 3 counts are the configs'
counts, the quick start's commands exist, and facts said once stay said once."""
import functools
import glob
import os.path as osp
import re
from unittest import mock

import pytest
import torch
from helpers import ROOT
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS

from vpt_seg.tuners.tuning import count_parameters, format_count

README = osp.join(ROOT, 'README.md')
DOCS = sorted(glob.glob(osp.join(ROOT, 'docs', '*.md')))
PAGES = [README] + DOCS
LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)\)')


def read(path):
    with open(path, encoding='utf-8') as f:
        return f.read()


def rel(path):
    return osp.relpath(path, ROOT)


def anchors(path):
    """GitHub's heading anchors of a Markdown file (lower case, punctuation dropped)."""
    text = re.sub(r'```.*?```', '', read(path), flags=re.S)
    heads = re.findall(r'^#{1,6}\s+(.+?)\s*$', text, flags=re.M)
    return {re.sub(r'[^\w\- ]', '', h.lower()).replace(' ', '-') for h in heads}


def bash_blocks(text):
    return re.findall(r'```bash\n(.*?)```', text, flags=re.S)


@pytest.mark.parametrize('page', PAGES, ids=rel)
def test_every_relative_link_points_to_a_file_and_heading(page):
    bad = []
    for target in LINK.findall(read(page)):
        if re.match(r'[a-z]+:', target):  # http(s), mailto: not ours to check
            continue
        path, _, anchor = target.partition('#')
        dest = osp.normpath(osp.join(osp.dirname(page), path)) if path else page
        if not osp.exists(dest):
            bad.append(f'{target}: no file {rel(dest)}')
        elif anchor and dest.endswith('.md') and anchor not in anchors(dest):
            bad.append(f'{target}: no heading #{anchor} in {rel(dest)}')
    assert not bad, f'{rel(page)}: ' + '; '.join(bad)


def test_every_docs_page_is_linked_from_the_readme():
    linked = {osp.normpath(osp.join(ROOT, t.partition('#')[0]))
              for t in LINK.findall(read(README))}
    assert sorted(rel(p) for p in DOCS if p not in linked) == []


def test_readme_is_a_first_screen_not_a_manual():
    assert len(read(README).splitlines()) <= 170


def test_readme_quick_start_commands_exist():
    text = read(README)
    quick = bash_blocks(text[text.index('## Quick start'):])[0]
    lines = [ln.split('#')[0].strip() for ln in quick.strip().splitlines()]
    assert lines == ['pip install -r requirements.txt && python tools/study.py',
                     'python -m pytest -q']
    assert osp.isfile(osp.join(ROOT, 'requirements.txt'))
    assert osp.isfile(osp.join(ROOT, 'tools', 'study.py'))
    # CI runs the README's test command
    assert 'python -m pytest -q' in read(osp.join(ROOT, '.ci', 'run')).splitlines()


def test_every_tool_and_config_in_the_readme_commands_exists():
    commands = '\n'.join(bash_blocks(read(README)))
    named = set(re.findall(r'\b((?:tools|configs)/[\w./-]+\.(?:py|sh))', commands))
    assert {'tools/train.py', 'tools/test.py', 'tools/export_task.py',
            'configs/setr_vpt_ade20k.py'} <= named
    assert sorted(p for p in named if not osp.isfile(osp.join(ROOT, p))) == []


CONFIG_CELL = re.compile(r'`((?:setr|clip)_[\w-]+\.py)`.*')


def config_rows(path):
    """``{config: {column: cell}}`` for the rows of a page's tables that name a
    ``setr_*.py`` or ``clip_*.py`` config in backticks."""
    rows, header = {}, None
    for line in read(path).splitlines():
        if not line.startswith('|'):
            header = None
            continue
        cells = [c.strip() for c in line.strip('|').split('|')]
        if header is None:
            header = cells
        elif not set(line) <= set('|-: '):
            name = next((m.group(1) for c in cells
                         for m in [re.fullmatch(CONFIG_CELL, c)] if m), None)
            if name:
                rows[name] = dict(zip(header, cells))
    return rows


TABLE3 = config_rows(README)
#: Every table row that gives a config's counts: the README's Table 3 and CLIP rows,
#: docs/configs.md, docs/coop.md's segmentation rows.
COUNTED = [(page, name) for page in (README, osp.join(ROOT, 'docs', 'configs.md'),
                                     osp.join(ROOT, 'docs', 'coop.md'))
           for name in sorted(config_rows(page))]


def test_readme_table3_lists_the_paper_rows():
    assert set(TABLE3) >= {
        'setr_full_ade20k.py', 'setr_head_ade20k.py', 'setr_bias_ade20k.py',
        'setr_vpt-shallow_ade20k.py', 'setr_vpt-deep_ade20k.py', 'setr_vpt-bias_ade20k.py'}
    assert len(COUNTED) >= len(TABLE3) + 6  # + MLA, naive, DINOv2 and EVA02 rows


def test_every_clip_segmentation_config_has_its_counts_in_the_readme_and_docs():
    configs = {osp.basename(p) for p in glob.glob(osp.join(ROOT, 'configs', 'clip_*.py'))}
    assert len(configs) == 10  # five rows on ViT-B/16 and on ViT-L/14
    assert set(config_rows(osp.join(ROOT, 'docs', 'coop.md'))) == configs
    assert {n for n in TABLE3 if n.startswith('clip_')} == {
        n for n in configs if 'vit-b16' in n}


@functools.lru_cache(maxsize=None)
def counts_on_meta(name):
    """``(tuned, total, task MiB)`` of the config's model built on the meta device (shapes
    only, no memory, no init), once per config for every page that gives its counts."""
    # MMSeg's ViT reads drop-path rates with .item() from a linspace: make that one on CPU
    cpu_linspace = functools.partial(torch.linspace, device='cpu')
    with mock.patch.object(torch, 'linspace', cpu_linspace):
        cfg = Config.fromfile(osp.join(ROOT, 'configs', name))
        init_default_scope(cfg.get('default_scope', 'mmseg'))
        with torch.device('meta'):
            model = MODELS.build(cfg.model)
    raw = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 2**20
    return (format_count(count_parameters(model, tuned_only=True)),
            format_count(count_parameters(model)), raw)


@pytest.mark.parametrize('page,name', COUNTED, ids=lambda x: osp.basename(x))
def test_documented_counts_are_the_configs(page, name):
    """Tuned and total counts as tools/count_params.py prints them, and the task file's
    size (``model.state_dict()``) up to its pickle overhead."""
    row = {}  # 'tuned (ours)' -> 'tuned'; the paper's column comes after and is left out
    for column, cell in config_rows(page)[name].items():
        row.setdefault(column.split(' ')[0], cell)
    tuned, total, raw = counts_on_meta(name)
    assert tuned == row['tuned'], name
    if 'total' in row:
        assert total == row['total'], name
    if 'task' in row:
        assert 0 <= float(row['task'].split()[0]) - raw <= 0.15, (name, row['task'], raw)


def test_the_benchmark_table_is_in_one_place():
    header = '| model | setup | mode | batch | img/s |'
    assert [rel(p) for p in PAGES if header in read(p)] == ['docs/benchmark.md']


def test_the_study_time_is_given_in_docs_study_only():
    minutes = re.compile(r'\d+(\.\d+)? minutes|\b\d+ s\b')
    stated = [f'{rel(p)}: {ln.strip()}' for p in PAGES if not p.endswith('study.md')
              for ln in read(p).splitlines() if 'study' in ln and minutes.search(ln)]
    assert stated == []
    assert '## Time' in read(osp.join(ROOT, 'docs', 'study.md'))


def test_the_task_file_header_table_is_in_one_docs_page():
    row = '| `frozen_sha256` |'
    assert [rel(p) for p in PAGES if row in read(p)] == ['docs/task_files.md']


def test_the_task_file_header_table_names_every_key_the_writer_writes(tmp_path):
    from mmengine.config import Config as Cfg

    from vpt_seg.formats.task_file import write_task_file

    class Backbone(torch.nn.Module):
        signature_fields = ('embed_dims',)

        def __init__(self):
            super().__init__()
            self.register_buffer('signature', torch.tensor([8]))

    class Task(torch.nn.Module):
        dataset_meta = dict(classes=('a', 'b'), palette=[[0, 0, 0], [1, 1, 1]])

        def __init__(self):
            super().__init__()
            self.backbone, self.head = Backbone(), torch.nn.Linear(2, 2)

    meta = write_task_file(str(tmp_path / 'task.safetensors'), Task(), Cfg(dict(a=1)),
                           'vit.pth', 'pretrain/vit.pth', frozen_sha256='0' * 64)
    text = read(osp.join(ROOT, 'docs', 'task_files.md'))
    table = text[text.index('| key | value |'):].split('\n\n')[0]
    documented = set(re.findall(r'`(\w+)`', '\n'.join(ln.split('|')[1] for ln in
                                                      table.splitlines()[2:])))
    assert documented == set(meta)


def test_every_package_path_in_the_docs_exists():
    """Paths such as ``vpt_seg/models/vit_ops.py``, ``tools/x.py`` or ``tests/test_x.py`` name
    real files (configs there are often the reader's own, ``configs/my_cls.py``)."""
    pattern = re.compile(r'\b((?:vpt_seg|tests|tools)/[\w/.-]*\w\.(?:py|sh))\b')
    missing = sorted({f'{rel(p)}: {m}' for p in PAGES for m in pattern.findall(read(p))
                      if '*' not in m and not osp.isfile(osp.join(ROOT, m))})
    assert missing == []


def serve_commands(page):
    """``(backbone, [(name, config, checkpoint)])`` of each ``tools/serve.py`` command in a
    page's bash blocks (``NAME=CONFIG:CHECKPOINT`` tasks; task files have no config)."""
    found = []
    for block in bash_blocks(read(page)):
        for cmd in re.split(r'(?<!\\)\n', block):
            words = cmd.replace('\\\n', ' ').split()
            if 'tools/serve.py' not in words:
                continue
            args = words[words.index('tools/serve.py') + 1:]
            tasks = [re.fullmatch(r'([\w-]+)=([^:]+\.py):(\S+)', a) for a in args[1:]]
            found.append((args[0], [m.groups() for m in tasks if m]))
    return found


def configured_pretrained(config):
    """The pretrained file a config's backbone loads, under the key its class names."""
    from vpt_seg.formats.pretrained_key import pretrained_in
    cfg = Config.fromfile(osp.join(ROOT, config))
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    return pretrained_in(cfg.model.backbone)


SERVED = [(page, backbone, tasks) for page in PAGES
          for backbone, tasks in serve_commands(page)]


def test_the_serving_page_has_a_command_with_configs():
    assert any(rel(page) == 'docs/serving.md' and tasks for page, _, tasks in SERVED)


@pytest.mark.parametrize('page,backbone,tasks', SERVED, ids=lambda x: str(x)[-20:])
def test_served_configs_were_trained_on_the_backbone_served(page, backbone, tasks):
    """A ``serve.py BACKBONE NAME=CONFIG:CKPT`` example names, for each of the repo's
    configs, the pretrained file that config loads (configs not in the repo are the
    reader's own, ``configs/my_cls.py``): serving refuses a task on other weights."""
    ours = [(name, config) for name, config, _ in tasks
            if osp.isfile(osp.join(ROOT, config))]
    wrong = {name: configured_pretrained(config) for name, config in ours
             if configured_pretrained(config) != backbone}
    assert wrong == {}, f'{rel(page)}: tools/serve.py {backbone} serves tasks on other files'


def test_the_readme_opening_sizes_are_the_tables():
    """The opening's task-file sizes name their head and are the tables' figures."""
    opening = read(README).split('## ')[0]
    pup = re.search(r"VPT-deep's task file is ([\d.]+ MiB) with the paper's SETR-PUP head",
                    opening)
    naive = re.search(r"([\d.]+ MiB) with SETR's naive head", opening)
    assert pup and naive
    assert pup.group(1) == TABLE3['setr_vpt-deep_ade20k.py']['task file']
    configs_md = config_rows(osp.join(ROOT, 'docs', 'configs.md'))
    assert naive.group(1) == configs_md['setr_vpt-naive_ade20k.py']['task file']
    full = float(TABLE3['setr_full_ade20k.py']['task file'].split()[0]) / 1024
    assert f'{full:.1f} GiB for the whole model' in ' '.join(opening.split())
