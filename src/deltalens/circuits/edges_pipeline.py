"""The ``deltalens circuit edges`` stage: config → :func:`run_edges` → a saved :class:`Circuit`.

Files (``<experiment>/circuits/<pairs>/edges_<method>_<direction>/`` or ``--out``)::

    circuit.json, edges.parquet     the circuit (nodes with scores, edge list)
    circuit.svg, circuit.html       the figure (deltalens.circuits.figure)
    top_edges.csv                   the 50 strongest edges
    edge_budget.json                faithfulness / completeness vs edge budget, CPR / CMD (EAP, EAP-IG)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataFormatError
from ..io import provenance
from ..stage import at_least, one_of, option
from .budget import BUDGETS, EdgeBudgetCurve, edge_budget_curve
from .graph import Circuit
from .pipeline import TaskConfig, _dir, _load_task, write_csv
from .results import DIRECTIONS

EDGE_KINDS = ("feature", "eap", "eap-ig")


@dataclass
class EdgesConfig(TaskConfig):
    """Options of ``deltalens circuit edges``."""

    method: str = option(
        "eap-ig", flag="--method", help="feature (SAE latents, needs --sae), eap or eap-ig (heads and MLPs)."
    )
    saes: list[Path] = option(
        default_factory=list,
        flag="--sae",
        help="Comma list of SAE directories, one per site (feature edges).",
    )
    dashboards: Path | None = option(
        None,
        flag="--dashboards",
        help="Feature dashboards for latent descriptions (default: next to the SAE).",
    )
    direction: str = option("denoising", flag="--direction", short="-d", help="denoising or noising.")
    steps: int = option(5, flag="--steps", help="EAP-IG interpolation steps.")
    node_threshold: float = option(
        0.0, flag="--node-threshold", help="Keep nodes with |score| ≥ this (feature)."
    )
    edge_threshold: float = option(0.0, flag="--edge-threshold", help="Keep edges with |weight| ≥ this.")
    max_nodes: int = option(32, flag="--max-nodes", help="At most this many nodes per SAE site (feature).")
    top_edges: int = option(
        500, flag="--top-edges", help="At most this many edges in the circuit (eap, eap-ig)."
    )
    heads: bool = option(True, flag="--heads/--layers-only", help="Attention nodes per head where separable.")
    budgets: list[float] = option(
        default_factory=lambda: list(BUDGETS),
        flag="--budgets",
        help="Edge budgets in % for the faithfulness curve.",
    )
    budget_curve: bool = option(
        True,
        flag="--budget-curve/--no-budget-curve",
        help="Faithfulness vs edge budget, CPR / CMD (eap, eap-ig).",
    )

    def validate(self) -> None:
        super().validate()
        one_of(self, "method", EDGE_KINDS)
        one_of(self, "direction", DIRECTIONS)
        at_least(self, "steps", 1)
        at_least(self, "max_nodes", 1)
        at_least(self, "top_edges", 1)
        at_least(self, "node_threshold", 0)
        at_least(self, "edge_threshold", 0)
        if self.method == "feature" and not self.saes:
            raise ConfigError("--method feature needs --sae (one SAE directory per site)")
        for b in self.budgets:
            if not 0 < b <= 100:
                raise ConfigError(f"--budgets are percentages in (0, 100], got {b}")


@dataclass
class EdgesRun:
    circuit: Circuit
    out_dir: Path
    files: dict[str, Path] = field(default_factory=dict)
    budget: EdgeBudgetCurve | None = None
    described: int = 0


def run_edges(config: EdgesConfig, experiment: Any = "default") -> EdgesRun:
    """Load the model, pairs and SAEs of ``config``, compute the circuit and write its files."""
    from .component_edges import component_edges
    from .descriptions import describe_nodes, latent_descriptions
    from .feature_edges import check_saes, feature_edges
    from .figure import save_figure

    cfg = config
    for p in cfg.saes:
        if not Path(p).exists():
            raise DataFormatError(f"{p}: no such SAE directory")
    lm, task, name = _load_task(cfg)
    out_dir = _dir(cfg, experiment, name, f"edges_{cfg.method}_{cfg.direction}")
    described = 0
    if cfg.method == "feature":
        from ..sae import load_any

        saes = [load_any(p, device=lm.device) for p in cfg.saes]
        pairs = check_saes(lm, saes)
        circuit = feature_edges(
            lm,
            task,
            [s for _, s in pairs],
            cfg.direction,
            cfg.node_threshold,
            cfg.edge_threshold,
            cfg.max_nodes,
        )
        for p, sae in zip(cfg.saes, saes):
            site = str(check_saes(lm, [sae])[0][0])
            described += describe_nodes(circuit.nodes, site, latent_descriptions(p, cfg.dashboards))
    else:
        circuit = component_edges(
            lm, task, cfg.method, cfg.direction, cfg.steps, cfg.heads, cfg.edge_threshold, cfg.top_edges
        )
    circuit.meta["provenance"] = provenance(lm, method=circuit.method, config=cfg.to_dict())
    files = {"circuit": circuit.save(out_dir), "edges": out_dir / Circuit.EDGES_FILE}
    files.update(save_figure(circuit, out_dir))
    files["top_edges"] = write_csv(
        out_dir / "top_edges.csv",
        [{"source": s, "target": t, "weight": w} for s, t, w in circuit.top_edges(50)],
    )
    run = EdgesRun(circuit, out_dir, files, described=described)
    if cfg.method != "feature" and cfg.budget_curve:
        run.budget = edge_budget_curve(lm, task, circuit, cfg.budgets, cfg.batch_tokens)
        files["budget"] = run.budget.save(out_dir)
    return run
