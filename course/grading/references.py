"""Which package functions answer which exercise: the one registry the reference-call detection reads.

Each checker in :mod:`course.exercises` maps to the package's own implementations of the same exercise. While a
check runs, a student's code that calls one of them (under any name, directly or through helpers) scores zero for
that exercise: the exercise asks for the student's own code. Every other package function (plots, data sets, the
references of *other* exercises) stays allowed.

Entries are function or class objects, looked up through the modules' public names. A class stands for all the
functions defined in its body (``__init__``, ``forward``, ...).
"""
from __future__ import annotations

import course.exercises as ex
from course import attention, controlnet, ddim, ddpm, fid, flow, forward, guidance, ldm, lora, pag, sde
from course.exercises import datasets as ex_datasets

from .guard import code_objects, qualified_name  # noqa: F401 - the registry's helpers, used by the tests


def registry() -> dict:
    """{checker function: [reference functions and classes]} for every checker in course.exercises."""
    entries = {
        ex.check_to_model_range: [ex_datasets.reference_to_model_range],
        ex.check_scaled_dot_product_attention: [attention.scaled_dot_product_attention, attention.attention_weights],
        ex.check_multi_head_attention: [attention.multi_head_attention, attention.MultiHeadAttention],
        ex.check_q_sample: [forward.q_sample],
        ex.check_q_posterior: [forward.q_posterior],
        ex.check_l_simple: [ddpm.l_simple, ddpm.random_l_simple],
        ex.check_ddpm_step: [ddpm.ddpm_step, ddpm.model_mean],
        ex.check_ddim_step: [ddim.ddim_step, ddim.ddim_sigma],
        ex.check_reverse_em_step: [sde.em_step, sde.reverse_sde_drift],
        ex.check_pf_ode_drift: [sde.pf_ode_drift],
        ex.check_classifier_guided_eps: [guidance.classifier_guided_eps, guidance.classifier_log_prob_grad],
        ex.check_drop_labels: [guidance.drop_labels],
        ex.check_cfg_combine: [guidance.cfg_combine, guidance.cfg_combine_lambda],
        ex.check_perturbed_self_attention: [pag.self_attention_block, pag.attention_output,
                                            pag.PerturbedSelfAttnProcessor],
        ex.check_pag_epsilon: [pag.pag_epsilon, pag.pag_combination, pag.pag_predictions],
        ex.check_reparameterize_and_kl: [ldm.reparameterize, ldm.kl_to_standard_normal],
        ex.check_cross_attention_layer: [ldm.cross_attention_layer],
        ex.check_zero_conv: [controlnet.zero_conv],
        ex.check_add_control: [controlnet.add_control],
        ex.check_control_residuals: [controlnet.ControlNet.forward, controlnet.ControlNet.encode],
        ex.check_lora_layer: [lora.LoRALinear],
        ex.check_merge: [lora.merge_weight],
        ex.check_feature_statistics: [fid.feature_statistics],
        ex.check_frechet_distance: [fid.frechet_distance],
        ex.check_langevin_step: [sde.langevin_step],
        ex.check_stable_frechet_distance: [fid.frechet_distance, fid._psd_sqrt],
        ex.check_cfg_epsilon: [guidance.cfg_predictions, guidance.cfg_eps_model, guidance.cfg_combine,
                               guidance.cfg_combine_lambda],
        ex.check_cfm_loss: [flow.cfm_loss, flow.random_cfm_loss, flow.linear_path],
        ex.check_velocity_from_eps: [flow.velocity_from_eps],
    }
    return entries
