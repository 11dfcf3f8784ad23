"""The list of verb groups; each entry adds its subparsers to ``rlrec``'s parser."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from rlrec.cli import agent as agent_cli
from rlrec.cli import analyze as analyze_cli
from rlrec.cli import churn as churn_cli
from rlrec.cli import convert as convert_cli
from rlrec.cli import data
from rlrec.cli import encoder as encoder_cli
from rlrec.cli import env as env_cli
from rlrec.cli import ope as ope_cli
from rlrec.cli import quickstart as quickstart_cli
from rlrec.cli import report as report_cli
from rlrec.cli import sensitivity as sensitivity_cli
from rlrec.cli import serve as serve_cli
from rlrec.cli import sim as sim_cli
from rlrec.cli import sweep as sweep_cli

__all__ = [
    "REGISTRY",
    "Registrar",
]

Registrar = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]

# One line per verb group; each group's module owns its options and handlers.
REGISTRY: list[Registrar] = [
    agent_cli.register,
    analyze_cli.register,
    churn_cli.register,
    convert_cli.register,
    data.register,
    encoder_cli.register,
    env_cli.register,
    ope_cli.register,
    quickstart_cli.register,
    report_cli.register,
    sensitivity_cli.register,
    serve_cli.register,
    sim_cli.register,
    sweep_cli.register,
]
