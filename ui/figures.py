"""Plotly figures for the pages: pure functions of their inputs, tested without a browser."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from bcclassify import CLASS_NAMES
from bcclassify.evaluation.metrics import row_normalize
from bcclassify.presentation.tables import class_label

# Calm clinical palette, one colour per class in canonical order (colour-blind friendly).
CLASS_COLOURS = dict(
    zip(
        CLASS_NAMES,
        ("#4c72b0", "#dd8452", "#c44e52", "#8172b3", "#55a868", "#937860", "#64b5cd", "#8c8c8c"),
    )
)

_LAYOUT = dict(template="plotly_white", margin=dict(l=10, r=10, t=40, b=10))


def probability_figure(probabilities, class_names=CLASS_NAMES, threshold: float | None = None):
    """Horizontal bars of all class probabilities, the top class highlighted."""
    probs = np.asarray(probabilities, dtype=float)
    top = int(np.argmax(probs))
    labels = [class_label(n) for n in class_names]
    colours = ["#2a6f97" if i == top else "#a9c6d9" for i in range(len(probs))]
    fig = go.Figure(
        go.Bar(
            x=probs,
            y=labels,
            orientation="h",
            marker_color=colours,
            text=[f"{100 * p:.1f}%" for p in probs],
            textposition="outside",
            hovertemplate="%{y}: %{x:.3f}<extra></extra>",
        )
    )
    if threshold is not None:
        fig.add_vline(
            x=threshold,
            line_dash="dot",
            line_color="#b5651d",
            annotation_text="low-confidence threshold",
            annotation_position="top",
        )
    fig.update_layout(
        **_LAYOUT,
        height=320,
        title="Class probabilities",
        xaxis=dict(range=[0, 1.12], tickformat=".0%"),
        yaxis=dict(autorange="reversed"),
    )
    return fig


def count_figure(rows: list[dict], title: str):
    """Bars of a differential count (rows as in ``report.differential_count``)."""
    fig = go.Figure(
        go.Bar(
            x=[class_label(r["class"]) for r in rows],
            y=[r["count"] for r in rows],
            marker_color=[CLASS_COLOURS.get(r["class"], "#888") for r in rows],
            text=[f"{r['percent']:.1f}%" for r in rows],
            textposition="outside",
        )
    )
    fig.update_layout(**_LAYOUT, height=300, title=title, yaxis_title="cells")
    return fig


def learning_curve_figure(curves: dict[str, pd.DataFrame]):
    """Loss and accuracy per epoch, training solid and validation dashed, one colour per run."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Loss", "Accuracy"))
    palette = ["#2a6f97", "#c44e52", "#55a868", "#8172b3", "#dd8452", "#937860", "#64b5cd"]
    for i, (label, history) in enumerate(curves.items()):
        colour = palette[i % len(palette)]
        for col, metric in ((1, "loss"), (2, "accuracy")):
            for prefix, dash, part in (("", "solid", "train"), ("val_", "dash", "val")):
                column = prefix + metric
                if column not in history or history[column].isna().all():
                    continue
                fig.add_trace(
                    go.Scatter(
                        x=history["epoch"],
                        y=history[column],
                        mode="lines+markers",
                        name=f"{label} ({part})",
                        line=dict(color=colour, dash=dash),
                        legendgroup=label,
                        showlegend=col == 1,
                    ),
                    row=1,
                    col=col,
                )
    fig.update_xaxes(title_text="epoch")
    fig.update_layout(**_LAYOUT, height=380, legend=dict(orientation="h", y=-0.25))
    return fig


def adaptation_curve_figure(rows: list[dict], lab: str):
    """Adapt's accuracy on a lab's held-back cells against the cells a class it fitted on."""
    ks = [r["per_class"] for r in rows]
    fig = go.Figure()
    for key, label, dash in (
        ("accuracy_mean", "mean over draws", "solid"),
        ("accuracy_worst", "worst draw", "dash"),
        ("accuracy_before_mean", "before adapting", "dot"),
    ):
        fig.add_trace(
            go.Scatter(
                x=ks,
                y=[100 * r[key] for r in rows],
                mode="lines+markers",
                name=label,
                line=dict(color="#2a6f97" if key != "accuracy_before_mean" else "#888", dash=dash),
            )
        )
    fig.update_layout(
        **_LAYOUT,
        height=320,
        title=f"Accuracy on {lab}'s cells not fitted on",
        xaxis=dict(title="cells a class fitted on", type="log", tickvals=ks),
        yaxis=dict(title="accuracy (%)", range=[0, 100]),
        legend=dict(orientation="h", y=-0.3),
    )
    return fig


def confusion_figure(
    matrix,
    class_names=CLASS_NAMES,
    normalized: bool = False,
    rows: str = "true class",
    columns: str = "predicted class",
    unit: str = "images",
):
    """Heatmap with true classes (``rows``) on rows and predicted classes (``columns``) on
    columns."""
    counts = np.asarray(matrix)
    values = row_normalize(counts) if normalized else counts
    labels = [class_label(n) for n in class_names]
    text = [[f"{v:.2f}" if normalized else f"{int(v)}" for v in row] for row in values]
    fig = go.Figure(
        go.Heatmap(
            z=values,
            x=labels,
            y=labels,
            text=text,
            texttemplate="%{text}",
            colorscale="Blues",
            zmin=0,
            zmax=1 if normalized else None,
            customdata=counts,
            hovertemplate=f"{rows} %{{y}}<br>{columns} %{{x}}<br>%{{customdata}} {unit}"
            "<extra></extra>",
        )
    )
    fig.update_layout(
        **_LAYOUT,
        height=520,
        xaxis=dict(title=columns, side="bottom"),
        yaxis=dict(title=rows, autorange="reversed"),
    )
    return fig


def per_class_comparison_figure(tables: dict[str, pd.DataFrame], metric: str = "F1"):
    """Grouped bars: one group per class, one bar per run."""
    fig = go.Figure()
    for run_id, table in tables.items():
        classes = table[~table["class"].str.endswith("average")]
        fig.add_trace(go.Bar(x=classes["class"], y=classes[metric], name=run_id))
    fig.update_layout(
        **_LAYOUT,
        barmode="group",
        height=420,
        title=f"{metric} per class",
        yaxis=dict(range=[0, 1.05]),
        legend=dict(orientation="h", y=-0.2),
    )
    return fig


def reliability_figure(card: dict):
    """Reliability diagram of the test split before and after calibration (None: no record).

    Each point is a confidence bin: mean shown confidence against the share of right answers;
    a calibrated model lies on the diagonal.
    """
    calibration = card.get("calibration") or {}
    before = calibration.get("reliability_test_before")
    after = calibration.get("reliability_test_after")
    if not before or not after:
        return None
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=[0, 1],
            y=[0, 1],
            mode="lines",
            name="perfect calibration",
            line={"dash": "dot", "color": "#999"},
        )
    )
    for rows, name, colour in ((before, "before", "#c9733d"), (after, "after (shown)", "#2a6f97")):
        fig.add_trace(
            go.Scatter(
                x=[r["confidence"] for r in rows],
                y=[r["accuracy"] for r in rows],
                mode="lines+markers",
                name=f"{name}",
                marker={"size": [6 + 4 * np.log10(1 + r["count"]) for r in rows], "color": colour},
                customdata=[r["count"] for r in rows],
                hovertemplate="confidence %{x:.3f}<br>accuracy %{y:.3f}<br>%{customdata} cells",
            )
        )
    fig.update_layout(
        xaxis_title="shown confidence (bin mean)",
        yaxis_title="share of right answers",
        height=420,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        title=f"Test split, temperature {calibration.get('temperature', 1.0):.3f}",
    )
    fig.update_xaxes(range=[0, 1.02])
    fig.update_yaxes(range=[0, 1.02])
    return fig
