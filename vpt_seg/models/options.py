"""The arguments vpt-seg's backbones add to the ViT they wrap, named once.

:class:`~vpt_seg.models.PromptedVisionTransformer` takes MMSeg's ``VisionTransformer``
arguments plus these; the benchmark drops them to build the stock model, and multi-task
serving drops the task-only ones to build the backbone tasks share.
"""
__all__ = ['PROMPTED_ARGS']

#: The prompts, LoRA and adapters, the tuning rule, the forward path and where pretrained
#: weights come from: what ``PromptedVisionTransformer`` has and MMSeg's
#: ``VisionTransformer`` has not.
PROMPTED_ARGS = ('num_prompts', 'deep', 'prompt_layers', 'prompt_dropout', 'prompt_init',
                 'lora', 'adapter', 'freeze', 'tune_bias', 'save_frozen', 'fast_path',
                 'prefer_configured', 'prefer_init_cfg')
