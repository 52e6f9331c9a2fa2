"""Evaluation: metrics, reports, plots, saliency and benchmarks; the Ignite metrics and handlers the configs wire in."""
from .html_report import HTMLReport
from .ignite_metrics import ROCAUC, OperatingPointMetrics
from .report import ClassificationReport
from .saliency_handler import SaliencyHandler
