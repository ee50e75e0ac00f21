"""Task builders: chat samples (datasets.Dataset) for behaviour and item alignment, and their mixture."""
