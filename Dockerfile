# glowlab on a PyTorch CUDA runtime image.
#   docker build -t glowlab .
#   docker run --gpus all --rm -v "$PWD/logs:/glowlab/logs" glowlab                     # Fashion-MNIST, GPU
#   docker run --gpus all --rm -v "$PWD/logs:/glowlab/logs" -v /data:/data glowlab \
#       experiment=glow_cifar10 data.root=/data/cifar10                                  # any overrides
ARG BASE=pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime
FROM ${BASE}

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /glowlab

# Fashion-MNIST from the distribution, where it has the package (Debian/Ubuntu universe).
RUN apt-get update \
    && (apt-get install -y --no-install-recommends dataset-fashion-mnist || true) \
    && rm -rf /var/lib/apt/lists/*

# The image's torch satisfies the package's range, so pip keeps it. A wheel, not an editable
# install: the configs ship inside the package (glowlab/conf), so nothing else is copied.
COPY pyproject.toml README.md /tmp/glowlab-src/
COPY glowlab /tmp/glowlab-src/glowlab
RUN pip wheel /tmp/glowlab-src --no-deps -w /tmp/dist \
    && pip install "$(ls /tmp/dist/glowlab-*.whl)[sweeps]" \
    && rm -rf /tmp/glowlab-src /tmp/dist

ENTRYPOINT ["glowlab-train", "experiment=fmnist_glow_gpu"]
