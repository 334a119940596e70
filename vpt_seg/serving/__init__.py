"""Many tasks on one frozen ViT (:mod:`.multitask`) and what ``tools/serve.py`` needs
beyond it (:mod:`.serve`)."""
