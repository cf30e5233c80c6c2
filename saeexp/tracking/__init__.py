"""MLflow: the store (experiments, tags a report reads), and the run's Lightning logger."""
