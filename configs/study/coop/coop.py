# CoOp: a unified context of 4 learned vectors before the class name (CoOp's 16 would put the
# class name past the positions the tiny CLIP's captions reach; 4 is "a photo of a"'s length).
_base_ = ['./_base_/tiny_clip.py']
model = dict(head=dict(text_encoder=dict(n_ctx=4, ctx_init='a photo of a', csc=False,
                                         class_position='end')))
# CoOp's batch of 32 (configs/trainers/CoOp/*.yaml). Its 16-shot schedule is 200 epochs: 1000
# steps of 32 on 10 classes; the study's 200 steps (20 epochs at batch 16) left the context
# under-trained (training top-1 at the zero-shot level), so the step is 5x AdamW's 2e-3 to
# travel about as far in a fifth of the steps (docs/study.md#coop-in-miniature).
train_dataloader = dict(batch_size=32)
optim_wrapper = dict(optimizer=dict(lr=1e-2))
