# The linear row on the study's tiny CLIP: the same frozen image tower and per-pixel CLIP
# embeddings as the text rows, setr_tiny.py's SETR-PUP head with the text head's decoder
# widths and a learned 1x1 classifier in place of the class names' text embeddings.
_base_ = ['./_base_/tiny_clip_seg.py']
model = dict(decode_head={{_base_.linear_decode_head}})
