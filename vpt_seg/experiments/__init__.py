"""Experiment runners behind ``tools/study.py`` (:mod:`.study`) and ``tools/benchmark.py``
(:mod:`.benchmark`); they find configs and tools as installed tools do
(:func:`vpt_seg.config_paths.config_dirs`, :func:`vpt_seg.config_paths.tools_dir`)."""
