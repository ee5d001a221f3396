# syntax=docker/dockerfile:1
# The vitrine node image: Ray on Python 3.11 with the locked dependencies baked in, so no node and
# no pod installs anything at start, and every replica loads models with the Keras that saved them.
# One TensorFlow per node type (NODE): cpu = tensorflow-cpu on rayproject/ray, gpu =
# tensorflow[and-cuda] on rayproject/ray's -gpu image. `make image` builds both with the tag every
# manifest names (`make image-tag`; tests/cluster/test_images.py keeps them in step):
#   docker build --build-arg NODE=cpu -t REGISTRY/vitrine:$(make -s image-tag)-cpu .
#   docker build --build-arg NODE=gpu -t REGISTRY/vitrine:$(make -s image-tag)-gpu .
# RAY_VERSION is the ray pin of requirements/lock-*.txt; the image refuses to build if they differ.
ARG RAY_VERSION=2.60.0
ARG NODE=cpu

FROM rayproject/ray:${RAY_VERSION}-py311 AS cpu-base
FROM rayproject/ray:${RAY_VERSION}-py311-gpu AS gpu-base

FROM ${NODE}-base
ARG RAY_VERSION
ARG NODE
USER root
# hnswlib has no wheels on PyPI: pip compiles it (the image's Python has its headers).
RUN apt-get update && apt-get install -y --no-install-recommends g++ && rm -rf /var/lib/apt/lists/*
USER ray
WORKDIR /home/ray/vitrine
# The lock alone first, so a code change reuses the dependency layer.
COPY --chown=ray:users requirements/lock-${NODE}.txt requirements/
RUN pip install --no-cache-dir --require-hashes -r requirements/lock-${NODE}.txt
COPY --chown=ray:users . .
# Editable, at the path ray_cluster.yaml mounts the checkout on: there the mounted code is the code.
RUN pip install --no-cache-dir --no-deps -e . && \
    python -c "import ray, tensorflow, keras, hnswlib, pyarrow, boto3, jobs.cli; \
assert ray.__version__ == '${RAY_VERSION}', ray.__version__; print('vitrine image:', ray.__version__, tensorflow.__version__, keras.__version__)"
