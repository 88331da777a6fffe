# bncheck service image: docker build -t bncheck . && docker run -p 8000:8000 bncheck
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NUMBA_CACHE_DIR=/var/cache/bncheck/numba

WORKDIR /app

# Dependencies first, pinned by constraints.txt: this layer is rebuilt only when they change.
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['server']))" \
        > /tmp/requirements.txt \
 && pip install -c constraints.txt -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

COPY README.md ./
COPY src ./src
RUN pip install --no-deps . && rm -rf build src/*.egg-info

# The compiled comparison (src/bncheck/numerics/fused.py), compiled once here into Numba's cache,
# which the unprivileged user below may read and, on another CPU, rebuild.
RUN python -c "from bncheck.numerics import fused; assert fused.available(), 'the comparison kernel did not load'" \
 && chown -R 10001:10001 /var/cache/bncheck

# An unprivileged, numeric user: no shell, no home.
RUN groupadd --system --gid 10001 bncheck \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin bncheck
USER 10001:10001

ENV BNCHECK_HOST=0.0.0.0 \
    BNCHECK_PORT=8000
EXPOSE 8000

# Python, not curl: the slim image has no curl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('BNCHECK_PORT', '8000'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/livez', timeout=4).status == 200 else 1)"]

CMD ["bncheck", "serve"]
