"""Cluster membership, placement and replica repair."""
