"""Observation: socket snapshots, the kernel timeline, wait helpers."""
