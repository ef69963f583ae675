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
# and the .deb files of ping and ssh (iputils-ping, openssh-client and the dependencies the
# base lacks) in wheelhouse/debs, e.g. downloaded once where there is network access with
#   docker run --rm -v "$PWD/wheelhouse/debs:/var/cache/apt/archives" python:3.11-slim sh -c \
#     'apt-get update && apt-get install -y --download-only --no-install-recommends \
#      iputils-ping openssh-client'
# BASE chooses another base image (a copy of python:3.11-slim in a local registry, say).
ARG BASE=python:3.11-slim
FROM $BASE

# A folder of wheels in the build context (offline install), or empty to install from the index.
ARG WHEELHOUSE=
ARG UID=10001

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

COPY . /src

# ping and ssh, which `status` and `reboot` run. python:3.11-slim (Debian) has neither:
# apt-get installs iputils-ping (whose install script makes ping setuid root, as the actor
# pings as a user) and openssh-client, from the wheelhouse's debs/ when there is one (offline),
# else from the Debian mirror. A base that has both already is left as it is.
RUN if command -v ping >/dev/null && command -v ssh >/dev/null; then \
        echo "ping and ssh: from the base image"; \
    elif [ -n "$WHEELHOUSE" ] && [ -d "/src/$WHEELHOUSE/debs" ]; then \
        dpkg -i "/src/$WHEELHOUSE"/debs/*.deb; \
    else \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            iputils-ping openssh-client \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && ping -V && ssh -V

RUN if [ -n "$WHEELHOUSE" ]; then \
        python3 -m pip install --no-index --find-links "/src/$WHEELHOUSE" sdss-fliswarm; \
    else \
        python3 -m pip install /src; \
    fi \
    && rm -rf /src \
    && echo "fliswarm:x:$UID:$UID:fliswarm:/home/fliswarm:/bin/sh" >> /etc/passwd \
    && echo "fliswarm:x:$UID:" >> /etc/group \
    && mkdir -p /config /logs /home/fliswarm \
    && chown "$UID:$UID" /logs /home/fliswarm

# fliswarm's default pid file, /var/tmp/actor.pid: its directory, writable by any user.
RUN mkdir -p /var/tmp && chmod 1777 /var/tmp

USER fliswarm
WORKDIR /home/fliswarm
VOLUME ["/config", "/logs"]

# Healthy when the actor answers "ping" with ":" on its TCP port (from the configuration); the
# answer is printed (docker inspect: .State.Health.Log). The check connects from 127.0.0.2
# (fliswarm.compat.HEALTH_CHECK_ADDRESS), a client the actor does not greet: for any other new
# connection CLU writes four lines to every connected client (tron too), every 30 s.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD python3 -c 'import socket; from fliswarm.config import load_config; \
a = load_config("/config/fliswarm.yaml")["actor"]; \
host = "127.0.0.1" if a["host"] in ("", "0.0.0.0", "::") else a["host"]; \
s = socket.create_connection((host, a["port"]), 5, source_address=("127.0.0.2", 0)); \
f = s.makefile("rw"); f.write("1 ping\n"); f.flush(); \
w = next((w for w in map(str.split, f) if w[1:3] == ["1", ":"] and w[0] != "0"), []); \
print(*w); raise SystemExit(0 if w else 1)'

# In the foreground (exit status 1 if the actor cannot start or dies, so that a restart policy
# acts); the pid file is the default, /var/tmp/actor.pid, as everywhere (`docker exec fliswarm
# fliswarm status`); the log, with any start-up error, on the /logs volume.
CMD ["fliswarm", "-c", "/config/fliswarm.yaml", "start", "--debug", "--log", "/logs/fliswarm.log"]
