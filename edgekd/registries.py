"""The training side's registries: distillation methods, models and dataset sources (docs/design.md §7).

Torch-free, so a command checks the names it was given (``METHODS.check``) before torch loads. Each is filled from
its entry-point group (edgekd's own entries are listed in ``pyproject.toml``; a plug-in package adds its own): a
method or model module registers itself with its decorator when first looked up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgekd.contracts.registry import Registry

if TYPE_CHECKING:
    from edgekd.data import DatasetSource
    from edgekd.methods.base import Method
    from edgekd.models.registry import ModelEntry

METHODS: Registry[type[Method]] = Registry("method", group="edgekd.methods",
                                           hint="run `edgekd methods` for what each does")
MODELS: Registry[ModelEntry] = Registry("model", fold_case=True, group="edgekd.models",
                                        hint="run `edgekd models` to list the available names")
DATASETS: Registry[DatasetSource] = Registry("dataset", fold_case=True, group="edgekd.datasets", shown_as="syntax",
                                             hint="run `edgekd datasets` for each one's layout")
