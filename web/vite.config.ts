// Vite builds web/ into web/dist, which the edge serves (medmesh/edge/webapp.py).
// `@gen/...` is the TypeScript generated from proto/ into gen/ts by `python -m medmesh.codegen`;
// the generated files import @bufbuild/protobuf, resolved here from web/node_modules because
// gen/ has no node_modules of its own.
import { fileURLToPath } from "node:url";
import react from "@vitejs/plugin-react";
import { defineConfig } from "vitest/config";

const here = (path: string) => fileURLToPath(new URL(path, import.meta.url));

export default defineConfig({
  plugins: [react()],
  resolve: {
    alias: [{ find: /^@gen\//, replacement: here("../gen/ts/") }],
    // Resolve these from web/ even when imported by a file under gen/ts.
    dedupe: ["@bufbuild/protobuf"],
  },
  server: {
    fs: { allow: [here(".."), here("../gen/ts")] },
    // `npm run dev`: the API (gRPC-Web) is the edge of a running `medmesh up`.
    proxy: process.env.MEDMESH_EDGE_URL
      ? { "/medmesh.": { target: process.env.MEDMESH_EDGE_URL, changeOrigin: true } }
      : undefined,
  },
  build: {
    outDir: "dist",
    emptyOutDir: true,
    // No inline scripts or eval: the edge's Content-Security-Policy forbids them.
    modulePreload: { polyfill: false },
    assetsInlineLimit: 0,
    sourcemap: false,
  },
  test: {
    environment: "jsdom",
    globals: true,
    include: ["src/**/*.test.{ts,tsx}"],
    restoreMocks: true,
  },
});
