"""Tokenizer models: residual quantizers (RQ-KMeans, RQ-VAE) and their building blocks."""
