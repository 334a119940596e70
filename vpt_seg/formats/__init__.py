"""File formats and loading rules: pretrained ViT weights (:mod:`.weights`, read,
described, renamed; :mod:`.fitting`, fitted to a backbone), portable task files
(:mod:`.task_file`, its header schema :mod:`.task_schema`, :mod:`.config_data`), where a
task's frozen weights come from (:mod:`.loading`), folding (:mod:`.fold`), how exports are
written (:mod:`.outputs`) and the CSV tables vpt-seg writes (:mod:`.tables`)."""
