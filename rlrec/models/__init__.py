"""Models fitted from logs: the interest-migration SimModel, the synthetic generator, the encoder.

Every name loads on first use: the encoder side imports torch, the fit pandas.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rlrec.lazy import lazy_exports

if TYPE_CHECKING:
    from rlrec.models.btyd import BGNBD, ParetoNBD, fit_bgnbd, fit_pareto_nbd
    from rlrec.models.calibration import log_statistics
    from rlrec.models.checkpoint import load_encoder, save_encoder
    from rlrec.models.encoder import EncoderConfig, SequenceEncoder, StateEncoder
    from rlrec.models.ground_truth import (
        GroundTruth,
        PlantedChange,
        PlantedTrend,
        ReturnTruthConfig,
        SyntheticConfig,
        load_ground_truth,
        oracle_return,
        session_satisfaction,
    )
    from rlrec.models.lifecycle import (
        ReturnModel,
        ReturnModelConfig,
        Timelines,
        build_timelines,
        fit_return_model,
    )
    from rlrec.models.pretrain import PretrainConfig, pretrain_checkpoint, train_encoder
    from rlrec.models.sim_model import SimModel, load_sim_model
    from rlrec.models.synthetic import generate_dataset, generate_events
    from rlrec.models.transfer import (
        FinetuneConfig,
        encoder_return_scores,
        finetune,
        finetune_checkpoint,
        transfer_comparison,
    )
    from rlrec.models.transition import FitConfig, fit_sim_model, simulate_organic

# Name -> module of every public name (torch and pandas import slowly; load them on use).
_LAZY: dict[str, str] = {
    "BGNBD": "rlrec.models.btyd",
    "ParetoNBD": "rlrec.models.btyd",
    "fit_bgnbd": "rlrec.models.btyd",
    "fit_pareto_nbd": "rlrec.models.btyd",
    "ReturnModel": "rlrec.models.lifecycle",
    "ReturnModelConfig": "rlrec.models.lifecycle",
    "Timelines": "rlrec.models.lifecycle",
    "build_timelines": "rlrec.models.lifecycle",
    "fit_return_model": "rlrec.models.lifecycle",
    "log_statistics": "rlrec.models.calibration",
    "load_encoder": "rlrec.models.checkpoint",
    "save_encoder": "rlrec.models.checkpoint",
    "EncoderConfig": "rlrec.models.encoder",
    "SequenceEncoder": "rlrec.models.encoder",
    "StateEncoder": "rlrec.models.encoder",
    "GroundTruth": "rlrec.models.ground_truth",
    "SyntheticConfig": "rlrec.models.ground_truth",
    "PlantedChange": "rlrec.models.ground_truth",
    "PlantedTrend": "rlrec.models.ground_truth",
    "load_ground_truth": "rlrec.models.ground_truth",
    "oracle_return": "rlrec.models.ground_truth",
    "ReturnTruthConfig": "rlrec.models.ground_truth",
    "session_satisfaction": "rlrec.models.ground_truth",
    "PretrainConfig": "rlrec.models.pretrain",
    "pretrain_checkpoint": "rlrec.models.pretrain",
    "train_encoder": "rlrec.models.pretrain",
    "FinetuneConfig": "rlrec.models.transfer",
    "encoder_return_scores": "rlrec.models.transfer",
    "finetune": "rlrec.models.transfer",
    "finetune_checkpoint": "rlrec.models.transfer",
    "transfer_comparison": "rlrec.models.transfer",
    "SimModel": "rlrec.models.sim_model",
    "load_sim_model": "rlrec.models.sim_model",
    "generate_dataset": "rlrec.models.synthetic",
    "generate_events": "rlrec.models.synthetic",
    "FitConfig": "rlrec.models.transition",
    "fit_sim_model": "rlrec.models.transition",
    "simulate_organic": "rlrec.models.transition",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())


__all__ = [
    "BGNBD",
    "EncoderConfig",
    "FinetuneConfig",
    "FitConfig",
    "GroundTruth",
    "ParetoNBD",
    "PlantedChange",
    "PlantedTrend",
    "PretrainConfig",
    "ReturnModel",
    "ReturnModelConfig",
    "ReturnTruthConfig",
    "SequenceEncoder",
    "SimModel",
    "StateEncoder",
    "SyntheticConfig",
    "Timelines",
    "build_timelines",
    "encoder_return_scores",
    "finetune",
    "finetune_checkpoint",
    "fit_bgnbd",
    "fit_pareto_nbd",
    "fit_return_model",
    "fit_sim_model",
    "generate_dataset",
    "generate_events",
    "load_encoder",
    "load_ground_truth",
    "load_sim_model",
    "log_statistics",
    "oracle_return",
    "pretrain_checkpoint",
    "save_encoder",
    "session_satisfaction",
    "simulate_organic",
    "train_encoder",
    "transfer_comparison",
]
