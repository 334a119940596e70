"""The method in plain torch (no MMSeg): prompt tokens, LoRA, AdaptFormer's adapters,
what they add to a frozen block, and the one tuning rule."""
from .adapter import Adapter, check_adapter_options
from .lora import LORA_TARGETS, LoRA, check_lora_options
from .prompt import (
                     PromptGroup,
                     VisualPrompt,
                     check_prompt_options,
                     insert_prompts,
                     remove_prompts,
                     replace_prompts,
                     run_prompted_layers,
                     xavier_bound,
)
from .terms import ONE_TASK, TaskBatch
from .tuning import (
                     BIAS_NAMES,
                     bias_parameters,
                     count_parameters,
                     format_count,
                     freeze,
                     frozen_state_keys,
                     is_tuned,
                     parameter_report,
)

__all__ = ['VisualPrompt', 'check_prompt_options', 'PromptGroup', 'run_prompted_layers',
           'insert_prompts', 'replace_prompts', 'remove_prompts', 'xavier_bound',
           'LORA_TARGETS', 'LoRA', 'check_lora_options', 'Adapter', 'check_adapter_options',
           'TaskBatch', 'ONE_TASK',
           'BIAS_NAMES', 'bias_parameters', 'freeze', 'is_tuned', 'frozen_state_keys',
           'count_parameters', 'parameter_report', 'format_count']
