# The image of docker-compose.yml's migrate, worker and producer services.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, read from pyproject.toml alone: this layer is rebuilt when the
# dependencies change, not on every edit of the source. The metrics extra serves
# `pgqueue worker --metrics-port`.
COPY pyproject.toml ./
RUN python -c "import subprocess, sys, tomllib; \
p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
deps = p['dependencies'] + p['optional-dependencies']['metrics']; \
subprocess.run([sys.executable, '-m', 'pip', 'install', *deps], check=True)"

# Then the source, and pgqueue itself (its dependencies are already there).
COPY . .
RUN pip install '.[metrics]' && pip check

# The services run as an unprivileged user; the source stays owned by root, read-only
# to them.
RUN useradd --create-home --uid 10001 --user-group pgqueue
USER pgqueue

CMD ["pgqueue", "--help"]
