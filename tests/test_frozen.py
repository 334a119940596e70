"""FrozenBackboneMixin on a toy backbone: what a task checkpoint holds and how it loads."""
import pytest
import torch
from torch import nn

from vpt_seg.models.frozen import FrozenBackboneMixin


class Toy(FrozenBackboneMixin, nn.Module):
    """The smallest backbone using the mixin: a frozen linear layer and a tuned vector."""

    signature_fields = ('width', 'depth')

    def __init__(self, checkpoint=None, width=4, save_frozen=False):
        super().__init__()
        self.body = nn.Linear(width, width)
        self.body.requires_grad_(False)
        self.prompt = nn.Parameter(torch.zeros(width))
        self.checkpoint = self.pretrained_file = checkpoint
        self.save_frozen = save_frozen
        self.loads = 0
        self.register_buffer('signature', torch.tensor([width, 1]))
        self.init_frozen_hooks()

    def configured_pretrained(self):
        return self.checkpoint

    def load_pretrained(self, path):
        self.body.load_state_dict(torch.load(path, weights_only=True))
        self.pretrained_file = path
        self.loads += 1


@pytest.fixture
def pretrained(tmp_path):
    body = nn.Linear(4, 4)
    torch.save(body.state_dict(), tmp_path / 'body.pth')
    return str(tmp_path / 'body.pth'), body


def test_task_state_dict_leaves_frozen_out_and_records_the_file(pretrained):
    path, _ = pretrained
    toy = Toy(path)
    state = toy.state_dict()
    assert set(state) == {'prompt', 'signature'}
    assert state._metadata['']['pretrained'][0] == path
    assert set(Toy(path, save_frozen=True).state_dict()) == {'prompt', 'signature',
                                                            'body.weight', 'body.bias'}


def test_task_checkpoint_is_completed_from_the_pretrained_file(pretrained):
    path, body = pretrained
    trained = Toy(path)
    trained.load_pretrained(path)
    with torch.no_grad():
        trained.prompt.add_(1)
    state = trained.state_dict()
    state._metadata[''] = dict(state._metadata[''], frozen_sha256=trained.frozen_digest())
    fresh = Toy()  # the config names no file: the one the checkpoint records is used
    fresh.load_state_dict(state)
    assert fresh.loads == 1 and torch.equal(fresh.body.weight, body.weight)
    assert torch.equal(fresh.prompt, trained.prompt)
    assert fresh.frozen_digest() == trained.frozen_digest()


def test_other_frozen_weights_missing_files_and_other_backbones_are_refused(pretrained, tmp_path):
    path, _ = pretrained
    trained = Toy(path)
    trained.load_pretrained(path)
    state = trained.state_dict()
    torch.save(nn.Linear(4, 4).state_dict(), tmp_path / 'other.pth')
    state._metadata[''] = dict(frozen_sha256=trained.frozen_digest())
    with pytest.raises(ValueError, match='holds the frozen weights this task was trained on'):
        Toy(str(tmp_path / 'other.pth')).load_state_dict(state)
    state._metadata[''] = dict(pretrained=[str(tmp_path / 'gone.pth')])
    with pytest.raises(FileNotFoundError, match=r'gone\.pth.*model\.backbone\.checkpoint'):
        Toy().load_state_dict(state)
    state._metadata[''] = {}
    with pytest.raises(ValueError, match='names one'):
        Toy().load_state_dict(state)
    with pytest.raises(ValueError, match='width 4 in the checkpoint vs 8 here'):
        Toy(path, width=8).load_state_dict(state)
    with pytest.raises(ValueError, match='another kind of backbone'):
        Toy(path).load_state_dict(dict(state, signature=torch.tensor([4, 1, 0])))
    with pytest.raises(ValueError, match='task file.*body.weight'):
        Toy(path).load_state_dict(dict(state, **{'body.weight': torch.zeros(4, 4)}))
