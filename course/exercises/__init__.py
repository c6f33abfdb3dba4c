"""Checkers for the graded exercises.

Each ``check_*`` function calls a student's function on random and edge cases,
compares it with the package's reference, and either prints a one-line pass or
raises ``ExerciseFailed`` with a message that says what to look at (shape, dtype,
which timesteps differ and by how much). The student never sees a bare assert
or a traceback from inside the package.
"""
from __future__ import annotations

from .core import ExerciseFailed, call_student, compare, passed  # noqa: F401
from .attention import check_multi_head_attention, check_scaled_dot_product_attention  # noqa: F401
from .datasets import check_to_model_range  # noqa: F401
from .forward import check_q_posterior, check_q_sample  # noqa: F401
from .ddpm import check_ddpm_step, check_l_simple  # noqa: F401
from .fid import check_feature_statistics, check_frechet_distance, check_stable_frechet_distance  # noqa: F401
from .ddim import check_ddim_step  # noqa: F401
from .pag import check_pag_epsilon, check_perturbed_self_attention  # noqa: F401
from .guidance import check_cfg_combine, check_cfg_epsilon, check_classifier_guided_eps, check_drop_labels  # noqa: F401
from .sde import check_langevin_step, check_pf_ode_drift, check_reverse_em_step  # noqa: F401
from .lora import check_lora_layer, check_merge  # noqa: F401
from .ldm import check_cross_attention_layer, check_reparameterize_and_kl  # noqa: F401
from .controlnet import check_add_control, check_control_residuals, check_zero_conv  # noqa: F401
from .flow import check_cfm_loss, check_velocity_from_eps  # noqa: F401
