# flashgate: one image for the ceremony (init), the backend and the Bridge Nodes.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY flashgate ./flashgate
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /nonexistent flashgate
COPY --from=build /install /usr/local
# Mount points owned by the service user, so fresh named volumes are writable.
RUN mkdir -p /fleet /home-fg/fleet && chown flashgate /fleet /home-fg/fleet
USER flashgate
# No core dumps from a process that holds plaintext (the bridge also sets this itself).
ENTRYPOINT ["flashgate"]
CMD ["--help"]
