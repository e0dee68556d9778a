"""The dataset sources, one module each, registered in ``edgekd.registries.DATASETS`` when imported. A new source is
one module here that calls ``register_dataset``, and its line in ``pyproject.toml``'s ``edgekd.datasets`` entry
points."""
