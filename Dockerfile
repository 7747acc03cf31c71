# Locality Explorer: the Streamlit dashboard, CPU-only.
#   docker build -t locality-explorer .
#   docker run -p 8501:8501 locality-explorer        # then open http://localhost:8501
# Mount a volume on /home/app/.local/share/locality-explorer to keep imported data sets and trained models.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app

# Fashion-MNIST and the photographs of natural-patches from Debian: both data sets work offline. Nothing else
# is needed from apt (the health check uses Python), so no curl and no software-properties-common.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends dataset-fashion-mnist mate-backgrounds plasma-workspace-wallpapers \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 1000 app

# Requirements first: this layer is rebuilt only when they change. torch comes as the CPU build from PyTorch's
# own index (2.13.0+cpu satisfies torch==2.13.0); threadpoolctl keeps per-click matrix products on one thread.
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu -r requirements.txt \
        threadpoolctl==3.8.0

COPY --chown=1000:1000 locality_core ./locality_core
COPY --chown=1000:1000 ui ./ui
COPY --chown=1000:1000 pages ./pages
COPY --chown=1000:1000 assets ./assets
COPY --chown=1000:1000 .streamlit ./.streamlit
COPY --chown=1000:1000 app.py serve.py ./
USER 1000:1000

# Every page's default view on Fashion-MNIST and natural-patches (statistics, samples with trajectories, Jacobian
# bases and the tr J curve, UNet fields on a coarse grid of pixels, the default experiment) computed at build
# time: nothing a speaker opens waits. The server's own warm-up then finds them cached and does the other sets.
RUN python -m locality_core precompute fashion-mnist --all \
 && python -m locality_core precompute natural-patches --all

EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://localhost:8501/_stcore/health', timeout=4)"]
# serve.py is app.py plus the "page not found" for deep addresses such as /a/b/c (ui/deep_paths.py).
ENTRYPOINT ["streamlit", "run", "serve.py", "--server.port=8501", "--server.address=0.0.0.0"]
