# The fixed-text row on the study's tiny CLIP: TextSegHead with the hand template "a photo
# of a {}." (CoOp's; the tiny CLIP's captions use its words), nothing learned on the text
# side (its embeddings are computed once and cached); only the decoder trains.
_base_ = ['./coop.py']
model = dict(decode_head=dict(text_encoder=dict(n_ctx=0, ctx_init=None,
                                                templates='a photo of a {}.')))
