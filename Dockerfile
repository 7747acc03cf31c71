# Locality Explorer in a container: the dashboard and the `locality` command, CPU-only.
#
#   docker build -t locality-explorer .      # or `make image`. podman/buildah: add `--format docker`, or their
#                                            # default (OCI) format silently drops the HEALTHCHECK below
#   docker run --rm -p 8501:8501 -v locality-cache:/var/cache/locality-explorer locality-explorer
#   # then open http://localhost:8501
#   docker run --rm locality-explorer locality --help       # any `locality ...` command instead of the app
#
# Volumes (both optional: without them everything works, and is lost with the container):
#   /var/cache/locality-explorer  computed arrays (statistics, fields, samples, bases). Keep it and a restarted
#                                 container is warm at once. A new named volume starts as a copy of the image's
#                                 cache (what PRECOMPUTE put there). To seed it without rebuilding the image:
#                                   docker run --rm -v locality-cache:/var/cache/locality-explorer \
#                                     locality-explorer locality precompute fashion-mnist --all
#   /var/lib/locality-explorer    downloads (MNIST, CIFAR-10), imported data sets, trained models
#
# Build argument PRECOMPUTE: a shell command run at build time, with the library importable as
# `python -m locality_core`, whose results (in the cache folder) ship in the image. For example
#   --build-arg PRECOMPUTE="python -m locality_core precompute fashion-mnist --all"
# Minutes of CPU (README, "The container"). Its layer comes right after the library and before the dashboard's
# files, so editing a page does not recompute it; changing locality_core does.
#
# Users: 1000 (app) by default, or any user id of group 0 (`docker run --user 12345:0`, OpenShift, Kubernetes
# runAsUser): the writable folders (cache, data, HOME) belong to group 0 with group write. The code is root's and
# read-only. tini is PID 1: it passes `docker stop`'s SIGTERM to Streamlit and reaps the warm-up's processes.

# Debian 12 (bookworm), as tested; the digest of the tag moves with every rebuild of the official image. For a
# bit-for-bit base write the current one after the tag: `docker buildx imagetools inspect python:3.11-slim-bookworm`
# gives it (FROM python:3.11-slim-bookworm@sha256:...). No registry was reachable where this was last built.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    HOME=/home/app \
    LOCALITY_CACHE_DIR=/var/cache/locality-explorer \
    LOCALITY_DATA_DIR=/var/lib/locality-explorer

# Fashion-MNIST and the photographs of natural-patches (both offline data sets), tini (the init process) and
# DejaVu (Greek letters in the exported figures). The health check uses Python: no curl.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends dataset-fashion-mnist mate-backgrounds plasma-workspace-wallpapers \
        tini fonts-dejavu-core \
 && apt-get clean && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 1000 --gid 0 --home-dir /home/app --create-home app \
 && install -d -o 1000 -g 0 -m 2770 /var/cache/locality-explorer /var/lib/locality-explorer \
 && chmod 2770 /home/app

# The pinned packages: rebuilt only when requirements.txt changes. torch as the CPU build from PyTorch's index
# (2.13.0+cpu satisfies torch==2.13.0 and is preferred to PyPI's CUDA build).
WORKDIR /opt/locality-explorer
COPY requirements.txt ./
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu -r requirements.txt

# The library with its shipped weights and sample data, then the optional precompute (see above).
COPY locality_core ./locality_core
ARG PRECOMPUTE=""
RUN if [ -n "$PRECOMPUTE" ]; then sh -c "$PRECOMPUTE"; fi \
 && chown -R 1000:0 "$LOCALITY_CACHE_DIR" "$LOCALITY_DATA_DIR" \
 && chmod -R g=u "$LOCALITY_CACHE_DIR" "$LOCALITY_DATA_DIR"

# The dashboard, and the package installed (root-owned, read-only for the user): `locality` on PATH.
COPY pyproject.toml README.md LICENSE app.py serve.py ./
COPY .streamlit ./.streamlit
COPY ui ./ui
COPY pages ./pages
RUN pip install --no-deps . \
 && rm -rf build ./*.egg-info \
 && locality --version

WORKDIR /home/app
USER 1000:0
EXPOSE 8501
# podman/buildah keep this only with `--format docker`.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://localhost:8501/_stcore/health', timeout=4)"]
ENTRYPOINT ["/usr/bin/tini", "--"]
# `locality app` is `streamlit run` of the installed serve.py: app.py plus a "page not found" for deep addresses
CMD ["locality", "app", "--server.port=8501", "--server.address=0.0.0.0"]
