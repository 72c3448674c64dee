"""Inverse problems, constrained generation and optimisation: where physics meets generative models."""
