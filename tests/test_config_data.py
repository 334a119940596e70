"""vpt_seg.formats.config_data: a task file's config as JSON data, round-tripped and checked so
that reading it imports, runs and reads nothing."""
import json
import sys

import pytest
from mmengine.config import Config

from vpt_seg.formats.config_data import (
    ConfigDataError,
    check_config_data,
    config_as_text,
    config_from_json,
    config_to_json,
)

PLAIN = dict(model=dict(type='EncoderDecoder', data_preprocessor=dict(size=(32, 32)),
                        backbone=dict(type='PromptedVisionTransformer', out_indices=(0, 1),
                                      drop=0.1, deep=True, init_cfg=None)),
             default_scope='mmseg', pipeline=[dict(type='Resize', scale=(64, 32))],
             names=['a', 'b'], custom_imports=dict(imports=['vpt_seg']))


def test_round_trip_keeps_tuples_as_tuples():
    text = config_to_json(Config(PLAIN))
    assert '"__tuple__":[32,32]' in text
    back = config_from_json(text)
    assert back.to_dict() == PLAIN
    assert isinstance(back.model.data_preprocessor.size, tuple)
    assert isinstance(back.names, list)


def test_config_as_text_is_literal_assignments_that_build_the_same_data():
    text = config_as_text(Config(PLAIN))
    assert text.splitlines()[0] == f"model = {PLAIN['model']!r}"
    assert Config.fromstring(text, '.py').to_dict() == PLAIN


@pytest.mark.parametrize('value, message', [
    (dict(fn=print), "config.x.fn: a builtin_function_or_method (<built-in function print>) "
                     'is not plain data'),
    (dict(v=float('nan')), 'config.x.v: nan cannot be stored (not a finite number)'),
    ([1, {2: 3}], 'config.x[1]: key 2 is not a string'),
    (dict(__tuple__=[1]), "config.x: the key '__tuple__' is reserved")])
def test_to_json_refuses_what_is_not_plain_data_by_key(value, message):
    with pytest.raises(ConfigDataError) as err:
        config_to_json(Config(dict(x=value)))
    assert str(err.value).startswith(message)


@pytest.mark.parametrize('text, message', [
    ('{"a": ', 'not valid JSON'),
    ('{"a": NaN}', 'not valid JSON (NaN is not a finite number)'),
    ('[1, 2]', 'the config is a list, not a mapping'),
    ('{"_base_": ["x.py"]}', "top-level name '_base_' is not allowed"),
    ('{"not-a-name": 1}', "top-level name 'not-a-name' is not allowed"),
    ('{"class": 1}', "top-level name 'class' is not allowed"),
    ('{"a": "{{$HOME}}"}', '"{{" is not allowed'),
    ('{"custom_imports": {"imports": ["surely_not_imported_mod"]}}',
     "custom_imports names ['surely_not_imported_mod'], not imported here"),
    ('{"custom_imports": {"imports": [1]}}', 'custom_imports.imports must be a list'),
    ('{"default_scope": "nowhere"}', "default_scope 'nowhere' is not a registry scope"),
    ('{"m": {"_scope_": "nowhere"}}', "m._scope_: 'nowhere' is not a registry scope"),
    ('{"m": {"type": "os.system"}}', "m.type: 'os.system' is not the name of a registered"),
    ('{"m": [{"type": "subprocess"}]}', "m[0].type: 'subprocess' is not the name of a"),
    ('{"m": {"type": "NoSuchModule"}}', "m.type: 'NoSuchModule' is not the name of a"),
    ('{"m": {"type": "nowhere.EncoderDecoder"}}', "m.type: 'nowhere.EncoderDecoder' is not"),
    ('{"m": {"constructor": "builtins.eval"}}', "m.constructor: 'builtins.eval' is not"),
    ('{"m": {"type": 3}}', 'm.type: 3 is not a registered name')])
def test_from_json_refuses_what_could_import_run_or_read(text, message):
    with pytest.raises(ConfigDataError) as err:
        config_from_json(text)
    assert message in str(err.value)
    assert 'surely_not_imported_mod' not in sys.modules


@pytest.mark.parametrize('data', [
    dict(m=dict(type='EncoderDecoder')),
    dict(m=dict(type='mmseg.EncoderDecoder')),  # scope.name
    dict(m=dict(type='PromptedVisionTransformer', _scope_='mmseg'), default_scope='mmseg'),
    dict(optim_wrapper=dict(constructor='TunedOptimWrapperConstructor')),
    dict(m=dict(type=None))])
def test_registered_names_and_scopes_pass(data):
    assert check_config_data(data) is data
    assert config_from_json(json.dumps(data)).to_dict() == data


def test_config_as_text_checks_before_rendering():
    with pytest.raises(ConfigDataError, match="'os.system' is not the name"):
        config_as_text(Config(dict(m=dict(type='os.system'))))


def test_a_registered_name_that_is_also_a_module_is_refused(monkeypatch):
    """MMEngine would import a module of that name: a task file may not name one."""
    from mmseg.registry import MODELS
    monkeypatch.setitem(MODELS._module_dict, 'json', object)
    with pytest.raises(ConfigDataError, match="m.type: 'json' is not the name of a registered"):
        check_config_data(dict(m=dict(type='json')))


def test_literal_config_text_reads_back_the_same_and_runs_nothing(tmp_path):
    """What vpt-seg writes as a config (a folded OUT.py) is literals: a key or string
    that closes its quotes stays data; Config.fromfile reads back the same dict."""
    from vpt_seg.formats.config_data import literal_config_text
    marker = tmp_path / 'M'
    key = f"x': __import__('os').system('touch {marker}'), 'y"
    data = dict(model=dict(type='X', nested={key: "'\"\n)", 't': (1, 2.5, None, True)}),
                notes=[{key: 1e-6}])
    path = tmp_path / 'written.py'
    path.write_text(literal_config_text(Config(data), header=f'from {key}\nsecond'))
    assert Config.fromfile(str(path)).to_dict() == data
    assert not marker.exists()
    with pytest.raises(ConfigDataError, match='config.model.f: a builtin_function_or_method'):
        literal_config_text(dict(model=dict(f=print)))
    with pytest.raises(ConfigDataError, match=r"config.model.x: inf cannot be stored"):
        literal_config_text(dict(model=dict(x=float('inf'))))
