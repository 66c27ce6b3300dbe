"""The SLFER network, its losses, training and evaluation."""
