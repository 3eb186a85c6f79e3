"""The fault-injection campaign: network namespaces, faults, load, the observer that judges.

Run by ``tests/chaos`` (22 faults in CI, one of each kind) and ``bench/chaos.py`` (>= 1,000 faults).
"""
