"""Batch vs Group vs Layer Normalization on MNIST: a DVC pipeline."""
