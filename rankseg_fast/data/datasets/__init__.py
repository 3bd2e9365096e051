"""Datasets: readers of the official layouts and their metadata."""
