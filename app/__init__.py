"""HTTP service that serves exported encoders: embeddings, similarity and anomaly banks."""
