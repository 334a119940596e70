"""File formats and loading rules: pretrained ViT weights (:mod:`.weights`, read,
described, renamed; :mod:`.fitting`, fitted to a backbone), portable task files
(:mod:`.task_file`, :mod:`.config_data`), where a task's frozen weights come from
(:mod:`.loading`), folding (:mod:`.fold`) and how exports are written (:mod:`.outputs`)."""
