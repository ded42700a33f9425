"""echovl: EchoRL for vision-language RL post-training.

The EchoRL data flow is four small modules: :mod:`echovl.entropy` (token entropy), :mod:`echovl.steps`
(reasoning steps), :mod:`echovl.clip` (EchoClip mining) and :mod:`echovl.loss` (the prefix NLL term), tied together
for the trainers by :mod:`echovl.echo` (the echo step). The expert-guided base methods' math sits beside them, one
module each: :mod:`echovl.luffy` (the expert row, the group advantage, policy shaping) and :mod:`echovl.uft` (hints
and their NLL); :mod:`echovl.config` holds the ``echo:`` and ``guidance:`` config sections. The EasyR1 and TRL
integrations live in :mod:`echovl.easyr1` and :mod:`echovl.trl` and are imported only on demand.
"""

from .clip import EchoClips, GroupOutcomes, group_outcomes, mine_echo_clips, step_entropies
from .config import EchoConfig, GuidanceConfig
from .echo import EchoStep, MinedBatch
from .entropy import token_entropy
from .loss import echo_nll, echo_term, weighted_echo_nll
from .luffy import shaped_pg_loss
from .steps import delimiter_table, special_table, step_index, text_mask, vision_table
from .uft import hint_nll, hint_probability, solution_parts

__version__ = "0.1.0"

__all__ = [
    "EchoClips",
    "EchoConfig",
    "EchoStep",
    "GroupOutcomes",
    "GuidanceConfig",
    "MinedBatch",
    "delimiter_table",
    "echo_nll",
    "echo_term",
    "group_outcomes",
    "hint_nll",
    "hint_probability",
    "mine_echo_clips",
    "shaped_pg_loss",
    "solution_parts",
    "special_table",
    "step_entropies",
    "step_index",
    "text_mask",
    "token_entropy",
    "vision_table",
    "weighted_echo_nll",
]
