"""Training: Ignite handlers for resumable, provenance-checked runs and training curves."""
from .history import TrainingHistory
from .resume import (
    KeyMetricState,
    ResumeFromLatest,
    latest_checkpoint,
    prepare_checkpoint_dir,
)
