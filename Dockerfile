# Writ: Node 24 runs the TypeScript sources directly (type stripping); there is no build step.
FROM node:24-slim
WORKDIR /app
ENV NODE_ENV=production
COPY package.json package-lock.json ./
# npm ci runs bin/patch-dependencies.js (postinstall), so it comes first.
COPY bin/patch-dependencies.js ./bin/
# The `node` devDependency (a pinned Node 24 for machines without it) is not needed here.
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force
COPY src ./src
COPY migrations ./migrations
COPY policy ./policy
COPY bin ./bin
USER node
EXPOSE 4000 9464
ENTRYPOINT ["node", "--no-memory-reducer", "src/main.ts"]
CMD ["serve"]
