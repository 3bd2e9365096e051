"""Data: dataset metadata and readers, transforms and loaders."""
