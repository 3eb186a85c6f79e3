"""The fault-injection campaign: network namespaces, faults, load, the observer that judges.

Run by ``tests/chaos`` (50 faults in CI) and ``bench/chaos.py`` (>= 1,000 faults).
"""
