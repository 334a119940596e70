"""A config as data: JSON that no reader executes, for task files.

MMEngine's configs are Python: ``Config.fromstring(text, '.py')`` runs the text, and
building a config runs more than its own text. Every ``type`` is looked up by name, and
a name that is not registered falls back to ``get_object_from_string``, which imports
any module and calls any function (``dict(type='subprocess.run', args=[...])``);
``custom_imports`` imports modules and ``_base_`` reads other files. A task file
comes from someone else, so its config is stored and read as data:

* :func:`config_to_json` writes ``cfg.to_dict()`` as JSON, with tuples tagged
  (``{"__tuple__": [...]}``) so they come back as tuples: MMCV's ``Resize`` needs them.
* :func:`config_from_json` parses it with ``json.loads`` and checks it before it
  becomes a :class:`~mmengine.config.Config`: top-level names are identifiers, there is
  no ``_base_``; ``custom_imports`` names only modules that are imported already (so
  nothing is imported); every ``type`` (and ``runner_type``, ``constructor``) is a name
  registered in MMEngine's registries, not a module or dotted path; every ``_scope_``
  and ``default_scope`` is a registry scope that exists; no string holds ``{{``
  (MMEngine substitutes ``{{$ENV}}`` in text). Nothing is imported, run or
  read while checking.
* :func:`literal_config_text` writes any config as plain assignments of Python literals
  (``repr`` of dicts, lists, tuples, strings, numbers, checked to read back the same):
  every config vpt-seg writes (the folded ``OUT.py``); :func:`config_as_text` does so for
  checked data, what MMEngine's ``MMSegInferencer(model=None, weights=TASK)`` runs
  through ``Config.fromstring``.

A task file's header is read more strictly than this module checks: into the schema of
:mod:`vpt_seg.formats.task_schema`, which admits only the module types and arguments it
types.
"""
import ast
import importlib.util
import json
import keyword
import math
import sys
from typing import Any, Optional, Set

from mmengine.config import Config

__all__ = ['ConfigDataError', 'config_to_json', 'config_from_json', 'check_config_data',
           'config_as_text', 'literal_config_text']

_TUPLE = '__tuple__'
#: Keys whose string values MMEngine resolves through its registries.
_TYPE_KEYS = ('type', 'runner_type', 'constructor')
#: Top-level names MMEngine's Config refuses or treats as code.
_RESERVED = ('filename', 'text', 'pretty_text', 'env_variables', '_base_', '_deprecation_')


class ConfigDataError(ValueError):
    """A stored config that is not plain data, or asks for imports or unknown modules."""


def _encode(obj: Any, where: str) -> Any:
    if isinstance(obj, dict):
        if _TUPLE in obj:
            raise ConfigDataError(f'{where}: the key {_TUPLE!r} is reserved')
        out = {}
        for key, value in obj.items():
            if not isinstance(key, str):
                raise ConfigDataError(f'{where}: key {key!r} is not a string')
            out[key] = _encode(value, f'{where}.{key}')
        return out
    if isinstance(obj, tuple):
        return {_TUPLE: [_encode(v, f'{where}[{i}]') for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f'{where}[{i}]') for i, v in enumerate(obj)]
    if isinstance(obj, float) and not math.isfinite(obj):
        raise ConfigDataError(f'{where}: {obj} cannot be stored (not a finite number)')
    if obj is None or isinstance(obj, (str, bool, int, float)):
        return obj
    raise ConfigDataError(f'{where}: a {type(obj).__name__} ({obj!r:.60}) is not plain '
                          'data (dicts, lists, tuples, strings, numbers, booleans, None)')


def config_to_json(cfg: Config) -> str:
    """``cfg.to_dict()`` as JSON, tuples tagged so they come back as tuples.

    Raises:
        ConfigDataError: a value is not plain data (a function, a class, NaN); the
            message names its key.
    """
    data = cfg.to_dict() if hasattr(cfg, 'to_dict') else dict(cfg)
    return json.dumps(_encode(data, 'config'), separators=(',', ':'))


def _decode(obj: Any) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {_TUPLE} and isinstance(obj[_TUPLE], list):
            return tuple(_decode(v) for v in obj[_TUPLE])
        return {k: _decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v) for v in obj]
    return obj


def _refuse_constant(name: str):
    raise ValueError(f'{name} is not a finite number')


def _registered_names() -> Set[str]:
    """Every name in MMEngine's registries and their children (MMSeg's, vpt-seg's)."""
    import mmengine.registry as registries
    from mmengine.registry import Registry
    names: Set[str] = set()
    todo = [r for r in vars(registries).values() if isinstance(r, Registry)]
    seen = set()
    while todo:
        reg = todo.pop()
        if id(reg) in seen:
            continue
        seen.add(id(reg))
        reg.import_from_location()  # the registry's own modules, as Registry.get does
        names.update(reg._module_dict)
        todo.extend(reg._children.values())
    return names


def _scopes() -> Set[str]:
    from mmengine.registry import MODELS
    root = MODELS._get_root_registry()
    return {root.scope, *root._children}


def _walk(obj: Any, where: str):
    """``(key path, key, value)`` of every dict entry, depth first."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            path = f'{where}.{key}' if where else key
            yield path, key, value
            yield from _walk(value, path)
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _walk(value, f'{where}[{i}]')


def _strings(obj: Any):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield key
            yield from _strings(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _strings(value)


def check_config_data(data: Any) -> dict:
    """Check a config dict read from an untrusted file before anything builds it.

    Returns:
        ``data``, unchanged.

    Raises:
        ConfigDataError: naming the first key that breaks a rule (see the module
            docstring) and why.
    """
    if not isinstance(data, dict):
        raise ConfigDataError(f'the config is a {type(data).__name__}, not a mapping')
    for key in data:
        if not key.isidentifier() or keyword.iskeyword(key) or key in _RESERVED:
            raise ConfigDataError(f'top-level name {key!r} is not allowed in a stored config')
    for text in _strings(data):
        if '{{' in text:  # MMEngine substitutes {{$ENV}} and {{fileDirname}} in text
            raise ConfigDataError(f'{text!r:.80}: "{{{{" is not allowed in a stored config')
    imports = data.get('custom_imports')
    if imports is not None:
        mods = imports.get('imports') if isinstance(imports, dict) else None
        mods = [mods] if isinstance(mods, str) else mods
        if not isinstance(mods, list) or not all(isinstance(m, str) for m in mods):
            raise ConfigDataError('custom_imports.imports must be a list of module names')
        missing = [m for m in mods if m not in sys.modules]
        if missing:
            raise ConfigDataError(
                f'custom_imports names {missing}, not imported here; reading a task file '
                'imports nothing: import it yourself first (import ' + missing[0] + '), '
                'or name the config file')
    names, scopes = None, _scopes()
    if data.get('default_scope') is not None and data['default_scope'] not in scopes:
        raise ConfigDataError(f'default_scope {data["default_scope"]!r} is not a registry '
                              f'scope here ({sorted(scopes)})')
    for path, key, value in _walk(data, ''):
        if key == '_scope_' and value not in scopes:
            raise ConfigDataError(f'{path}: {value!r} is not a registry scope here '
                                  f'({sorted(scopes)})')
        if key not in _TYPE_KEYS or not isinstance(value, str):
            if key in _TYPE_KEYS and value is not None and not isinstance(value, str):
                raise ConfigDataError(f'{path}: {value!r} is not a registered name')
            continue
        scope, _, name = value.rpartition('.')
        if names is None:
            names = _registered_names()
        if (scope and scope not in scopes) or '.' in scope or name not in names or \
                importlib.util.find_spec(name) is not None:
            raise ConfigDataError(
                f'{path}: {value!r} is not the name of a registered module (a task file\'s '
                'config may only name registered modules; nothing is imported or called '
                'by name)')
    return data


def config_from_json(text: str) -> Config:
    """The :class:`~mmengine.config.Config` of :func:`config_to_json`'s text, checked by
    :func:`check_config_data`; nothing is executed.

    Raises:
        ConfigDataError: not JSON, or not plain, allowed data.
    """
    try:
        data = json.loads(text, parse_constant=_refuse_constant)
    except ValueError as err:  # json.JSONDecodeError is a ValueError
        raise ConfigDataError(f'not valid JSON ({err})') from None
    return Config(check_config_data(_decode(data)))


def literal_config_text(cfg, header: str = '') -> str:
    """A config as Python text of literal assignments only (``name = {...}``): what
    every config vpt-seg writes is made of (the folded ``OUT.py``, a folded checkpoint's
    ``meta['cfg']``, a task file's config handed to MMEngine).

    Each value is the ``repr`` of dicts, lists, tuples, strings, numbers, booleans and
    None, which escapes every key and string, and is checked to read back as the same
    literal (:func:`ast.literal_eval`); top-level names are identifiers. Running the text
    (``Config.fromfile``, ``Config.fromstring``) only builds the data.

    Args:
        cfg: A :class:`~mmengine.config.Config` or a dict.
        header: ``#`` comment lines put first (each line gets its ``#``).

    Raises:
        ConfigDataError: a value that is not plain data, or a top-level name that is not
            an identifier (naming the key).
    """
    data = cfg.to_dict() if hasattr(cfg, 'to_dict') else dict(cfg)
    _encode(data, 'config')  # plain data only, finite numbers
    lines = [f'# {line}'.rstrip() for line in header.splitlines()]
    for key, value in data.items():
        if not key.isidentifier() or keyword.iskeyword(key) or key in _RESERVED:
            raise ConfigDataError(f'top-level name {key!r} cannot be written in a config')
        text = repr(value)
        if ast.literal_eval(text) != value:  # a subclass with its own repr
            raise ConfigDataError(f'config.{key}: does not write as a literal')
        lines.append(f'{key} = {text}')
    return '\n'.join(lines) + '\n'


def config_as_text(cfg: Config) -> Optional[str]:
    """Checked config data as Python text of literal assignments
    (:func:`literal_config_text`), for MMEngine's ``Config.fromstring``."""
    data = cfg.to_dict() if hasattr(cfg, 'to_dict') else dict(cfg)
    check_config_data(data)
    return literal_config_text(data)
