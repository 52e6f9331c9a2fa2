"""Lung segmentation (UNet) and the lung crop / mask preprocessing transform."""
