# syntax=docker/dockerfile:1
# One image for every Node service of the stack (broker, tickets, agent, idp, admin tools) and a small
# one-shot image that registers the workloads with SPIRE. See docker-compose.yml and docs/deploy.md.
#
#   docker build -t taskpass:dev .                              (target app, the default)
#   docker build --target spire-setup -t taskpass-spire-setup:dev .

# --- dependencies: a full Debian image has python3/make/g++ should a native addon (better-sqlite3)
# need compiling; the runtime image below does not.
FROM node:20-bookworm AS deps
WORKDIR /app
COPY package.json package-lock.json ./
# Every workspace's manifest (test/compose.test.ts checks this list against package.json).
COPY spiffe/package.json spiffe/
COPY contract/package.json contract/
COPY broker/package.json broker/
COPY verifier/package.json verifier/
COPY agent-plugin/package.json agent-plugin/
COPY proxy/package.json proxy/
COPY examples/package.json examples/
# Dev dependencies included: tsx runs the TypeScript sources directly (no build step, as everywhere
# in this repository).
RUN npm ci --no-audit --no-fund

# --- the application image
FROM node:20-bookworm-slim AS app
WORKDIR /app
COPY --from=deps /app/ ./
COPY . .
# Owned by node so the named volume mounted here (the demo user's token) is writable by it.
# Both are mount points of named volumes, which take their owner from the image.
RUN mkdir -p /run/taskpass/idp /run/taskpass/kek && chown node:node /run/taskpass/idp /run/taskpass/kek
USER node
# Workspaces resolve each other's sources through the `taskpass:source` export condition.
ENTRYPOINT ["node", "--conditions=taskpass:source", "--import", "tsx"]
CMD ["broker/src/cli.ts", "serve", "--config", "/app/deploy/broker/broker.yaml"]

# --- spire-setup: the official SPIRE images are built FROM scratch (no shell), so bootstrap and
# registration run here, with the spire-server binary taken from the official image. The path
# /opt/spire/bin/spire-server is the one SPIRE v1.13.3's own Dockerfile installs it at.
FROM node:20-bookworm-slim AS spire-setup
COPY --from=ghcr.io/spiffe/spire-server:1.13.3 /opt/spire/bin/spire-server /usr/local/bin/spire-server
# docker-compose.yml also bind-mounts it, so edits need no rebuild.
COPY deploy/spire/register.sh /opt/taskpass/register.sh
ENTRYPOINT []
CMD ["sh", "/opt/taskpass/register.sh"]
