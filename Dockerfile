# edgekd serve: the device side only (onnxruntime, OpenVINO, FastAPI), no torch.
#   docker build -t edgekd-serve .                                  (this machine's platform)
#   docker buildx build --platform linux/amd64,linux/arm64 -t REGISTRY/edgekd-serve --push .
#   docker run --rm -p 8000:8000 -v "$PWD/exports/r2kd:/models:ro" -e EDGEKD_API_KEY=secret edgekd-serve
# Wheels are resolved per platform. Extra server flags go after the image name (`... edgekd-serve --max-batch 16`);
# change the port with `-e EDGEKD_PORT=9000 -p 9000:9000`, which the HEALTHCHECK reads too.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY edgekd ./edgekd
COPY export ./export
COPY serve ./serve
# a regular (non-editable) install: the runtime stage gets the venv only, not the sources. The project's
# own pyproject bounds the versions (DL3013 wants `==` pins, which would tie the image to one platform's wheels).
# hadolint ignore=DL3013
RUN pip install ".[device]" \
    && python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)"

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    EDGEKD_PORT=8000
RUN useradd --create-home --uid 10001 --user-group --shell /usr/sbin/nologin edgekd
COPY --from=builder /opt/venv /opt/venv
USER 10001:10001
WORKDIR /home/edgekd
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ['EDGEKD_PORT'] + '/v2/health/ready', timeout=4)"]
ENTRYPOINT ["python", "-m", "edgekd.serve", "/models", "--host", "0.0.0.0"]
