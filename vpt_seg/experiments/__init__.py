"""Experiment runners behind ``tools/study.py`` (:mod:`.study`) and ``tools/benchmark.py``
(:mod:`.benchmark`); they find configs and tools as installed tools do
(:func:`vpt_seg.runner.config_dirs`, :func:`vpt_seg.runner.tools_dir`)."""
