"""Export machinery: the policy as plain data (:mod:`.spec`), the self-contained runtimes copied into exported
files (:mod:`.tv_runtime`: torch + torchvision only; :mod:`.kornia_runtime`: torch + kornia only), the
albumentations document builder (:mod:`.albumentations`) and the fidelity measurements (:mod:`.fidelity`).

The public entry points live in :mod:`search_spaces.export`.
"""
