"""Every vocabulary of dagrow in one place: the registries that ``dagrow list``, the docs tables and the
contract tests read.

=================  =========================================  ======================================
vocabulary         registry                                    used by
=================  =========================================  ======================================
ops, activations   :mod:`dagrow.ops`                           the spec language (edges, nodes)
norms              :mod:`dagrow.norms`                         the spec language (``norm`` of nodes)
strategies         :data:`dagrow.planner.STRATEGIES`           ``strategy`` in run configs
inits              :data:`dagrow.growth.inits.INITS`           ``init`` in run configs
schedules          :data:`dagrow.schedule.SCHEDULES`           ``schedule`` in run configs
site-kinds         :data:`dagrow.growth.actions.SITE_ACTIONS`  the sites a plan grows
actions            :data:`dagrow.rewrite.ACTIONS`              the rewrites of a plan (history)
losses             :data:`dagrow.losses.LOSSES`                ``Grower(loss=...)``, ``--loss``
tasks              :data:`dagrow.tasks.TASKS`                  ``--task``
presets            :data:`dagrow.presets.PRESETS`              ``dagrow compare --preset``
=================  =========================================  ======================================
"""

from __future__ import annotations

from .activations import activation_info, list_activations
from .growth.actions import SITE_ACTIONS
from .growth.inits import INITS
from .losses import LOSSES
from .norms import list_norms, norm_info
from .ops import list_ops, op_info
from .planner import STRATEGIES
from .presets import PRESETS
from .registry import Registry, unknown_name_message
from .rewrite import ACTIONS
from .schedule import SCHEDULES
from .tasks import TASKS

REGISTRIES: dict[str, Registry] = {
    "strategies": STRATEGIES,
    "inits": INITS,
    "schedules": SCHEDULES,
    "site-kinds": SITE_ACTIONS,
    "actions": ACTIONS,
    "losses": LOSSES,
    "tasks": TASKS,
    "presets": PRESETS,
}


def vocabulary(name: str) -> list[tuple[str, str]]:
    """(entry, one-line summary) of the vocabulary ``name`` (see the module docstring)."""
    if name == "ops":
        return [(k, op_info(k).summary) for k in list_ops()]
    if name == "activations":
        return [(k, activation_info(k).summary) for k in list_activations()]
    if name == "norms":
        return [(k, norm_info(k).summary) for k in list_norms()]
    if name not in REGISTRIES:
        raise ValueError(unknown_name_message("vocabulary", name, vocabulary_names()))
    return list(REGISTRIES[name].summaries().items())


def vocabulary_names() -> list[str]:
    return ["ops", "activations", "norms", *REGISTRIES]
