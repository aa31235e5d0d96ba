"""The project's own tools: the demo, the study and their shared stages, the
speed and memory benchmarks (run from a checkout; not installed)."""
