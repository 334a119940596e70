"""Build hooks pyproject.toml cannot express (everything else is in pyproject.toml).

Like OpenMMLab packages, a built vpt-seg carries its configs and tools under
``vpt_seg/.mim/`` so they work from an installed package (``vpt-seg train
demo/setr_vpt_tiny_ade20k.py``; ``_base_ = ['vpt_seg::...']``).

Every install, editable ones included, also puts ``vpt_seg/mmcv_lite.pth`` into
site-packages as ``vpt_seg_mmcv_lite.pth``: at start-up it adds an import hook that
stands in for mmcv's compiled ops on mmcv-lite, so ``from mmseg.apis import ...`` works
before ``import vpt_seg`` (see vpt_seg/mmcv_lite.py). A wheel carries it at its root; an
editable wheel gets it in the folder that becomes the wheel (setuptools writes the
non-editable files, data and scripts, there; that folder is ``install``'s
``install_lib``).
"""
import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
PTH_SOURCE = os.path.join(HERE, 'vpt_seg', 'mmcv_lite.pth')
PTH = 'vpt_seg_mmcv_lite.pth'


class BuildPy(build_py):
    def run(self):
        super().run()
        if self.editable_mode:  # an editable install finds configs/ and tools/ in the repo
            wheel_root = self.get_finalized_command('install').install_lib
            self.copy_file(PTH_SOURCE, os.path.join(wheel_root, PTH))
            return
        mim = os.path.join(self.build_lib, 'vpt_seg', '.mim')
        for name in ('configs', 'tools'):
            shutil.copytree(os.path.join(HERE, name), os.path.join(mim, name),
                            dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))
        self.copy_file(PTH_SOURCE, os.path.join(self.build_lib, PTH))

    def get_outputs(self, include_bytecode=True):
        outputs = super().get_outputs(include_bytecode)
        return outputs if self.editable_mode else outputs + [os.path.join(self.build_lib, PTH)]


setup(cmdclass={'build_py': BuildPy})
