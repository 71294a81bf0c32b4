"""Topology: hosts as plain data (specs) and the backends that realise them."""
