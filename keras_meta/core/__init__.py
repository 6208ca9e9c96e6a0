"""The functional core: fast-weights calls and the pure inner loop. Nothing here assigns a
variable, and nothing here knows about MAML, learned optimizers, data or training runs.

* `functional`: `functional_call` of any Keras model with explicit parameter tensors.
* `inner_loop`: `adapt_params`, the differentiable inner loop (any number of steps, any rule).
* `update_rules`: `SGDRule`, the hand-designed baselines (`MomentumRule`, `RMSpropRule`,
  `AdamRule`, `hand_designed_rule`) and the protocol a learned rule follows.
* `losses`: task losses reduced per task, unscaled by `tf.distribute` replicas.
* `recompute`: gradient checkpointing of inner steps.
* `step_context`: which inner step is being traced (per-step layers).
* `batching`: all tasks of a meta-batch in one pass.
"""

from keras_meta.core.functional import assign_params, functional_call, get_params, get_state
from keras_meta.core.inner_loop import adapt_params
from keras_meta.core.losses import per_task_loss, replica_loss_weight, scalar_loss
from keras_meta.core.recompute import checkpointed
from keras_meta.core.step_context import current_inner_step, inner_step, is_query_pass
from keras_meta.core.update_rules import (HAND_DESIGNED_RULES, AdamRule, MomentumRule,
                                          RMSpropRule, SGDRule, hand_designed_rule)

__all__ = ["HAND_DESIGNED_RULES", "AdamRule", "MomentumRule", "RMSpropRule", "SGDRule",
           "adapt_params", "assign_params", "checkpointed", "current_inner_step",
           "functional_call", "get_params", "get_state", "hand_designed_rule", "inner_step",
           "is_query_pass", "per_task_loss", "replica_loss_weight", "scalar_loss"]
