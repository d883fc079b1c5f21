"""The deterministic simulation of a Count cluster (``python -m count.sim``)."""
