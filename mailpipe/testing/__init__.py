"""Test helpers shipped with mailpipe: real in-process servers for tests and benchmarks."""
