"""Serve an export dir over HTTP without torch: ``create_app`` (``edgekd.serve.app``), ``run_server``
(``edgekd.serve.server``) and ``python -m edgekd.serve EXPORT_DIR`` (``edgekd.serve.command``). Kept import-free so
that the CLI can read the serve command's options without pulling in FastAPI."""
