"""Evaluation: metrics, reports, plots, saliency and benchmarks; the handlers the configs wire in."""
from .html_report import HTMLReport
from .report import ClassificationReport
from .saliency_handler import SaliencyHandler
