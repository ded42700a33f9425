"""echovl: EchoRL for vision-language RL post-training.

The EchoRL data flow is four small modules: :mod:`echovl.entropy` (token entropy), :mod:`echovl.steps`
(reasoning steps), :mod:`echovl.clip` (EchoClip mining) and :mod:`echovl.loss` (the prefix NLL term).
The expert-guided base methods' math sits beside them: :mod:`echovl.expert` (LUFFY's expert row and
advantage), :mod:`echovl.hints` (UFT's hints), the shaped loss and hint NLL in :mod:`echovl.loss`, and
:mod:`echovl.guidance` (their config section). The EasyR1 integration lives in :mod:`echovl.easyr1` and is imported only on demand.
"""

from .clip import EchoClips, GroupOutcomes, group_outcomes, mine_echo_clips, step_entropies
from .config import EchoConfig
from .entropy import token_entropy
from .guidance import GuidanceConfig
from .hints import hint_probability, solution_parts
from .loss import echo_nll, hint_nll, shaped_pg_loss
from .steps import delimiter_table, special_table, step_index, text_mask, vision_table

__version__ = "0.1.0"

__all__ = [
    "EchoClips",
    "EchoConfig",
    "GroupOutcomes",
    "GuidanceConfig",
    "delimiter_table",
    "echo_nll",
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
]
