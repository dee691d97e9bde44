"""Evaluation: nearest-neighbour search, retrieval and clustering metrics, and scoring a trained model."""
