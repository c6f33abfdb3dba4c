"""Which package functions answer which exercise: the one registry the reference-call detection reads.

Each checker in :mod:`course.exercises` maps to the package's own implementations of the same exercise. While a
check runs, a student's code that calls one of them (under any name, directly or through helpers) scores zero for
that exercise: the exercise asks for the student's own code. Every other package function (plots, data sets, the
references of *other* exercises) stays allowed.

Entries are function or class objects, looked up through the modules' public names. A class stands for all the
functions defined in its body (``__init__``, ``forward``, ...).
"""
from __future__ import annotations

import importlib


def _module(*names):
    """The first of names that imports (modules are sometimes renamed; the registry names both spellings)."""
    for name in names:
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
    raise ModuleNotFoundError(f"none of {names} imports")


def registry() -> dict:
    """{checker function: [reference functions and classes]} for every checker in course.exercises."""
    import course.exercises as ex
    from course import attention, controlnet, fid, forward, guidance, ldm, lora, pag, sde
    from course.exercises import datasets as ex_datasets

    ddpm = _module("course.ddpm", "course.losses")
    ddim = _module("course.ddim", "course.sampling")
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
        ex.check_lora_layer: [lora.LoRALinear],
        ex.check_merge: [lora.merge_weight],
        ex.check_feature_statistics: [fid.feature_statistics],
        ex.check_frechet_distance: [fid.frechet_distance],
    }
    # checkers that newer versions of the exercise modules add
    for checker, refs in [("check_langevin_step", lambda: [sde.langevin_step]),
                          ("check_stable_frechet_distance", lambda: [fid.frechet_distance, fid._psd_sqrt]),
                          ("check_cfg_epsilon", lambda: [guidance.cfg_predictions, guidance.cfg_eps_model])]:
        if hasattr(ex, checker):
            entries[getattr(ex, checker)] = refs()
    return entries


def code_objects(obj) -> list:
    """The code objects that running obj executes first: a function's own, or every function in a class body."""
    if isinstance(obj, type):
        codes = []
        for value in vars(obj).values():
            if isinstance(value, (staticmethod, classmethod)):
                value = value.__func__
            elif isinstance(value, property):
                codes += [f.__code__ for f in (value.fget, value.fset, value.fdel) if f is not None]
                continue
            if hasattr(value, "__code__"):
                codes.append(value.__code__)
        return codes
    obj = getattr(obj, "__wrapped__", obj)
    return [obj.__code__] if hasattr(obj, "__code__") else []


def qualified_name(obj) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"
