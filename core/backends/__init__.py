"""Attention backends: one interface, a torch reference and a Triton GPU implementation."""
