# syntax=docker/dockerfile:1
# One image for every dermbatch service (workers, beat, Flower, migrations), in two targets:
#   cpu (default): the package as published, with tensorflow-cpu.
#   gpu: the same with TensorFlow's CUDA build, for hosts with an NVIDIA driver and the
#        NVIDIA Container Toolkit.
# Build: docker build -t dermbatch:local .   or   docker build --target gpu -t dermbatch:local-gpu .

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 dermbatch \
 && useradd --system --uid 10001 --gid dermbatch --home-dir /home/dermbatch --create-home dermbatch

# .dockerignore limits the build context to the package sources and pyproject.toml.
WORKDIR /opt/dermbatch
COPY . .
RUN pip install ".[monitor,train]"

# Named volumes mounted here start with this ownership, so the non-root user can write models.
RUN mkdir -p /data/models /data/training /data/flower \
 && chown -R dermbatch:dermbatch /data

USER dermbatch
WORKDIR /home/dermbatch
CMD ["dermbatch", "--help"]


FROM cpu AS gpu

USER root
# tensorflow-cpu and tensorflow install the same Python package, so one replaces the other,
# at the same version. The "and-cuda" extra brings the CUDA and cuDNN libraries as wheels.
RUN version="$(pip show tensorflow-cpu | sed -n 's/^Version: //p')" \
 && test -n "$version" \
 && pip uninstall --yes tensorflow-cpu \
 && pip install "tensorflow[and-cuda]==${version}"
USER dermbatch
