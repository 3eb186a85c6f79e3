"""Rigs: real clusters started for the tests and the benchmarks alike.

A rig runs real parts (nats-server nodes, the scheduler and host agents as processes, network
namespaces) and reports what happened; it asserts nothing. The tests under ``tests/`` and the
benchmarks under ``bench/`` both build on it, and neither is imported by the other's rigs:
``rigs`` imports only the services and ``common``, never ``tests`` (an import-linter contract).
It is not part of the installed package.
"""
