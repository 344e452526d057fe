# flashgate: one image for the ceremony (init), the backend and the Bridge Nodes.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY flashgate ./flashgate
# The versions the suite is tested with (constraints.txt), not whatever is newest today.
RUN pip install --no-cache-dir --prefix=/install -c constraints.txt .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /nonexistent flashgate
COPY --from=build /install /usr/local
COPY deploy/fleet-init.py /usr/local/share/flashgate/fleet-init.py
# Mount points owned by the service user: a fresh named volume takes the ownership of the
# image directory it is first mounted on, so every volume compose.yaml mounts is writable
# by the (non-root) service user, whichever service mounts it first.
RUN mkdir -p /ceremony /public /fleet /node /nodes/node-1 /nodes/node-2 /nodes/node-3 \
        /home-fg/fleet /nats-auth \
    && chown flashgate /ceremony /public /fleet /node /nodes/node-1 /nodes/node-2 \
        /nodes/node-3 /home-fg/fleet /nats-auth
USER flashgate
# No core dumps from a process that holds plaintext (the bridge also sets this itself).
ENTRYPOINT ["flashgate"]
CMD ["--help"]
