# metarec's HTTP service on CPU. The model folder is mounted, never copied into the image:
#
#   docker build -t metarec .
#   docker run --rm -p 8000:8000 -v "$PWD/my-model:/model:ro" -e METAREC_API_KEY=change-me metarec
#
# /model: a folder written by ColdStartRecommender.save() (self-contained), or a `metarec train` run folder.
# Arguments after the image name go to `metarec serve` (e.g. --workers 2); the health check assumes port 8000.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# torch first, pinned, from the CPU index: the default index would pull the multi-GB CUDA build.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

# the package, the web stack ([serve]) and the approximate top-k index ([ann], for --top-k approximate),
# at the versions the tests ran with; no data, runs or tests
COPY pyproject.toml README.md LICENSE constraints.txt ./
COPY src ./src
RUN pip install -c constraints.txt ".[serve,ann]" && rm -rf build src/*.egg-info

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin metarec
USER metarec

EXPOSE 8000
VOLUME ["/model"]
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"]

ENTRYPOINT ["metarec", "serve", "/model", "--host", "0.0.0.0"]
