"""Per-task losses and task-weighting strategies."""
