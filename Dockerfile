# The txwatch image: the dataflow (python -m bytewax.run dataflow), the producer, the review web
# app and the command line, all from one `pip install .`. docker-compose.yml builds it.
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The build compiles the per-event modules with mypyc (setup.py), which needs a C compiler;
# the compiler is removed again in the same layer. Built in /src and installed into
# site-packages, then /src is removed: a source tree in the working directory would be
# imported before the installed, compiled package.
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY txwatch ./txwatch
COPY dataflow ./dataflow
COPY operators ./operators
COPY sinks ./sinks
COPY producer ./producer
COPY migrations ./migrations
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && pip install . \
    && apt-get purge -y --auto-remove gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/* /src \
    && cd / && python -c "from operators.native import summary; assert summary() == 'compiled'" \
    && useradd --system --uid 10001 --no-create-home --home-dir /app txwatch \
    && mkdir /app /recovery \
    && chown txwatch /recovery
WORKDIR /app

# /recovery is the Bytewax recovery directory; compose mounts a volume shared by all workers.
VOLUME ["/recovery"]
USER txwatch
# 9100: txwatch /metrics, /healthz, /readyz; 3030: bytewax dataflow API; 2101: cluster;
# 8080: review web app.
EXPOSE 9100 3030 2101 8080
CMD ["txwatch", "--help"]
