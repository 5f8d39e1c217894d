"""Failure drills: a crash drill (kills, broker restart, vendor faults) and a bad-input drill."""
