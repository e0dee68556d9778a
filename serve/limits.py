"""The HTTP connection limits' defaults, apart from the protocol that enforces them (``edgekd.serve.protocol``): the
CLI reads them to document ``edgekd serve``'s options, and must load on a training-only install without uvicorn."""

HEADER_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 60.0  # a 10 MB upload at 2 Mbit/s takes 40 s
MAX_HEADER_KB = 64
