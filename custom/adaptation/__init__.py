"""Domain adaptation and contrastive learning on MedSAM features (DANN, SupCon)."""
