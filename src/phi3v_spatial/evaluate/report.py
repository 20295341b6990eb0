"""The report folder of a run: summary.json, report.md and PNG charts (matplotlib, Agg backend)."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import ConfigError
from . import metrics

HEADLINE = {
    "yesno": "accuracy", "choice": "accuracy", "clock": "accuracy", "count": "accuracy",
    "quantity": "within 25%", "boxes": "acc@IoU0.5", "points": "point in mask", "poses": "success <5cm",
}
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.md"
TASK_CHART = "accuracy_by_task.png"
RELATION_CHART = "accuracy_by_relation.png"
ERROR_CHART = "relative_error_hist.png"


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _num(v, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def markdown(summary: dict, title: str) -> str:
    tasks = summary["tasks"]
    kinds = summary["task_types"]
    lines = [f"# {title}", "",
             f"{summary['num_samples']} samples, answered {_pct(summary['answer_rate'])}%, "
             f"score {_pct(summary['score'])}% (mean over tasks {_pct(summary['task_mean_score'])}%).", "",
             "Scores in percent; the score is each task's headline metric. Unanswered (unparsable) answers count as wrong.", ""]
    lines += _table(["task", "n", "answered", "score", "metric", "chance"],
                    [[t, str(a["n"]), _pct(a["answer_rate"]), _pct(a["score"]), HEADLINE.get(kinds[t], "score"),
                      _pct(a.get("chance"))] for t, a in tasks.items()])

    def section(kind: str, heading: str, header: list[str], row):
        rows = [[t] + row(a) for t, a in tasks.items() if kinds[t] == kind]
        if rows:
            lines.extend(["", f"## {heading}", ""] + _table(["task"] + header, rows))

    section("quantity", "Quantities (metres after unit conversion)",
            ["within [0.5x, 2x]", "within 25%", "MRA", "median rel. error"],
            lambda a: [_pct(a["within_2x"]), _pct(a["within_25"]), _pct(a["mra"]), _num(a["median_rel_err"])])
    section("yesno", "Yes / no (POPE metrics, yes = positive)",
            ["accuracy", "precision", "recall", "F1", "yes-ratio", "true yes-ratio"],
            lambda a: [_pct(a["accuracy"]), _pct(a["pope_precision"]), _pct(a["pope_recall"]), _pct(a["pope_f1"]),
                       _pct(a["pope_yes_ratio"]), _pct(a["truth_yes_ratio"])])
    section("boxes", "Grounding: boxes", ["acc@IoU0.5", "mean IoU"],
            lambda a: [_pct(a["acc_iou50"]), _num(a["mean_iou"])])
    section("points", "Grounding: points", ["point in mask (sample)", "point hit rate"],
            lambda a: [_pct(a["point_in_mask"]), _pct(a["point_hit_rate"])])
    section("poses", "Robot actions", ["JSON valid", "success <5cm", "mean pos. error (m)", "median pos. error (m)", "grasp acc."],
            lambda a: [_pct(a["json_valid"]), _pct(a["success_5cm"]), _num(a["mean_pos_err_m"]),
                       _num(a["median_pos_err_m"]), _pct(a["grasp_accuracy"])])
    if summary["pope_subsets"]:
        lines += ["", "## POPE subsets (by negative sampling)", ""]
        lines += _table(["subset", "n", "accuracy", "precision", "recall", "F1", "yes-ratio"],
                        [[k, str(a["n"]), _pct(a["accuracy"]), _pct(a["pope_precision"]), _pct(a["pope_recall"]),
                          _pct(a["pope_f1"]), _pct(a["pope_yes_ratio"])] for k, a in summary["pope_subsets"].items()])
    if summary["relations"]:
        lines += ["", "## Relations (yes/no and multiple choice)", ""]
        lines += _table(["relation", "n", "accuracy"],
                        [[k, str(a["n"]), _pct(a["score"])] for k, a in summary["relations"].items()])
    return "\n".join(lines) + "\n"


def draw_charts(summary: dict, records: list[dict], out_dir: Path) -> list[str]:
    """Accuracy per task (and per relation) bar charts, relative-error histogram; returns file names."""
    try:
        import matplotlib
    except ImportError as exc:
        raise ConfigError("report charts need matplotlib: pip install 'phi3v-spatial[eval]' (or pass --no-charts)") from exc

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []

    def bars(items: dict, fname: str, title: str):
        names = list(items)
        fig, ax = plt.subplots(figsize=(7, 0.35 * len(names) + 1.2))
        ax.barh(names, [100 * (items[n]["score"] or 0) for n in names], color="#4C72B0")
        for k, n in enumerate(names):
            if items[n].get("chance") is not None:
                ax.plot([100 * items[n]["chance"]] * 2, [k - 0.4, k + 0.4], color="#C44E52", lw=2)
        ax.set_xlim(0, 100)
        ax.invert_yaxis()
        ax.set_xlabel("score (%)  |  red: chance")
        ax.set_title(title)
        fig.tight_layout()
        fig.savefig(out_dir / fname, dpi=100)
        plt.close(fig)
        written.append(fname)

    if summary["tasks"]:
        bars(summary["tasks"], TASK_CHART, "Score per task")
    if summary["relations"]:
        bars(summary["relations"], RELATION_CHART, "Accuracy per relation")
    errs = [r["rel_err"] for r in records if r.get("type") == "quantity" and r.get("rel_err") is not None]
    if errs:
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.hist([min(e, 2.0) for e in errs], bins=40, range=(0, 2.0), color="#4C72B0")
        ax.axvline(0.25, color="#55A868", ls="--", label="25%")
        ax.axvline(1.0, color="#C44E52", ls="--", label="2x over")
        ax.set_xlabel("relative error |pred - truth| / truth (clipped at 2)")
        ax.set_ylabel("answers")
        ax.set_title(f"Quantity relative error ({len(errs)} answered)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / ERROR_CHART, dpi=100)
        plt.close(fig)
        written.append(ERROR_CHART)
    return written


def write_report(records: list[dict], out_dir: str | Path, title: str = "evaluation", charts: bool = True,
                 run_info: dict | None = None) -> dict:
    """Summarize `records` into OUT/summary.json, OUT/report.md and the PNG charts; returns the summary
    (with `run_info`, e.g. suite and answerer, under "run")."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = metrics.summarize(records)
    summary["title"] = title
    summary["run"] = dict(run_info or {})
    summary["task_types"] = {t: next(r["type"] for r in records if r["task"] == t) for t in summary["tasks"]}
    summary["charts"] = draw_charts(summary, records, out_dir) if charts else []
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    (out_dir / REPORT_FILE).write_text(markdown(summary, title))
    return summary

