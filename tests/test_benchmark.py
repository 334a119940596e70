"""tools/benchmark.py on the tiny demo config: it runs on CPU and reports every field."""
import json
import os.path as osp
import subprocess
import sys

from helpers import ROOT, run_tool

from vpt_seg.experiments.benchmark import format_table, model_setup

CONFIG = osp.join(ROOT, 'configs', 'demo', 'setr_vpt_tiny_ade20k.py')
FIELDS = {'model', 'setup', 'mode', 'batch', 'size', 'img_per_s', 'ms_per_step', 'peak_gib',
          'saved_gib',
          'gflop_per_img', 'tflop_per_s', 'frac_peak', 'tuned', 'total', 'x_stock',
          'mem_vs_stock', 'warmup_steps'}


def test_benchmark_tool_reports_every_field(tmp_path):
    out = tmp_path / 'bench.json'
    proc = subprocess.run(
        [sys.executable, osp.join(ROOT, 'tools', 'benchmark.py'), CONFIG, '--stock',
         '--modes', 'train', 'whole', 'slide', 'serve', '--serve-batch', '4', '--batch', '2',
         '--amp', 'none', '--steps', '2', '--warmup', '0', '--json', str(out)],
        capture_output=True, text=True, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = report['results']
    assert [(r['model'], r['mode']) for r in rows] == [
        (m, mode) for m in ('ours', 'stock') for mode in ('train', 'whole', 'slide')] + [
        ('serve', 'serve')] * 2
    assert [r['setup'] for r in rows[-2:]] == ['1 task (one pass)', '4 tasks mixed']
    assert rows[-1]['x_one_task'] > 0 and rows[-1]['batch'] == 4
    for r in rows:
        assert FIELDS <= r.keys()
        assert r['img_per_s'] > 0 and r['gflop_per_img'] > 0
    assert all(r['x_stock'] == 1.0 for r in rows if r['model'] == 'stock')
    ours_train = rows[0]
    assert ours_train['setup'] == 'frozen, 4 prompts' and ours_train['batch'] == 2
    assert rows[3]['setup'] == 'frozen, biases tuned'  # stock's closest setup to VPT-deep
    assert report['env']['device'].startswith('CPU')
    assert '| ours | frozen, 4 prompts | train | 2 |' in proc.stdout  # the table
    assert rows[0]['saved_gib'] > 0 and rows[1]['saved_gib'] is None  # train only
    assert 'ETA' in proc.stderr + proc.stdout  # progress lines


def test_stock_setup_per_row():
    from mmengine.config import Config
    cfg = Config.fromfile(CONFIG)
    rows = {'head': dict(num_prompts=0), 'bias': dict(num_prompts=0, tune_bias=True),
            'vpt': dict(num_prompts=4), 'full': dict(num_prompts=0, freeze=False)}
    want = {'head': 'frozen, head only', 'bias': 'frozen, biases tuned',
            'vpt': 'frozen, biases tuned', 'full': 'full fine-tuning'}
    for row, opts in rows.items():
        cfg.model.backbone.update(dict(num_prompts=0, tune_bias=False, freeze=True), **opts)
        model, optim, _, setup = model_setup(cfg, stock=True)
        assert setup == want[row], row
        assert model.backbone.type == 'VisionTransformer'
        assert 'num_prompts' not in model.backbone and 'constructor' not in optim
        assert model.backbone.init_cfg is None


def test_table_formats_missing_figures():
    report = dict(env=dict(config='c.py', device='CPU', torch='x', amp=None, steps=1),
                  results=[dict(model='ours', setup='s', mode='train', batch=1, img_per_s=1.0,
                                x_stock=None, peak_gib=None, mem_vs_stock=None, saved_gib=None,
                                gflop_per_img=1.0, tflop_per_s=0.1, frac_peak=None, tuned=5)])
    assert '| ours | s | train | 1 | 1 | - | - | - | - | 1 | 0.1 | - | 5 |' in format_table(report)


DINOV2 = osp.join(ROOT, 'configs', 'demo', 'setr_vpt_tiny_dinov2_ade20k.py')


def test_stock_timm_model_is_timms_own_forward_of_the_same_model():
    """For a PromptedTimmViT config, stock is the same timm model run by timm
    (forward_intermediates), frozen with biases tuned, through the same MMSeg head; no
    pretrained file is read. With the same weights and no prompts it computes our maps."""
    import torch
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    from vpt_seg.experiments.benchmark import build
    cfg = Config.fromfile(DINOV2)
    init_default_scope('mmseg')
    model_cfg, _, rule, setup = model_setup(cfg, stock=True)
    assert model_cfg.backbone.type == 'StockTimmViT' and 'num_prompts' not in model_cfg.backbone
    assert setup == 'frozen, biases tuned' and rule == dict(freeze=True, tune_bias=True)
    stock, _, _ = build(cfg, True, torch.device('cpu'))
    ours, _, ours_setup = build(cfg, False, torch.device('cpu'))
    assert ours_setup == 'frozen, 4 prompts' and ours.backbone.checkpoint is None
    tuned = [n for n, p in stock.backbone.named_parameters() if p.requires_grad]
    assert tuned and all(n.endswith('bias') for n in tuned)
    assert type(stock.decode_head) is type(ours.decode_head)

    plain = MODELS.build(dict(cfg.model.backbone, checkpoint=None, num_prompts=0)).eval()
    stock.backbone.vit.load_state_dict(plain.vit.state_dict(), strict=False)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for a, b in zip(stock.backbone.eval()(x), plain(x)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_benchmark_tool_runs_a_timm_config_against_stock(tmp_path):
    out = tmp_path / 'bench.json'
    proc = run_tool(  # in a forked child (tests/helpers.py)
        'benchmark.py', DINOV2, '--stock', '--modes', 'train', 'whole', '--batch', '2', '--amp',
        'none', '--steps', '1', '--warmup', '0', '--device', 'cpu', '--infer-size', '32',
        '40', '--json', str(out), cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())['results']
    assert [(r['model'], r['setup'], r['mode']) for r in rows] == [
        ('ours', 'frozen, 4 prompts', 'train'), ('ours', 'frozen, 4 prompts', 'whole'),
        ('stock', 'frozen, biases tuned', 'train'), ('stock', 'frozen, biases tuned', 'whole')]
    assert all(r['img_per_s'] > 0 and r['gflop_per_img'] > 0 for r in rows)
    # 'whole' at ADE20k's 4:3 default (32x43) is not a multiple of patch 8: --infer-size


def test_methods_are_measured_side_by_side(tmp_path):
    """--methods: VPT-deep, LoRA and AdaptFormer on the config's backbone, head and data,
    one row each with every figure, in one run."""
    out = tmp_path / 'methods.json'
    proc = run_tool(  # in a forked child (tests/helpers.py)
        'benchmark.py', CONFIG, '--methods', 'vpt-deep', 'lora', 'adaptformer', '--modes',
        'train', 'whole', '--batch', '1', '--amp', 'none', '--steps', '1', '--warmup', '0',
        '--json', str(out), cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())['results']
    assert [(r['model'], r['mode']) for r in rows] == [
        (m, mode) for m in ('vpt-deep', 'lora', 'adaptformer') for mode in ('train', 'whole')]
    setups = {r['model']: r['setup'] for r in rows}
    assert setups == {'vpt-deep': 'frozen, 10 prompts', 'lora': 'frozen, LoRA r8 q,v',
                      'adaptformer': 'frozen, adapter w64'}
    for r in rows:
        assert r['img_per_s'] > 0 and r['gflop_per_img'] > 0 and r['peak_gib'] is not None
        assert (r['saved_gib'] > 0) if r['mode'] == 'train' else r['saved_gib'] is None
    tuned = {r['model']: r['tuned'] for r in rows}
    from mmengine.config import Config
    bb = Config.fromfile(CONFIG).model.backbone
    c, depth = bb.embed_dims, bb.num_layers
    # the same head in every row; the methods' own parts on top of it
    assert tuned['lora'] - tuned['vpt-deep'] == depth * (2 * 2 * 8 * c - 10 * c)
    assert tuned['adaptformer'] - tuned['vpt-deep'] == depth * (2 * 64 * c + 64 + c - 10 * c)
    for m, setup in setups.items():  # the printed table has the rows, with numbers
        line = next(ln for ln in proc.stdout.splitlines()
                    if ln.startswith(f'| {m} | {setup} | train'))
        cells = [c.strip() for c in line.split('|')]
        for col in (5, 7, 9, 10):  # img/s, peak GiB, kept GiB, GFLOP/img
            assert float(cells[col]) > 0, line


def test_unknown_method_is_refused():
    import pytest
    from mmengine.config import Config

    from vpt_seg.experiments.benchmark import run_benchmark
    with pytest.raises(ValueError, match="unknown method 'prefix'"):
        model_setup(Config.fromfile(CONFIG), stock=False, method='prefix')
    with pytest.raises(ValueError, match=r"unknown methods \['prefix'\]"):
        run_benchmark(CONFIG, methods=['prefix'], device='cpu')


class FakeClock:
    """A clock that a step advances by the next of ``durations`` (the last one repeats)."""

    def __init__(self, durations):
        self.now, self.durations, self.calls = 0.0, list(durations), 0

    def __call__(self):
        return self.now

    def step(self):
        self.now += self.durations[min(self.calls, len(self.durations) - 1)]
        self.calls += 1


def test_warm_up_runs_until_the_step_time_settles():
    import torch

    from vpt_seg.experiments.benchmark import time_steps
    cpu = torch.device('cpu')
    # slow first steps (the first row of a run): warm-up goes on past --warmup 1
    clock = FakeClock([5.0, 4.0, 2.0, 1.0, 1.05, 1.0])
    times, warmed = time_steps(clock.step, 3, 1, cpu, clock=clock)
    assert warmed == 5 and times == [1.0, 1.0, 1.0]
    # already settled: the requested minimum (and two steps, to compare) is enough
    clock = FakeClock([1.0])
    assert time_steps(clock.step, 2, 1, cpu, clock=clock) == ([1.0, 1.0], 2)
    clock = FakeClock([1.0])
    assert time_steps(clock.step, 2, 4, cpu, clock=clock)[1] == 4
    # never settles: capped
    clock = FakeClock([1.0, 2.0] * 100)
    assert time_steps(clock.step, 1, 3, cpu, clock=clock)[1] == 30
    # --warmup 0: none at all
    clock = FakeClock([9.0, 1.0])
    assert time_steps(clock.step, 1, 0, cpu, clock=clock) == ([9.0], 0)


def test_row_order_does_not_decide_a_ratio():
    """Two equally fast models, the first measured with a slow start: the same figures."""
    import torch

    from vpt_seg.experiments.benchmark import time_steps
    cpu = torch.device('cpu')
    first = FakeClock([6.0, 5.0, 3.0, 2.0, 1.0])
    second = FakeClock([1.0])
    a, _ = time_steps(first.step, 5, 1, cpu, clock=first)
    b, _ = time_steps(second.step, 5, 1, cpu, clock=second)
    assert a == b


COOP = osp.join(ROOT, 'configs', 'demo', 'coop_cls_tiny.py')
ADE_CLASSES = {'model.head.text_encoder.vocabulary': None,
               'model.head.text_encoder.dataset_name': 'ade20k'}


def test_coop_methods_measure_the_text_side_apart():
    """--methods coop vpt-coop on the tiny CLIP classifier with ADE20k's 150 class names:
    a row per method and mode, each with the text side's own figures (time, memory, kept
    activations in training, FLOPs), and the mixed-task serving rows."""
    from vpt_seg.experiments.benchmark import run_benchmark
    report = run_benchmark(COOP, batch=2, amp=None, modes=('train', 'whole', 'serve'),
                           steps=1, warmup=0, device='cpu', serve_batch=4, serve_tasks=2,
                           methods=['coop', 'vpt-coop'], cfg_options=ADE_CLASSES,
                           log=lambda msg: None)
    rows = report['results']
    assert [(r['model'], r['mode']) for r in rows] == [
        (m, mode) for m in ('coop', 'vpt-coop') for mode in ('train', 'whole')] + [
        ('serve', 'serve')] * 2
    setups = {r['model']: r['setup'] for r in rows}
    assert setups['coop'] == 'frozen, text context 16'  # CoOpTextEncoder's own default
    assert setups['vpt-coop'] == 'frozen, 10 prompts + text context 16'
    text_fields = {'text_classes', 'text_ms_per_step', 'text_peak_gib', 'text_saved_gib',
                   'text_gflop'}
    for r in rows[:4]:
        assert (FIELDS - {'x_stock', 'mem_vs_stock'}) <= r.keys() and text_fields <= r.keys()
        assert r['text_classes'] == 150 and r['text_ms_per_step'] > 0
        assert r['text_gflop'] > 0 and r['text_peak_gib'] is not None
        assert (r['text_saved_gib'] > 0) if r['mode'] == 'train' else r['text_saved_gib'] is None
    train = {r['model']: r for r in rows if r['mode'] == 'train'}
    # backward doubles the text side's work at least: more FLOPs than the pass alone
    whole = {r['model']: r for r in rows if r['mode'] == 'whole'}
    assert train['coop']['text_gflop'] > 2 * whole['coop']['text_gflop']
    # tuned: the context (16 x 64) and, for VPT + CoOp, 10 deep prompts x 64 x 2 layers
    assert train['coop']['tuned'] == 16 * 64
    assert train['vpt-coop']['tuned'] - train['coop']['tuned'] == 10 * 64 * 2
    assert not text_fields & rows[-1].keys()  # serving: cached, not measured per batch
    table = format_table(report)
    assert '| coop | frozen, text context 16 | train | 150 |' in table
    assert '| vpt-coop | frozen, 10 prompts + text context 16 | whole | 150 |' in table


def test_coop_methods_and_classification_modes_refused_where_they_cannot_run():
    import pytest
    from mmengine.config import Config

    from vpt_seg.experiments.benchmark import run_benchmark
    with pytest.raises(ValueError, match="method 'coop' learns a text context.*no text "
                                         "encoder"):
        model_setup(Config.fromfile(CONFIG), stock=False, method='coop')
    with pytest.raises(ValueError, match='classification config.*slide'):
        run_benchmark(COOP, modes=('slide', ), device='cpu')
    with pytest.raises(ValueError, match='classification config.*--stock'):
        run_benchmark(COOP, modes=('train', ), stock=True, device='cpu')


def test_coop_method_on_a_clip_segmentation_config():
    """The tiny CLIP segmentation demo (TextSegHead, ADE20k's 150 names): the coop row
    measures the decode head's text side; the auxiliary head shares its text pass."""
    from vpt_seg.experiments.benchmark import run_benchmark
    config = osp.join(ROOT, 'configs', 'demo', 'coop_seg_tiny_ade20k.py')
    report = run_benchmark(config, batch=1, amp=None, modes=('train', ), steps=1, warmup=0,
                           device='cpu', methods=['coop'], log=lambda msg: None)
    (row, ) = report['results']
    assert (row['model'], row['setup']) == ('coop', 'frozen, text context 16')
    assert row['text_classes'] == 150 and row['text_saved_gib'] > 0
    assert row['text_gflop'] > 0 and row['text_ms_per_step'] > 0
