# syntax=docker/dockerfile:1
# dime-sidecar: `dime start` (milter, policy, socketmap, DMTP relay, metrics) as a non-root container.
# Mount the configuration at /etc/dime/dime.toml and the state at /var/lib/dime. Run it in Postfix's
# network namespace (`docker run --network host`, or the same pod): the relay's LMTP side binds
# loopback only (LMTP has no authentication) and the milter re-injects bundles to Postfix's bundle
# service on 127.0.0.1 (docs/mail-flow.md).

FROM node:20-bookworm-slim AS build
WORKDIR /src
# python3, make and g++ build the native bindings (libsecp256k1, pkcs11js) when no prebuilt binary fits.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 make g++ \
 && rm -rf /var/lib/apt/lists/*
COPY package.json package-lock.json tsconfig.json ./
COPY bin ./bin
COPY src ./src
# npm ci also runs the "prepare" script, which compiles src/ to dist/.
RUN npm ci --no-audit --no-fund && npm prune --omit=dev

FROM node:20-bookworm-slim
# openssl: dime init makes the relay's RSA certificate with it. softhsm2: optional PKCS#11 keystore
# for trials; mount a real HSM's module for production.
RUN apt-get update \
 && apt-get install -y --no-install-recommends openssl ca-certificates softhsm2 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --home-dir /var/lib/dime --shell /usr/sbin/nologin dime \
 && mkdir -p /var/lib/dime /etc/dime \
 && chown dime:dime /var/lib/dime \
 && chmod 0700 /var/lib/dime
WORKDIR /app
COPY --from=build /src/package.json ./
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist/src ./dist/src
COPY --from=build /src/bin ./bin
ENV NODE_ENV=production DIME_CONFIG=/etc/dime/dime.toml
USER dime
VOLUME ["/var/lib/dime"]
# 26 DMTP (implicit TLS), 8899 milter, 9998 policy, 9997 socketmap, 10026 LMTP, 9464 metrics and health.
EXPOSE 26 8899 9998 9997 10026 9464
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
  CMD ["node", "-e", "fetch('http://127.0.0.1:9464/healthz').then(r => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
ENTRYPOINT ["/app/bin/dime"]
CMD ["start"]
