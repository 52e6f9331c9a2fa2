"""Integrations with outside services (experiment tracking)."""
from .mlflow_artifacts import MLflowArtifacts
