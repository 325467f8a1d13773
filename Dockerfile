# featsieve daemon image. Runs as the unprivileged user featsieve (uid 10001)
# and works with a read-only root filesystem: the only writable paths it needs
# are the state volume (/var/lib/featsieve) and /tmp (mount a tmpfs there).
#
#   docker build -t featsieve:local .
#   docker run --read-only --tmpfs /tmp -v featsieve-state:/var/lib/featsieve \
#     -e FEATSIEVE_BOOTSTRAP=kafka:9092 -p 9400:9400 featsieve:local

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# CPU-only torch: the gates are small, and the default index's wheel would pull
# gigabytes of CUDA libraries.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN python -m venv /opt/featsieve
ENV PATH=/opt/featsieve/bin:$PATH
RUN pip install --index-url "$TORCH_INDEX_URL" "torch>=2.2"
WORKDIR /src
COPY client ./client
RUN pip install ./client
COPY pyproject.toml README.md ./
COPY models ./models
COPY connectors ./connectors
COPY daemon ./daemon
RUN pip install . && featsieve --help >/dev/null

FROM python:3.11-slim
ARG UID=10001
RUN groupadd --system --gid "$UID" featsieve \
 && useradd --system --uid "$UID" --gid "$UID" --home-dir /var/lib/featsieve --shell /usr/sbin/nologin featsieve \
 && mkdir -p /var/lib/featsieve \
 && chown featsieve:featsieve /var/lib/featsieve
COPY --from=build /opt/featsieve /opt/featsieve
# No .pyc writes, caches under /tmp: nothing outside the two mounts is written.
ENV PATH=/opt/featsieve/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/var/lib/featsieve \
    TMPDIR=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    MPLCONFIGDIR=/tmp/matplotlib \
    FEATSIEVE_STATE_DIR=/var/lib/featsieve \
    FEATSIEVE_METRICS_ADDR=0.0.0.0 \
    FEATSIEVE_METRICS_PORT=9400
WORKDIR /var/lib/featsieve
VOLUME ["/var/lib/featsieve"]
USER 10001:10001
EXPOSE 9400
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('FEATSIEVE_METRICS_PORT', '9400'), timeout=4)"]
ENTRYPOINT ["featsieve"]
CMD ["run"]
