"""``ClassListHook``: a test run's class list (``tools/test.py --classes FILE``), applied to
the loaded task, and the class names written beside the outputs.

The hook acts in ``before_test``, after MMEngine's runner has loaded the checkpoint and
before the first image: :func:`~vpt_seg.tuners.class_list.set_task_classes` gives the
task the list (refusing a linear head, a class-specific context or a folded head, naming
why), and ``classes.txt`` (line ``i + 1`` is label ``i``) goes into the run's log folder,
beside its metrics JSON, and into ``--out`` (the label maps), for every task whose head
classifies by text embeddings, with or without ``--classes``: its label maps index
whatever list it was given, so they are never written without it.
"""
import os
import os.path as osp
from typing import Optional, Sequence

from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from ..tuners.class_list import (
    class_names_text,
    has_text_classifier,
    read_class_file,
    set_task_classes,
    task_class_names,
)
from .hooks import _unwrap, _write_text_atomic

__all__ = ['ClassListError', 'ClassListHook']


class ClassListError(ValueError):
    """A class list the task or the test data cannot take (the message says why)."""


@HOOKS.register_module()
class ClassListHook(Hook):
    """Give the test run's task a class list, and write its class names beside the outputs.

    Args:
        classes: A class-name file (one per line, :func:`read_class_file`), or the
            names; None: the task's own list (only ``classes.txt`` is written, for a
            task with a text head).
        source: Where listed ``classes`` come from (a file), for the messages.
        out_dir: Also write ``classes.txt`` here (``tools/test.py --out``: the label maps).
    """

    priority = 'VERY_HIGH'

    def __init__(self, classes=None, source: Optional[str] = None,
                 out_dir: Optional[str] = None):
        self.source = classes if isinstance(classes, str) else source
        self.names = read_class_file(classes) if isinstance(classes, str) else (
            None if classes is None else list(classes))
        self.out_dir = out_dir

    def before_test(self, runner) -> None:
        model = _unwrap(runner.model)
        if self.names is not None:
            try:
                names = set_task_classes(model, self.names, self.source)
            except ValueError as err:
                raise ClassListError(str(err)) from None
            self._match_data(runner, names)
        if not has_text_classifier(model) or not is_main_process():
            return
        text = class_names_text(task_class_names(model))
        for folder in (runner.log_dir, self.out_dir):
            if folder:
                os.makedirs(folder, exist_ok=True)
                _write_text_atomic(osp.join(folder, 'classes.txt'), text)

    def _match_data(self, runner, names: Sequence[str]) -> None:
        """The test data's labels index its own classes: a list of another length is
        refused; one of the same length renames them in the metrics and paintings."""
        dataset = runner.test_dataloader.dataset
        meta = dict(getattr(dataset, 'metainfo', None) or {})
        theirs = meta.get('classes')
        if not theirs:
            return
        if len(theirs) != len(names):
            raise ClassListError(
                f'{self.source or "the class list"}: {len(names)} class names, but the test '
                f'data ({type(dataset).__name__}) has {len(theirs)} classes, and its labels '
                f'index those: give {len(theirs)} names in the data\'s order (other words for '
                'its classes), or label images that have no annotations with tools/serve.py '
                '--classes')
        meta['classes'] = tuple(names)
        runner.test_loop.evaluator.dataset_meta = meta
        runner.visualizer.dataset_meta = meta
