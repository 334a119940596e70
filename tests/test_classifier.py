"""VPTClassifier: the paper's equations, what is tuned, task files, learning, errors."""
import math

import pytest
import torch
import torch.nn.functional as F

import vpt_seg  # noqa: F401  (before mmseg)

# isort: split
from helpers import ARCH
from mmengine.registry import init_default_scope
from mmseg.models.backbones import VisionTransformer
from mmseg.registry import MODELS

from vpt_seg.datasets import ImageFolderDataset, make_cls_folder
from vpt_seg.evaluation import TopKAccuracy, topk_accuracy
from vpt_seg.formats.loading import load_task_model

init_default_scope('mmseg')
DEVICE = 'cpu'


def classifier_cfg(pretrained=None, head='LinearClsHead', arch=None, num_classes=6, **kw):
    backbone = dict(type='PromptedVisionTransformer', **(arch or ARCH), **kw)
    if pretrained:
        backbone['init_cfg'] = dict(type='Pretrained', checkpoint=pretrained)
    return dict(type='VPTClassifier', backbone=backbone,
                head=dict(type=head, in_channels=backbone['embed_dims'], num_classes=num_classes))


def build(cfg, seed=0, frozen_too=True):
    """Build and perturb (non-trivial biases, prompts and norm statistics); with
    ``frozen_too=False`` the frozen weights stay as loaded."""
    torch.manual_seed(seed)
    model = MODELS.build(cfg)
    model.init_weights()
    with torch.no_grad():
        for p in model.parameters():
            if frozen_too or p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2)
    return model.eval()


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory):
    torch.manual_seed(123)
    vit = VisionTransformer(final_norm=True, **ARCH)
    vit.init_weights()
    path = str(tmp_path_factory.mktemp('pretrain') / 'vit.pth')
    torch.save(vit.state_dict(), path)
    return path


# ----------------------------------------------------------- the paper, directly
def _ln(x, norm):
    return F.layer_norm(x, (x.shape[-1],), norm.weight, norm.bias, norm.eps)


def reference_logits(model, img):
    """VPT's classifier written from the layer weights:
    x_0 = [cls, E_0 + pos]; [x_i, Z_i, E_i] = L_i([x_{i-1}, P_{i-1}, E_{i-1}]) (deep) or
    with Z carried on (shallow); y = Head(LN(x_N))."""
    vit = model.backbone
    B = img.shape[0]
    pe = vit.patch_embed.projection
    E = F.conv2d(img, pe.weight, pe.bias, stride=vit.patch_size)        # (B, C, h, w)
    E = E.flatten(2).transpose(1, 2)
    x = torch.cat([vit.cls_token.expand(B, -1, -1), E], 1) + vit.pos_embed
    prompts = vit.prompt.embeddings                                      # (L_p, P, C)
    P = prompts.shape[1]
    for i, layer in enumerate(vit.layers):
        if i in vit.prompt.layers:
            rest = x[:, 1:] if i == vit.prompt.layers[0] else x[:, 1 + P:]
            x = torch.cat([x[:, :1], prompts[vit.prompt.layers.index(i)].expand(B, -1, -1),
                           rest], 1)
        attn = layer.attn.attn
        h = _ln(x, layer.ln1)
        q, k, v = (h @ attn.in_proj_weight.T + attn.in_proj_bias).chunk(3, dim=-1)
        heads, d = attn.num_heads, x.shape[-1] // attn.num_heads
        q, k, v = (t.reshape(B, -1, heads, d).transpose(1, 2) for t in (q, k, v))
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1) @ v
        a = a.transpose(1, 2).reshape(B, -1, heads * d)
        x = x + a @ attn.out_proj.weight.T + attn.out_proj.bias
        fc1, fc2 = layer.ffn.layers[0][0], layer.ffn.layers[1]
        x = x + F.gelu(_ln(x, layer.ln2) @ fc1.weight.T + fc1.bias) @ fc2.weight.T + fc2.bias
    cls = _ln(x, vit.ln1)[:, 0]                                          # (B, C)
    head = model.head
    if hasattr(head, 'hidden'):  # MLP: Linear -> ReLU -> BatchNorm (eval) -> Dropout
        lin, bn = head.hidden[0], head.hidden[2]
        h = torch.relu(cls @ lin.weight.T + lin.bias)
        cls = (h - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    return cls @ head.fc.weight.T + head.fc.bias


CASES = [  # (deep, tune_bias, head, num_prompts, prompt_layers)
    (True, False, 'LinearClsHead', 5, None),
    (False, False, 'LinearClsHead', 3, None),
    (True, True, 'MLPClsHead', 4, None),
    (False, True, 'MLPClsHead', 2, None),
    (True, False, 'LinearClsHead', 3, [1, 2]),
]


@pytest.mark.parametrize('deep,tune_bias,head,num_prompts,layers', CASES)
def test_forward_matches_paper_equations(deep, tune_bias, head, num_prompts, layers):
    model = build(classifier_cfg(head=head, deep=deep, tune_bias=tune_bias,
                                 num_prompts=num_prompts, prompt_layers=layers))
    img = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ours = model(img, mode='tensor')
        ref = reference_logits(model, img)
    assert ours.shape == (3, 6)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('out_indices', [-1, 3, (3, ), (0, 3), [1, 3]])
def test_reads_the_final_normed_cls_whatever_else_is_output(out_indices):
    model = build(classifier_cfg(num_prompts=3, out_indices=out_indices))
    img = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(img, mode='tensor'), reference_logits(model, img),
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('out_indices', [0, (0, ), (1, 2), [2]])
def test_out_indices_without_the_last_layer_are_refused(out_indices):
    """An intermediate [CLS] is not what the head was meant to read (layer 0's is not
    even normed); the classifier refuses it instead of classifying from it."""
    with pytest.raises(ValueError, match=r'leave out the last layer \(3\).*out_indices=-1'):
        MODELS.build(classifier_cfg(num_prompts=3, out_indices=out_indices))


@pytest.mark.parametrize('tune_bias,head', [(False, 'LinearClsHead'), (True, 'MLPClsHead')])
def test_only_prompts_biases_and_head_get_gradients(tune_bias, head):
    model = build(classifier_cfg(head=head, tune_bias=tune_bias, num_prompts=4)).train()
    img = torch.randn(4, 3, 32, 32)
    from mmengine.structures import BaseDataElement
    samples = [BaseDataElement(gt_label=torch.tensor(i)) for i in range(4)]
    losses = model(img, samples, mode='loss')
    losses['loss_cls'].backward()
    bias_ids = {id(p) for _, p in vpt_seg.tuners.tuning.bias_parameters(model.backbone)}
    for name, p in model.named_parameters():
        expected = (name.startswith('head.') or name == 'backbone.prompt.embeddings'
                    or (tune_bias and id(p) in bias_ids))
        assert p.requires_grad == expected, name
        if expected:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


@pytest.mark.parametrize('tune_bias', [False, True])
def test_task_file_round_trip(tmp_path, pretrained, tune_bias):
    cfg = classifier_cfg(pretrained, tune_bias=tune_bias, num_prompts=4, deep=True)
    model = build(cfg, seed=1, frozen_too=False)
    path = str(tmp_path / 'task.pth')
    torch.save(dict(state_dict=model.state_dict(), meta={}), path)
    saved = torch.load(path, weights_only=True)['state_dict']
    tuned = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(saved) == tuned | {'backbone.signature'}
    assert sum(v.numel() for v in saved.values()) < 0.2 * sum(
        p.numel() for p in model.parameters())
    from mmengine.config import Config
    loaded = load_task_model(Config(dict(model=cfg)), path)              # frozen part from file
    img = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(img, mode='tensor'), model(img, mode='tensor'))
    # the frozen part really came from the pretrained file, the tuned part from the task
    ref = torch.load(pretrained, weights_only=True)
    frozen_key = 'layers.0.attn.attn.in_proj_weight'
    assert torch.equal(loaded.backbone.get_parameter(frozen_key), ref[frozen_key])
    assert torch.equal(loaded.backbone.prompt.embeddings, model.backbone.prompt.embeddings)


@pytest.mark.parametrize('other,match', [
    (dict(ARCH, embed_dims=48), 'embed_dims 48'),
    (dict(ARCH, num_layers=6), 'num_layers 6'),
])
@pytest.mark.parametrize('deep', [True, False])
def test_task_file_of_another_vit_is_a_clear_error(tmp_path, other, match, deep):
    theirs = build(classifier_cfg(arch=other, num_prompts=4, deep=deep))
    path = str(tmp_path / 'other.pth')
    torch.save(dict(state_dict=theirs.state_dict()), path)
    ours = MODELS.build(classifier_cfg(num_prompts=4, deep=deep))
    with pytest.raises(ValueError, match=match):
        ours.load_state_dict(torch.load(path, weights_only=True)['state_dict'])
    # the shape check of the backbone catches it too when the signature is absent
    if deep:
        state = torch.load(path, weights_only=True)['state_dict']
        state.pop('backbone.signature')
        with pytest.raises(ValueError, match='does not fit'):
            ours.load_state_dict(state, strict=False)


def test_topk_accuracy_and_metric():
    scores = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    labels = torch.tensor([1, 1, 0, 2])
    acc = topk_accuracy(scores, labels, (1, 2, 5))
    assert acc == {1: 25.0, 2: 50.0, 5: 100.0}
    metric = TopKAccuracy(topk=(1, 2))
    metric.process(None, [dict(pred_score=s, gt_label=torch.tensor(label))
                          for s, label in zip(scores, labels)])
    assert metric.compute_metrics(metric.results) == {'top1': 25.0, 'top2': 50.0}


def test_image_folder_dataset(tmp_path):
    root = make_cls_folder(str(tmp_path / 'data'), num_train=2, num_val=1, size=(16, 16),
                           classes=[0, 3])
    ds = ImageFolderDataset(data_root=root, data_prefix=dict(img_path='train'),
                            pipeline=[dict(type='LoadImageFromFile'), dict(type='PackClsInputs')])
    assert ds.metainfo['classes'] == ('red_disc', 'yellow_ring')
    assert [ds.get_data_info(i)['gt_label'] for i in range(len(ds))] == [0, 0, 1, 1]
    item = ds[2]
    assert item['inputs'].shape == (3, 16, 16) and int(item['data_samples'].gt_label) == 1
    with pytest.raises(ValueError, match='not among the classes'):
        ImageFolderDataset(data_root=root, data_prefix=dict(img_path='val'),
                           classes=['red_disc'])


def test_learns_on_generated_data(tmp_path, pretrained):
    root = make_cls_folder(str(tmp_path / 'data'), num_train=24, num_val=12, seed=0)
    pipeline = [dict(type='LoadImageFromFile'), dict(type='PackClsInputs')]

    def load(split):
        ds = ImageFolderDataset(data_root=root, data_prefix=dict(img_path=split),
                                classes='classes.txt', pipeline=pipeline)
        items = [ds[i] for i in range(len(ds))]
        return [it['inputs'] for it in items], [it['data_samples'] for it in items]

    torch.manual_seed(0)
    model = MODELS.build(classifier_cfg(pretrained, num_prompts=4, deep=True))
    model.init_weights()
    (train_x, train_y), (val_x, val_y) = load('train'), load('val')
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-3, weight_decay=0.0)
    model.train()
    for step in range(120):
        idx = torch.randint(len(train_x), (24,)).tolist()
        data = model.data_preprocessor(dict(inputs=[train_x[i] for i in idx],
                                            data_samples=[train_y[i] for i in idx]), True)
        loss = model(**data, mode='loss')['loss_cls']
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    metric = TopKAccuracy(topk=(1, 5))
    metric.dataset_meta = dict(classes=list(range(6)))
    with torch.no_grad():
        data = model.data_preprocessor(dict(inputs=val_x, data_samples=val_y), False)
        preds = model(**data, mode='predict')
    metric.process(None, [p.to_dict() for p in preds])
    acc = metric.compute_metrics(metric.results)
    assert acc['top1'] >= 75, acc  # chance is 16.7


TIMM_REG4 = dict(type='PromptedTimmViT', model_name='vit_small_patch14_reg4_dinov2',
                 model_kwargs=dict(embed_dim=32, depth=3, num_heads=4), img_size=(32, 32),
                 patch_size=8)


@pytest.mark.parametrize('num_prompts', [0, 3])
def test_timm_backbone_gives_the_final_normed_cls(num_prompts):
    """On PromptedTimmViT (a DINOv2-style ViT with 4 registers), output_cls_token gives
    ``[map, cls]`` pairs; the classifier reads the last layer's [CLS] after timm's own
    final norm: at no prompts, timm's ``forward_features(x)[:, 0]`` of the same model."""
    cfg = dict(type='VPTClassifier', backbone=dict(TIMM_REG4, num_prompts=num_prompts,
                                                   out_indices=(1, 2)),
               head=dict(type='LinearClsHead', in_channels=32, num_classes=5))
    model = build(cfg).eval()
    assert model.backbone.output_cls_token and model.backbone.final_norm
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        outs = model.backbone(x)
        assert [tuple(m.shape) for m, _ in outs] == [(2, 32, 4, 4)] * 2
        assert [tuple(c.shape) for _, c in outs] == [(2, 32)] * 2
        cls = model.extract_feat(x)
        assert torch.equal(cls, outs[-1][1])
        logits = model(x)
    assert logits.shape == (2, 5)
    if num_prompts == 0:
        import timm
        ref = timm.create_model(TIMM_REG4['model_name'], pretrained=False, num_classes=0,
                                img_size=(32, 32), patch_size=8, dynamic_img_size=True,
                                **TIMM_REG4['model_kwargs']).eval()
        ref.load_state_dict(model.backbone.vit.state_dict())
        with torch.no_grad():
            torch.testing.assert_close(cls, ref.forward_features(x)[:, 0], atol=1e-5,
                                       rtol=1e-5)
    loss = model.head(model.extract_feat(x)).sum()
    loss.backward()
    tuned = {n for n, p in model.named_parameters() if p.grad is not None}
    assert tuned == {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith('backbone.prompt') for n in tuned) == (num_prompts > 0)


def test_timm_backbone_without_cls_token_is_refused():
    with pytest.raises(ValueError, match='has no \\[CLS\\] token'):
        MODELS.build(dict(type='VPTClassifier',
                          backbone=dict(TIMM_REG4, model_kwargs=dict(
                              embed_dim=32, depth=2, num_heads=4, class_token=False,
                              global_pool='avg')),
                          head=dict(type='LinearClsHead', in_channels=32, num_classes=5)))
