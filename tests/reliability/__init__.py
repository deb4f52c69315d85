"""The reliability tier: crash, concurrency, fault, bad-input and security suites (issue 10)."""
