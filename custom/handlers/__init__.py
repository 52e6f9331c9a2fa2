from .history import TrainingHistory
from .report import ClassificationReport, OperatingPoint
from .resume import KeyMetricState, ResumeFromLatest
