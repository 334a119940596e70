"""Open class lists: a class list given at test time, applied to every head of a task that
classifies by CLIP text embeddings (``TextClsHead``, ``TextSegHead``).

A unified CoOp context (one ``(M, D)`` tensor for all classes) does not depend on the
class list, so a trained task embeds any list of names (``t_i`` is the context around
name ``i``). What cannot take another list is refused here, naming why: a class-specific
context (``csc=True``, one learned tensor per trained class), a folded text head (its
classifier holds the embeddings of its classes, no text tower is left), and a head
without a text classifier (a linear head: its classes are learned weights).

* :func:`read_class_file`: a text file of class names, one per line, checked line by line
  (empty lines, duplicates; :func:`~vpt_seg.tuners.coop.check_class_names`);
* :func:`set_task_classes`: the one way to give a loaded task a class list (the Python
  API; ``tools/test.py --classes`` and ``tools/serve.py --classes`` call it); a name too
  long for the text tower's context is named with its line;
* :func:`text_heads`, :func:`task_class_names`: which heads classify by text, and the
  class names a task's label maps index.

Plain torch and duck typing: a text head is a module with ``set_classes`` and
``class_names`` (the heads, not their text encoders, are what a task holds).
"""
import os.path as osp
from typing import List, Optional, Sequence, Tuple

from torch import nn

from .coop import PromptTooLongError, check_class_names

__all__ = ['CLASS_FILE_MAX_BYTES', 'read_class_file', 'text_heads', 'owns_classes',
           'has_text_classifier', 'task_class_names', 'set_task_classes', 'class_names_text']

#: The largest class-name file read (16 MiB: 100,000 names of 160 characters).
CLASS_FILE_MAX_BYTES = 16 * 2**20


def read_class_file(path: str) -> List[str]:
    """The class names of a text file, one per line (UTF-8; a final newline and ``\\r``
    line ends are fine), cleaned as prompts use them (``_`` -> space, outer spaces
    stripped).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not UTF-8 text, too large, no names, an empty line, or a name twice,
            naming the file and the line(s).
    """
    if not osp.isfile(path):
        raise FileNotFoundError(f'class-name file not found: {path!r} (a text file, one '
                                'class name per line)')
    if osp.getsize(path) > CLASS_FILE_MAX_BYTES:
        raise ValueError(f'{path}: {osp.getsize(path)} bytes, more than a class-name file '
                         f'may hold ({CLASS_FILE_MAX_BYTES}); one class name per line')
    with open(path, 'rb') as f:
        data = f.read()
    try:
        text = data.decode('utf-8-sig')
    except UnicodeDecodeError as err:
        raise ValueError(f'{path}: not UTF-8 text (byte {err.start}); a class-name file is '
                         'text, one class name per line') from None
    lines = text.split('\n')
    if lines and lines[-1] == '':  # the final newline ends the last line
        lines.pop()
    lines = [line[:-1] if line.endswith('\r') else line for line in lines]
    if not lines:
        raise ValueError(f'{path}: no class names (a text file, one class name per line)')
    return check_class_names(lines, path, lines=True)


def text_heads(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """``(name, module)`` of the outermost modules of ``model`` that classify by text
    embeddings (``set_classes`` and ``class_names``; a head, not the text encoder in
    it), in ``named_modules`` order (main head before auxiliary heads)."""
    found: List[Tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if any(not outer or name.startswith(outer + '.') for outer, _ in found):
            continue
        if callable(getattr(module, 'set_classes', None)) and hasattr(module, 'class_names'):
            found.append((name, module))
    return found


def owns_classes(head: nn.Module) -> bool:
    """Whether a text head embeds its classes itself (not an auxiliary head that uses the
    decode head's text encoder, ``text_encoder='shared'``: its ``text_owner()`` is
    another head): the heads a class list is given to, and the ones folded."""
    owner = getattr(head, 'text_owner', None)
    if not callable(owner):
        return True
    try:
        return owner() is head
    except ValueError:  # 'shared' and not linked: not an owner
        return False


def has_text_classifier(model: nn.Module) -> bool:
    """Whether ``model`` has a head that classifies by text embeddings."""
    return bool(text_heads(model))


def task_class_names(model: nn.Module) -> Optional[List[str]]:
    """The class names a task's outputs index: its text heads' (the first one's),
    else ``model.dataset_meta['classes']``, else None."""
    heads = text_heads(model)
    if heads:
        return list(heads[0][1].class_names)
    classes = (getattr(model, 'dataset_meta', None) or {}).get('classes')
    return list(classes) if classes else None


def _head_kinds(model: nn.Module) -> str:
    kinds = [f'{name} ({type(getattr(model, name)).__name__})'
             for name in ('head', 'decode_head', 'auxiliary_head')
             if isinstance(getattr(model, name, None), nn.Module)]
    return ', '.join(kinds) or type(model).__name__


def set_task_classes(model: nn.Module, names: Sequence[str],
                     source: Optional[str] = None) -> List[str]:
    """Make a loaded task classify (segment) ``names`` from now on: every text head of
    ``model`` embeds the new list (a unified context is shared by all classes), and
    ``model.dataset_meta`` becomes ``{'classes': names}`` (label maps index them).

    Args:
        model: A loaded task (``VPTClassifier``, a segmentor, or a TTA wrapper of one).
        names: The class names, in the order the outputs will index them
            (:func:`read_class_file` reads a file of them).
        source: Where the names come from (a file), for the messages: a name too long
            for the text tower's context is named with its line.

    Returns:
        The names as the prompts use them (``_`` -> space, outer spaces stripped).

    Raises:
        ValueError: ``model`` has no head that classifies by text embeddings (a linear
            head: its classes are learned weights); a class-specific context
            (``csc=True``) or a folded head given another list; bad names (empty,
            duplicates, a prompt longer than the context), naming them. Nothing is
            changed then.
    """
    heads = [(n, h) for n, h in text_heads(model) if owns_classes(h)]
    if not heads:
        raise ValueError(
            f'{source + ": " if source else ""}this task\'s head, {_head_kinds(model)}, has '
            'no text classifier: its classes are learned weights, one per class it was '
            'trained on, so it cannot take another class list. A class list at test time '
            'needs a head that classifies by CLIP text embeddings (TextClsHead, TextSegHead) '
            'with a unified context (csc=False)')
    clean = check_class_names(names, source or 'class list')
    before = [(head, list(head.class_names)) for _, head in heads]
    try:
        for _, head in heads:
            head.set_classes(clean)
    except ValueError as err:
        for head, old in before:  # a list one head refuses changes none of them
            if list(head.class_names) != old:
                head.set_classes(old)
        where = f'{source}: ' if source else ''
        if isinstance(err, PromptTooLongError) and source and err.name in clean:
            where = f'{source}: line {clean.index(err.name) + 1}: '
        raise ValueError(f'{where}{err}') from None
    for target in (model, getattr(model, 'module', None)):
        if isinstance(target, nn.Module):
            target.dataset_meta = dict(classes=tuple(clean))
    return clean


def class_names_text(names: Sequence[str]) -> str:
    """``classes.txt``: one name per line, line ``i + 1`` is label ``i``."""
    return ''.join(f'{name}\n' for name in names)
