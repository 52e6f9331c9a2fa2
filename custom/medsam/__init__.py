"""MedSAM / LiteMedSAM encoders, classification heads on their embeddings and the embedding cache."""
