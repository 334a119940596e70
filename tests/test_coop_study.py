"""CoOp's part of the study, reduced: a tiny CLIP pretrained here on generated captions
loads through the study's configs as a published open_clip file (features equal to
open_clip's own), and few-shot and base-to-novel runs through tools/train.py and
tools/test.py show what CoOp claims, with margins that leave room for spread."""
import json
import os.path as osp

import numpy as np
import pytest
import torch
from helpers import ROOT
from mmengine.config import Config
from mmseg.registry import MODELS
from PIL import Image

from vpt_seg.datasets.synthetic_captions import TARGET_CLASSES, make_caption_pairs
from vpt_seg.experiments.clip_pretrain import (
    CLIP_SHAPE,
    ClipPretrainSettings,
    pretrain_tiny_clip,
    tokenize_captions,
)
from vpt_seg.experiments.coop_study import CoopSettings, harmonic_mean, run_coop_study

COOP_CONFIGS = osp.join(ROOT, 'configs', 'study', 'coop')
#: Enough pretraining for the words to mean something (tests only; the study's is longer).
QUICK_CLIP = ClipPretrainSettings(num_pairs=3000, iters=150, batch_size=64, lr=3e-3)


@pytest.fixture(scope='module')
def clip(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp('tiny_clip'))
    info = pretrain_tiny_clip(folder, QUICK_CLIP, log=lambda msg: None)
    return osp.join(folder, 'open_clip_model.safetensors'), info


def _open_clip_model(path):
    import open_clip
    from safetensors.torch import load_file
    with open(osp.join(osp.dirname(path), 'open_clip_config.json')) as f:
        cfg = json.load(f)['model_cfg']
    model = open_clip.create_model('ViT-B-16', pretrained=None, **cfg)
    model.load_state_dict(load_file(path), strict=True)  # exactly open_clip's keys
    return model.eval()


def test_captions_leave_the_target_names_out_and_compose_from_their_words():
    _, captions = make_caption_pairs(400, seed=0)
    text = ' '.join(captions)
    for colour, shape in TARGET_CLASSES:
        assert f'{colour} {shape}' not in text          # never together ...
        assert colour in text and shape in text        # ... but each word is seen
    ids, used = tokenize_captions(captions)
    assert used == sorted(used) and used[-1] == 49407  # the end token keeps the largest id
    assert int(ids.max()) == len(used) - 1


def test_pretrained_clip_loads_through_the_configs_like_a_published_file(clip):
    path, info = clip
    ref = _open_clip_model(path)
    assert ref.token_embedding.weight.shape == (49408, CLIP_SHAPE['text_width'])
    assert ref.positional_embedding.shape[0] == 77
    assert info['retrieval'] > 20, info   # the captions were learned (chance: under 1%)
    cfg = Config.fromfile(osp.join(COOP_CONFIGS, 'zero-shot.py'))
    cfg.merge_from_dict({'model.backbone.checkpoint': path,
                         'model.head.text_encoder.checkpoint': path})
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.eval()
    import open_clip
    names = cfg.model.head.text_encoder.vocabulary
    with torch.no_grad():
        ours = model.head.text_encoder()                                   # (K, E), scaled
        theirs = ref.encode_text(open_clip.tokenize([f'a photo of a {n}.' for n in names]))
        theirs = ref.logit_scale.exp() * torch.nn.functional.normalize(theirs, dim=-1)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)
        x = torch.randn(3, 3, 32, 32)
        torch.testing.assert_close(model.extract_feat(x), ref.encode_image(x),
                                   rtol=0, atol=1e-5)


@pytest.fixture(scope='module')
def study(clip, tmp_path_factory):
    out = str(tmp_path_factory.mktemp('coop_study'))
    return run_coop_study(CoopSettings(
        out_dir=out, clip_file=clip[0], shots=(16,), methods=('zero-shot', 'linear-probe'),
        b2n_methods=('coop',), iters=100, num_val=10, jobs=2, seeds=2))


def test_few_shot_rows_beat_chance_and_the_probe_beats_the_hand_prompt(study):
    """At 16 shots a linear probe beats the hand-crafted prompt (measured: 47.5 against
    38.0 here over two seeds, 65.7 against 49.5 in the study over three). CoOp beats it
    in the study by 4 to 6 points from 2 shots on (docs/study.md), a margin this reduced
    run (a CLIP pretrained for 150 steps, 100 iterations) does not resolve, so it is not
    asserted here."""
    few = study['few_shot']
    print('reduced CoOp study:', json.dumps(few), json.dumps(study['base_to_novel']))
    assert few['linear-probe'][16] > few['zero-shot'][16] + 5, few
    assert few['zero-shot'][16] > 10 + 10, few   # 10 classes: chance is 10%


def test_base_to_novel_table_and_outputs(study):
    """A unified context learned on the base names classifies the novel names above
    chance (measured: base 48.0, novel 40.0; chance 20%)."""
    b2n = study['base_to_novel']
    assert list(b2n) == ['coop']
    row = b2n['coop']
    assert row['hm'] == pytest.approx(harmonic_mean(row['base'], row['novel']))
    assert row['base'] > 20 + 10 and row['novel'] > 20 + 5, row
    files = study['files']
    table = open(files['few_shot_md']).read()
    assert '| Linear probe |' in table and '16 shots' in table
    assert '| Base | Novel | HM |' in open(files['base_to_novel_md']).read()
    with open(files['json']) as f:
        saved = json.load(f)
    assert saved['few_shot']['linear-probe']['16'] == study['few_shot']['linear-probe'][16]
    assert saved['machine']['threads'] == 1 and 'few-shot' in saved['timings']
    assert study['tuned']['coop'] == 4 * CLIP_SHAPE['text_width']   # the context only
    assert study['tuned']['zero-shot'] == 0
    img = np.asarray(Image.open(files['figure']))
    assert img.ndim == 3 and min(img.shape[:2]) > 200 and img[..., :3].std() > 10


def test_seeds_give_each_trained_cell_its_runs_mean_and_spread(study):
    """Two seeds: every trained cell is the mean of its two runs (each in its own work
    dir), with their spread in the JSON and the tables; zero-shot trains nothing and runs
    once."""
    out = study['settings']['out_dir']
    probe = study['few_shot_spread']['linear-probe'][16]
    assert len(probe['runs']) == 2
    assert study['few_shot']['linear-probe'][16] == pytest.approx(np.mean(probe['runs']))
    assert probe['min'] == min(probe['runs']) and probe['max'] == max(probe['runs'])
    assert probe['std'] == pytest.approx(np.std(probe['runs'], ddof=1))
    from vpt_seg.experiments.study import _test_metrics, _val_metrics
    runs = osp.join(out, 'runs')
    # each seed's own run, as its work dir logged it
    assert probe['runs'] == [_val_metrics(osp.join(runs, 'linear-probe', '16shot', f'seed{s}'),
                                          'accuracy/top1')['accuracy/top1'] for s in (0, 1)]
    novel = study['base_to_novel_spread']['coop']['novel']['runs']
    assert novel == [_test_metrics(osp.join(runs, 'b2n', 'coop', f'seed{s}', 'test_novel'))
                     ['accuracy/top1'] for s in (0, 1)]
    assert study['few_shot_spread']['zero-shot'][16]['runs'] == [study['few_shot']
                                                                 ['zero-shot'][16]]
    hm = study['base_to_novel_spread']['coop']['hm']
    assert len(hm['runs']) == 2 and study['base_to_novel']['coop']['hm'] == \
        pytest.approx(np.mean(hm['runs']))
    few = open(study['files']['few_shot_md']).read()
    assert f"{study['few_shot']['linear-probe'][16]:.2f} ± {probe['std']:.2f}" in few
    assert ' ± ' in open(study['files']['base_to_novel_md']).read()


def test_unknown_methods_and_shots_are_refused(tmp_path):
    with pytest.raises(ValueError, match='unknown CoOp methods'):
        run_coop_study(CoopSettings(out_dir=str(tmp_path), methods=('cocoop',)))
    with pytest.raises(ValueError, match='shot counts from 1 to 16'):
        run_coop_study(CoopSettings(out_dir=str(tmp_path), shots=(32,)))
    with pytest.raises(ValueError, match='seeds=0: give a whole number'):
        run_coop_study(CoopSettings(out_dir=str(tmp_path), seeds=0))
