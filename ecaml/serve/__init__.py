"""Serving: what the app and the CLI read and bring in, built on the core and never imported by it.

Retrieval and its embeddings cache, 2-D projections (PCA, UMAP, layouts) and their cache, thumbnails,
the training film's frames, inputs from outside, training jobs and their logs, imports of vectors and weights.
"""
