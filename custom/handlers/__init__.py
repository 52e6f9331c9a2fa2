from .history import TrainingHistory
from .html_report import HTMLReport
from .mlflow_artifacts import MLflowArtifacts
from .report import ClassificationReport
from .resume import KeyMetricState, ResumeFromLatest, latest_checkpoint, prepare_checkpoint_dir
from .saliency import SaliencyHandler
