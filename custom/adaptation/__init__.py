"""Domain adaptation: AdaBN for the CNN (`batchnorm`); DANN and contrastive learning on MedSAM features."""

from custom.adaptation.batchnorm import adapt_batchnorm, unlabelled_images

__all__ = ["adapt_batchnorm", "unlabelled_images"]
