"""Score-based diffusion models, networks, training and samplers (knows nothing of PDEs)."""
