"""The CNN core: networks, the trained-model contract, provenance, export and inferers."""
