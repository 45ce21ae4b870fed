"""bulkdrop's benchmark suite: `python -m bench` (see bench/README.md).

Every figure is measured against the simulator on loopback, with the daemon and the
simulator each in a process of their own, and is set beside a baseline taken in the same
run, because absolute times on shared machines drift.
"""
