"""The benchmark suite of issue 7: `make bench`, results in docs/performance.md.

Not part of the package: it drives real `consentauthz serve` processes, a no-op gRPC
server built like consentauthz's (the floor), its own redis-server and PostgreSQL
databases, and the engine in-process. See benchmarks/run.py for the order of a run.
"""
