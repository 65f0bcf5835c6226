# The image of docker-compose.yml's migrate, worker and producer services.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY . .
RUN pip install -e .

CMD ["pgqueue", "--help"]
