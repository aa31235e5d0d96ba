"""Encoder, heads and the SimCLR model built from a ModelConfig."""
