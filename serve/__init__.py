"""Serve an export dir over HTTP without torch: ``create_app`` (``edgekd.serve.app``), ``run_server``
(``edgekd.serve.server``) and ``python -m edgekd.serve EXPORT_DIR``. Kept import-free so that importing a
submodule (the runtimes, for the benchmark) does not pull in FastAPI."""
