# fliswarm on the manager computer: the actor in the foreground, as a non-root user, with its
# configuration and logs as volumes. fliswarm reaches the nodes' Docker engines over TCP and
# tron reaches it on its port, so run it with the host's network:
#
#   docker build -t fliswarm .
#   docker run -d --name fliswarm --network host --restart unless-stopped \
#       -v /etc/fliswarm:/config:ro -v /var/log/fliswarm:/logs fliswarm
#
# /config/fliswarm.yaml is the configuration; /logs must be writable by UID (10001).
# Without network access, put fliswarm's wheel and those of its dependencies in a folder of the
# build context and name it:  docker build --build-arg WHEELHOUSE=wheelhouse -t fliswarm .
#   pip wheel --no-deps -w wheelhouse .  &&  pip wheel -w wheelhouse <the dependencies>
FROM python:3.11-slim

# A folder of wheels in the build context (offline install), or empty to install from the index.
ARG WHEELHOUSE=
ARG UID=10001

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    FLISWARM_PID_FILE=/home/fliswarm/fliswarm.pid

COPY . /src
RUN if [ -n "$WHEELHOUSE" ]; then \
        python3 -m pip install --no-index --find-links "/src/$WHEELHOUSE" fliswarm; \
    else \
        python3 -m pip install /src; \
    fi \
    && rm -rf /src \
    && echo "fliswarm:x:$UID:$UID:fliswarm:/home/fliswarm:/bin/sh" >> /etc/passwd \
    && echo "fliswarm:x:$UID:" >> /etc/group \
    && mkdir -p /config /logs /home/fliswarm \
    && chown "$UID:$UID" /logs /home/fliswarm

USER fliswarm
WORKDIR /home/fliswarm
VOLUME ["/config", "/logs"]

# Healthy when the actor answers "ping" with ":" on its TCP port (from the configuration).
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD python3 -c 'import socket; from fliswarm.config import load_config; \
a = load_config("/config/fliswarm.yaml")["actor"]; \
host = "127.0.0.1" if a["host"] in ("", "0.0.0.0") else a["host"]; \
f = socket.create_connection((host, a["port"]), 5).makefile("rw"); \
f.write("1 ping\n"); f.flush(); \
raise SystemExit(0 if any(l.split()[1:3] == ["1", ":"] for l in f) else 1)'

CMD ["fliswarm", "-c", "/config/fliswarm.yaml", "start", "--debug", "--log", "/logs/fliswarm.log"]
