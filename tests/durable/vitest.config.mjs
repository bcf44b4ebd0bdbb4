// vitest's own CLI skips test files under node_modules: this folder holds the one test file
// that calls the suite's runConformanceTests().
import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    include: ["conformance.test.mjs"],
    // The suite's tests use vitest's 5 s default; some are CPU-bound in the test process
    // (100,000 expect() calls), so a loaded CI machine gets more room.
    testTimeout: Number(process.env.DS_TEST_TIMEOUT_MS || 15000),
  },
})
