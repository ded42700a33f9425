"""EchoRL on TRL's ``GRPOTrainer``: single-node training (plain ``python`` or ``accelerate launch``, CPU or GPU).

The only part of echovl that imports ``trl``. Install it with ``pip install "echovl[trl]"`` (TRL 1.16.0, which needs
Python >= 3.11).

.. code-block:: python

    from echovl.trl import EchoGRPOTrainer, accuracy, think_format

    trainer = EchoGRPOTrainer(
        model=model, reward_funcs=[accuracy, think_format], args=grpo_config, train_dataset=dataset,
        processing_class=processor, echo_config={"coef": 0.001},
    )
"""

from __future__ import annotations

import sys

TRL_VERSION = "1.16.0"
"""The TRL release this integration is written and tested against (it overrides private TRL methods)."""

if sys.version_info < (3, 11):
    raise ImportError(
        f"echovl.trl needs Python >= 3.11 (TRL {TRL_VERSION} does not support Python "
        f"{sys.version_info.major}.{sys.version_info.minor}); the EasyR1 integration (echovl.easyr1) works on 3.10."
    )
try:
    import trl
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(f'echovl.trl needs TRL {TRL_VERSION}: pip install "echovl[trl]"') from error

if trl.__version__ != TRL_VERSION:  # pragma: no cover - depends on the environment
    import warnings

    warnings.warn(
        f"echovl.trl is tested with trl=={TRL_VERSION} and overrides private GRPOTrainer methods; "
        f"found trl=={trl.__version__}",
        stacklevel=2,
    )

from trl import GRPOConfig  # noqa: E402  (re-exported: the rest of echovl never imports trl itself)

from .rewards import accuracy, think_format  # noqa: E402
from .trainer import EchoGRPOTrainer  # noqa: E402

__all__ = ["TRL_VERSION", "EchoGRPOTrainer", "GRPOConfig", "accuracy", "think_format"]
