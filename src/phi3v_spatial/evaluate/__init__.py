"""Evaluation harness: score any model on spatial benchmarks, reproducibly.

    from phi3v_spatial.evaluate import load_suite, LocalModelAnswerer, evaluate
    samples = load_suite("spatial-mini")
    summary = evaluate(samples, LocalModelAnswerer.from_path("ckpt"), "runs/mini", suite="spatial-mini")

Modules: `parsing` (free-form answers -> structured values), `metrics` (per-sample scores and
aggregates, definitions in its docstring), `loaders` (datasets and public benchmark files),
`suites` (spatial-mini / spatial-full and suite specs), `answerers` (model, endpoint, oracle,
baselines), `runner` (resumable runs), `report` (markdown, JSON, charts).
"""
from .answerers import (
    Answerer,
    ConstantAnswerer,
    EndpointAnswerer,
    LocalModelAnswerer,
    OracleAnswerer,
    RandomAnswerer,
    format_answer,
)
from .loaders import EvalSample, load_dataset, load_multiple_choice, load_pope, load_vsr
from .metrics import score, summarize
from .report import write_report
from .runner import evaluate, read_results, run
from .suites import SPATIAL_SUITES, build_suite, load_suite

__all__ = [
    "Answerer", "ConstantAnswerer", "EndpointAnswerer", "EvalSample", "LocalModelAnswerer", "OracleAnswerer",
    "RandomAnswerer", "SPATIAL_SUITES", "build_suite", "evaluate", "format_answer", "load_dataset",
    "load_multiple_choice", "load_pope", "load_suite", "load_vsr", "read_results", "run", "score", "summarize",
    "write_report",
]
