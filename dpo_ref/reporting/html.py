"""report.html: one self-contained page per experiment, to read and to send. It opens offline: the plots are inlined
as data URIs, there is no external script, style or font. It holds the results tables (with their intervals), every
plot, the YAML the experiment ran with, the command, the versions of torch / transformers / trl / dporef, the
hardware, the wall time of each stage and of each run, and each run's status.
"""

from __future__ import annotations

import base64
import html
import json
import os
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from ..expdir import ExperimentDir
from ..store import atomic_write_text

STYLE = """body{font-family:system-ui,sans-serif;max-width:1400px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%}
pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:12px}h2{margin-top:1.6em}"""
# Marks on <body> what the page saw once loaded: images that decoded and script errors (a browser test reads them).
CHECK = """<script>window.addEventListener('error',()=>{document.body.dataset.errors=
(+(document.body.dataset.errors||0)+1)});window.addEventListener('load',()=>{document.body.dataset.images=
[...document.images].filter(i=>i.complete&&i.naturalWidth>0).length})</script>"""


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def environment() -> dict[str, str]:
    """Versions and hardware of the machine writing the report."""
    import torch

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {
        **{p: _version(p) for p in ("dporef", "torch", "transformers", "trl", "accelerate", "peft")},
        "python": platform.python_version(),
        "machine": f"{platform.platform()}, {os.cpu_count()} CPU cores",
        "GPUs": ", ".join(gpus) or "none",
    }


def _rows_table(headers: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<p><img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}"></p>'


def write_html(
    exp_dir: ExperimentDir, title: str, results_md: str, rows: list[dict], extra: dict, images: list[Path]
) -> Path:
    """Write <exp_dir>/report.html from what the report just wrote; returns its path."""
    import markdown

    command, spec = exp_dir.command, exp_dir.spec
    stages = extra.get("stage_seconds") or {}
    timing = [[k, f"{v:.1f}"] for k, v in stages.items()]
    runs = [
        [r["run_id"], r["status"] + (f" ({r['damage']})" if r.get("damage") else ""),
         *(f"{r[k]:.1f}" if r.get(k) is not None else "-" for k in ("train_seconds", "eval_seconds"))]
        for r in rows
    ]  # fmt: skip
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        markdown.markdown(results_md, extensions=["tables"]),
        "<h2>Plots</h2>",
        *(_image(p) for p in images if p.is_file()),
        "<h2>Runs: status and wall time (s)</h2>",
        _rows_table(["run", "status", "train", "evaluation"], runs),
        "<h2>Stages: wall time (s) of the command that last ran them</h2>",
        _rows_table(["stage", "seconds"], timing) if timing else "<p>not recorded (the report was rebuilt alone)</p>",
        "<h2>Command</h2>",
        f"<pre>{html.escape(command.read_text()) if command.is_file() else '-'}</pre>",
        "<h2>Versions and hardware</h2>",
        _rows_table(["", ""], [[k, v] for k, v in environment().items()]),
        "<h2>Experiment (the YAML it ran with)</h2>",
        f"<pre>{html.escape(spec.read_text()) if spec.is_file() else '-'}</pre>",
        f"<h2>Other figures</h2><pre>{html.escape(json.dumps(extra, indent=1, default=str))}</pre>",
    ]
    page = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body>{''.join(parts)}{CHECK}</body></html>"
    )
    path = exp_dir.result("report.html")
    atomic_write_text(path, page)
    return path
